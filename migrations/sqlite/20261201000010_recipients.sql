-- Recipients (GDPR Art. 19): the transactional outbox. One row per request x recipient, written
-- with the request (state 'waiting'), armed ('pending', due at once) in the transaction that
-- records the stores' success, so an event exists exactly when the work it reports happened.
-- `id` is the CloudEvents id, stable across retries; `data_json` is what the recipient may see
-- (only what its catalog entry allows) and is dropped once delivered.
CREATE TABLE dsr_deliveries (
    id               TEXT PRIMARY KEY,
    request_id       TEXT NOT NULL REFERENCES dsr_requests (id),
    tenant_id        TEXT NOT NULL,
    recipient        TEXT NOT NULL,
    position         BIGINT NOT NULL,
    state            TEXT NOT NULL,
    restriction_only BIGINT NOT NULL DEFAULT 0,
    data_json        TEXT,
    give_up_secs     BIGINT NOT NULL,
    armed_at         BIGINT,
    give_up_at       BIGINT,
    next_attempt_at  BIGINT NOT NULL,
    attempt          BIGINT NOT NULL DEFAULT 0,
    failures         BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      BIGINT,
    last_error       TEXT,
    finished_at      BIGINT,
    UNIQUE (request_id, recipient)
);
CREATE INDEX dsr_deliveries_due ON dsr_deliveries (state, next_attempt_at);
