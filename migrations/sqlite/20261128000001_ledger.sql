-- The service's own state: requests, one task per request x store, and the event log.
-- Times are epoch milliseconds. Identifiers of the subject live only in subject_json, which is
-- cleared when a request ends; everything else holds keyed hashes.
CREATE TABLE dsr_requests (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    kind              TEXT NOT NULL,
    status            TEXT NOT NULL,
    regime            TEXT NOT NULL,
    requested_by      TEXT NOT NULL,
    actor             TEXT NOT NULL,
    idempotency_hash  TEXT UNIQUE,
    payload_hash      TEXT NOT NULL,
    subject_tag       TEXT NOT NULL,
    subject_json      TEXT,
    created_at        BIGINT NOT NULL,
    due_at            BIGINT NOT NULL,
    completed_at      BIGINT,
    deadline_extended BIGINT NOT NULL DEFAULT 0,
    version           BIGINT NOT NULL DEFAULT 0,
    trace_context     TEXT
);
CREATE INDEX dsr_requests_tenant_created ON dsr_requests (tenant_id, created_at DESC, id DESC);
CREATE INDEX dsr_requests_created ON dsr_requests (created_at DESC, id DESC);
CREATE INDEX dsr_requests_open_due ON dsr_requests (status, due_at);

CREATE TABLE dsr_tasks (
    id               TEXT PRIMARY KEY,
    request_id       TEXT NOT NULL REFERENCES dsr_requests (id),
    store            TEXT NOT NULL,
    position         BIGINT NOT NULL,
    stage            BIGINT NOT NULL,
    state            TEXT NOT NULL,
    attempt          BIGINT NOT NULL DEFAULT 0,
    attempt_limit    BIGINT NOT NULL,
    next_run_at      BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_until      BIGINT,
    found_checkpoint BIGINT,
    records_found    BIGINT NOT NULL DEFAULT 0,
    records_affected BIGINT NOT NULL DEFAULT 0,
    retention_basis  TEXT,
    retained_until   BIGINT,
    last_error       TEXT,
    verified         BIGINT NOT NULL DEFAULT 0,
    started_at       BIGINT,
    finished_at      BIGINT,
    UNIQUE (request_id, store)
);
CREATE INDEX dsr_tasks_due ON dsr_tasks (store, state, next_run_at);

CREATE TABLE dsr_events (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    at               BIGINT NOT NULL,
    request_id       TEXT,
    tenant_id        TEXT,
    store            TEXT,
    action           TEXT NOT NULL,
    attempt          BIGINT,
    records_found    BIGINT,
    records_affected BIGINT,
    actor            TEXT,
    subject_tag      TEXT,
    detail           TEXT
);
CREATE INDEX dsr_events_request ON dsr_events (request_id, seq);
CREATE INDEX dsr_events_tenant ON dsr_events (tenant_id, seq);
