//! Counts for the metrics endpoint, computed from the ledger when Prometheus scrapes: requests
//! still owed an answer and how close they are to their deadline, and each store's queue.
//! Every query is an index range scan (`dsr_requests_open_due`, `dsr_tasks_due`), so a scrape
//! costs the same whatever the number of finished requests.
use chrono::{DateTime, Duration, Utc};
use sqlx::Row;

use super::{decode_enum, Ledger, Result};
use crate::{
    clock::{from_millis, to_millis},
    domain::{RequestKind, RequestStatus},
};

/// The statuses of a request that still owes the subject an answer: open ones, and FAILED ones
/// (they wait for RetryRequest or for someone to act by hand).
pub const OUTSTANDING: [RequestStatus; 3] =
    [RequestStatus::Pending, RequestStatus::InProgress, RequestStatus::Failed];

/// Outstanding requests of one kind and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineCounts {
    pub kind: RequestKind,
    pub status: RequestStatus,
    pub outstanding: u64,
    /// Due before now, and not paused by a litigation hold.
    pub past_deadline: u64,
    /// Per window asked for: due from now to now + window (not yet past), not paused.
    pub due_within: Vec<u64>,
    /// Kept by a litigation hold: the erasure is paused until the hold is released, so these
    /// count neither as past their deadline nor as due soon.
    pub paused_by_hold: u64,
}

/// One store's tasks that have not ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueCounts {
    /// Waiting: due now, in backoff before a retry, or behind an earlier stage.
    pub pending: u64,
    pub running: u64,
    /// Pending and due now: the backlog the workers have not reached.
    pub due: u64,
    /// When the longest-waiting due task became due.
    pub oldest_due_at: Option<DateTime<Utc>>,
}

impl Ledger {
    /// Outstanding requests by kind and status, with how many are past their deadline and how
    /// many fall due within each of `windows`. Combinations with no request are left out.
    pub async fn deadline_counts(
        &self,
        now: DateTime<Utc>,
        windows: &[Duration],
    ) -> Result<Vec<DeadlineCounts>> {
        let statuses = OUTSTANDING.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(",");
        let within = (0..windows.len())
            .map(|i| {
                format!(
                    ", COALESCE(SUM(CASE WHEN held = 0 AND due_at >= $1 AND due_at < ${} THEN 1 ELSE 0 END), 0) AS due_{i}",
                    i + 2
                )
            })
            .collect::<String>();
        // A held request has a task with a hold id (probed per outstanding request on the
        // tasks' `(request_id, store)` key; outstanding requests are few).
        let sql = format!(
            "SELECT kind, status, COUNT(*) AS outstanding, \
             COALESCE(SUM(CASE WHEN held = 0 AND due_at < $1 THEN 1 ELSE 0 END), 0) AS past, \
             COALESCE(SUM(held), 0) AS paused{within} \
             FROM (SELECT kind, status, due_at, \
                   CASE WHEN EXISTS (SELECT 1 FROM dsr_tasks t WHERE t.request_id = r.id AND t.hold_id IS NOT NULL) \
                   THEN 1 ELSE 0 END AS held \
                   FROM dsr_requests r WHERE status IN ({statuses})) q \
             GROUP BY kind, status"
        );
        let mut query = sqlx::query(&sql).bind(to_millis(now));
        for w in windows {
            query = query.bind(to_millis(now + *w));
        }
        let rows = query.fetch_all(self.db.pool()).await?;
        let count = |row: &sqlx::any::AnyRow, col: &str| -> sqlx::Result<u64> {
            Ok(row.try_get::<i64, _>(col)?.max(0) as u64)
        };
        rows.iter()
            .map(|row| {
                Ok(DeadlineCounts {
                    kind: decode_enum(row.try_get("kind")?, RequestKind::from_db)?,
                    status: decode_enum(row.try_get("status")?, RequestStatus::from_db)?,
                    outstanding: count(row, "outstanding")?,
                    past_deadline: count(row, "past")?,
                    paused_by_hold: count(row, "paused")?,
                    due_within: (0..windows.len())
                        .map(|i| count(row, &format!("due_{i}")))
                        .collect::<sqlx::Result<_>>()?,
                })
            })
            .collect::<sqlx::Result<_>>()
            .map_err(Into::into)
    }

    /// The queue of one store. One query per store keeps it on the `(store, state,
    /// next_run_at)` index.
    pub async fn queue_counts(&self, store: &str, now: DateTime<Utc>) -> Result<QueueCounts> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n, \
             COALESCE(SUM(CASE WHEN state = 'pending' AND next_run_at <= $2 THEN 1 ELSE 0 END), 0) AS due, \
             MIN(CASE WHEN state = 'pending' AND next_run_at <= $2 THEN next_run_at END) AS oldest_due \
             FROM dsr_tasks WHERE store = $1 AND state IN ('pending', 'running') GROUP BY state",
        )
        .bind(store)
        .bind(to_millis(now))
        .fetch_all(self.db.pool())
        .await?;
        let mut q = QueueCounts::default();
        for row in rows {
            let n = row.try_get::<i64, _>("n")?.max(0) as u64;
            match row.try_get::<String, _>("state")?.as_str() {
                "pending" => {
                    q.pending = n;
                    q.due = row.try_get::<i64, _>("due")?.max(0) as u64;
                    q.oldest_due_at = row.try_get::<Option<i64>, _>("oldest_due")?.map(from_millis);
                }
                _ => q.running = n,
            }
        }
        Ok(q)
    }
}
