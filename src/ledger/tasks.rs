//! Tasks: claimed under a lease, renewed while a worker runs them, and ended by a write fenced
//! on the attempt number.
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{
    decode_enum,
    events::NewEvent,
    holds::{
        litigation_hold_in, litigation_hold_select, record_legal_hold, NewLegalHold, LITIGATION_HOLD_BASIS,
    },
    journal::{event_values, JOURNAL_COLUMNS},
    requests::{refresh_status, refresh_status_after, refresh_status_locked},
    Ledger, Result,
};
use crate::{
    clock::to_millis,
    db::{
        rows::{Rows, Value},
        Backend, Tx,
    },
    domain::{OutcomeState, RequestKind, RequestStatus},
};

/// A task this worker now holds, with what it needs to run.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub task_id: String,
    pub request_id: String,
    pub tenant_id: String,
    pub store: String,
    pub kind: RequestKind,
    /// This worker's attempt; every write about the task is fenced on it.
    pub attempt: u32,
    pub attempt_limit: u32,
    /// The identifiers to act on, and the corrections of a rectification (JSON of
    /// `SubjectRecord`); `None` if the request has ended.
    pub subject_json: Option<String>,
    /// Records an earlier attempt found before it erased (it may have died before reporting).
    pub found_checkpoint: Option<u64>,
    pub trace_context: Option<String>,
}

/// What `Ledger::finish_all` did: which of the tasks it ended (the others are no longer ours),
/// the request's status after them (`None` when it ended none), and whether their ends made
/// tasks due now (the next stage, or a task whose hold was released meanwhile): only then is
/// there new work to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedTogether {
    pub applied: Vec<bool>,
    pub status: Option<RequestStatus>,
    pub made_due: bool,
}

/// What the ledger says right before an erase (`Ledger::ready_to_erase`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyToErase {
    /// The records of the person the store held before the first attempt changed anything.
    pub first_count: u64,
    /// The active litigation hold that covers the subject, if any.
    pub litigation_hold: Option<String>,
}

/// What a store reported for a task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub state: OutcomeState,
    pub found: u64,
    pub affected: u64,
    pub retention_basis: Option<String>,
    pub retained_until: Option<DateTime<Utc>>,
    pub verified: bool,
    /// Records that name the subject but not them alone: left, and counted.
    pub unattributed: u64,
    pub detail: Option<String>,
    /// The archive an export's `archive` task wrote: recorded with the task's end.
    pub export: Option<super::ExportRecord>,
    /// Why the records stay, when a hold keeps them (issue 9).
    pub hold: Option<TaskHold>,
    /// An erase's result: the person's identifier tags. When the end is recorded the ledger asks
    /// whether a standing litigation hold covers them — one placed while the store erased came
    /// too late for what it erased, and the outcome says so (`LATE_HOLD_DETAIL`). On Postgres
    /// the question rides in the statement that ends the task.
    pub late_hold_tags: Option<Vec<String>>,
}

/// The detail of an erase's outcome when a litigation hold was placed while the store erased.
pub const LATE_HOLD_DETAIL: &str = "done: a litigation hold placed during the erase came too late";

/// The retention basis of such an outcome, before and after the hold's id.
fn late_hold_basis(found: u64) -> (String, String) {
    (
        format!("{LITIGATION_HOLD_BASIS}: hold "),
        format!(" was placed while this store erased; the {found} record(s) it held were already erased"),
    )
}

/// `result` as recorded when `hold` was placed while the store erased.
fn too_late(result: &TaskResult, hold: &str) -> TaskResult {
    let (before, after) = late_hold_basis(result.found);
    TaskResult {
        retention_basis: Some(format!("{before}{hold}{after}")),
        detail: Some(LATE_HOLD_DETAIL.to_owned()),
        late_hold_tags: None,
        ..result.clone()
    }
}

/// The hold behind a RETAINED outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskHold {
    /// A litigation hold (its id) keeps the subject's records: the task runs again when it is
    /// released. If it was released before this result is recorded, the task goes back to the
    /// queue at once instead.
    Litigation(String),
    /// A legal obligation keeps these records until `retained_until`; recorded as a hold so the
    /// retention sweep can erase them when it ends and complete the outcome.
    LegalObligation(NewLegalHold),
}

