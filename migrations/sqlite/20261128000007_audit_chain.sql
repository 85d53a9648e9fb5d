-- Issue 7: a tamper-evident audit record. Each event carries the hash of the one before it and
-- its own hash (SHA-256 over the previous hash and the event's canonical bytes; see
-- src/ledger/audit.rs). Events written before this migration are hashed at start
-- (`Ledger::migrate` seals them), so the chain covers them too.
ALTER TABLE dsr_events ADD COLUMN prev_hash TEXT;
ALTER TABLE dsr_events ADD COLUMN hash TEXT;

-- The end of the chain: the last sequence number and hash appended. Appends read it instead of
-- the last row (which may have been pruned), and verification compares it with the last row
-- found, so deleting events from the end of the log is detected too.
CREATE TABLE dsr_audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO dsr_audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- One keyed hash per identifier of the subject (tenant-scoped), attached to the request's
-- `submitted` event: ListAuditEvents finds a person's requests from one identifier without the
-- log holding it. The tags are part of their event's hash.
CREATE TABLE dsr_event_subjects (
    seq        BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    tag        TEXT NOT NULL,
    PRIMARY KEY (tag, seq)
);
CREATE INDEX dsr_event_subjects_seq ON dsr_event_subjects (seq);

-- Pruned prefixes of the chain (24-month record keeping): verification starts from the newest
-- checkpoint's hash instead of the zero hash.
CREATE TABLE dsr_audit_checkpoints (
    last_pruned_seq BIGINT PRIMARY KEY,
    last_hash       TEXT NOT NULL,
    events_pruned   BIGINT NOT NULL,
    at              BIGINT NOT NULL
);
