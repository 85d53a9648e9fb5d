//! The `accounts` store: the account row of the subject. On deletion its personal columns are
//! erased; the row itself is deleted unless billing records still reference it (they are kept
//! 7 years and must keep pointing at an account id). The row kept is marked terminated, so the
//! retention sweep deletes it once no billing record references it any more.
//!
//! On the retention schedule an account goes 30 days (or the tenant's period) after its
//! termination (`terminated_at`): erased like a deletion erases it, so a billed account keeps
//! its bare row until its billing records have gone too.
//!
//! A rectification rewrites the corrected columns (`name`, `email`, `phone`) of the subject's one
//! live account row. Emails and phones identify an account holder, so a correction to a value
//! another account of the tenant already has is refused (at submit, and again inside the
//! writing transaction, which closes most of the race between two such requests; the reference
//! schema has no unique index to close it fully).
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    reference::Tables,
    sql::{params, tenants, Expired},
    table::SubjectTable,
    CandidateRow, Erasure, ExpiredRecord, Expiry, ExportSink, Probe, Rectification, StoreAdapter, StoreError,
    StoreResult,
};
use crate::{
    clock::to_millis,
    db::Db,
    domain::Corrections,
    resolve::{IdentKind, Person},
};

/// Rows that still hold personal data (an erased row keeps only its id and tenant).
const NOT_ERASED: &str = " AND (email IS NOT NULL OR phone IS NOT NULL OR name IS NOT NULL)";

pub struct AccountsStore {
    rows: SubjectTable,
    billing: String,
}

impl AccountsStore {
    pub fn new(db: Db, t: &Tables) -> Self {
        Self {
            rows: SubjectTable {
                db,
                table: t.accounts.clone(),
                key: "id".into(),
                tenant: "tenant_id".into(),
                identifiers: super::table::columns(&[
                    ("id", IdentKind::AccountId),
                    ("email", IdentKind::Email),
                    ("phone", IdentKind::Phone),
                ]),
                link: None,
                bytes: None,
                object: None,
                cleared: Some("email IS NULL AND phone IS NULL AND name IS NULL".into()),
            },
            billing: t.billing.clone(),
        }
    }

    fn table(&self) -> &str {
        &self.rows.table
    }

    /// `EXISTS` a billing record of the account row (of the accounts table, unaliased).
    fn billed(&self) -> String {
        format!(
            "EXISTS (SELECT 1 FROM {b} WHERE {b}.tenant_id = {a}.tenant_id AND {b}.account_id = {a}.id)",
            b = self.billing,
            a = self.table()
        )
    }

    /// Terminated before the cutoff, and with something left to erase: personal data, or a bare
    /// row that no billing record needs any more.
    fn expired(&self, e: &Expiry<'_>) -> Expired {
        Expired::new(
            e.tenant,
            &format!(
                "terminated_at IS NOT NULL AND terminated_at < $2 AND ((email IS NOT NULL OR phone IS NOT NULL OR name IS NOT NULL) OR NOT {})",
                self.billed()
            ),
            vec![to_millis(e.cutoff)],
        )
    }

    /// Personal columns cleared where billing still references the row (and the row marked
    /// terminated, so the sweep deletes it once nothing does), the row deleted where nothing
    /// does. One transaction.
    async fn erase_keys(
        &self,
        tenant: &str,
        keys: &[String],
        terminated_at: Option<i64>,
    ) -> StoreResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let billed = self.billed();
        let kept = format!(
            "UPDATE {} SET email = NULL, phone = NULL, name = NULL, terminated_at = COALESCE(terminated_at, $2) \
             WHERE tenant_id = $1 AND id IN ({}){NOT_ERASED} AND {billed}",
            self.table(),
            params(3, keys.len())
        );
        let gone = format!(
            "DELETE FROM {} WHERE tenant_id = $1 AND id IN ({}) AND NOT {billed}",
            self.table(),
            params(2, keys.len())
        );
        let kept_q =
            keys.iter().fold(sqlx::query(&kept).bind(tenant).bind(terminated_at), |q, k| q.bind(k.as_str()));
        let gone_q = keys.iter().fold(sqlx::query(&gone).bind(tenant), |q, k| q.bind(k.as_str()));
        let mut tx = self.rows.db.begin_write().await?;
        let erased = kept_q.execute(&mut *tx).await?.rows_affected();
        let deleted = gone_q.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(erased + deleted)
    }
}