/// Whether a fenced write took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// Applied; the request's status after it.
    Applied(RequestStatus),
    /// A newer attempt owns the task (our lease expired): nothing was written.
    Stale,
}

impl Ledger {
    /// Claims up to `limit` due tasks of one store (see `claim_due`), after ending FAILED the
    /// store's tasks whose lease expired at their last attempt (`fail_exhausted`).
    pub async fn claim(
        &self,
        store: &str,
        limit: usize,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTask>> {
        self.fail_exhausted(&[store], now).await?;
        self.claim_due(&[(store, limit)], limit, owner, lease, now).await
    }

    /// Claims due tasks of several stores, up to a limit each and `room` in all (taken in queue
    /// order), in one transaction: pending ones whose time has come, and running ones whose
    /// lease expired (their worker died) below their attempt limit. Tasks of a later stage are
    /// due only once every earlier stage of their request has ended (see `BLOCKED`), so each
    /// store's part is an index range scan whatever the backlog.
    ///
    /// One `UPDATE` claims for every queue: each store's due tasks are a sub-select of their
    /// own (its limit, `SKIP LOCKED` on Postgres), the sub-selects are joined by `UNION ALL`
    /// under an outer `LIMIT room`, which Postgres applies lazily in queue order (a later
    /// store's part is not even scanned once `room` is reached). An engine round with nothing
    /// due is then three round trips (begin, claim, commit), not one statement per store. The
    /// requests the tasks belong to are read, moved to IN_PROGRESS and given their
    /// `task_started` events in one statement each, not one per task.
    ///
    /// Tasks at their attempt limit whose lease expired are not claimed (`claim` and the
    /// engine end them with `fail_exhausted`).
    pub async fn claim_due(
        &self,
        queues: &[(&str, usize)],
        room: usize,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTask>> {
        self.claim_queues(queues, room, owner, lease, now, true).await
    }

    /// `claim_due` without the running tasks whose lease expired: only pending ones. A lease
    /// expires when a worker died, which is rare; the engine looks for those once a second
    /// (`claim_due`), and claims with this in between — half the scans of a claim (one per
    /// queue, not two), on the engine's most frequent statement.
    pub async fn claim_pending(
        &self,
        queues: &[(&str, usize)],
        room: usize,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTask>> {
        self.claim_queues(queues, room, owner, lease, now, false).await
    }

    async fn claim_queues(
        &self,
        queues: &[(&str, usize)],
        room: usize,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
        expired: bool,
    ) -> Result<Vec<ClaimedTask>> {
        let queues: Vec<(&str, usize)> = queues.iter().copied().filter(|(_, n)| *n > 0).collect();
        if queues.is_empty() || room == 0 {
            return Ok(Vec::new());
        }
        let lock = match self.db.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // $1 owner, $2 lease end, $3 now, $4 room; then each queue's store and limit. A queue's
        // tasks whose worker died (lease expired) come first, then its due ones in due order:
        // two scans, each stopping at the limit, so that the due ones are read in index order
        // (`dsr_tasks_due`). One scan of both with an `OR` read every due task of the store
        // and sorted them at each claim: with a backlog of a thousand requests, 1.4–2.5 ms a
        // claim, the largest database cost of `dsr bench deletions`.
        let parts: Vec<String> = (0..queues.len())
            .map(|i| {
                let (store, limit) = (5 + 2 * i, 6 + 2 * i);
                if !expired {
                    return format!(
                        "SELECT id FROM (SELECT t.id FROM dsr_tasks t WHERE t.store = ${store} AND t.state = 'pending' \
                         AND t.next_run_at <= $3 ORDER BY t.next_run_at LIMIT ${limit} {lock}) q{i}"
                    );
                }
                format!(
                    "SELECT id FROM (SELECT id FROM (\
                       SELECT id FROM (SELECT t.id FROM dsr_tasks t WHERE t.store = ${store} AND t.state = 'running' \
                         AND t.lease_until < $3 AND t.attempt < t.attempt_limit \
                         ORDER BY t.lease_until LIMIT ${limit} {lock}) expired{i} \
                       UNION ALL \
                       SELECT id FROM (SELECT t.id FROM dsr_tasks t WHERE t.store = ${store} AND t.state = 'pending' \
                         AND t.next_run_at <= $3 ORDER BY t.next_run_at LIMIT ${limit} {lock}) due{i}\
                     ) both{i} LIMIT ${limit}) q{i}"
                )
            })
            .collect();
        let update = format!(
            "UPDATE dsr_tasks SET state = 'running', attempt = attempt + 1, lease_owner = $1, lease_until = $2, \
             started_at = COALESCE(started_at, $3) \
             WHERE id IN (SELECT id FROM ({}) due LIMIT $4) \
             RETURNING id, request_id, store, attempt, attempt_limit, found_checkpoint",
            parts.join(" UNION ALL ")
        );
        let now_ms = to_millis(now);
        let binds = ClaimBinds {
            owner,
            lease_until: now_ms + lease.as_millis() as i64,
            now: now_ms,
            room,
            queues: &queues,
        };
        if self.db.backend() == Backend::Postgres {
            // One statement, one round trip, claimed or not (a transaction is begin, claim, commit
            // and more).
            let sql = claim_statement(&update);
            let rows = binds.bind(sqlx::query(&sql)).fetch_all(self.db.pool()).await?;
            return rows.iter().map(|r| claimed_task(r, r)).collect::<sqlx::Result<_>>().map_err(Into::into);
        }
        let q = binds.bind(sqlx::query(&update));
        let mut tx = self.begin_chained().await?;
        let rows = q.fetch_all(&mut *tx).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut request_ids: Vec<String> =
            rows.iter().map(|r| r.try_get("request_id")).collect::<sqlx::Result<_>>()?;
        request_ids.sort();
        request_ids.dedup();
        let list = super::holds::params(1, request_ids.len());
        let sql = format!(
            "SELECT id, tenant_id, kind, subject_json, trace_context FROM dsr_requests WHERE id IN ({list})"
        );
        let mut q = sqlx::query(&sql);
        for id in &request_ids {
            q = q.bind(id);
        }
        let requests: std::collections::HashMap<String, sqlx::any::AnyRow> = q
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get::<String, _>("id")?, r)))
            .collect::<sqlx::Result<_>>()?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let request_id: String = row.try_get("request_id")?;
            let req = requests.get(&request_id).ok_or(sqlx::Error::RowNotFound)?;
            claimed.push(claimed_task(&row, req)?);
        }
        let events: Vec<NewEvent> = claimed
            .iter()
            .map(|t| {
                NewEvent::request(&t.request_id, &t.tenant_id, "task_started").store(&t.store, t.attempt)
            })
            .collect();
        NewEvent::append_all(&events, &mut tx, now).await?;
        // A claim cannot end a request: the status only moves from PENDING to IN_PROGRESS.
        let sql = format!(
            "UPDATE dsr_requests SET status = 'in_progress', version = version + 1 \
             WHERE id IN ({list}) AND status IN ('pending', 'in_progress')"
        );
        let mut q = sqlx::query(&sql);
        for id in &request_ids {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// `fail_exhausted`'s look-up: $1 now, then `stores` store names. It reads the running
    /// tasks only (`dsr_tasks_leased`), however many finished ones the ledger keeps.
    pub fn exhausted_tasks_question(stores: usize) -> String {
        format!(
            "SELECT t.id, t.request_id, t.store, t.attempt FROM dsr_tasks t WHERE t.store IN ({}) \
             AND t.state = 'running' AND t.lease_until < $1 AND t.attempt >= t.attempt_limit",
            super::holds::params(2, stores)
        )
    }

    /// Ends FAILED the tasks of `stores` whose lease expired on their last allowed attempt, each
    /// with its `outcome` event and its request's new status. Not claimed again: their work
    /// killed (or hung) every worker that took them, and claiming them once more would
    /// crash-loop the fleet; RetryRequest gives them a new budget once fixed.
    pub async fn fail_exhausted(&self, stores: &[&str], now: DateTime<Utc>) -> Result<()> {
        let now_ms = to_millis(now);
        let sql = Self::exhausted_tasks_question(stores.len());
        let mut q = sqlx::query_as::<_, (String, String, String, i64)>(&sql).bind(now_ms);
        for store in stores {
            q = q.bind(*store);
        }
        let exhausted = q.fetch_all(self.db.pool()).await?;
        for (task_id, request_id, store, attempt) in exhausted {
            let store = store.as_str();
            let mut tx = self.begin_chained().await?;
            let error = format!(
                "the worker running attempt {attempt} stopped answering (its lease expired) and the attempt limit is reached: \
                 not retried automatically, since the work may be what stops its workers; RetryRequest runs it again"
            );
            let n = sqlx::query(
                "UPDATE dsr_tasks SET state = 'failed', last_error = $1, finished_at = $2, lease_owner = NULL, lease_until = NULL \
                 WHERE id = $3 AND attempt = $4 AND state = 'running' AND lease_until < $2",
            )
            .bind(&error)
            .bind(now_ms)
            .bind(&task_id)
            .bind(attempt)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                continue; // renewed or taken meanwhile
            }
            let tenant: String = sqlx::query_scalar("SELECT tenant_id FROM dsr_requests WHERE id = $1")
                .bind(&request_id)
                .fetch_one(&mut *tx)
                .await?;
            NewEvent::request(&request_id, &tenant, "outcome")
                .store(store, attempt as u32)
                .detail("failed: lease expired at the attempt limit")
                .append(&mut tx, now)
                .await?;
            refresh_status(&mut tx, &request_id, &tenant, now).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Renews our lease; `false` when the task is no longer ours.
    pub async fn renew_lease(&self, task: &ClaimedTask, lease: Duration, now: DateTime<Utc>) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE dsr_tasks SET lease_until = $1 WHERE id = $2 AND attempt = $3 AND state = 'running'",
        )
        .bind(to_millis(now) + lease.as_millis() as i64)
        .bind(&task.task_id)
        .bind(task.attempt as i64)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Records how many records the store held before this attempt changed anything, so an
    /// attempt that runs after a crash still reports what the first one found.
    pub async fn checkpoint_found(&self, task: &ClaimedTask, found: u64) -> Result<Fenced> {
        let n = sqlx::query(
            "UPDATE dsr_tasks SET found_checkpoint = $1 \
             WHERE id = $2 AND attempt = $3 AND state = 'running' AND found_checkpoint IS NULL",
        )
        .bind(found as i64)
        .bind(&task.task_id)
        .bind(task.attempt as i64)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(if n == 1 { Fenced::Applied(RequestStatus::InProgress) } else { Fenced::Stale })
    }

    /// Right before an erase, in one statement: records how many records the store holds now
    /// (as `checkpoint_found` does; an earlier attempt's count is kept), and reads whether an
    /// active litigation hold covers any of the subject's identifier tags. `None` when the task
    /// is no longer ours. One round trip instead of two on every erase.
    pub async fn ready_to_erase(
        &self,
        task: &ClaimedTask,
        found: u64,
        tags: &[String],
    ) -> Result<Option<ReadyToErase>> {
        // $1 count, $2 task, $3 attempt, $4 tenant, then the tags.
        let hold = if tags.is_empty() {
            "CAST(NULL AS TEXT)".to_owned()
        } else {
            format!("({})", super::holds::litigation_hold_select(4, 5, tags.len()))
        };
        let sql = format!(
            "UPDATE dsr_tasks SET found_checkpoint = COALESCE(found_checkpoint, $1) \
             WHERE id = $2 AND attempt = $3 AND state = 'running' \
             RETURNING found_checkpoint, {hold} AS hold_id"
        );
        let q = sqlx::query(&sql).bind(found as i64).bind(&task.task_id).bind(task.attempt as i64);
        let q = tags.iter().fold(q.bind(&task.tenant_id), |q, t| q.bind(t.as_str()));
        let Some(row) = q.fetch_optional(self.db.pool()).await? else { return Ok(None) };
        Ok(Some(ReadyToErase {
            first_count: row.try_get::<i64, _>("found_checkpoint")? as u64,
            litigation_hold: row.try_get("hold_id")?,
        }))
    }

    /// Ends tasks of one request in one transaction: each with the store's result and its
    /// `outcome` event, fenced on its own attempt; then the request's status re-derived once. Tasks of one request that
    /// end at about the same time share the request's row lock, so ending them together saves
    /// them queueing for it one after the other, and saves a commit each (`engine::finisher`).
    pub async fn finish_all(
        &self,
        tasks: &[(&ClaimedTask, &TaskResult)],
        now: DateTime<Utc>,
    ) -> Result<FinishedTogether> {
        let Some((first, _)) = tasks.first() else {
            return Ok(FinishedTogether { applied: Vec::new(), status: None, made_due: false });
        };
        // One request per transaction: its row is the only request row locked, so two of these
        // never wait for each other (several, locked in different orders, could).
        if tasks.iter().any(|(t, _)| t.request_id != first.request_id) {
            return Err(super::LedgerError::FailedPrecondition(
                "finish_all ends the tasks of one request at a time".into(),
            ));
        }
        let mut tx = self.begin_chained().await?;
        let nothing = |applied| Ok(FinishedTogether { applied, status: None, made_due: false });
        let (applied, requeued, refreshed) = if self.db.backend() == Backend::Postgres
            && tasks.iter().all(|(_, r)| r.hold.is_none() && r.export.is_none())
        {
            // Ends with nothing to record beside the tasks' rows (no hold, no archive): the
            // rows, their events and the request's lock in one statement.
            let (applied, before) = end_and_lock(&mut tx, tasks, now).await?;
            if !applied.contains(&true) {
                // Nothing written (rolled back with the transaction).
                return nothing(applied);
            }
            let refreshed =
                refresh_status_locked(&mut tx, &first.request_id, &first.tenant_id, before.as_deref(), now)
                    .await?;
            (applied, false, refreshed)
        } else {
            let mut applied = Vec::with_capacity(tasks.len());
            let mut events = Vec::with_capacity(tasks.len());
            let mut requeued = false;
            for (task, result) in tasks {
                let ended = end_task_in(&mut tx, task, result, now).await?;
                applied.push(!matches!(ended, TaskEnded::NotOurs));
                requeued |= matches!(ended, TaskEnded::Requeued);
                events.extend(match ended {
                    TaskEnded::Ended(event) => Some(event),
                    TaskEnded::NotOurs | TaskEnded::Requeued => None,
                });
            }
            if !applied.contains(&true) {
                // Nothing written (no task was ours, so no event either).
                return nothing(applied);
            }
            // The batch's `outcome` events in one statement, in task order, before the status.
            let refreshed =
                refresh_status_after(&mut tx, &first.request_id, &first.tenant_id, &events, now).await?;
            (applied, requeued, refreshed)
        };
        tx.commit().await?;
        Ok(FinishedTogether {
            applied,
            status: Some(refreshed.status),
            made_due: refreshed.unblocked || requeued,
        })
    }

    /// A failed attempt: back to the queue at `next_run_at`, or FAILED when `give_up`.
    pub async fn fail_attempt(
        &self,
        task: &ClaimedTask,
        error: &str,
        next_run_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Fenced> {
        let mut tx = self.begin_chained().await?;
        let (state, action) = match next_run_at {
            Some(_) => ("pending", "retry_scheduled"),
            None => ("failed", "outcome"),
        };
        let n = sqlx::query(
            "UPDATE dsr_tasks SET state = $1, last_error = $2, next_run_at = COALESCE($3, next_run_at), \
             finished_at = CASE WHEN $1 = 'failed' THEN $4 ELSE NULL END, lease_owner = NULL, lease_until = NULL \
             WHERE id = $5 AND attempt = $6 AND state = 'running'",
        )
        .bind(state)
        .bind(error)
        .bind(next_run_at.map(to_millis))
        .bind(to_millis(now))
        .bind(&task.task_id)
        .bind(task.attempt as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(Fenced::Stale);
        }
        let event = NewEvent::request(&task.request_id, &task.tenant_id, action)
            .store(&task.store, task.attempt)
            .detail(if next_run_at.is_some() { "transient" } else { "failed" });
        // A failed attempt makes nothing due now (a retry is due later; later stages wait).
        let status =
            refresh_status_after(&mut tx, &task.request_id, &task.tenant_id, &[event], now).await?.status;
        tx.commit().await?;
        Ok(Fenced::Applied(status))
    }

    /// Gives a task back unfinished (shutdown): due at once, for any worker. The attempt that was
    /// cut short does not count against the task's limit; attempt numbers still only grow, so
    /// the fence stays sound.
    pub async fn release(&self, task: &ClaimedTask, now: DateTime<Utc>) -> Result<Fenced> {
        let n = sqlx::query(
            "UPDATE dsr_tasks SET state = 'pending', attempt_limit = attempt_limit + 1, next_run_at = $1, \
             lease_owner = NULL, lease_until = NULL WHERE id = $2 AND attempt = $3 AND state = 'running'",
        )
        .bind(to_millis(now))
        .bind(&task.task_id)
        .bind(task.attempt as i64)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(if n == 1 { Fenced::Applied(RequestStatus::InProgress) } else { Fenced::Stale })
    }
}

/// What `claim_due`'s statement binds: $1 owner, $2 lease end, $3 now, $4 room; then each
/// queue's store and limit.
struct ClaimBinds<'a> {
    owner: &'a str,
    lease_until: i64,
    now: i64,
    room: usize,
    queues: &'a [(&'a str, usize)],
}

