//! The `billing` store: billing records are kept 7 years from their creation (tax and accounting
//! law), so a deletion erases nothing here. It marks the subject's rows restricted (no use but the
//! legal one) and reports RETAINED with the basis and the date the newest record may go.
//!
//! A rectification corrects `caller_phone` in place: the hold forbids erasure, not accuracy
//! (GDPR Art. 16 applies to retained data too). The outcome is DONE, and says the rows stay
//! under the hold: `retention_basis` is `BILLING_RECTIFIED_BASIS` and `retained_until` the date
//! the newest of the subject's records may go.
//!
//! On the retention schedule a record goes once it is older than the tenant's billing period
//! (7 years, or longer where the tenant keeps more). A restricted record — its subject asked
//! for erasure — goes as soon as the legal minimum has passed, whatever longer period the
//! tenant keeps for everyone else: the law is the only reason it was kept.
use async_trait::async_trait;
use chrono::{DateTime, Months, Utc};

use super::{
    reference::Tables,
    sql::{delete_keys, params, tenants, Expired},
    table::SubjectTable,
    CandidateRow, Erasure, ExpiredRecord, Expiry, ExportSink, LegalHold, Probe, Rectification, StoreAdapter,
    StoreResult,
};
use crate::{
    clock::{from_millis, to_millis},
    db::Db,
    domain::{legal_minimum, Corrections, Period, RETENTION_MONTHS_BILLING},
    resolve::{IdentKind, Person},
};

/// Stated on every billing outcome that keeps data.
pub const BILLING_RETENTION_BASIS: &str =
    "legal_obligation: billing records are kept 7 years from creation (tax and accounting law); restricted until then";

/// Stated on a billing outcome of a rectification that corrected rows under the hold.
pub const BILLING_RECTIFIED_BASIS: &str =
    "legal_obligation: billing records are kept 7 years from creation (tax and accounting law); corrected in place, they stay under the hold";

pub struct BillingStore {
    rows: SubjectTable,
}

impl BillingStore {
    pub fn new(db: Db, t: &Tables) -> Self {
        Self {
            rows: SubjectTable {
                db,
                table: t.billing.clone(),
                key: "id".into(),
                tenant: "tenant_id".into(),
                identifiers: super::table::columns(&[
                    ("account_id", IdentKind::AccountId),
                    ("caller_phone", IdentKind::Phone),
                ]),
                link: None,
                bytes: None,
                object: None,
                cleared: Some("restricted_at IS NOT NULL".into()),
            },
        }
    }

    fn expired(&self, e: &Expiry<'_>) -> Expired {
        let legal =
            legal_minimum("billing").unwrap_or(Period::Months(RETENTION_MONTHS_BILLING)).before(e.now);
        Expired::new(
            e.tenant,
            "(created_at < $2 OR (restricted_at IS NOT NULL AND created_at < $3))",
            vec![to_millis(e.cutoff), to_millis(legal)],
        )
    }

    /// The newest `created_at` of these rows: the hold runs 7 years from it.
    async fn newest(&self, tenant: &str, keys: &[String]) -> StoreResult<Option<i64>> {
        let mut newest = None;
        for chunk in keys.chunks(500) {
            let sql = format!(
                "SELECT MAX(created_at) FROM {} WHERE tenant_id = $1 AND id IN ({})",
                self.rows.table,
                params(2, chunk.len())
            );
            let q = chunk
                .iter()
                .fold(sqlx::query_as::<_, (Option<i64>,)>(&sql).bind(tenant), |q, k| q.bind(k.as_str()));
            newest = newest.max(q.fetch_one(self.rows.db.pool()).await?.0);
        }
        Ok(newest)
    }
}

#[async_trait]
impl StoreAdapter for BillingStore {
    fn name(&self) -> &'static str {
        "billing"
    }

    fn keeps_under_legal_obligation(&self) -> bool {
        true
    }

    async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
        self.rows.candidates(probe).await
    }

    async fn check_schema(&self) -> Vec<String> {
        self.rows.check(&["tenant_id", "created_at", "restricted_at"]).await
    }

    /// Restricts the rows (the first restriction's time stays) and reports the hold.
    async fn erase(&self, tenant: &str, keys: &[String], now: DateTime<Utc>) -> StoreResult<Erasure> {
        let mut restricted = 0;
        for chunk in keys.chunks(500) {
            let sql = format!(
                "UPDATE {} SET restricted_at = COALESCE(restricted_at, $2) WHERE tenant_id = $1 AND id IN ({})",
                self.rows.table,
                params(3, chunk.len())
            );
            let q = chunk
                .iter()
                .fold(sqlx::query(&sql).bind(tenant).bind(to_millis(now)), |q, k| q.bind(k.as_str()));
            restricted += q.execute(self.rows.db.pool()).await?.rows_affected();
        }
        match self.newest(tenant, keys).await? {
            None => Ok(Erasure::Erased { affected: 0 }),
            Some(newest) => Ok(Erasure::Retained {
                affected: restricted,
                basis: BILLING_RETENTION_BASIS.to_owned(),
                until: from_millis(newest) + Months::new(RETENTION_MONTHS_BILLING),
            }),
        }
    }

    /// Billing rows hold the caller's phone; names and emails live on the account.
    fn holds_any_of(&self, corrections: &Corrections) -> bool {
        corrections.phone.is_some()
    }

    /// Corrected in place: the hold forbids erasure, not accuracy.
    async fn rectify(
        &self,
        person: &Person,
        mine: &[CandidateRow],
        corrections: &Corrections,
        _now: DateTime<Utc>,
    ) -> StoreResult<Rectification> {
        let (found, affected) = self.rows.rectify(person, mine, corrections).await?;
        let keys: Vec<String> = mine.iter().map(|r| r.key.clone()).collect();
        let newest = self.newest(&person.tenant, &keys).await?;
        Ok(Rectification {
            found,
            affected,
            hold: newest.map(|newest| LegalHold {
                basis: BILLING_RECTIFIED_BASIS.to_owned(),
                until: from_millis(newest) + Months::new(RETENTION_MONTHS_BILLING),
            }),
        })
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
        let t = &self.rows.table;
        let (account, phone) = (format!("{t}.account_id"), format!("{t}.caller_phone"));
        Ok(self.expired(expiry).list(&self.rows.db, t, [&account, "NULL", &phone], after, limit).await?)
    }

    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        Ok(delete_keys(self.rows.db.pool(), &self.rows.table, tenant, keys).await?)
    }

    async fn erase_expired(&self, expiry: &Expiry<'_>, limit: usize) -> StoreResult<u64> {
        Ok(self.expired(expiry).delete_batch(&self.rows.db, &self.rows.table, limit).await?)
    }

    /// Restricted rows are exported too: a hold limits their use, not the subject's access.
    async fn export(&self, tenant: &str, keys: &[String], sink: &mut dyn ExportSink) -> StoreResult<u64> {
        self.rows.export(tenant, keys, "", sink).await
    }
}
