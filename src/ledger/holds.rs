//! Legal holds as records (issue 9): a deletion's legal obligation (billing kept 7 years), and
//! litigation holds that admins place and release. A hold knows its subject only by keyed hashes
//! of the identifiers (`dsr_hold_subjects`), and a legal obligation its records only by their
//! keys in the store (`dsr_hold_records`), so nothing here outlives the request's identifiers.
use chrono::{DateTime, Utc};
use sqlx::{any::AnyRow, Row};

use super::{
    decode_enum,
    events::NewEvent,
    opt_time,
    requests::{refresh_status, BLOCKED},
    Ledger, LedgerError, Result,
};
use crate::{
    clock::{from_millis, to_millis},
    db::Tx,
};

macro_rules! hold_kind {
    ($($variant:ident = $s:literal),+ $(,)?) => {
        /// What a hold is for.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum HoldKind { $($variant),+ }

        impl HoldKind {
            pub fn as_str(self) -> &'static str {
                match self { $(HoldKind::$variant => $s),+ }
            }

            pub fn from_db(s: &str) -> Option<Self> {
                match s { $($s => Some(HoldKind::$variant),)+ _ => None }
            }
        }
    };
}

hold_kind!(Litigation = "litigation", LegalObligation = "legal_obligation");

/// The retention basis of every outcome kept by a litigation hold starts with this.
pub const LITIGATION_HOLD_BASIS: &str = "litigation_hold";

/// A hold as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    pub id: String,
    pub kind: HoldKind,
    pub tenant_id: String,
    pub basis: String,
    /// A litigation hold's reason, as the admin gave it (never logged).
    pub reason: Option<String>,
    /// A legal obligation: the deletion that made it, and the store that keeps the records.
    pub request_id: Option<String>,
    pub store: Option<String>,
    /// A legal obligation: the records it keeps.
    pub records: u64,
    pub placed_by: String,
    pub placed_at: DateTime<Utc>,
    /// A legal obligation: when it ends.
    pub until: Option<DateTime<Utc>>,
    /// Released (litigation), or erased and closed by the sweep (legal obligation).
    pub ended_at: Option<DateTime<Utc>>,
    pub ended_by: Option<String>,
    pub end_reason: Option<String>,
}

impl HoldRecord {
    pub fn is_active(&self) -> bool {
        self.ended_at.is_none()
    }
}

/// A litigation hold about to be placed.
#[derive(Debug, Clone)]
pub struct NewLitigationHold {
    pub id: String,
    pub tenant_id: String,
    pub reason: String,
    /// One keyed hash per identifier of the (resolved) subject.
    pub subject_tags: Vec<String>,
    pub placed_by: String,
}

/// A deletion's legal obligation, recorded with the store's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLegalHold {
    pub basis: String,
    pub until: DateTime<Utc>,
    /// The keys of the records kept.
    pub records: Vec<String>,
    /// One keyed hash per identifier of the request's subject.
    pub subject_tags: Vec<String>,
}

/// A legal obligation whose end has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueHold {
    pub id: String,
    pub tenant_id: String,
    pub request_id: String,
    pub store: String,
    pub until: DateTime<Utc>,
    pub records: u64,
    pub subject_tags: Vec<String>,
}

/// What releasing a litigation hold did.
#[derive(Debug, Clone)]
pub struct Released {
    pub hold: HoldRecord,
    /// Requests whose stores the hold kept, now queued again.
    pub requests: Vec<String>,
}

const HOLD_COLUMNS: &str = "id, kind, tenant_id, basis, reason, request_id, store, records, placed_by, \
     placed_at, until, ended_at, ended_by, end_reason";

fn hold_from_row(row: &AnyRow) -> sqlx::Result<HoldRecord> {
    Ok(HoldRecord {
        id: row.try_get("id")?,
        kind: decode_enum(row.try_get("kind")?, HoldKind::from_db)?,
        tenant_id: row.try_get("tenant_id")?,
        basis: row.try_get("basis")?,
        reason: row.try_get("reason")?,
        request_id: row.try_get("request_id")?,
        store: row.try_get("store")?,
        records: row.try_get::<i64, _>("records")?.max(0) as u64,
        placed_by: row.try_get("placed_by")?,
        placed_at: from_millis(row.try_get("placed_at")?),
        until: opt_time(row, "until")?,
        ended_at: opt_time(row, "ended_at")?,
        ended_by: row.try_get("ended_by")?,
        end_reason: row.try_get("end_reason")?,
    })
}