impl<'a> ClaimBinds<'a> {
    fn bind(
        &self,
        q: sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments<'a>>,
    ) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments<'a>> {
        let mut q = q.bind(self.owner).bind(self.lease_until).bind(self.now).bind(self.room as i64);
        for (store, limit) in self.queues {
            q = q.bind(*store).bind((*limit).min(self.room) as i64);
        }
        q
    }
}

/// Postgres: `claim_due` in one statement. The claiming `UPDATE` (`update`, binds as
/// `claim_due`'s) is a data-modifying `WITH`; beside it the requests move to IN_PROGRESS and the
/// `task_started` events go to the journal, and the claimed rows come back joined to their
/// requests. All parts see one snapshot: the requests' columns read here are ones the claim
/// does not change. As one statement it is one transaction, as the three-statement version on
/// SQLite is.
fn claim_statement(update: &str) -> String {
    format!(
        "WITH claimed AS ({update}), \
         started AS (UPDATE dsr_requests SET status = 'in_progress', version = version + 1 \
           WHERE id IN (SELECT request_id FROM claimed) AND status IN ('pending', 'in_progress')), \
         logged AS (INSERT INTO dsr_event_journal (at, request_id, tenant_id, store, action, attempt) \
           SELECT $3, c.request_id, r.tenant_id, c.store, 'task_started', c.attempt \
           FROM claimed c JOIN dsr_requests r ON r.id = c.request_id ORDER BY c.request_id, c.store) \
         SELECT c.id, c.request_id, c.store, c.attempt, c.attempt_limit, c.found_checkpoint, \
           r.tenant_id, r.kind, r.subject_json, r.trace_context \
         FROM claimed c JOIN dsr_requests r ON r.id = c.request_id"
    )
}

