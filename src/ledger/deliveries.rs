//! The recipients' outbox (GDPR Art. 19): one delivery per request × recipient, written with the
//! request, armed in the transaction that records the stores' success (`settle`, from
//! `refresh_status`), claimed by dispatchers under a lease, and ended — fenced on the attempt
//! number — with the request's status refreshed, so a request completes only once its
//! recipients have acknowledged.
//!
//! States: `waiting` (the work is not done yet), `pending` (due, or out on a lease), `done`,
//! `failed` (given up: a dead letter until `dsr recipients retry`), `skipped`, `cancelled`.
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{decode_enum, events::NewEvent, opt_time, requests::refresh_status, Ledger, Result};
use crate::{
    clock::{from_millis, to_millis},
    db::{
        rows::{Rows, Value},
        Backend, Tx,
    },
    domain::{OutcomeState, RequestKind, RequestStatus},
    recipients::NewDelivery,
};

/// One recipient's outcome on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub recipient: String,
    /// `waiting` shows as PENDING.
    pub state: OutcomeState,
    pub event_id: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A delivery a dispatcher holds the lease of.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: String,
    pub request_id: String,
    pub tenant_id: String,
    pub kind: RequestKind,
    pub recipient: String,
    pub attempt: u32,
    /// Refusals in a row so far.
    pub failures: u32,
    pub armed_at: DateTime<Utc>,
    pub give_up_at: DateTime<Utc>,
    pub restriction_only: bool,
    pub data_json: String,
    /// Stores that kept records restricted instead of erasing them.
    pub restricted: Vec<String>,
}

/// How an attempt ended, as the dispatcher records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryEnd {
    Acknowledged,
    /// Try again at this time.
    Retry {
        error: String,
        at: DateTime<Utc>,
        refused: bool,
    },
    /// Given up: FAILED, and the request with it.
    GiveUp {
        error: String,
    },
}

/// Whether the end was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFenced {
    /// Recorded; with the request's status when the end refreshed it (acknowledged, given up).
    Applied(Option<RequestStatus>),
    /// Our lease expired and another dispatcher took the delivery: nothing was written.
    Stale,
}

/// A new request's deliveries, among the rows its submit writes.
pub(super) fn add_rows(rows: &mut Rows, request_id: &str, tenant: &str, new: &[NewDelivery]) {
    const COLUMNS: &[&str] = &[
        "id",
        "request_id",
        "tenant_id",
        "recipient",
        "position",
        "state",
        "restriction_only",
        "data_json",
        "give_up_secs",
        "next_attempt_at",
    ];
    let values = new
        .iter()
        .enumerate()
        .map(|(position, d)| {
            vec![
                Value::from(&d.id),
                request_id.into(),
                tenant.into(),
                Value::from(&d.recipient),
                (position as i64).into(),
                "waiting".into(),
                (d.restriction_only as i64).into(),
                Value::from(&d.data_json),
                (d.give_up_secs as i64).into(),
                i64::MAX.into(),
            ]
        })
        .collect();
    rows.add("dsr_deliveries", COLUMNS, values);
}

