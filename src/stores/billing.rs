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
    export_rows,
    reference::Tables,
    sql::{
        delete_keys, identifier_columns, move_phone, phone_move, phone_moved, tenants, Expired, Ident, Key,
        Predicate,
    },
    Erasure, ExpiredRecord, Expiry, ExportSink, Holdings, LegalHold, Rectification, StoreAdapter,
    StoreResult,
};
use crate::{
    clock::{from_millis, to_millis},
    db::Db,
    domain::{legal_minimum, Corrections, Period, Subject, RETENTION_MONTHS_BILLING},
};

/// Stated on every billing outcome that keeps data.
pub const BILLING_RETENTION_BASIS: &str =
    "legal_obligation: billing records are kept 7 years from creation (tax and accounting law); restricted until then";

/// Stated on a billing outcome of a rectification that corrected rows under the hold.
pub const BILLING_RECTIFIED_BASIS: &str =
    "legal_obligation: billing records are kept 7 years from creation (tax and accounting law); corrected in place, they stay under the hold";

pub struct BillingStore {
    db: Db,
    table: String,
    keys: Vec<Key>,
}

impl BillingStore {
    pub fn new(db: Db, t: &Tables) -> Self {
        Self {
            db,
            table: t.billing.clone(),
            keys: vec![
                Key::Column("account_id", Ident::AccountId),
                Key::Column("caller_phone", Ident::Phone),
            ],
        }
    }
}

impl BillingStore {
    fn expired(&self, e: &Expiry<'_>) -> Expired {
        let legal =
            legal_minimum("billing").unwrap_or(Period::Months(RETENTION_MONTHS_BILLING)).before(e.now);
        Expired::new(
            e.tenant,
            "(created_at < $2 OR (restricted_at IS NOT NULL AND created_at < $3))",
            vec![to_millis(e.cutoff), to_millis(legal)],
        )
    }
}

#[async_trait]
impl StoreAdapter for BillingStore {
    fn name(&self) -> &'static str {
        "billing"
    }

    fn applies_to(&self, subject: &Subject) -> bool {
        Predicate::applies(subject, &self.keys)
    }

    async fn preview(&self, subject: &Subject) -> StoreResult<Holdings> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Holdings::default());
        };
        let (records, _) = p.count(&self.db, &self.table, None, "").await?;
        Ok(Holdings { records, bytes: 0, under_legal_hold: records > 0 })
    }

    async fn erase(&self, subject: &Subject, now: DateTime<Utc>) -> StoreResult<Erasure> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Erasure::Erased { found: 0, affected: 0 });
        };
        let mut tx = self.db.begin_write().await?;
        let sql = format!(
            "UPDATE {} SET restricted_at = COALESCE(restricted_at, ${}) WHERE {}",
            self.table,
            p.next_param(),
            p.sql
        );
        let restricted = p.query(&sql).bind(to_millis(now)).execute(&mut *tx).await?.rows_affected();
        let newest_sql = format!("SELECT MAX(created_at) FROM {} WHERE {}", self.table, p.sql);
        let newest: Option<i64> = p.query_as::<(Option<i64>,)>(&newest_sql).fetch_one(&mut *tx).await?.0;
        tx.commit().await?;
        match newest {
            None => Ok(Erasure::Erased { found: 0, affected: 0 }),
            Some(newest) => Ok(Erasure::Retained {
                found: restricted,
                affected: restricted,
                basis: BILLING_RETENTION_BASIS.to_owned(),
                until: from_millis(newest) + Months::new(RETENTION_MONTHS_BILLING),
            }),
        }
    }

    /// Every row left is restricted.
    async fn verify_erased(&self, subject: &Subject) -> StoreResult<bool> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(true);
        };
        let (unrestricted, _) = p.count(&self.db, &self.table, None, " AND restricted_at IS NULL").await?;
        Ok(unrestricted == 0)
    }

    /// Billing rows hold the caller's phone; names and emails live on the account.
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
        let mut tx = self.db.begin_write().await?;
        let moved = move_phone(&mut *tx, &self.table, subject.tenant.as_str(), old, new).await?;
        // The hold runs from the newest of the subject's records, as found after the correction
        // (a retry that moves nothing still reports it).
        let newest = match Predicate::for_subject(&corrections.apply_to(subject), &self.keys) {
            Some(p) => {
                let sql = format!("SELECT MAX(created_at) FROM {} WHERE {}", self.table, p.sql);
                p.query_as::<(Option<i64>,)>(&sql).fetch_one(&mut *tx).await?.0
            }
            None => None,
        };
        tx.commit().await?;
        Ok(Rectification {
            found: moved,
            affected: moved,
            hold: newest.map(|newest| LegalHold {
                basis: BILLING_RECTIFIED_BASIS.to_owned(),
                until: from_millis(newest) + Months::new(RETENTION_MONTHS_BILLING),
            }),
        })
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

    /// The subject's restricted rows, by id.
    async fn retained_records(&self, subject: &Subject) -> StoreResult<Vec<String>> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT id FROM {} WHERE {} AND restricted_at IS NOT NULL ORDER BY id",
            self.table, p.sql
        );
        Ok(p.query_as::<(String,)>(&sql).fetch_all(self.db.pool()).await?.into_iter().map(|r| r.0).collect())
    }

    /// Restricted rows are exported too: a hold limits their use, not the subject's access.
    async fn export(&self, subject: &Subject, sink: &mut dyn ExportSink) -> StoreResult<u64> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(0);
        };
        export_rows(&self.db, &self.table, &p, "", sink).await
    }
}