/// A claimed task from its row and its request's (on Postgres one row holds both).
fn claimed_task(task: &sqlx::any::AnyRow, request: &sqlx::any::AnyRow) -> sqlx::Result<ClaimedTask> {
    Ok(ClaimedTask {
        task_id: task.try_get("id")?,
        request_id: task.try_get("request_id")?,
        tenant_id: request.try_get("tenant_id")?,
        store: task.try_get("store")?,
        kind: decode_enum(request.try_get("kind")?, RequestKind::from_db)?,
        attempt: task.try_get::<i64, _>("attempt")? as u32,
        attempt_limit: task.try_get::<i64, _>("attempt_limit")? as u32,
        subject_json: request.try_get("subject_json")?,
        found_checkpoint: task.try_get::<Option<i64>, _>("found_checkpoint")?.map(|n| n as u64),
        trace_context: request.try_get("trace_context")?,
    })
}

/// How `end_task_in` left a task.
enum TaskEnded<'a> {
    /// A newer attempt owns it: nothing written.
    NotOurs,
    /// Its litigation hold was released meanwhile: due again, no event.
    Requeued,
    /// Ended with the store's result; its `outcome` event is for the caller to append.
    Ended(NewEvent<'a>),
}

/// One task's part of `Ledger::finish_all`, inside its transaction: the task's row and its
/// legal hold, and the `outcome` event to append — not the request's status.
async fn end_task_in<'a>(
    tx: &mut Tx,
    task: &'a ClaimedTask,
    result: &'a TaskResult,
    now: DateTime<Utc>,
) -> Result<TaskEnded<'a>> {
    let litigation = match &result.hold {
        Some(TaskHold::Litigation(id)) => Some(id.as_str()),
        _ => None,
    };
    // The hold was released between the check and now (the release and this transaction are
    // serialised by the chain lock): the task is due again, not kept.
    if let Some(hold) = litigation {
        let active: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM dsr_holds WHERE id = $1 AND ended_at IS NULL")
                .bind(hold)
                .fetch_optional(&mut **tx)
                .await?;
        if active.is_none() {
            let n = sqlx::query(
                "UPDATE dsr_tasks SET state = 'pending', attempt_limit = attempt_limit + 1, next_run_at = $1, \
                 lease_owner = NULL, lease_until = NULL WHERE id = $2 AND attempt = $3 AND state = 'running'",
            )
            .bind(to_millis(now))
            .bind(&task.task_id)
            .bind(task.attempt as i64)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            return Ok(if n == 1 { TaskEnded::Requeued } else { TaskEnded::NotOurs });
        }
    }
    let late = match &result.late_hold_tags {
        Some(tags) => litigation_hold_in(&mut **tx, &task.tenant_id, tags).await?,
        None => None,
    };
    let values = match &late {
        Some(hold) => end_values(task, &too_late(result, hold), litigation, now),
        None => end_values(task, result, litigation, now),
    };
    let sql = end_update(&(1..=values.len()).map(|i| format!("${i}")).collect::<Vec<_>>());
    let n = Rows::bind_values(sqlx::query(&sql), values.iter().collect())
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Ok(TaskEnded::NotOurs);
    }
    if let Some(archive) = &result.export {
        super::exports::upsert_export(tx, archive).await?;
    }
    let event = match late {
        Some(_) => outcome_event(task, result).detail(LATE_HOLD_DETAIL),
        None => outcome_event(task, result),
    };
    if let Some(TaskHold::LegalObligation(hold)) = &result.hold {
        // A first attempt has no earlier hold of its own to replace (attempt numbers only grow).
        let replaces = task.attempt > 1;
        record_legal_hold(
            tx,
            &task.task_id,
            &task.request_id,
            &task.tenant_id,
            &task.store,
            hold,
            replaces,
            now,
        )
        .await?;
    }
    Ok(TaskEnded::Ended(event))
}

