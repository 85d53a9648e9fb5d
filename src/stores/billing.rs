//! The `billing` store: billing records are kept 7 years from their creation (tax and accounting
//! law), so a deletion erases nothing here. It marks the subject's rows restricted (no use but the
//! legal one) and reports RETAINED with the basis and the date the newest record may go.
use async_trait::async_trait;
use chrono::{DateTime, Months, Utc};

use super::{
    reference::Tables,
    sql::{Ident, Key, Predicate},
    Erasure, Holdings, StoreAdapter, StoreResult,
};
use crate::{
    clock::{from_millis, to_millis},
    db::Db,
    domain::{Subject, RETENTION_MONTHS_BILLING},
};

/// Stated on every billing outcome that keeps data.
pub const BILLING_RETENTION_BASIS: &str =
    "legal_obligation: billing records are kept 7 years from creation (tax and accounting law); restricted until then";

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
}
