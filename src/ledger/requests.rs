//! Requests: submit (with idempotency), read, list, cancel, retry, and the status every change
//! re-derives from the request's tasks.
use chrono::{DateTime, Utc};
use sqlx::{any::AnyRow, Row};

use super::{
    decode_enum, events::NewEvent, exports::ARCHIVE_TASK, opt_time, Ledger, LedgerError, RequestRecord,
    Result, TaskRecord,
};
use crate::{
    clock::{from_millis, to_millis},
    db::{
        rows::{Rows, Value},
        Backend, Tx,
    },
    domain::{derive_status_under_holds, OutcomeState, Regime, RequestKind, RequestStatus},
};

/// Everything a submit writes, already validated and hashed.
#[derive(Debug, Clone)]
pub struct NewDsrRequest {
    pub id: String,
    pub tenant_id: String,
    pub kind: RequestKind,
    pub regime: Regime,
    pub requested_by: String,
    pub actor: String,
    pub idempotency_hash: Option<String>,
    pub payload_hash: String,
    pub subject_tag: String,
    /// One keyed hash per identifier of the (resolved) subject, so the audit log can be searched
    /// by any one of them (`KeyedHasher::subject_tags`).
    pub subject_tags: Vec<String>,
    pub subject_json: String,
    pub created_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub trace_context: Option<String>,
    /// (store, stage) in store order; a store waits until every earlier stage has ended.
    pub stores: Vec<(String, u8)>,
    pub attempt_limit: u32,
    /// Extra detail for the `submitted` event (never personal data).
    pub detail: Option<String>,
    /// The recipients' outbox rows (`recipients::plan`), armed when the stores succeed.
    pub deliveries: Vec<crate::recipients::NewDelivery>,
}