/// The request's status once its recipients count: the stores' `status`, except that a request
/// whose stores succeeded arms its waiting deliveries (in this same transaction) and stays IN
/// PROGRESS until each has ended — COMPLETED when all were acknowledged, FAILED when one was
/// given up. A cancelled request tells nobody.
pub(super) async fn settle(
    tx: &mut Tx,
    id: &str,
    status: RequestStatus,
    now: DateTime<Utc>,
) -> Result<RequestStatus> {
    let now_ms = to_millis(now);
    match status {
        RequestStatus::Completed if tx.backend_name() == "PostgreSQL" => {
            // The three statements below as one round trip: the waiting rows armed (a skipped
            // one closed at once), then every row's state, those just armed as they are now.
            let states: Vec<String> = sqlx::query_scalar(
                "WITH kept AS (SELECT EXISTS (SELECT 1 FROM dsr_tasks WHERE request_id = $1 AND state = 'retained') AS retained), \
                 armed AS (UPDATE dsr_deliveries d SET \
                   state = CASE WHEN d.restriction_only = 1 AND NOT kept.retained THEN 'skipped' ELSE 'pending' END, \
                   armed_at = $2, next_attempt_at = $2, give_up_at = $2 + d.give_up_secs * 1000, \
                   data_json = CASE WHEN d.restriction_only = 1 AND NOT kept.retained THEN NULL ELSE d.data_json END, \
                   finished_at = CASE WHEN d.restriction_only = 1 AND NOT kept.retained THEN $2 ELSE d.finished_at END \
                 FROM kept WHERE d.request_id = $1 AND d.state = 'waiting' RETURNING d.state) \
                 SELECT state FROM armed \
                 UNION ALL SELECT state FROM dsr_deliveries WHERE request_id = $1 AND state <> 'waiting'",
            )
            .bind(id)
            .bind(now_ms)
            .fetch_all(&mut **tx)
            .await?;
            Ok(completed_unless(&states))
        }
        RequestStatus::Completed => {
            sqlx::query(
                "UPDATE dsr_deliveries SET \
                   state = CASE WHEN restriction_only = 1 AND NOT EXISTS (SELECT 1 FROM dsr_tasks t \
                     WHERE t.request_id = $1 AND t.state = 'retained') THEN 'skipped' ELSE 'pending' END, \
                   armed_at = $2, next_attempt_at = $2, give_up_at = $2 + give_up_secs * 1000 \
                 WHERE request_id = $1 AND state = 'waiting'",
            )
            .bind(id)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
            sqlx::query("UPDATE dsr_deliveries SET data_json = NULL, finished_at = $2 WHERE request_id = $1 AND state = 'skipped' AND finished_at IS NULL")
                .bind(id)
                .bind(now_ms)
                .execute(&mut **tx)
                .await?;
            let states: Vec<String> =
                sqlx::query_scalar("SELECT state FROM dsr_deliveries WHERE request_id = $1")
                    .bind(id)
                    .fetch_all(&mut **tx)
                    .await?;
            Ok(completed_unless(&states))
        }
        RequestStatus::Cancelled => {
            sqlx::query(
                "UPDATE dsr_deliveries SET state = 'cancelled', data_json = NULL, finished_at = $2 \
                 WHERE request_id = $1 AND state = 'waiting'",
            )
            .bind(id)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
            Ok(status)
        }
        _ => Ok(status),
    }
}

/// A request whose stores are done: COMPLETED, unless a recipient is still to be told (IN_PROGRESS)
/// or was given up on (FAILED).
fn completed_unless(delivery_states: &[String]) -> RequestStatus {
    if delivery_states.iter().any(|s| s == "pending") {
        RequestStatus::InProgress
    } else if delivery_states.iter().any(|s| s == "failed") {
        RequestStatus::Failed
    } else {
        RequestStatus::Completed
    }
}

/// Puts given-up deliveries of `request_id` back in the queue with a new give-up (RetryRequest).
pub(super) async fn requeue_failed(tx: &mut Tx, request_id: &str, now: DateTime<Utc>) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE dsr_deliveries SET state = 'pending', failures = 0, next_attempt_at = $2, \
         give_up_at = $2 + give_up_secs * 1000, finished_at = NULL WHERE request_id = $1 AND state = 'failed'",
    )
    .bind(request_id)
    .bind(to_millis(now))
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

const DELIVERY_COLUMNS: &str = "recipient, state, id, attempt, last_error, next_attempt_at, finished_at";

impl Ledger {
    /// A request's recipients, in catalog order.
    pub async fn deliveries_of(&self, request_id: &str) -> Result<Vec<DeliveryRecord>> {
        deliveries_on(&mut *self.db.pool().acquire().await?, request_id).await
    }