/// The `UPDATE` that ends a task with its store's result, fenced on its attempt: `p` names its
/// parameters, in the order of `end_values`.
fn end_update(p: &[String]) -> String {
    format!(
        "UPDATE dsr_tasks SET state = {}, records_found = {}, records_affected = {}, retention_basis = {}, \
         retained_until = {}, verified = {}, finished_at = {}, lease_owner = NULL, lease_until = NULL, \
         hold_id = {}, records_unattributed = {} WHERE id = {} AND attempt = {} AND state = 'running'",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10]
    )
}

/// Where `end_values` puts the retention basis.
const END_BASIS: usize = 3;

/// The values of `end_update`: the result, the litigation hold that keeps the store's records
/// (if any), the time, then the task and its attempt.
fn end_values(
    task: &ClaimedTask,
    result: &TaskResult,
    litigation: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<Value> {
    vec![
        result.state.as_str().into(),
        (result.found as i64).into(),
        (result.affected as i64).into(),
        Value::from(&result.retention_basis), // END_BASIS
        Value::from(result.retained_until.map(to_millis)),
        (result.verified as i64).into(),
        to_millis(now).into(),
        litigation.into(),
        (result.unattributed as i64).into(),
        task.task_id.as_str().into(),
        (task.attempt as i64).into(),
    ]
}

/// The `outcome` event of a task's end.
fn outcome_event<'a>(task: &'a ClaimedTask, result: &'a TaskResult) -> NewEvent<'a> {
    let event = NewEvent::request(&task.request_id, &task.tenant_id, "outcome")
        .store(&task.store, task.attempt)
        .counts(result.found, result.affected)
        .detail(result.state.as_str());
    match &result.detail {
        Some(d) => event.detail(d),
        None => event,
    }
}

/// Postgres: ends `tasks` (all of one request, none with a hold or an archive to record), writes
/// the `outcome` events of those still ours (in task order), and locks the request's row by
/// bumping its version — one statement, where it was a statement per task and one more for the
/// lock. Each task's `UPDATE` is a `WITH` fenced on its attempt, returning its index when it
/// applied; the events' `INSERT` keeps the rows of those indexes. The request is updated only if
/// one applied (`EXISTS`, an init plan: the tasks' rows are written, and locked, before the
/// request's, as when they were statements of their own). Returns which tasks applied and the
/// status the request had (`None`: none applied, and nothing is to be committed).
async fn end_and_lock(
    tx: &mut Tx,
    tasks: &[(&ClaimedTask, &TaskResult)],
    now: DateTime<Utc>,
) -> Result<(Vec<bool>, Option<String>)> {
    let mut binds: Vec<Value> = vec![tasks[0].0.request_id.as_str().into()];
    let param = |binds: &mut Vec<Value>, v: Value| {
        binds.push(v);
        format!("${}", binds.len())
    };
    let mut parts = Vec::with_capacity(2 * tasks.len() + 2);
    // An erase's late-hold question (`TaskResult::late_hold_tags`) as a `WITH` of its own,
    // read by the task's retention basis and its event's detail.
    let mut late_detail = vec![None; tasks.len()];
    for (i, (task, result)) in tasks.iter().enumerate() {
        let mut p: Vec<String> =
            end_values(task, result, None, now).into_iter().map(|v| param(&mut binds, v)).collect();
        if let Some(tags) = result.late_hold_tags.as_deref().filter(|t| !t.is_empty()) {
            binds.push(task.tenant_id.as_str().into());
            let tenant = binds.len();
            binds.extend(tags.iter().map(|t| Value::from(t.as_str())));
            let question = litigation_hold_select(tenant, tenant + 1, tags.len());
            parts.push(format!("late{i} AS ({question})"));
            let (before, after) = late_hold_basis(result.found);
            let (before, after) = (param(&mut binds, (&before).into()), param(&mut binds, (&after).into()));
            p[END_BASIS] = format!(
                "COALESCE((SELECT CAST({before} AS TEXT) || id || CAST({after} AS TEXT) FROM late{i}), {})",
                p[END_BASIS]
            );
            late_detail[i] = Some(param(&mut binds, LATE_HOLD_DETAIL.into()));
        }
        parts.push(format!("t{i} AS ({} RETURNING {i} AS i)", end_update(&p)));
    }
    let applied: Vec<String> = (0..tasks.len()).map(|i| format!("SELECT i FROM t{i}")).collect();
    parts.push(format!("applied AS ({})", applied.join(" UNION ALL ")));
    let events: Vec<NewEvent> = tasks.iter().map(|(t, r)| outcome_event(t, r)).collect();
    let detail_column =
        JOURNAL_COLUMNS.iter().position(|c| *c == "detail").expect("the journal has a detail");
    let rows: Vec<String> = event_values(&events, now)?
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let mut row: Vec<String> = row.into_iter().map(|v| param(&mut binds, v)).collect();
            if let Some(detail) = &late_detail[i] {
                row[detail_column] =
                    format!("COALESCE((SELECT CAST({detail} AS TEXT) FROM late{i}), {})", row[detail_column]);
            }
            format!("({}, {i})", row.join(", "))
        })
        .collect();
    let names: Vec<String> = (0..JOURNAL_COLUMNS.len()).map(|c| format!("c{c}")).collect();
    parts.push(format!(
        "ev AS (INSERT INTO dsr_event_journal ({}) SELECT {} FROM (VALUES {}) AS v({}, i) \
         WHERE v.i IN (SELECT i FROM applied) ORDER BY v.i)",
        JOURNAL_COLUMNS.join(", "),
        names.join(", "),
        rows.join(", "),
        names.join(", ")
    ));
    let sql = format!(
        "WITH {} UPDATE dsr_requests SET version = version + 1 WHERE id = $1 AND EXISTS (SELECT 1 FROM applied) \
         RETURNING status, (SELECT string_agg(CAST(i AS TEXT), ',') FROM applied) AS applied",
        parts.join(", ")
    );
    let row = Rows::bind_values(sqlx::query(&sql), binds.iter().collect()).fetch_optional(&mut **tx).await?;
    let Some(row) = row else { return Ok((vec![false; tasks.len()], None)) };
    let list: String = row.try_get("applied")?;
    let mut applied = vec![false; tasks.len()];
    for i in list.split(',').filter_map(|i| i.parse::<usize>().ok()) {
        if let Some(a) = applied.get_mut(i) {
            *a = true;
        }
    }
    Ok((applied, Some(row.try_get("status")?)))
}
