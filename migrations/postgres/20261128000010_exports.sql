-- Export archives: where each finished export's ZIP lives, what it weighs and hashes to, and
-- until when it may be downloaded. The archive itself is in the export storage, not here.
CREATE TABLE dsr_exports (
    request_id  TEXT PRIMARY KEY REFERENCES dsr_requests (id),
    tenant_id   TEXT NOT NULL,
    object_path TEXT NOT NULL,
    format      TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    expired_at  BIGINT
);
CREATE INDEX dsr_exports_expiry ON dsr_exports (expired_at, expires_at);
