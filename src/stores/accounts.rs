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
use sqlx::Row;

use super::{
    export_rows,
    reference::Tables,
    sql::{identifier_columns, params, tenants, Expired, Ident, Key, Predicate},
    CorrectionConflict, Erasure, ExpiredRecord, Expiry, ExportSink, Holdings, Rectification, StoreAdapter,
    StoreError, StoreResult,
};
use crate::{
    clock::to_millis,
    db::{Db, Tx},
    domain::{AccountId, Corrections, Email, Phone, Subject},
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

/// The account columns a correction sets: (column, field name in errors, new value).
fn corrected_columns(c: &Corrections) -> Vec<(&'static str, &'static str, &str)> {
    let mut v = Vec::new();
    if let Some(n) = &c.name {
        v.push(("name", "corrections.name", n.as_str()));
    }
    if let Some(e) = &c.email {
        v.push(("email", "corrections.email", e.as_str()));
    }
    if let Some(p) = &c.phone {
        v.push(("phone", "corrections.phone", p.as_str()));
    }
    v
}

impl AccountsStore {
    /// `EXISTS` a billing record of the account row (of `self.table`, unaliased).
    fn billed(&self) -> String {
        format!(
            "EXISTS (SELECT 1 FROM {b} WHERE {b}.tenant_id = {a}.tenant_id AND {b}.account_id = {a}.id)",
            b = self.billing,
            a = self.table
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

    /// Live account rows the subject's identifiers match.
    async fn matches<'c, E>(&self, executor: E, p: &Predicate) -> sqlx::Result<u64>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        let sql = format!("SELECT COUNT(*) FROM {} WHERE {}{NOT_ERASED}", self.table, p.sql);
        let n: i64 = p.query_as::<(i64,)>(&sql).fetch_one(executor).await?.0;
        Ok(n as u64)
    }

    /// The first corrected identifier (email, phone) that a live account other than the
    /// subject's own already has.
    async fn taken(&self, tx: &mut Tx, p: &Predicate, c: &Corrections) -> sqlx::Result<Option<&'static str>> {
        for (column, field, value) in corrected_columns(c) {
            if column == "name" {
                continue; // names are not identifiers: two people may share one
            }
            // COALESCE: a row with a NULL key column makes the predicate NULL, not false, and
            // `NOT NULL` would hide that row from the check.
            let sql = format!(
                "SELECT COUNT(*) FROM {} WHERE tenant_id = $1 AND {column} = ${} AND NOT COALESCE({}, FALSE)",
                self.table,
                p.next_param(),
                p.sql
            );
            let n: i64 = p.query_as::<(i64,)>(&sql).bind(value).fetch_one(&mut **tx).await?.0;
            if n > 0 {
                return Ok(Some(field));
            }
        }
        Ok(None)
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

    async fn erase(&self, subject: &Subject, now: DateTime<Utc>) -> StoreResult<Erasure> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Erasure::Erased { found: 0, affected: 0 });
        };
        let billed = self.billed();
        let mut tx = self.db.begin_write().await?;
        let kept = format!(
            "UPDATE {} SET email = NULL, phone = NULL, name = NULL, terminated_at = COALESCE(terminated_at, ${}) \
             WHERE {}{NOT_ERASED} AND {billed}",
            self.table,
            p.next_param(),
            p.sql
        );
        let erased = p.query(&kept).bind(to_millis(now)).execute(&mut *tx).await?.rows_affected();
        let gone = format!("DELETE FROM {} WHERE {} AND NOT {billed}", self.table, p.sql);
        let deleted = p.query(&gone).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(Erasure::Erased { found: erased + deleted, affected: erased + deleted })
    }

    async fn verify_erased(&self, subject: &Subject) -> StoreResult<bool> {
        Ok(self.preview(subject).await?.records == 0)
    }

    /// Every correctable field is an account column.
    fn holds_any_of(&self, _corrections: &Corrections) -> bool {
        true
    }

    async fn correction_conflict(
        &self,
        subject: &Subject,
        corrections: &Corrections,
    ) -> StoreResult<Option<CorrectionConflict>> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(None);
        };
        // A read-only look; a transaction only so both checks see one snapshot.
        let mut tx = self.db.pool().begin().await?;
        if self.matches(&mut *tx, &p).await? > 1 {
            return Ok(Some(CorrectionConflict::Ambiguous));
        }
        let taken = self.taken(&mut tx, &p, corrections).await?;
        tx.rollback().await?;
        Ok(taken.map(CorrectionConflict::Taken))
    }

    async fn rectify(
        &self,
        subject: &Subject,
        corrections: &Corrections,
        _now: DateTime<Utc>,
    ) -> StoreResult<Rectification> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(Rectification { found: 0, affected: 0, hold: None });
        };
        let columns = corrected_columns(corrections);
        let mut tx = self.db.begin_write().await?;
        let found = self.matches(&mut *tx, &p).await?;
        // Nothing matches: no account, or a retry after the identifiers it was found by changed.
        if found == 0 || columns.is_empty() {
            return Ok(Rectification { found, affected: 0, hold: None });
        }
        if found > 1 {
            return Err(StoreError::Fatal(
                "subject: the identifiers match more than one account; name the account by account_id".into(),
            ));
        }
        if let Some(field) = self.taken(&mut tx, &p, corrections).await? {
            return Err(StoreError::Fatal(format!(
                "{field}: another account of the tenant has had this value since the request was submitted"
            )));
        }
        let set = columns
            .iter()
            .enumerate()
            .map(|(i, (column, _, _))| format!("{column} = ${}", p.next_param() + i))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("UPDATE {} SET {set} WHERE {}{NOT_ERASED}", self.table, p.sql);
        let q = columns.iter().fold(p.query(&sql), |q, (_, _, value)| q.bind(*value));
        let affected = q.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(Rectification { found, affected, hold: None })
    }

    /// The account found under the corrected identifiers holds every new value, and no live
    /// account of the tenant is left under an old email or phone that was corrected.
    async fn verify_rectified(&self, subject: &Subject, corrections: &Corrections) -> StoreResult<bool> {
        let tenant = subject.tenant.as_str();
        for (column, old, new) in [
            (
                "email",
                subject.email.as_ref().map(|e| e.as_str()),
                corrections.email.as_ref().map(|e| e.as_str()),
            ),
            (
                "phone",
                subject.phone.as_ref().map(|p| p.as_str()),
                corrections.phone.as_ref().map(|p| p.as_str()),
            ),
        ] {
            let (Some(old), Some(new)) = (old, new) else { continue };
            if old == new {
                continue;
            }
            let sql = format!("SELECT COUNT(*) FROM {} WHERE tenant_id = $1 AND {column} = $2", self.table);
            let left: i64 = sqlx::query_scalar(&sql).bind(tenant).bind(old).fetch_one(self.db.pool()).await?;
            if left > 0 {
                return Ok(false);
            }
        }
        let columns = corrected_columns(corrections);
        let Some(p) = Predicate::for_subject(&corrections.apply_to(subject), &self.keys) else {
            return Ok(true);
        };
        if columns.is_empty() {
            return Ok(true);
        }
        let all_new = columns
            .iter()
            .enumerate()
            .map(|(i, (column, _, _))| format!("{column} = ${}", p.next_param() + i))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE {}{NOT_ERASED} AND NOT COALESCE({all_new}, FALSE)",
            self.table, p.sql
        );
        let q = columns.iter().fold(p.query_as::<(i64,)>(&sql), |q, (_, _, value)| q.bind(*value));
        Ok(q.fetch_one(self.db.pool()).await?.0 == 0)
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

    /// As a deletion erases: personal columns cleared where billing still references the row,
    /// the row deleted where nothing does. One transaction.
    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let (ids, billed) = (params(2, keys.len()), self.billed());
        let bind = |sql| keys.iter().fold(sqlx::query(sql).bind(tenant), |q, k| q.bind(k.as_str()));
        let kept = format!(
            "UPDATE {} SET email = NULL, phone = NULL, name = NULL WHERE tenant_id = $1 AND id IN ({ids}){NOT_ERASED} AND {billed}",
            self.table
        );
        let gone =
            format!("DELETE FROM {} WHERE tenant_id = $1 AND id IN ({ids}) AND NOT {billed}", self.table);
        let mut tx = self.db.begin_write().await?;
        let erased = bind(&kept).execute(&mut *tx).await?.rows_affected();
        let deleted = bind(&gone).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(erased + deleted)
    }

    /// An erased account (personal columns cleared, row kept for billing) holds nothing of the
    /// subject any more, so it is not exported.
    async fn export(&self, subject: &Subject, sink: &mut dyn ExportSink) -> StoreResult<u64> {
        let Some(p) = Predicate::for_subject(subject, &self.keys) else {
            return Ok(0);
        };
        export_rows(&self.db, &self.table, &p, NOT_ERASED, sink).await
    }
}
