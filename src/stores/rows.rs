//! Stores whose rows are simply deleted: `call_logs` and `transcripts`. On the retention
//! schedule they age from the call (`started_at`, `created_at`).
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    reference::Tables,
    sql::{delete_keys, tenants, Expired},
    table::SubjectTable,
    CandidateRow, Erasure, ExpiredRecord, Expiry, ExportSink, Probe, Rectification, StoreAdapter,
    StoreResult,
};
use crate::{
    clock::to_millis,
    db::Db,
    domain::Corrections,
    resolve::{IdentKind, Person},
};

pub struct RowStore {
    name: &'static str,
    stage: u8,
    rows: SubjectTable,
    /// The store this one's `link` column points into.
    links_to: Option<&'static str>,
    /// The account id of an expired row, as a SQL expression (for the sweep's holds).
    account_expr: String,
    /// The time a row's retention runs from.
    aged_by: &'static str,
}

impl RowStore {
    /// Call logs go last (stage 1): a deletion that fails in an earlier store leaves the
    /// person's calls, the records everything else hangs from, for the retry.
    pub fn call_logs(db: Db, t: &Tables) -> Self {
        Self {
            name: "call_logs",
            stage: 1,
            rows: SubjectTable {
                db,
                table: t.call_logs.clone(),
                key: "id".into(),
                tenant: "tenant_id".into(),
                identifiers: super::table::columns(&[
                    ("account_id", IdentKind::AccountId),
                    ("caller_phone", IdentKind::Phone),
                ]),
                link: None,
                bytes: None,
                object: None,
                cleared: None,
            },
            links_to: None,
            account_expr: format!("{}.account_id", t.call_logs),
            aged_by: "started_at",
        }
    }

    pub fn transcripts(db: Db, t: &Tables) -> Self {
        Self {
            name: "transcripts",
            stage: 0,
            rows: SubjectTable {
                db,
                table: t.transcripts.clone(),
                key: "id".into(),
                tenant: "tenant_id".into(),
                identifiers: super::table::columns(&[("caller_phone", IdentKind::Phone)]),
                link: Some("call_id".into()),
                bytes: Some("LENGTH(text)".into()),
                object: None,
                cleared: None,
            },
            links_to: Some("call_logs"),
            account_expr: format!(
                "(SELECT c.account_id FROM {c} c WHERE c.tenant_id = {t}.tenant_id AND c.id = {t}.call_id)",
                c = t.call_logs,
                t = t.transcripts
            ),
            aged_by: "created_at",
        }
    }
}

impl RowStore {
    fn expired(&self, e: &Expiry<'_>) -> Expired {
        Expired::new(e.tenant, &format!("{} < $2", self.aged_by), vec![to_millis(e.cutoff)])
    }

    fn phone_expr(&self) -> String {
        format!("{}.caller_phone", self.rows.table)
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

    fn links_to(&self) -> Option<&'static str> {
        self.links_to
    }

    async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
        self.rows.candidates(probe).await
    }

    async fn check_schema(&self) -> Vec<String> {
        let text = if self.name == "transcripts" { Some("text") } else { None };
        let extra: Vec<&str> = ["tenant_id", self.aged_by].into_iter().chain(text).collect();
        self.rows.check(&extra).await
    }

    async fn erase(&self, tenant: &str, keys: &[String], _now: DateTime<Utc>) -> StoreResult<Erasure> {
        Ok(Erasure::Erased { affected: self.rows.delete(tenant, keys).await? })
    }

    /// Call logs and transcripts hold the caller's phone, nothing else a correction touches.
    fn holds_any_of(&self, corrections: &Corrections) -> bool {
        corrections.phone.is_some()
    }

    async fn rectify(
        &self,
        person: &Person,
        mine: &[CandidateRow],
        corrections: &Corrections,
        _now: DateTime<Utc>,
    ) -> StoreResult<Rectification> {
        let (found, affected) = self.rows.rectify(person, mine, corrections).await?;
        Ok(Rectification { found, affected, hold: None })
    }

    async fn verify_rectified(&self, person: &Person, keys: &[String], c: &Corrections) -> StoreResult<bool> {
        self.rows.rectified(person, keys, c).await
    }

    async fn tenants(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        Ok(tenants(&self.rows.db, &self.rows.table, after, limit).await?)
    }

    async fn count_expired(&self, expiry: &Expiry<'_>) -> StoreResult<u64> {
        Ok(self.expired(expiry).count(&self.rows.db, &self.rows.table).await?)
    }

    async fn list_expired(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        let phone = self.phone_expr();
        let cols = [self.account_expr.as_str(), "NULL", phone.as_str()];
        Ok(self.expired(expiry).list(&self.rows.db, &self.rows.table, cols, after, limit).await?)
    }

    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        Ok(delete_keys(self.rows.db.pool(), &self.rows.table, tenant, keys).await?)
    }

    async fn erase_expired(&self, expiry: &Expiry<'_>, limit: usize) -> StoreResult<u64> {
        Ok(self.expired(expiry).delete_batch(&self.rows.db, &self.rows.table, limit).await?)
    }

    async fn export(&self, tenant: &str, keys: &[String], sink: &mut dyn ExportSink) -> StoreResult<u64> {
        self.rows.export(tenant, keys, "", sink).await
    }
}
