-- The tasks a worker holds now (state 'running'), by store and lease end. Two questions read
-- them: the claim's "whose lease expired?" (once a second) and fail_exhausted's "whose lease
-- expired on its last attempt?". dsr_tasks_due (store, state, next_run_at) answers them only by
-- reading every running task of a store; and SQLite's planner, whose statistics give each
-- (store, state) pair the table's average (a ledger's tasks are almost all finished), chose to
-- read the whole table instead: 133 ms per question with a million finished tasks
-- (dsr bench latency --history 200000), which delayed the deletions behind it. The predicate
-- is a literal, so both backends use this index for any plan of those questions.
CREATE INDEX dsr_tasks_leased ON dsr_tasks (store, lease_until) WHERE state = 'running';
