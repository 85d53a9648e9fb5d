//! Export archives in the ledger: the record of each finished archive (written in the same
//! transaction that ends the request's `archive` task), its expiry, and the audit events of
//! downloads and expiries.
use chrono::{DateTime, Utc};
use sqlx::{any::AnyRow, Row};

use super::{events::NewEvent, opt_time, Ledger, Result};
use crate::clock::{from_millis, to_millis};
use crate::db::Tx;

/// The name of the task that assembles an export's archive once every store has written its part.
/// It is not a store: it runs after them (a later stage) and is not reported as an outcome
/// unless it failed.
pub const ARCHIVE_TASK: &str = "archive";

/// A finished export archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRecord {
    pub request_id: String,
    pub tenant_id: String,
    /// Where the archive is in the export storage.
    pub object_path: String,
    pub format: String,
    pub size_bytes: u64,
    /// Lowercase hex sha256 of the whole archive.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When the archive was deleted for having expired.
    pub expired_at: Option<DateTime<Utc>>,
}

impl ExportRecord {
    fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        Ok(Self {
            request_id: row.try_get("request_id")?,
            tenant_id: row.try_get("tenant_id")?,
            object_path: row.try_get("object_path")?,
            format: row.try_get("format")?,
            size_bytes: row.try_get::<i64, _>("size_bytes")? as u64,
            sha256: row.try_get("sha256")?,
            created_at: from_millis(row.try_get("created_at")?),
            expires_at: from_millis(row.try_get("expires_at")?),
            expired_at: opt_time(row, "expired_at")?,
        })
    }

    /// Whether the archive may no longer be downloaded at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expired_at.is_some() || now >= self.expires_at
    }
}

