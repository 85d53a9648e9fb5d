-- Standing litigation holds, apart from the legal obligations (one for every deletion that keeps
-- billing records: by far most rows of dsr_holds). Every erase asks "does a standing litigation
-- hold cover this subject?" twice (before and after changing the store). A Postgres generic plan
-- made while the table was empty answered it through dsr_holds_tenant (tenant_id, id), which
-- gives ORDER BY id for free and reads every hold of the tenant: 612 buffers per question with
-- 3,000 legal obligations, growing with every deletion. The predicate here uses literals, so
-- generic plans can use it too; it holds only the few holds a person placed and has not ended.
CREATE INDEX dsr_holds_litigation ON dsr_holds (tenant_id, id) WHERE kind = 'litigation' AND ended_at IS NULL;
