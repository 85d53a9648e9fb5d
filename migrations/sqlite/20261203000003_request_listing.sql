-- ListRequests pages, newest first, by status, by kind, or open and due. Only the tenant's
-- filter had an index in that order (dsr_requests_tenant_created). A page by kind walked every
-- request newest first (dsr_requests_created) and kept the matching ones, so with few exports
-- it read the whole ledger: 0.09-0.42 s warm and 8.7 s cold with 200,000 past requests on
-- SQLite (dsr bench latency --history). By status, or open and due, the planners chose between
-- that walk and (status, due_at) by their statistics; SQLite chose the walk on a ledger whose
-- requests had all completed. With these a page reads about as many rows as it returns. The
-- open requests' index is partial (its predicate is the filter's literal), so it holds only the
-- requests not ended yet.
CREATE INDEX dsr_requests_status_created ON dsr_requests (status, created_at DESC, id DESC);
CREATE INDEX dsr_requests_kind_created ON dsr_requests (kind, created_at DESC, id DESC);
CREATE INDEX dsr_requests_open_created ON dsr_requests (created_at DESC, id DESC) WHERE status IN ('pending', 'in_progress');