/// Records a finished archive (a retry after a crash rewrites the same row). Part of the
/// transaction that ends the `archive` task.
pub(super) async fn upsert_export(tx: &mut Tx, archive: &ExportRecord) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO dsr_exports (request_id, tenant_id, object_path, format, size_bytes, sha256, created_at, \
         expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (request_id) DO UPDATE SET object_path = excluded.object_path, format = excluded.format, \
         size_bytes = excluded.size_bytes, sha256 = excluded.sha256, created_at = excluded.created_at, \
         expires_at = excluded.expires_at, expired_at = NULL",
    )
    .bind(&archive.request_id)
    .bind(&archive.tenant_id)
    .bind(&archive.object_path)
    .bind(&archive.format)
    .bind(archive.size_bytes as i64)
    .bind(&archive.sha256)
    .bind(to_millis(archive.created_at))
    .bind(to_millis(archive.expires_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const EXPORT_COLUMNS: &str =
    "request_id, tenant_id, object_path, format, size_bytes, sha256, created_at, expires_at, expired_at";

impl Ledger {
    /// The archive of an export request, if it has one.
    pub async fn export_of(&self, request_id: &str) -> Result<Option<ExportRecord>> {
        export_on(&mut *self.db.pool().acquire().await?, request_id).await
    }

    /// The status of an export request; `None` when there is no such export in this ledger.
    pub async fn export_status(&self, request_id: &str) -> Result<Option<crate::domain::RequestStatus>> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM dsr_requests WHERE id = $1 AND kind = 'export'")
                .bind(request_id)
                .fetch_optional(self.db.pool())
                .await?;
        status
            .map(|s| super::decode_enum(s, crate::domain::RequestStatus::from_db))
            .transpose()
            .map_err(Into::into)
    }

    /// Archives past their expiry and not yet deleted, oldest first.
    pub async fn expired_exports(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<ExportRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {EXPORT_COLUMNS} FROM dsr_exports WHERE expired_at IS NULL AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2"
        ))
        .bind(to_millis(now))
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.iter().map(ExportRecord::from_row).collect::<sqlx::Result<_>>()?)
    }

    /// Archives not yet deleted whose subject has asked for erasure since the export was
    /// requested: a deletion sharing one of its identifier tags, submitted after it, or submitted
    /// before it and completed after it began (the export read what the deletion was erasing).
    /// The archive is a copy of what the deletion erases, so it goes too.
    pub async fn superseded_exports(&self, limit: usize) -> Result<Vec<ExportRecord>> {
        // Every completed deletion asks (it wakes the janitor), and most deployments hold no
        // archive most of the time: one look at `dsr_exports_expiry` first, rather than linking
        // the journal and joining the subjects' tags for nothing.
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM dsr_exports WHERE expired_at IS NULL LIMIT 1) live",
        )
        .fetch_one(self.db.pool())
        .await?;
        if live == 0 {
            return Ok(Vec::new());
        }
        // The identifier tags live with the events: link the journal first (`journal`).
        self.seal_journal().await?;
        let cols = EXPORT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {cols} FROM dsr_exports e JOIN dsr_requests x ON x.id = e.request_id \
             WHERE e.expired_at IS NULL AND EXISTS ( \
               SELECT 1 FROM dsr_event_subjects xs \
               JOIN dsr_event_subjects ds ON ds.tag = xs.tag \
               JOIN dsr_requests d ON d.id = ds.request_id \
               WHERE xs.request_id = e.request_id AND d.kind = 'deletion' AND d.tenant_id = x.tenant_id \
                 AND (d.created_at >= x.created_at OR (d.status = 'completed' AND d.completed_at >= x.created_at))) \
             ORDER BY e.created_at LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.iter().map(ExportRecord::from_row).collect::<sqlx::Result<_>>()?)
    }

    /// Whether the subject of this export has asked for erasure since (see
    /// `superseded_exports`).
    pub async fn is_export_superseded(&self, request_id: &str) -> Result<bool> {
        self.seal_journal().await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM dsr_requests x \
             JOIN dsr_event_subjects xs ON xs.request_id = x.id \
             JOIN dsr_event_subjects ds ON ds.tag = xs.tag \
             JOIN dsr_requests d ON d.id = ds.request_id \
             WHERE x.id = $1 AND d.kind = 'deletion' AND d.tenant_id = x.tenant_id \
               AND (d.created_at >= x.created_at OR (d.status = 'completed' AND d.completed_at >= x.created_at))",
        )
        .bind(request_id)
        .fetch_one(self.db.pool())
        .await?;
        Ok(n > 0)
    }

    /// Records that an expired archive was deleted (once: `false` if it already was).
    pub async fn mark_export_expired(&self, export: &ExportRecord, now: DateTime<Utc>) -> Result<bool> {
        self.mark_export_deleted(export, "export_expired", now).await
    }

    /// Records that an archive was deleted because its subject's data was erased since.
    pub async fn mark_export_erased(&self, export: &ExportRecord, now: DateTime<Utc>) -> Result<bool> {
        self.mark_export_deleted(export, "export_erased", now).await
    }

    async fn mark_export_deleted(
        &self,
        export: &ExportRecord,
        action: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.begin_chained().await?;
        let n = sqlx::query(
            "UPDATE dsr_exports SET expired_at = $1 WHERE request_id = $2 AND expired_at IS NULL",
        )
        .bind(to_millis(now))
        .bind(&export.request_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            NewEvent::request(&export.request_id, &export.tenant_id, action)
                .counts(1, export.size_bytes)
                .append(&mut tx, now)
                .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Records a download of the archive that reached its end: who, from which offset, how many
    /// bytes were sent.
    pub async fn record_download(
        &self,
        export: &ExportRecord,
        actor: &str,
        offset: u64,
        sent: u64,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_chained().await?;
        let detail = format!("offset={offset}");
        NewEvent::request(&export.request_id, &export.tenant_id, "export_downloaded")
            .actor(actor)
            .counts(export.size_bytes, sent)
            .detail(&detail)
            .append(&mut tx, now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The outcome of every store task of a request (the archive step reads which stores wrote a
    /// part).
    pub async fn task_states(
        &self,
        request_id: &str,
    ) -> Result<Vec<(String, crate::domain::OutcomeState, u64)>> {
        let rows = sqlx::query(
            "SELECT store, state, records_found FROM dsr_tasks WHERE request_id = $1 ORDER BY position",
        )
        .bind(request_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("store")?,
                    super::decode_enum(r.try_get("state")?, crate::domain::OutcomeState::from_db)?,
                    r.try_get::<i64, _>("records_found")? as u64,
                ))
            })
            .collect::<sqlx::Result<_>>()
            .map_err(Into::into)
    }
}

/// An export's archive record, read on `conn`.
pub(super) async fn export_on(
    conn: &mut sqlx::AnyConnection,
    request_id: &str,
) -> Result<Option<ExportRecord>> {
    let row = sqlx::query(&format!("SELECT {EXPORT_COLUMNS} FROM dsr_exports WHERE request_id = $1"))
        .bind(request_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(ExportRecord::from_row).transpose()?)
}