#[async_trait]
impl StoreAdapter for AccountsStore {
    fn name(&self) -> &'static str {
        "accounts"
    }

    fn is_identity(&self) -> bool {
        true
    }

    async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
        self.rows.candidates(probe).await
    }

    async fn check_schema(&self) -> Vec<String> {
        self.rows.check(&["tenant_id", "name", "terminated_at"]).await
    }

    async fn erase(&self, tenant: &str, keys: &[String], now: DateTime<Utc>) -> StoreResult<Erasure> {
        Ok(Erasure::Erased { affected: self.erase_keys(tenant, keys, Some(to_millis(now))).await? })
    }

    /// Every correctable field is an account column.
    fn holds_any_of(&self, _corrections: &Corrections) -> bool {
        true
    }

    /// Emails and phones identify an account holder, so a correction to a value another account
    /// of the tenant has gained since the submit is refused here too (the reference schema has
    /// no unique index to close that race fully).
    async fn rectify(
        &self,
        person: &Person,
        mine: &[CandidateRow],
        corrections: &Corrections,
        _now: DateTime<Utc>,
    ) -> StoreResult<Rectification> {
        let live: Vec<CandidateRow> = mine.iter().filter(|r| !r.cleared).cloned().collect();
        if live.is_empty() {
            return Ok(Rectification { found: 0, affected: 0, hold: None });
        }
        if let Some(field) = crate::resolve::taken(self, person, corrections).await? {
            return Err(StoreError::Fatal(format!(
                "{field}: another account of the tenant has had this value since the request was submitted"
            )));
        }
        let (mut found, mut affected) = self.rows.rectify(person, &live, corrections).await?;
        if let Some(name) = &corrections.name {
            let keys: Vec<String> = live.iter().map(|r| r.key.clone()).collect();
            let n = self.rows.set_column(&person.tenant, &keys, "name", name.as_str()).await?;
            found = found.max(keys.len() as u64);
            affected = affected.max(n);
        }
        Ok(Rectification { found, affected, hold: None })
    }

    async fn verify_rectified(&self, person: &Person, keys: &[String], c: &Corrections) -> StoreResult<bool> {
        if !self.rows.rectified(person, keys, c).await? {
            return Ok(false);
        }
        let Some(name) = &c.name else { return Ok(true) };
        if keys.is_empty() {
            return Ok(true);
        }
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE tenant_id = $1 AND id IN ({}){NOT_ERASED} AND (name IS NULL OR name <> ${})",
            self.table(),
            params(2, keys.len()),
            keys.len() + 2
        );
        let q = keys
            .iter()
            .fold(sqlx::query_as::<_, (i64,)>(&sql).bind(&person.tenant), |q, k| q.bind(k.as_str()));
        Ok(q.bind(name.as_str()).fetch_one(self.rows.db.pool()).await?.0 == 0)
    }

    async fn tenants(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        Ok(tenants(&self.rows.db, self.table(), after, limit).await?)
    }

    async fn count_expired(&self, expiry: &Expiry<'_>) -> StoreResult<u64> {
        Ok(self.expired(expiry).count(&self.rows.db, self.table()).await?)
    }

    async fn list_expired(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        let t = self.table();
        let (a, e, p) = (format!("{t}.id"), format!("{t}.email"), format!("{t}.phone"));
        Ok(self.expired(expiry).list(&self.rows.db, t, [&a, &e, &p], after, limit).await?)
    }

    /// As a deletion erases: personal columns cleared where billing still references the row,
    /// the row deleted where nothing does.
    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        self.erase_keys(tenant, keys, None).await
    }

    /// An erased account (personal columns cleared, row kept for billing) holds nothing of the
    /// subject any more, so it is not exported.
    async fn export(&self, tenant: &str, keys: &[String], sink: &mut dyn ExportSink) -> StoreResult<u64> {
        self.rows.export(tenant, keys, NOT_ERASED, sink).await
    }
}
