//! Stores whose rows are simply deleted: `call_logs` and `transcripts`. On the retention
//! schedule they age from the call (`started_at`, `created_at`).
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    export_rows,
    reference::Tables,
    sql::{
        delete_keys, identifier_columns, move_phone, phone_move, phone_moved, tenants, Expired, Ident, Key,
        Predicate,
    },
    Erasure, ExpiredRecord, Expiry, ExportSink, Holdings, Rectification, StoreAdapter, StoreResult,
};
use crate::{
    clock::to_millis,
    db::Db,
    domain::{Corrections, Subject},
};

pub struct RowStore {
    name: &'static str,
    stage: u8,
    db: Db,
    table: String,
    keys: Vec<Key>,
    /// What a row weighs in a preview (`LENGTH(text)` for transcripts).
    bytes_expr: Option<&'static str>,
    /// The time a row's retention runs from.
    aged_by: &'static str,
}

impl RowStore {
    /// Call logs go last (stage 1): they link an account to its calls' transcripts and
    /// recordings, which must be found through them first.
    pub fn call_logs(db: Db, t: &Tables) -> Self {
        Self {
            name: "call_logs",
            stage: 1,
            db,
            table: t.call_logs.clone(),
            keys: vec![
                Key::Column("account_id", Ident::AccountId),
                Key::Column("caller_phone", Ident::Phone),
            ],
            bytes_expr: None,
            aged_by: "started_at",
        }
    }

    pub fn transcripts(db: Db, t: &Tables) -> Self {
        Self {
            name: "transcripts",
            stage: 0,
            db,
            table: t.transcripts.clone(),
            keys: vec![
                Key::Column("caller_phone", Ident::Phone),
                Key::ViaCallLogs { column: "call_id", call_logs_table: t.call_logs.clone() },
            ],
            bytes_expr: Some("LENGTH(text)"),
            aged_by: "created_at",
        }
    }
}

impl RowStore {
    fn expired(&self, e: &Expiry<'_>) -> Expired {
        Expired::new(e.tenant, &format!("{} < $2", self.aged_by), vec![to_millis(e.cutoff)])
    }
}

#[async_trait]
impl StoreAdapter for RowStore {
    fn name(&self) -> &'static str {
        self.name
    }

    fn stage(&self) -> u8 {
        self.stage
    }

    fn applies_to(&self, subject: &Subject) -> bool {
        Predicate::applies(subject, &self.keys)
    }

    async fn preview(&self, subject: &Subject) -> StoreResult<Holdings> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Holdings::default());
        };
        let (records, bytes) = p.count(&self.db, &self.table, self.bytes_expr, "").await?;
        Ok(Holdings { records, bytes, under_legal_hold: false })
    }

    async fn erase(&self, subject: &Subject, _now: DateTime<Utc>) -> StoreResult<Erasure> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Erasure::Erased { found: 0, affected: 0 });
        };
        let sql = format!("DELETE FROM {} WHERE {}", self.table, p.sql);
        let affected = p.query(&sql).execute(self.db.pool()).await?.rows_affected();
        Ok(Erasure::Erased { found: affected, affected })
    }

    async fn verify_erased(&self, subject: &Subject) -> StoreResult<bool> {
        Ok(self.preview(subject).await?.records == 0)
    }

    /// Call logs and transcripts hold the caller's phone, nothing else a correction touches.
    fn holds_any_of(&self, corrections: &Corrections) -> bool {
        corrections.phone.is_some()
    }

    async fn rectify(
        &self,
        subject: &Subject,
        corrections: &Corrections,
        _now: DateTime<Utc>,
    ) -> StoreResult<Rectification> {
        let Some((old, new)) = phone_move(subject, corrections) else {
            return Ok(Rectification { found: 0, affected: 0, hold: None });
        };
        let moved = move_phone(self.db.pool(), &self.table, subject.tenant.as_str(), old, new).await?;
        Ok(Rectification { found: moved, affected: moved, hold: None })
    }

    async fn verify_rectified(&self, subject: &Subject, corrections: &Corrections) -> StoreResult<bool> {
        Ok(phone_moved(&self.db, &self.table, subject, corrections).await?)
    }

    async fn tenants(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        Ok(tenants(&self.db, &self.table, after, limit).await?)
    }

    async fn count_expired(&self, expiry: &Expiry<'_>) -> StoreResult<u64> {
        Ok(self.expired(expiry).count(&self.db, &self.table).await?)
    }

    async fn list_expired(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        let [a, e, p] = identifier_columns(&self.table, &self.keys);
        Ok(self.expired(expiry).list(&self.db, &self.table, [&a, &e, &p], after, limit).await?)
    }

    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        Ok(delete_keys(self.db.pool(), &self.table, tenant, keys).await?)
    }

    async fn erase_expired(&self, expiry: &Expiry<'_>, limit: usize) -> StoreResult<u64> {
        Ok(self.expired(expiry).delete_batch(&self.db, &self.table, limit).await?)
    }

    async fn export(&self, subject: &Subject, sink: &mut dyn ExportSink) -> StoreResult<u64> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(0);
        };
        export_rows(&self.db, &self.table, &p, "", sink).await
    }
}
