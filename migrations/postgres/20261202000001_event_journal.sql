-- Issue 16, item 9: no global lock across a client round trip. An event is first written here,
-- unchained, in the same transaction as the state change it records (one INSERT, no lock). A
-- sealer then links journal rows into the chain (`dsr_events`) in id order, in one statement
-- that moves them only if the head is still the one it read (compare-and-set on
-- `dsr_audit_head`), so a paused process can stall nothing but its own work.
CREATE TABLE dsr_event_journal (
    id               BIGSERIAL PRIMARY KEY,
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
    detail           TEXT,
    -- The subject's identifier tags (keyed hashes), as a JSON array of strings.
    subject_tags     TEXT NOT NULL DEFAULT '[]'
);
