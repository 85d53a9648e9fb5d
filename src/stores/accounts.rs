//! The `accounts` store: the account row of the subject. On deletion its personal columns are
//! erased; the row itself is deleted unless billing records still reference it (they are kept
//! 7 years and must keep pointing at an account id).
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{
    reference::Tables,
    sql::{Ident, Key, Predicate},
    Erasure, Holdings, StoreAdapter, StoreResult,
};
use crate::{
    db::Db,
    domain::{AccountId, Email, Phone, Subject},
};

/// Rows that still hold personal data (an erased row keeps only its id and tenant).
const NOT_ERASED: &str = " AND (email IS NOT NULL OR phone IS NOT NULL OR name IS NOT NULL)";

pub struct AccountsStore {
    db: Db,
    table: String,
    billing: String,
    keys: Vec<Key>,
}

impl AccountsStore {
    pub fn new(db: Db, t: &Tables) -> Self {
        Self {
            db,
            table: t.accounts.clone(),
            billing: t.billing.clone(),
            keys: vec![
                Key::Column("id", Ident::AccountId),
                Key::Column("email", Ident::Email),
                Key::Column("phone", Ident::Phone),
            ],
        }
    }
}

#[async_trait]
impl StoreAdapter for AccountsStore {
    fn name(&self) -> &'static str {
        "accounts"
    }

    fn applies_to(&self, subject: &Subject) -> bool {
        Predicate::applies(subject, &self.keys)
    }

    /// When exactly one live account matches, the subject gains its id, email and phone: a person
    /// named by email alone is still found in the stores keyed by phone or account.
    async fn resolve(&self, subject: Subject) -> StoreResult<Subject> {
        let Some(p) = Predicate::for_subject(&subject, &self.keys) else {
            return Ok(subject);
        };
        let sql = format!("SELECT id, email, phone FROM {} WHERE {}{NOT_ERASED} LIMIT 2", self.table, p.sql);
        let rows = p.query(&sql).fetch_all(self.db.pool()).await?;
        let [row] = rows.as_slice() else {
            return Ok(subject);
        };
        let id: String = row.try_get("id")?;
        let email: Option<String> = row.try_get("email")?;
        let phone: Option<String> = row.try_get("phone")?;
        // Stored values that do not parse are left out rather than trusted.
        Ok(subject.enriched_with(
            AccountId::parse("accounts.id", &id).ok(),
            email.and_then(|e| Email::parse("accounts.email", &e).ok()),
            phone.and_then(|p| Phone::parse("accounts.phone", &p).ok()),
        ))
    }

    async fn preview(&self, subject: &Subject) -> StoreResult<Holdings> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Holdings::default());
        };
        let (records, _) = p.count(&self.db, &self.table, None, NOT_ERASED).await?;
        Ok(Holdings { records, bytes: 0, under_legal_hold: false })
    }

    async fn erase(&self, subject: &Subject, _now: DateTime<Utc>) -> StoreResult<Erasure> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Erasure::Erased { found: 0, affected: 0 });
        };
        let billed = format!(
            "EXISTS (SELECT 1 FROM {b} WHERE {b}.tenant_id = {a}.tenant_id AND {b}.account_id = {a}.id)",
            b = self.billing,
            a = self.table
        );
        let mut tx = self.db.begin_write().await?;
        let kept = format!(
            "UPDATE {} SET email = NULL, phone = NULL, name = NULL WHERE {}{NOT_ERASED} AND {billed}",
            self.table, p.sql
        );
        let erased = p.query(&kept).execute(&mut *tx).await?.rows_affected();
        let gone = format!("DELETE FROM {} WHERE {} AND NOT {billed}", self.table, p.sql);
        let deleted = p.query(&gone).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(Erasure::Erased { found: erased + deleted, affected: erased + deleted })
    }

    async fn verify_erased(&self, subject: &Subject) -> StoreResult<bool> {
        Ok(self.preview(subject).await?.records == 0)
    }
}