/// Placeholders `$first…` for `n` values.
pub(super) fn params(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

async fn insert_tags(tx: &mut Tx, hold_id: &str, tags: &[String]) -> sqlx::Result<()> {
    let mut tags = tags.to_vec();
    tags.sort_unstable();
    tags.dedup();
    // One statement: a person has a handful of identifiers, a tag a row.
    for chunk in tags.chunks(200) {
        let values = (0..chunk.len()).map(|i| format!("($1, ${})", i + 2)).collect::<Vec<_>>().join(", ");
        let sql = format!("INSERT INTO dsr_hold_subjects (hold_id, tag) VALUES {values}");
        let q = chunk.iter().fold(sqlx::query(&sql).bind(hold_id), |q, t| q.bind(t.as_str()));
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records a deletion's legal obligation inside the transaction that records the store's
/// outcome (whose event says so). The hold's id is the task's: a second run of the task
/// replaces it (`replaces`; a first run has none to replace).
#[allow(clippy::too_many_arguments)] // the hold's columns, named where the caller has them
pub(super) async fn record_legal_hold(
    tx: &mut Tx,
    task_id: &str,
    request_id: &str,
    tenant_id: &str,
    store: &str,
    hold: &NewLegalHold,
    replaces: bool,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    if replaces {
        for table in ["dsr_hold_records", "dsr_hold_subjects"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE hold_id = $1"))
                .bind(task_id)
                .execute(&mut **tx)
                .await?;
        }
        sqlx::query("DELETE FROM dsr_holds WHERE id = $1").bind(task_id).execute(&mut **tx).await?;
    }
    let mut records = hold.records.clone();
    records.sort_unstable();
    records.dedup();
    const HOLD: &str =
        "INSERT INTO dsr_holds (id, kind, tenant_id, basis, request_id, store, records, placed_by, \
                        placed_at, until) VALUES ($1, 'legal_obligation', $2, $3, $4, $5, $6, $7, $8, $9)";
    let postgres = tx.backend_name() == "PostgreSQL";
    // On Postgres the hold, its subject's tags and its records in one statement (the tags and
    // keys as JSON arrays: one round trip however many records the store kept).
    let sql = if postgres {
        format!(
            "WITH held AS ({HOLD}), \
             tagged AS (INSERT INTO dsr_hold_subjects (hold_id, tag) \
               SELECT $1, value FROM json_array_elements_text($10::json)) \
             INSERT INTO dsr_hold_records (hold_id, record_key) SELECT $1, value FROM json_array_elements_text($11::json)"
        )
    } else {
        HOLD.to_owned()
    };
    let q = sqlx::query(&sql)
        .bind(task_id)
        .bind(tenant_id)
        .bind(&hold.basis)
        .bind(request_id)
        .bind(store)
        .bind(records.len() as i64)
        .bind(format!("deletion {request_id}"))
        .bind(to_millis(now))
        .bind(to_millis(hold.until));
    if postgres {
        let mut tags = hold.subject_tags.clone();
        tags.sort_unstable();
        tags.dedup();
        let json = |v: &[String]| serde_json::to_string(v).map_err(|e| sqlx::Error::Encode(e.into()));
        q.bind(json(&tags)?).bind(json(&records)?).execute(&mut **tx).await?;
        return Ok(());
    }
    q.execute(&mut **tx).await?;
    insert_tags(tx, task_id, &hold.subject_tags).await?;
    // Several rows per statement: a subject with many records must not make the outcome's
    // transaction one round trip per record.
    for chunk in records.chunks(200) {
        let values = (0..chunk.len()).map(|i| format!("($1, ${})", i + 2)).collect::<Vec<_>>().join(", ");
        let sql = format!("INSERT INTO dsr_hold_records (hold_id, record_key) VALUES {values}");
        let q = chunk.iter().fold(sqlx::query(&sql).bind(task_id), |q, k| q.bind(k.as_str()));
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The query for `litigation_hold_in`: the tenant bound as `$tenant`, the `tags` identifier
/// tags from `$first_tag` on. Also a sub-select of `Ledger::ready_to_erase`.
pub(super) fn litigation_hold_select(tenant: usize, first_tag: usize, tags: usize) -> String {
    format!(
        "SELECT h.id FROM dsr_holds h JOIN dsr_hold_subjects s ON s.hold_id = h.id \
         WHERE h.tenant_id = ${tenant} AND h.kind = 'litigation' AND h.ended_at IS NULL AND s.tag IN ({}) \
         ORDER BY h.id LIMIT 1",
        params(first_tag, tags)
    )
}

/// The active litigation hold (if any) of the tenant that covers any of these identifier tags.
pub(super) async fn litigation_hold_in<'c, E>(
    executor: E,
    tenant: &str,
    tags: &[String],
) -> sqlx::Result<Option<String>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    if tags.is_empty() {
        return Ok(None);
    }
    let sql = litigation_hold_select(1, 2, tags.len());
    let q = tags.iter().fold(sqlx::query_scalar(&sql).bind(tenant), |q, t| q.bind(t.as_str()));
    q.fetch_optional(executor).await
}

impl Ledger {
    /// Places a litigation hold: the hold, its subject's tags and a `hold_placed` event (which
    /// names the hold, never the reason), in one transaction.
    pub async fn place_hold(&self, new: &NewLitigationHold, now: DateTime<Utc>) -> Result<HoldRecord> {
        let mut tx = self.begin_chained().await?;
        sqlx::query(
            "INSERT INTO dsr_holds (id, kind, tenant_id, basis, reason, placed_by, placed_at) \
             VALUES ($1, 'litigation', $2, $3, $4, $5, $6)",
        )
        .bind(&new.id)
        .bind(&new.tenant_id)
        .bind(LITIGATION_HOLD_BASIS)
        .bind(&new.reason)
        .bind(&new.placed_by)
        .bind(to_millis(now))
        .execute(&mut *tx)
        .await?;
        insert_tags(&mut tx, &new.id, &new.subject_tags).await?;
        let detail = format!("litigation hold {}", new.id);
        NewEvent::global("hold_placed")
            .tenant(&new.tenant_id)
            .actor(&new.placed_by)
            .subject_tags(&new.subject_tags)
            .detail(&detail)
            .append(&mut tx, now)
            .await?;
        tx.commit().await?;
        self.hold(&new.id).await
    }

    /// Releases a litigation hold. The store tasks it kept go back to the queue (with a fresh
    /// attempt budget) and their requests reopen; each gets a `hold_released` event. Releasing
    /// twice, or releasing a legal obligation, is refused.
    pub async fn release_hold(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
        attempt_budget: u32,
        now: DateTime<Utc>,
    ) -> Result<Released> {
        let mut tx = self.begin_chained().await?;
        let row = sqlx::query(&format!("SELECT {HOLD_COLUMNS} FROM dsr_holds WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(LedgerError::NotFound)?;
        let hold = hold_from_row(&row)?;
        if hold.kind != HoldKind::Litigation {
            return Err(LedgerError::FailedPrecondition(
                "a legal obligation is not released: it ends on its date, when the retention sweep erases its records"
                    .into(),
            ));
        }
        if !hold.is_active() {
            return Err(LedgerError::FailedPrecondition("the hold has already been released".into()));
        }
        sqlx::query("UPDATE dsr_holds SET ended_at = $1, ended_by = $2, end_reason = $3 WHERE id = $4")
            .bind(to_millis(now))
            .bind(actor)
            .bind(reason)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let held: Vec<(String, String)> = sqlx::query_as(
            "SELECT t.request_id, r.tenant_id FROM dsr_tasks t JOIN dsr_requests r ON r.id = t.request_id \
             WHERE t.hold_id = $1 AND t.state = 'retained' ORDER BY t.request_id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        // The tasks run again from the start: a fresh count, a fresh attempt budget, and the
        // stages in order again (each request's `refresh_status` below makes the first due).
        let queued = sqlx::query(
            "UPDATE dsr_tasks SET state = 'pending', hold_id = NULL, next_run_at = $1, attempt_limit = attempt + $2, \
             found_checkpoint = NULL, retention_basis = NULL, retained_until = NULL, verified = 0, finished_at = NULL \
             WHERE hold_id = $3 AND state = 'retained'",
        )
        .bind(BLOCKED)
        .bind(attempt_budget as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let detail = format!("litigation hold {id}: {queued} store task(s) queued again");
        NewEvent::global("hold_released")
            .tenant(&hold.tenant_id)
            .actor(actor)
            .counts(queued, queued)
            .detail(&detail)
            .append(&mut tx, now)
            .await?;
        let mut requests: Vec<String> = Vec::new();
        for (request_id, tenant) in &held {
            if requests.last() == Some(request_id) {
                continue;
            }
            let n = held.iter().filter(|(r, _)| r == request_id).count() as u64;
            let detail = format!("litigation hold {id} released: {n} store(s) queued again");
            NewEvent::request(request_id, tenant, "hold_released")
                .actor(actor)
                .counts(n, n)
                .detail(&detail)
                .append(&mut tx, now)
                .await?;
            refresh_status(&mut tx, request_id, tenant, now).await?;
            requests.push(request_id.clone());
        }
        tx.commit().await?;
        Ok(Released { hold: self.hold(id).await?, requests })
    }

    pub async fn hold(&self, id: &str) -> Result<HoldRecord> {
        let row = sqlx::query(&format!("SELECT {HOLD_COLUMNS} FROM dsr_holds WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or(LedgerError::NotFound)?;
        Ok(hold_from_row(&row)?)
    }

    /// Holds in id order after `after` (optionally of one tenant, optionally only those that
    /// stand); the page and, when there is more, the id to continue after.
    pub async fn list_holds(
        &self,
        tenant: Option<&str>,
        active_only: bool,
        after: Option<&str>,
        size: usize,
    ) -> Result<(Vec<HoldRecord>, Option<String>)> {
        let mut sql = format!("SELECT {HOLD_COLUMNS} FROM dsr_holds WHERE id > $1");
        if active_only {
            sql.push_str(" AND ended_at IS NULL");
        }
        if tenant.is_some() {
            sql.push_str(" AND tenant_id = $2");
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", size + 1));
        let mut q = sqlx::query(&sql).bind(after.unwrap_or(""));
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        let rows = q.fetch_all(self.db.pool()).await?;
        let mut holds = rows.iter().map(hold_from_row).collect::<sqlx::Result<Vec<_>>>()?;
        let next = if holds.len() > size {
            holds.truncate(size);
            holds.last().map(|h| h.id.clone())
        } else {
            None
        };
        Ok((holds, next))
    }

    /// The SQL of `litigation_hold_for` for `tags` identifier tags ($1 the tenant, then the
    /// tags): for `EXPLAIN`, which must find it reading `dsr_holds_litigation`.
    pub fn litigation_hold_question(tags: usize) -> String {
        litigation_hold_select(1, 2, tags)
    }

    /// The active litigation hold of the tenant, if any, that covers any of these identifier
    /// tags.
    pub async fn litigation_hold_for(&self, tenant: &str, tags: &[String]) -> Result<Option<String>> {
        Ok(litigation_hold_in(self.db.pool(), tenant, tags).await?)
    }

    /// Whether a litigation hold stands in the tenant (one indexed probe: the sweep asks before
    /// every batch).
    pub async fn has_litigation_hold(&self, tenant: &str) -> Result<bool> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT id FROM dsr_holds WHERE tenant_id = $1 AND kind = 'litigation' AND ended_at IS NULL LIMIT 1",
        )
        .bind(tenant)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(found.is_some())
    }

    /// Every identifier tag the tenant's active litigation holds cover.
    pub async fn litigation_tags(&self, tenant: &str) -> Result<std::collections::HashSet<String>> {
        let tags: Vec<String> = sqlx::query_scalar(
            "SELECT s.tag FROM dsr_holds h JOIN dsr_hold_subjects s ON s.hold_id = h.id \
             WHERE h.tenant_id = $1 AND h.kind = 'litigation' AND h.ended_at IS NULL",
        )
        .bind(tenant)
        .fetch_all(self.db.pool())
        .await?;
        Ok(tags.into_iter().collect())
    }

    /// Up to `limit` legal obligations that have ended by `now` and are not closed yet, in
    /// (until, id) order after `after`.
    pub async fn due_legal_holds(
        &self,
        now: DateTime<Utc>,
        after: Option<&(DateTime<Utc>, String)>,
        limit: usize,
    ) -> Result<Vec<DueHold>> {
        let (after_until, after_id) =
            after.map_or((i64::MIN, String::new()), |(u, id)| (to_millis(*u), id.clone()));
        let rows = sqlx::query(&format!(
            "SELECT id, tenant_id, request_id, store, until, records FROM dsr_holds \
             WHERE kind = 'legal_obligation' AND ended_at IS NULL AND until <= $1 \
             AND (until > $2 OR (until = $2 AND id > $3)) ORDER BY until, id LIMIT {limit}"
        ))
        .bind(to_millis(now))
        .bind(after_until)
        .bind(after_id)
        .fetch_all(self.db.pool())
        .await?;
        let mut due = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let subject_tags: Vec<String> =
                sqlx::query_scalar("SELECT tag FROM dsr_hold_subjects WHERE hold_id = $1 ORDER BY tag")
                    .bind(&id)
                    .fetch_all(self.db.pool())
                    .await?;
            due.push(DueHold {
                id,
                tenant_id: row.try_get("tenant_id")?,
                request_id: row.try_get::<Option<String>, _>("request_id")?.unwrap_or_default(),
                store: row.try_get::<Option<String>, _>("store")?.unwrap_or_default(),
                until: from_millis(row.try_get::<Option<i64>, _>("until")?.unwrap_or_default()),
                records: row.try_get::<i64, _>("records")?.max(0) as u64,
                subject_tags,
            });
        }
        Ok(due)
    }

    /// Up to `limit` record keys of a hold after `after`, in order.
    pub async fn hold_record_keys(
        &self,
        hold_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT record_key FROM dsr_hold_records WHERE hold_id = $1 AND record_key > $2 \
             ORDER BY record_key LIMIT {limit}"
        ))
        .bind(hold_id)
        .bind(after.unwrap_or(""))
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Closes a legal obligation whose records the sweep has erased: the hold ends (its tags
    /// and record keys go), the request's outcome for the store moves from RETAINED to DONE, and
    /// the request gets a `hold_ended` event. `false` when another sweep closed it first.
    pub async fn end_legal_hold(
        &self,
        hold: &DueHold,
        erased: u64,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.begin_chained().await?;
        let n = sqlx::query(
            "UPDATE dsr_holds SET ended_at = $1, ended_by = $2, end_reason = $3 WHERE id = $4 AND ended_at IS NULL",
        )
        .bind(to_millis(now))
        .bind(actor)
        .bind("the legal obligation ended; the retention sweep erased the records")
        .bind(&hold.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        for table in ["dsr_hold_records", "dsr_hold_subjects"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE hold_id = $1"))
                .bind(&hold.id)
                .execute(&mut *tx)
                .await?;
        }
        let moved = sqlx::query(
            "UPDATE dsr_tasks SET state = 'done', records_affected = records_found, verified = 1, finished_at = $1 \
             WHERE request_id = $2 AND store = $3 AND state = 'retained' AND hold_id IS NULL",
        )
        .bind(to_millis(now))
        .bind(&hold.request_id)
        .bind(&hold.store)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let detail = format!(
            "{}: the legal obligation ended {}; the retention sweep erased the retained records",
            if moved > 0 { "done" } else { "ended" },
            hold.until.to_rfc3339()
        );
        NewEvent::request(&hold.request_id, &hold.tenant_id, "hold_ended")
            .store(&hold.store, 0)
            .actor(actor)
            .counts(hold.records, erased)
            .detail(&detail)
            .append(&mut tx, now)
            .await?;
        sqlx::query("UPDATE dsr_requests SET version = version + 1 WHERE id = $1")
            .bind(&hold.request_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}
