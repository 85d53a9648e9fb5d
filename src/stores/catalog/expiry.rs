//! The retention sweep's queries on a catalog store: the tenants it holds, and its records past
//! the tenant's period, counted, listed (with the identifiers a litigation hold may cover) and
//! erased in bounded batches.
//!
//! A record is past its period when its time column is before the cutoff. A blanked row kept
//! while another store references it is past it only once nothing does; a row kept under a
//! legal obligation and restricted (its subject asked for erasure) goes as soon as the legal
//! minimum (`retain.years`) has passed, whatever longer period the tenant keeps for everyone else.
use chrono::{DateTime, Months, Utc};
use sea_query::{Alias, Expr, ExprTrait, Func, Order, Query, SimpleExpr};
use sqlx::Row;

use super::{time, CatalogStore};
use crate::{
    catalog::ErasureMode,
    resolve::IdentKind,
    stores::{query, ExpiredRecord, Expiry, StoreResult},
};

impl CatalogStore {
    /// The condition of the tenant's expired rows; `None` without a time column.
    async fn expired(&self, e: &Expiry<'_>) -> StoreResult<Option<SimpleExpr>> {
        let Some(col) = self.entry.time_column.as_ref() else { return Ok(None) };
        let format = self.entry.time_format;
        let backend = self.rows.backend();
        let at = |t| time::value(format, backend, t);
        let time = || query::col(col);
        let before_cutoff = time().lt(at(e.cutoff));
        let mut cond = self.rows.in_tenant(e.tenant).and(time().is_not_null());
        match (self.entry.erasure, &self.entry.retain) {
            (ErasureMode::Retain, Some(retain)) => {
                let legal: DateTime<Utc> = e
                    .now
                    .checked_sub_months(Months::new(retain.years * 12))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC);
                let restricted = match &self.rows.cleared {
                    Some(restricted) => Some(restricted.clone()),
                    None if self.restricts_in_ledger() => {
                        let keys = self.restricted_keys(e.tenant).await?;
                        (!keys.is_empty()).then(|| {
                            query::col(&self.entry.key)
                                .is_in(keys.iter().map(|k| self.rows.value(&self.entry.key, k)))
                        })
                    }
                    None => None,
                };
                cond = match restricted {
                    Some(r) => cond.and(before_cutoff.or(r.and(time().lt(at(legal))))),
                    None => cond.and(before_cutoff),
                };
            }
            (ErasureMode::Blank, _) => {
                let cleared = self.rows.cleared.clone().unwrap_or_else(|| Expr::cust("1 = 0"));
                cond = cond.and(before_cutoff);
                cond = match self.referenced() {
                    // Personal data left, or a bare row nothing needs any more.
                    Some(r) => cond.and(cleared.not().or(r.not())),
                    None => cond.and(cleared.not()),
                };
            }
            _ => cond = cond.and(before_cutoff),
        }
        Ok(Some(cond))
    }

    /// Up to `limit` tenants after `after`, in order: one index probe each
    /// (`MIN(tenant) WHERE tenant > $1`), so millions of rows and few tenants cost a few lookups.
    pub(super) async fn tenants_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        let t = &self.entry.tenant;
        let mut out = Vec::new();
        let mut last = after.unwrap_or("").to_owned();
        while out.len() < limit {
            let mut q = self.rows.select();
            q.expr(self.rows.text_of(Func::min(query::col(t)).into(), t))
                .and_where(query::col(t).gt(self.rows.value(t, &last)));
            let row = self.rows.fetch_one(&q).await?;
            let Some(next) = row.try_get::<Option<String>, _>(0)? else { break };
            last = next.clone();
            out.push(next);
        }
        Ok(out)
    }

    pub(super) async fn count_expired_rows(&self, expiry: &Expiry<'_>) -> StoreResult<u64> {
        let Some(cond) = self.expired(expiry).await? else { return Ok(0) };
        let mut q = self.rows.select();
        q.expr(Func::count(Expr::cust("*"))).and_where(cond);
        Ok(self.rows.fetch_one(&q).await?.try_get::<i64, _>(0)? as u64)
    }

    /// The account id of a row: its own column, or its linked record's (same database).
    fn account_expr(&self) -> SimpleExpr {
        if self.rows.identifiers.iter().any(|(_, k)| *k == IdentKind::AccountId) {
            return self.first_column(IdentKind::AccountId);
        }
        match (&self.wiring.link_account, &self.entry.link) {
            (Some(l), Some(link)) => {
                let mut q = Query::select();
                q.expr(Expr::col(query::qualified(&l.table, &l.account_column)).cast_as(Alias::new("TEXT")))
                    .from(query::table(&l.table))
                    .and_where(
                        Expr::col(query::qualified(&l.table, &l.tenant))
                            .equals(query::qualified(&self.entry.table, &self.entry.tenant)),
                    )
                    .and_where(
                        Expr::col(query::qualified(&l.table, &l.key))
                            .equals(query::qualified(&self.entry.table, &link.column)),
                    );
                SimpleExpr::SubQuery(None, Box::new(q.into_sub_query_statement()))
            }
            _ => Expr::cust("NULL"),
        }
    }

    pub(super) async fn list_expired_rows(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        let Some(cond) = self.expired(expiry).await? else { return Ok(Vec::new()) };
        let key = &self.entry.key;
        let key_text = self.rows.text(key);
        let mut q = self.rows.select();
        q.expr(self.rows.text_of(Expr::col(query::qualified(&self.entry.table, key)).into(), key))
            .expr(self.account_expr())
            .expr(self.first_column(IdentKind::Email))
            .expr(self.first_column(IdentKind::Phone))
            .and_where(cond)
            .and_where(key_text.clone().gt(after.unwrap_or("")))
            .order_by_expr(key_text, Order::Asc)
            .limit(limit as u64);
        let rows = self.rows.fetch_all(&q).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(ExpiredRecord {
                key: row.try_get(0)?,
                account_id: row.try_get(1)?,
                email: row.try_get(2)?,
                phone: row.try_get(3)?,
            });
        }
        Ok(out)
    }

    /// Up to `limit` expired rows in one short transaction: one statement where rows are simply
    /// deleted; otherwise their keys, then the erasure by key (objects first, or blank).
    pub(super) async fn erase_expired_rows(&self, expiry: &Expiry<'_>, limit: usize) -> StoreResult<u64> {
        let Some(cond) = self.expired(expiry).await? else { return Ok(0) };
        let key = &self.entry.key;
        let mut expired = self.rows.select();
        expired.column(Alias::new(key)).and_where(cond).limit(limit as u64);
        if self.entry.objects.is_none()
            && self.entry.erasure != ErasureMode::Blank
            && !self.restricts_in_ledger()
        {
            let mut q = Query::delete();
            q.from_table(query::table(&self.entry.table))
                .and_where(self.rows.in_tenant(expiry.tenant))
                .and_where(query::col(key).in_subquery(expired));
            return Ok(self.rows.execute(&q).await?);
        }
        let mut q = self.rows.select();
        q.expr(self.rows.text(key)).and_where(query::col(key).in_subquery(expired));
        let keys: Vec<String> = self
            .rows
            .fetch_all(&q)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        use crate::stores::Retention;
        self.erase_records(expiry.tenant, &keys).await
    }
}
