-- Issue 9: the retention schedule and legal holds.

-- Legal holds as records. Two kinds:
--  * 'legal_obligation': made by a deletion whose store must keep records (billing, 7 years).
--    It names the request and store, the basis and the end date; its records are listed in
--    dsr_hold_records by key (the store's record ids, never identifiers). When `until` passes,
--    the retention sweep erases them and moves the request's outcome from RETAINED to DONE.
--  * 'litigation': placed and released by an admin (dsr.v1.Holds). While it stands, deletions and
--    sweeps keep the subject's data. `reason` is the admin's free text: stored here, never
--    logged and never put in an event.
-- The subject is known only by keyed hashes of its identifiers (dsr_hold_subjects), one per
-- account id, email and phone, so a deletion or a record matching any one of them is held.
CREATE TABLE dsr_holds (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    tenant_id      TEXT NOT NULL,
    basis          TEXT NOT NULL,
    reason         TEXT,
    request_id     TEXT,
    store          TEXT,
    records        BIGINT NOT NULL DEFAULT 0,
    placed_by      TEXT NOT NULL,
    placed_at      BIGINT NOT NULL,
    until          BIGINT,
    ended_at       BIGINT,
    ended_by       TEXT,
    end_reason     TEXT
);
CREATE INDEX dsr_holds_tenant ON dsr_holds (tenant_id, id);
CREATE INDEX dsr_holds_due ON dsr_holds (kind, ended_at, until);
-- "Does a litigation hold stand in this tenant?": asked by the sweep before every batch.
CREATE INDEX dsr_holds_standing ON dsr_holds (tenant_id, kind, ended_at);

CREATE TABLE dsr_hold_subjects (
    hold_id TEXT NOT NULL,
    tag     TEXT NOT NULL,
    PRIMARY KEY (hold_id, tag)
);
CREATE INDEX dsr_hold_subjects_tag ON dsr_hold_subjects (tag);

CREATE TABLE dsr_hold_records (
    hold_id    TEXT NOT NULL,
    record_key TEXT NOT NULL,
    PRIMARY KEY (hold_id, record_key)
);

-- A store task kept under a litigation hold (state 'retained'): released, it runs again.
ALTER TABLE dsr_tasks ADD COLUMN hold_id TEXT;
CREATE INDEX dsr_tasks_hold ON dsr_tasks (hold_id);

-- ExtendDeadline's reason: free text, kept with the request (not in events, not logged).
ALTER TABLE dsr_requests ADD COLUMN extension_reason TEXT;

-- Leases on jobs that one replica at a time may run (the retention sweep). Claimed with an
-- UPDATE ... WHERE lease_until < now, renewed while working, given back at the end.
-- `next_due_at`: when the scheduled job should run next, whichever replica runs it.
CREATE TABLE dsr_leases (
    name        TEXT PRIMARY KEY,
    owner       TEXT,
    lease_until BIGINT NOT NULL,
    next_due_at BIGINT NOT NULL
);
INSERT INTO dsr_leases (name, owner, lease_until, next_due_at) VALUES ('retention_sweep', NULL, 0, 0);