    /// Claims up to `limit` due deliveries for `owner` until `now + lease`: pending ones whose
    /// time has come and that nobody holds (or whose holder let the lease expire — it died
    /// mid-send, so the event goes again under the same id).
    pub async fn claim_deliveries(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedDelivery>> {
        let lock = match self.db.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let now_ms = to_millis(now);
        // A read first: an idle outbox (the usual case) costs no write transaction, which on
        // SQLite would take the one write lock every poll.
        let due: Option<String> = sqlx::query_scalar(
            "SELECT id FROM dsr_deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until < $1) LIMIT 1",
        )
        .bind(now_ms)
        .fetch_optional(self.db.pool())
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.begin_write().await?;
        let rows = sqlx::query(&format!(
            "UPDATE dsr_deliveries SET attempt = attempt + 1, lease_owner = $1, lease_until = $2 \
             WHERE id IN (SELECT d.id FROM dsr_deliveries d WHERE d.state = 'pending' AND d.next_attempt_at <= $3 \
               AND (d.lease_until IS NULL OR d.lease_until < $3) ORDER BY d.next_attempt_at LIMIT $4 {lock}) \
             RETURNING id, request_id, tenant_id, recipient, attempt, failures, armed_at, give_up_at, \
               restriction_only, data_json"
        ))
        .bind(owner)
        .bind(now_ms + lease.as_millis() as i64)
        .bind(now_ms)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let request_id: String = row.try_get("request_id")?;
            let kind: String = sqlx::query_scalar("SELECT kind FROM dsr_requests WHERE id = $1")
                .bind(&request_id)
                .fetch_one(&mut *tx)
                .await?;
            let restricted: Vec<String> = sqlx::query_scalar(
                "SELECT store FROM dsr_tasks WHERE request_id = $1 AND state = 'retained' ORDER BY position",
            )
            .bind(&request_id)
            .fetch_all(&mut *tx)
            .await?;
            out.push(ClaimedDelivery {
                id: row.try_get("id")?,
                tenant_id: row.try_get("tenant_id")?,
                kind: decode_enum(kind, RequestKind::from_db)?,
                recipient: row.try_get("recipient")?,
                attempt: row.try_get::<i64, _>("attempt")? as u32,
                failures: row.try_get::<i64, _>("failures")? as u32,
                armed_at: from_millis(row.try_get::<Option<i64>, _>("armed_at")?.unwrap_or(now_ms)),
                give_up_at: from_millis(row.try_get::<Option<i64>, _>("give_up_at")?.unwrap_or(now_ms)),
                restriction_only: row.try_get::<i64, _>("restriction_only")? != 0,
                data_json: row.try_get::<Option<String>, _>("data_json")?.unwrap_or_else(|| "{}".into()),
                restricted,
                request_id,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Records how an attempt ended, fenced on its attempt number; an acknowledgement or a
    /// give-up refreshes the request's status in the same transaction.
    pub async fn end_delivery(
        &self,
        d: &ClaimedDelivery,
        end: &DeliveryEnd,
        now: DateTime<Utc>,
    ) -> Result<DeliveryFenced> {
        let now_ms = to_millis(now);
        let mut tx = self.begin_chained().await?;
        let q = match end {
            DeliveryEnd::Acknowledged => sqlx::query(
                "UPDATE dsr_deliveries SET state = 'done', data_json = NULL, last_error = NULL, failures = 0, \
                 finished_at = $1, lease_owner = NULL, lease_until = NULL \
                 WHERE id = $2 AND attempt = $3 AND state = 'pending'",
            )
            .bind(now_ms),
            DeliveryEnd::Retry { error, at, refused } => sqlx::query(
                "UPDATE dsr_deliveries SET last_error = $1, next_attempt_at = $2, failures = $3, \
                 lease_owner = NULL, lease_until = NULL WHERE id = $4 AND attempt = $5 AND state = 'pending'",
            )
            .bind(error.clone())
            .bind(to_millis(*at))
            .bind(if *refused { d.failures as i64 + 1 } else { 0 }),
            DeliveryEnd::GiveUp { error } => sqlx::query(
                "UPDATE dsr_deliveries SET state = 'failed', last_error = $1, finished_at = $2, \
                 lease_owner = NULL, lease_until = NULL WHERE id = $3 AND attempt = $4 AND state = 'pending'",
            )
            .bind(error.clone())
            .bind(now_ms),
        };
        let n = q.bind(&d.id).bind(d.attempt as i64).execute(&mut *tx).await?.rows_affected();
        if n == 0 {
            return Ok(DeliveryFenced::Stale);
        }
        let action = match end {
            DeliveryEnd::Acknowledged => "recipient_notified",
            DeliveryEnd::Retry { .. } => {
                tx.commit().await?;
                return Ok(DeliveryFenced::Applied(None));
            }
            DeliveryEnd::GiveUp { .. } => "recipient_failed",
        };
        let detail = format!("event {}", d.id);
        NewEvent::request(&d.request_id, &d.tenant_id, action)
            .store(&d.recipient, d.attempt)
            .detail(&detail)
            .append(&mut tx, now)
            .await?;
        let status = refresh_status(&mut tx, &d.request_id, &d.tenant_id, now).await?;
        tx.commit().await?;
        Ok(DeliveryFenced::Applied(Some(status)))
    }

    /// Gives the lease of a delivery back (shutdown): due again at once, for any dispatcher.
    pub async fn release_delivery(&self, d: &ClaimedDelivery) -> Result<()> {
        sqlx::query(
            "UPDATE dsr_deliveries SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND attempt = $2",
        )
        .bind(&d.id)
        .bind(d.attempt as i64)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// `dsr recipients retry`: puts given-up deliveries back in the queue with a new give-up —
    /// all of them, or those of one request and/or one recipient — and reopens their requests.
    /// Returns how many.
    pub async fn retry_deliveries(
        &self,
        request_id: Option<&str>,
        recipient: Option<&str>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let failed: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, request_id, tenant_id FROM dsr_deliveries WHERE state = 'failed' \
             AND ($1 = '' OR request_id = $1) AND ($2 = '' OR recipient = $2) ORDER BY request_id, position",
        )
        .bind(request_id.unwrap_or(""))
        .bind(recipient.unwrap_or(""))
        .fetch_all(self.db.pool())
        .await?;
        let mut count = 0;
        for (id, request, tenant) in failed {
            let mut tx = self.begin_chained().await?;
            let n = sqlx::query(
                "UPDATE dsr_deliveries SET state = 'pending', failures = 0, next_attempt_at = $2, \
                 give_up_at = $2 + give_up_secs * 1000, finished_at = NULL WHERE id = $1 AND state = 'failed'",
            )
            .bind(&id)
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                continue;
            }
            let detail = format!("event {id}");
            NewEvent::request(&request, &tenant, "recipient_retry_requested")
                .actor(actor)
                .detail(&detail)
                .append(&mut tx, now)
                .await?;
            refresh_status(&mut tx, &request, &tenant, now).await?;
            tx.commit().await?;
            count += 1;
        }
        Ok(count)
    }

    /// For the metrics scrape: (deliveries due or in flight, the oldest one's age, dead letters).
    pub async fn outbox_stats(&self, now: DateTime<Utc>) -> Result<OutboxStats> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(armed_at) AS oldest FROM dsr_deliveries WHERE state = 'pending'",
        )
        .fetch_one(self.db.pool())
        .await?;
        let pending = row.try_get::<i64, _>("n")? as u64;
        let oldest = row.try_get::<Option<i64>, _>("oldest")?;
        let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dsr_deliveries WHERE state = 'failed'")
            .fetch_one(self.db.pool())
            .await?;
        Ok(OutboxStats {
            pending,
            oldest_age: oldest.map(|t| (to_millis(now) - t).max(0) as f64 / 1000.0).unwrap_or(0.0),
            dead_letters: dead as u64,
        })
    }
}

/// The outbox as the metrics scrape reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxStats {
    pub pending: u64,
    /// Seconds since the oldest undelivered event was armed (0 when none).
    pub oldest_age: f64,
    /// Deliveries given up (FAILED) and not retried.
    pub dead_letters: u64,
}

/// A request's recipients, in catalog order, read on `conn`.
pub(super) async fn deliveries_on(
    conn: &mut sqlx::AnyConnection,
    request_id: &str,
) -> Result<Vec<DeliveryRecord>> {
    let rows = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM dsr_deliveries WHERE request_id = $1 ORDER BY position"
    ))
    .bind(request_id)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let state: String = row.try_get("state")?;
        let pending = state == "waiting" || state == "pending";
        let state = if state == "waiting" { "pending".to_owned() } else { state };
        out.push(DeliveryRecord {
            recipient: row.try_get("recipient")?,
            state: decode_enum(state, OutcomeState::from_db)?,
            event_id: row.try_get("id")?,
            attempts: row.try_get::<i64, _>("attempt")? as u32,
            last_error: row.try_get("last_error")?,
            // A waiting delivery is not due at all (`i64::MAX`): no time to show.
            next_attempt_at: Some(row.try_get::<i64, _>("next_attempt_at")?)
                .filter(|t| pending && *t != i64::MAX)
                .map(from_millis),
            finished_at: opt_time(&row, "finished_at")?,
        });
    }
    Ok(out)
}
