-- Restrictions dsr keeps for a catalog store whose table has no restriction column (erasure =
-- "retain" without retain.restriction_column): the record stays under its legal obligation,
-- and this row says it may serve no other use. Keys only, never identifiers.
CREATE TABLE dsr_restrictions (
    store TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    record_key TEXT NOT NULL,
    restricted_at BIGINT NOT NULL,
    PRIMARY KEY (store, tenant_id, record_key)
);
