//! Stores whose rows are simply deleted: `call_logs` and `transcripts`.
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    export_rows,
    reference::Tables,
    sql::{move_phone, phone_move, phone_moved, Ident, Key, Predicate},
    Erasure, ExportSink, Holdings, Rectification, StoreAdapter, StoreResult,
};
use crate::{
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
        }
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

    async fn export(&self, subject: &Subject, sink: &mut dyn ExportSink) -> StoreResult<u64> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(0);
        };
        export_rows(&self.db, &self.table, &p, "", sink).await
    }
}