impl NewDsrRequest {
    /// The request as `Ledger::get` reads it right after `submit` created it: PENDING, version
    /// 0, every store (not an export's archive) pending, every recipient waiting. The submit's
    /// answer, without reading back what it just wrote (`api::rights`; a test compares the two).
    pub fn as_created(&self) -> RequestRecord {
        let task = |store: &str| TaskRecord {
            store: store.to_owned(),
            state: OutcomeState::Pending,
            records_found: 0,
            records_affected: 0,
            records_unattributed: 0,
            retention_basis: None,
            retained_until: None,
            attempts: 0,
            last_error: None,
            verified: false,
            started_at: None,
            finished_at: None,
        };
        RequestRecord {
            id: self.id.clone(),
            tenant_id: self.tenant_id.clone(),
            kind: self.kind,
            status: RequestStatus::Pending,
            regime: self.regime,
            requested_by: self.requested_by.clone(),
            created_at: from_millis(to_millis(self.created_at)),
            due_at: from_millis(to_millis(self.due_at)),
            completed_at: None,
            deadline_extended: false,
            version: 0,
            outcomes: self.stores.iter().filter(|(s, _)| s != ARCHIVE_TASK).map(|(s, _)| task(s)).collect(),
            export: None,
            recipients: self
                .deliveries
                .iter()
                .map(|d| super::DeliveryRecord {
                    recipient: d.recipient.clone(),
                    state: OutcomeState::Pending,
                    event_id: d.id.clone(),
                    attempts: 0,
                    last_error: None,
                    next_attempt_at: None,
                    finished_at: None,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Created(String),
    /// The idempotency key was seen before with the same payload: this is that request.
    Existing(String),
}

impl Submitted {
    pub fn id(&self) -> &str {
        match self {
            Submitted::Created(id) | Submitted::Existing(id) => id,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub tenant_id: Option<String>,
    pub status: Option<RequestStatus>,
    pub kind: Option<RequestKind>,
    /// Non-terminal requests whose due date has passed.
    pub overdue_at: Option<DateTime<Utc>>,
    /// Non-terminal requests due before this time.
    pub due_before: Option<DateTime<Utc>>,
}

/// Keyset position: (created_at, id) of the last request of the previous page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after: Option<(i64, String)>,
    pub size: usize,
}

const OPEN_STATUSES: &str = "('pending','in_progress')";

/// `next_run_at` of a task whose earlier stages have not ended: never due. When the last task of
/// the earlier stages ends, `refresh_status` makes it due. (Gating at claim time instead made
/// every claim scan the whole backlog of a later-stage store: measured 40x slower.)
pub(super) const BLOCKED: i64 = i64::MAX;

impl Ledger {
    /// Writes the request, its tasks and its `submitted` event in one transaction. With an
    /// idempotency key already used: the same payload returns that request, another payload is a
    /// conflict.
    pub async fn submit(&self, new: &NewDsrRequest) -> Result<Submitted> {
        let rows = request_rows(new)?;
        if self.db.backend() == Backend::Postgres {
            // Every row in one statement: one round trip, atomic by itself. A used idempotency
            // key fails it on the key's unique index (after the other writer committed, if it
            // was still writing); then the row holding the key answers.
            return match rows.insert_at_once(self.db.pool()).await {
                Ok(()) => Ok(Submitted::Created(new.id.clone())),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    match &new.idempotency_hash {
                        Some(key) => match self.find_idempotent(key, &new.payload_hash).await? {
                            Some(id) => Ok(Submitted::Existing(id)),
                            // Its holder is gone (pruned) since: a conflict, as two racing
                            // submits with one key and different payloads are.
                            None => Err(LedgerError::IdempotencyConflict),
                        },
                        None => Err(sqlx::Error::Database(e).into()),
                    }
                }
                Err(e) => Err(e.into()),
            };
        }
        for attempt in 0..2 {
            let mut tx = self.begin_chained().await?;
            if let Some(found) = find_by_idempotency(&mut tx, new).await? {
                return found;
            }
            match rows.insert_each(&mut tx).await {
                Ok(()) => {
                    tx.commit().await?;
                    return Ok(Submitted::Created(new.id.clone()));
                }
                // Two submits with one key raced: the loser re-reads the winner's row.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempt == 0 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LedgerError::IdempotencyConflict)
    }

    /// The request an idempotency key already names, if any: its id when the payload matches,
    /// a conflict when it does not. A read before `submit`, for checks that must not run on a
    /// resubmission (a finished rectification's identifiers are no longer where they were).
    /// `submit` decides again inside its transaction, so a race between the two is harmless.
    pub async fn find_idempotent(
        &self,
        idempotency_hash: &str,
        payload_hash: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query("SELECT id, payload_hash FROM dsr_requests WHERE idempotency_hash = $1")
            .bind(idempotency_hash)
            .fetch_optional(self.db.pool())
            .await?;
        match row {
            None => Ok(None),
            Some(row) if row.try_get::<String, _>("payload_hash")? == payload_hash => {
                Ok(Some(row.try_get("id")?))
            }
            Some(_) => Err(LedgerError::IdempotencyConflict),
        }
    }

    /// A request with its outcomes, read on one connection (its three or four statements
    /// would each take a pooled connection, which sqlx pings before and after use).
    pub async fn get(&self, id: &str) -> Result<RequestRecord> {
        let mut conn = self.db.pool().acquire().await?;
        let (mut rec, read) = read_with_tasks(&mut conn, id).await?;
        fill_with(&mut conn, &mut rec, read).await?;
        Ok(rec)
    }

    /// The request as `get` reads it, when its version is no longer `version`; `None` when it is
    /// (a watcher's re-read: one connection either way).
    pub async fn get_if_changed(&self, id: &str, version: i64) -> Result<Option<RequestRecord>> {
        let mut conn = self.db.pool().acquire().await?;
        let (mut rec, read) = read_with_tasks(&mut conn, id).await?;
        if rec.version == version {
            return Ok(None);
        }
        fill_with(&mut conn, &mut rec, read).await?;
        Ok(Some(rec))
    }

    /// The tenant a request belongs to (for authorisation before reading it).
    pub async fn tenant_of(&self, id: &str) -> Result<String> {
        sqlx::query_scalar("SELECT tenant_id FROM dsr_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(LedgerError::NotFound)
    }

    /// The tenant and kind of a request (to authorise an action on it).
    pub async fn tenant_and_kind_of(&self, id: &str) -> Result<(String, RequestKind)> {
        let row = sqlx::query("SELECT tenant_id, kind FROM dsr_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(LedgerError::NotFound)?;
        Ok((row.try_get("tenant_id")?, decode_enum(row.try_get("kind")?, RequestKind::from_db)?))
    }

    /// Newest first. Returns the page and, when there is more, the position after it.
    pub async fn list(
        &self,
        filter: &ListFilter,
        page: &Page,
    ) -> Result<(Vec<RequestRecord>, Option<(i64, String)>)> {
        let (sql, binds) = list_query(filter, page);
        let rows = bind_all(sqlx::query(&sql), binds).fetch_all(self.db.pool()).await?;
        let mut records = rows.iter().map(request_from_row).collect::<sqlx::Result<Vec<_>>>()?;
        let next = if records.len() > page.size {
            records.truncate(page.size);
            records.last().map(|r| (to_millis(r.created_at), r.id.clone()))
        } else {
            None
        };
        if !records.is_empty() {
            // The page's tasks in one statement, and which of its requests have recipients in
            // another (each request's own statements for them made a page of 50 cost 101).
            let mut conn = self.db.pool().acquire().await?;
            let in_page = super::holds::params(1, records.len());
            let sql = format!(
                "SELECT request_id AS owner, {TASK_COLUMNS} FROM dsr_tasks WHERE request_id IN ({in_page}) ORDER BY position"
            );
            let rows =
                records.iter().fold(sqlx::query(&sql), |q, r| q.bind(&r.id)).fetch_all(&mut *conn).await?;
            let mut tasks: std::collections::HashMap<String, Vec<TaskRecord>> = Default::default();
            for row in rows {
                tasks.entry(row.try_get("owner")?).or_default().push(TaskRecord::from_row(&row)?);
            }
            let sql =
                format!("SELECT DISTINCT request_id FROM dsr_deliveries WHERE request_id IN ({in_page})");
            let with_recipients: std::collections::HashSet<String> = records
                .iter()
                .fold(sqlx::query_scalar::<_, String>(&sql), |q, r| q.bind(&r.id))
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect();
            for r in &mut records {
                let read = WithTasks {
                    tasks: tasks.remove(&r.id).unwrap_or_default(),
                    has_recipients: with_recipients.contains(&r.id),
                };
                fill_with(&mut conn, r, read).await?;
            }
        }
        Ok((records, next))
    }

    /// Cancels the stores that have not started. Running stores finish; the request ends
    /// CANCELLED once they have. Returns the request's status after the cancel.
    pub async fn cancel(&self, id: &str, actor: &str, now: DateTime<Utc>) -> Result<RequestStatus> {
        let mut tx = self.begin_chained().await?;
        let (tenant, status) = status_for_update(&mut tx, id).await?;
        if status.is_terminal() {
            return Err(LedgerError::FailedPrecondition(format!("the request has already ended ({status})")));
        }
        let cancelled = sqlx::query(
            "UPDATE dsr_tasks SET state = 'cancelled', finished_at = $1, lease_owner = NULL, lease_until = NULL \
             WHERE request_id = $2 AND state = 'pending'",
        )
        .bind(to_millis(now))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        NewEvent::request(id, &tenant, "cancel_requested")
            .actor(actor)
            .counts(cancelled, cancelled)
            .append(&mut tx, now)
            .await?;
        let status = refresh_status(&mut tx, id, &tenant, now).await?;
        tx.commit().await?;
        Ok(status)
    }

    /// Puts the failed stores of a FAILED request back in the queue, with a fresh attempt budget.
    ///
    /// An export's stores that succeeded go back too: an export that ends without an archive
    /// has its parts deleted (they are copies of the subject's data with no use left), so its
    /// archive needs every part written again.
    pub async fn retry(&self, id: &str, actor: &str, attempt_budget: u32, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.begin_chained().await?;
        let (tenant, status) = status_for_update(&mut tx, id).await?;
        if status != RequestStatus::Failed {
            return Err(LedgerError::FailedPrecondition(format!(
                "only a FAILED request can be retried; this one is {status}"
            )));
        }
        let kind: String = sqlx::query_scalar("SELECT kind FROM dsr_requests WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let again = if kind == RequestKind::Export.as_str() { "('failed', 'done')" } else { "('failed')" };
        // The earliest stage queued again is due at once; later ones wait for it again (an
        // export's archive for its stores, call logs for transcripts and recordings).
        let n = sqlx::query(&format!(
            "UPDATE dsr_tasks SET state = 'pending', attempt_limit = attempt + $1, finished_at = NULL, \
             next_run_at = CASE WHEN stage = (SELECT MIN(f.stage) FROM dsr_tasks f WHERE f.request_id = $3 \
                                              AND f.state IN {again}) THEN $2 ELSE $4 END \
             WHERE request_id = $3 AND state IN {again}"
        ))
        .bind(attempt_budget as i64)
        .bind(to_millis(now))
        .bind(id)
        .bind(BLOCKED)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            + super::deliveries::requeue_failed(&mut tx, id, now).await?;
        NewEvent::request(id, &tenant, "retry_requested")
            .actor(actor)
            .counts(n, n)
            .append(&mut tx, now)
            .await?;
        refresh_status(&mut tx, id, &tenant, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

enum Bind {
    Text(String),
    Int(i64),
}

pub(super) const REQUEST_COLUMNS: &str =
    "id, tenant_id, kind, status, regime, requested_by, created_at, due_at, \
     completed_at, deadline_extended, version";
pub(super) const TASK_COLUMNS: &str =
    "store, state, records_found, records_affected, records_unattributed, retention_basis, \
     retained_until, attempt, last_error, verified, started_at, finished_at";

fn request_from_row(row: &AnyRow) -> sqlx::Result<RequestRecord> {
    Ok(RequestRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        kind: decode_enum(row.try_get("kind")?, RequestKind::from_db)?,
        status: decode_enum(row.try_get("status")?, RequestStatus::from_db)?,
        regime: decode_enum(row.try_get("regime")?, Regime::from_db)?,
        requested_by: row.try_get("requested_by")?,
        created_at: from_millis(row.try_get("created_at")?),
        due_at: from_millis(row.try_get("due_at")?),
        completed_at: opt_time(row, "completed_at")?,
        deadline_extended: row.try_get::<i64, _>("deadline_extended")? != 0,
        version: row.try_get("version")?,
        outcomes: Vec::new(),
        export: None,
        recipients: Vec::new(),
    })
}

async fn find_by_idempotency(tx: &mut Tx, new: &NewDsrRequest) -> Result<Option<Result<Submitted>>> {
    let Some(key) = &new.idempotency_hash else {
        return Ok(None);
    };
    let row = sqlx::query("SELECT id, payload_hash FROM dsr_requests WHERE idempotency_hash = $1")
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|row| {
        let (id, payload): (String, String) = (row.get("id"), row.get("payload_hash"));
        if payload == new.payload_hash {
            Ok(Submitted::Existing(id))
        } else {
            Err(LedgerError::IdempotencyConflict)
        }
    }))
}

/// What a submit writes: the request, its tasks, its recipients' deliveries, its `submitted`
/// event.
fn request_rows(new: &NewDsrRequest) -> sqlx::Result<Rows> {
    let now = to_millis(new.created_at);
    let mut rows = Rows::default();
    rows.add(
        "dsr_requests",
        &[
            "id",
            "tenant_id",
            "kind",
            "status",
            "regime",
            "requested_by",
            "actor",
            "idempotency_hash",
            "payload_hash",
            "subject_tag",
            "subject_json",
            "created_at",
            "due_at",
            "trace_context",
        ],
        vec![vec![
            Value::from(&new.id),
            Value::from(&new.tenant_id),
            new.kind.as_str().into(),
            "pending".into(),
            new.regime.as_str().into(),
            Value::from(&new.requested_by),
            Value::from(&new.actor),
            Value::from(&new.idempotency_hash),
            Value::from(&new.payload_hash),
            Value::from(&new.subject_tag),
            Value::from(&new.subject_json),
            now.into(),
            to_millis(new.due_at).into(),
            Value::from(&new.trace_context),
        ]],
    );
    // A request has a handful of tasks: one per store, and an archive.
    let first_stage = new.stores.iter().map(|(_, stage)| *stage).min().unwrap_or(0);
    let tasks = new
        .stores
        .iter()
        .enumerate()
        .map(|(position, (store, stage))| {
            vec![
                format!("{}:{store}", new.id).as_str().into(),
                Value::from(&new.id),
                Value::from(store),
                (position as i64).into(),
                (*stage as i64).into(),
                "pending".into(),
                (new.attempt_limit as i64).into(),
                (if *stage == first_stage { now } else { BLOCKED }).into(),
            ]
        })
        .collect();
    rows.add(
        "dsr_tasks",
        &["id", "request_id", "store", "position", "stage", "state", "attempt_limit", "next_run_at"],
        tasks,
    );
    super::deliveries::add_rows(&mut rows, &new.id, &new.tenant_id, &new.deliveries);
    let mut event = NewEvent::request(&new.id, &new.tenant_id, "submitted")
        .actor(&new.actor)
        .subject_tag(&new.subject_tag)
        .subject_tags(&new.subject_tags);
    if let Some(d) = &new.detail {
        event = event.detail(d);
    }
    super::journal::add_rows(&mut rows, &[event], new.created_at)?;
    Ok(rows)
}

async fn status_for_update(tx: &mut Tx, id: &str) -> Result<(String, RequestStatus)> {
    let row = sqlx::query("SELECT tenant_id, status FROM dsr_requests WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(LedgerError::NotFound)?;
    Ok((row.try_get("tenant_id")?, decode_enum(row.try_get("status")?, RequestStatus::from_db)?))
}

impl Ledger {
    /// Extends a request's deadline once, as the law allows (`extended_due_at`: GDPR two more
    /// months, CCPA 45 more days), and records a `deadline_extended` event with both dates. The
    /// reason is kept with the request, not in the event (it is free text). A second extension,
    /// or one of a request that has ended, is refused.
    pub async fn extend_deadline(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_chained().await?;
        let row = sqlx::query(
            "SELECT tenant_id, status, regime, due_at, deadline_extended FROM dsr_requests WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(LedgerError::NotFound)?;
        let tenant: String = row.try_get("tenant_id")?;
        let status = decode_enum(row.try_get("status")?, RequestStatus::from_db)?;
        let regime = decode_enum(row.try_get("regime")?, Regime::from_db)?;
        let due = from_millis(row.try_get("due_at")?);
        if row.try_get::<i64, _>("deadline_extended")? != 0 {
            return Err(LedgerError::FailedPrecondition(
                "the deadline of this request has already been extended; the law allows one extension".into(),
            ));
        }
        if status.is_terminal() {
            return Err(LedgerError::FailedPrecondition(format!(
                "the request has already ended ({status}); there is no deadline left to extend"
            )));
        }
        let extended = crate::domain::extended_due_at(regime, due);
        sqlx::query(
            "UPDATE dsr_requests SET due_at = $1, deadline_extended = 1, extension_reason = $2, version = version + 1 \
             WHERE id = $3",
        )
        .bind(to_millis(extended))
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let detail = format!("due {} -> {} ({regime})", due.to_rfc3339(), extended.to_rfc3339());
        NewEvent::request(id, &tenant, "deadline_extended")
            .actor(actor)
            .detail(&detail)
            .append(&mut tx, now)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A request's row and its tasks' in one statement (a `GetRequest`, a watcher's re-read): the
/// request's columns and the tasks' share no name, so each joined row holds one task beside the
/// request's columns.
async fn read_with_tasks(conn: &mut sqlx::AnyConnection, id: &str) -> Result<(RequestRecord, WithTasks)> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let columns = |prefix: &str, list: &str| {
            list.split(", ").map(|c| format!("{prefix}.{c}")).collect::<Vec<_>>().join(", ")
        };
        format!(
            "SELECT {}, {}, CAST(CASE WHEN EXISTS (SELECT 1 FROM dsr_deliveries d WHERE d.request_id = r.id) \
               THEN 1 ELSE 0 END AS BIGINT) AS has_recipients \
             FROM dsr_requests r LEFT JOIN dsr_tasks t ON t.request_id = r.id \
             WHERE r.id = $1 ORDER BY t.position",
            columns("r", REQUEST_COLUMNS),
            columns("t", TASK_COLUMNS)
        )
    });
    let rows = sqlx::query(sql).bind(id).fetch_all(&mut *conn).await?;
    let first = rows.first().ok_or(LedgerError::NotFound)?;
    let rec = request_from_row(first)?;
    let mut tasks = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<String>, _>("store")?.is_some() {
            tasks.push(TaskRecord::from_row(row)?);
        }
    }
    Ok((rec, WithTasks { tasks, has_recipients: first.try_get::<i64, _>("has_recipients")? == 1 }))
}

/// What `read_with_tasks` read beside the request: its tasks, and whether it has recipients
/// (most requests of most deployments have none: their re-reads skip that statement).
struct WithTasks {
    tasks: Vec<TaskRecord>,
    has_recipients: bool,
}

/// Adds a request's tasks (read already) as its outcomes, an export's archive, and its
/// recipients' deliveries when it has any. The `archive` task of an export is not a store: it
/// shows only when it failed, so that a FAILED export says why.
async fn fill_with(conn: &mut sqlx::AnyConnection, rec: &mut RequestRecord, read: WithTasks) -> Result<()> {
    rec.outcomes = read.tasks;
    rec.outcomes.retain(|t| t.store != ARCHIVE_TASK || t.state == OutcomeState::Failed);
    if rec.kind == RequestKind::Export {
        rec.export = super::exports::export_on(&mut *conn, &rec.id).await?;
    }
    if read.has_recipients {
        rec.recipients = super::deliveries::deliveries_on(conn, &rec.id).await?;
    }
    Ok(())
}

/// Re-derives a request's status from its tasks, bumps its version, and on a terminal status
/// stamps `completed_at`, appends the closing event and — once nothing can run any more — drops
/// the subject's identifiers (a FAILED request keeps them for RetryRequest).
pub(super) async fn refresh_status(
    tx: &mut Tx,
    id: &str,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<RequestStatus> {
    Ok(refresh_status_after(tx, id, tenant, &[], now).await?.status)
}

/// A request's status as `refresh_status_after` re-derived it, and whether that made tasks due
/// (a stage ended, so the next one may run now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refreshed {
    pub status: RequestStatus,
    pub unblocked: bool,
}

/// `refresh_status`, after appending `events` (the tasks' own, which come before the request's
/// closing event). On Postgres they go in the statement that locks the request's row: one round
/// trip for both.
pub(super) async fn refresh_status_after(
    tx: &mut Tx,
    id: &str,
    tenant: &str,
    events: &[NewEvent<'_>],
    now: DateTime<Utc>,
) -> Result<Refreshed> {
    // Two tasks of one request ending at once must not both miss the other's end (READ COMMITTED
    // write skew: neither would unblock the next stage or complete the request; the deletion
    // benchmark caught one such request in a thousand). Lock the request row first, in a
    // statement of its own: the tasks are read by the next one, whose snapshot is taken once
    // the lock is held. SQLite's single writer already serialises these transactions.
    //
    // On Postgres the lock is an `UPDATE` of the request's version (watchers re-read on a new
    // version; every caller changed something they show), which returns the status the request
    // had: a task's end that leaves it unchanged (most ends mid-stage) then needs no status
    // `UPDATE` below, a round trip less.
    let postgres = tx.backend_name() == "PostgreSQL";
    let before: Option<String> = if postgres {
        let mut rows = Rows::default();
        super::journal::add_rows(&mut rows, events, now)?;
        let (with, values) = rows.with_clause(2);
        let lock =
            format!("{with}UPDATE dsr_requests SET version = version + 1 WHERE id = $1 RETURNING status");
        let row = Rows::bind_values(sqlx::query(&lock).bind(id), values).fetch_optional(&mut **tx).await?;
        row.map(|r| r.try_get("status")).transpose()?
    } else {
        NewEvent::append_all(events, tx, now).await?;
        None
    };
    refresh_status_locked(tx, id, tenant, before.as_deref(), now).await
}

/// The rest of `refresh_status_after`, once the request's row is locked (on Postgres) and the
/// events appended: `before` is the status the lock read (`None`: not read, so written anyway).
pub(super) async fn refresh_status_locked(
    tx: &mut Tx,
    id: &str,
    tenant: &str,
    before: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Refreshed> {
    let postgres = tx.backend_name() == "PostgreSQL";
    // With them, whether the request has recipients at all (rows made at submit): a request
    // without any needs no statement of `deliveries::settle`, which would change nothing.
    let rows = sqlx::query(
        "SELECT stage, state, attempt, hold_id, next_run_at, \
           CAST(CASE WHEN EXISTS (SELECT 1 FROM dsr_deliveries d WHERE d.request_id = $1) THEN 1 ELSE 0 END AS BIGINT) \
             AS has_recipients \
         FROM dsr_tasks WHERE request_id = $1",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    let has_recipients = match rows.first() {
        Some(r) => r.try_get::<i64, _>("has_recipients")? == 1,
        None => true,
    };
    // A store kept by a litigation hold runs again when the hold is released, and needs the
    // subject's identifiers then: they stay until it has. Until then the request is not done
    // (`derive_status_under_holds`): it stays IN_PROGRESS, and the deadline gauges count it
    // as paused.
    let held = rows.iter().any(|r| r.try_get::<Option<String>, _>("hold_id").ok().flatten().is_some());
    let mut tasks = Vec::with_capacity(rows.len());
    for r in &rows {
        tasks.push((
            r.try_get::<i64, _>("stage")?,
            decode_enum(r.try_get("state")?, OutcomeState::from_db)?,
            r.try_get::<i64, _>("attempt")? as u32,
            r.try_get::<i64, _>("next_run_at")? == BLOCKED,
        ));
    }
    // A later stage starts only once every earlier stage has succeeded: one that FAILED (or waits
    // to retry) keeps it blocked, so nothing runs on a request whose earlier step is undone.
    // Decided here from the rows just read (under the request's lock), so the statement that
    // makes them due runs only when a stage has just ended, not at every task's end.
    let succeeded = |state: OutcomeState| {
        matches!(state, OutcomeState::Done | OutcomeState::Retained | OutcomeState::Skipped)
    };
    let unblocked: Vec<usize> = (0..tasks.len())
        .filter(|&i| {
            let (stage, state, _, blocked) = tasks[i];
            state == OutcomeState::Pending && blocked && tasks.iter().all(|e| e.0 >= stage || succeeded(e.1))
        })
        .collect();
    let made_due = !unblocked.is_empty();
    if made_due {
        sqlx::query(
            "UPDATE dsr_tasks SET next_run_at = $1 WHERE request_id = $2 AND state = 'pending' AND next_run_at = $3 \
             AND NOT EXISTS (SELECT 1 FROM dsr_tasks e WHERE e.request_id = $2 AND e.stage < dsr_tasks.stage \
                             AND e.state NOT IN ('done', 'retained', 'skipped'))",
        )
        .bind(to_millis(now))
        .bind(id)
        .bind(BLOCKED)
        .execute(&mut **tx)
        .await?;
        for i in unblocked {
            tasks[i].3 = false;
        }
    }
    // Stores blocked behind a stage that ended unsuccessfully cannot run until a retry: they stay
    // PENDING, and the request ends FAILED (or CANCELLED) without them.
    let stopped_at = tasks
        .iter()
        .filter(|t| matches!(t.1, OutcomeState::Failed | OutcomeState::Cancelled))
        .map(|t| t.0)
        .min();
    let outcomes: Vec<(OutcomeState, u32)> = tasks
        .iter()
        .filter(|(stage, state, _, blocked)| {
            !(*state == OutcomeState::Pending && *blocked && stopped_at.is_some_and(|s| s < *stage))
        })
        .map(|(_, state, attempt, _)| (*state, *attempt))
        .collect();
    // Recipients (Art. 19): stores that succeeded arm the outbox here, in this transaction, and
    // the request completes only once every recipient has acknowledged.
    let derived = derive_status_under_holds(outcomes, held);
    let status =
        if has_recipients { super::deliveries::settle(tx, id, derived, now).await? } else { derived };
    let terminal = status.is_terminal();
    // Every caller changed a task of a request that was still open (finish, fail, cancel) or
    // reopened a failed one (retry), so a terminal status here is always a new one, and gets its
    // event: on Postgres in the same statement as the status (a `WITH` of the `UPDATE`).
    if !terminal && before == Some(status.as_str()) {
        // Unchanged and open: `completed_at` is already empty and the subject kept.
        return Ok(Refreshed { status, unblocked: made_due });
    }
    let closing = [NewEvent::request(id, tenant, status.as_str())];
    let closing: &[NewEvent] = if terminal { &closing } else { &[] };
    let mut rows = Rows::default();
    if postgres {
        super::journal::add_rows(&mut rows, closing, now)?;
    }
    let (with, values) = rows.with_clause(6);
    let update = format!(
        "{with}UPDATE dsr_requests SET status = $1, version = version + 1, \
         completed_at = CASE WHEN $2 = 1 THEN $3 ELSE NULL END, \
         subject_json = CASE WHEN $4 = 1 THEN NULL ELSE subject_json END \
         WHERE id = $5"
    );
    let q = sqlx::query(&update)
        .bind(status.as_str())
        .bind(terminal as i64)
        .bind(to_millis(now))
        .bind((matches!(status, RequestStatus::Completed | RequestStatus::Cancelled) && !held) as i64)
        .bind(id);
    Rows::bind_values(q, values).execute(&mut **tx).await?;
    if !postgres {
        NewEvent::append_all(closing, tx, now).await?;
    }
    Ok(Refreshed { status, unblocked: made_due })
}

/// The SQL of a `list` page and its parameters. Each filter has an index that gives its rows in
/// the page's order (newest first), so a page reads about as many rows as it returns however
/// many requests the ledger keeps (`dsr_requests_status_created`, `…_kind_created`,
/// `…_open_created`, migration `20261203000003`).
fn list_query(filter: &ListFilter, page: &Page) -> (String, Vec<Bind>) {
    let mut sql = format!("SELECT {REQUEST_COLUMNS} FROM dsr_requests WHERE 1=1");

    let mut binds: Vec<Bind> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, b: Bind| {
        binds.push(b);
        sql.push_str(&clause.replace("$?", &format!("${}", binds.len())));
    };
    if let Some(t) = &filter.tenant_id {
        push(&mut sql, " AND tenant_id = $?", Bind::Text(t.clone()));
    }
    if let Some(s) = filter.status {
        push(&mut sql, " AND status = $?", Bind::Text(s.as_str().into()));
    }
    if let Some(k) = filter.kind {
        push(&mut sql, " AND kind = $?", Bind::Text(k.as_str().into()));
    }
    // A request kept by a litigation hold is paused: neither overdue nor due (as the
    // deadline gauges count it).
    const NOT_HELD: &str = " AND NOT EXISTS (SELECT 1 FROM dsr_tasks t \
                                WHERE t.request_id = dsr_requests.id AND t.hold_id IS NOT NULL)";
    if filter.overdue_at.is_some() || filter.due_before.is_some() {
        sql.push_str(NOT_HELD);
    }
    if let Some(at) = filter.overdue_at {
        sql.push_str(&format!(" AND status IN {OPEN_STATUSES}"));
        push(&mut sql, " AND due_at < $?", Bind::Int(to_millis(at)));
    }
    if let Some(before) = filter.due_before {
        sql.push_str(&format!(" AND status IN {OPEN_STATUSES}"));
        push(&mut sql, " AND due_at <= $?", Bind::Int(to_millis(before)));
    }
    if let Some((created, id)) = &page.after {
        push(&mut sql, " AND (created_at < $?", Bind::Int(*created));
        push(&mut sql, " OR (created_at = $?", Bind::Int(*created));
        push(&mut sql, " AND id < $?))", Bind::Text(id.clone()));
    }
    sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT {}", page.size + 1));
    (sql, binds)
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s),
            Bind::Int(i) => q.bind(i),
        };
    }
    q
}

impl Ledger {
    /// The database's plan for a `list` page, one line per step (`EXPLAIN QUERY PLAN` on
    /// SQLite, `EXPLAIN` on Postgres): for tests that check a page reads its index.
    pub async fn explain_list(&self, filter: &ListFilter, page: &Page) -> Result<String> {
        let (sql, binds) = list_query(filter, page);
        let (explain, column) = match self.db.backend() {
            Backend::Sqlite => ("EXPLAIN QUERY PLAN", 3),
            Backend::Postgres => ("EXPLAIN", 0),
        };
        let sql = format!("{explain} {sql}");
        let rows = bind_all(sqlx::query(&sql), binds).fetch_all(self.db.pool()).await?;
        Ok(rows.iter().map(|r| r.try_get::<String, _>(column)).collect::<sqlx::Result<Vec<_>>>()?.join("\n"))
    }
}
