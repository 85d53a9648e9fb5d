-- A deletion's records that name the subject but not them alone (a shared line, a duplicate
-- email): never erased on one person's behalf, counted on the outcome so an operator can act.
ALTER TABLE dsr_tasks ADD COLUMN records_unattributed BIGINT NOT NULL DEFAULT 0;
