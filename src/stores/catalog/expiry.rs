//! The retention sweep's queries on a catalog store: the tenants it holds, and its records past
//! the tenant's period, counted, listed (with the identifiers a litigation hold may cover) and
//! erased in bounded batches.
//!
//! A record is past its period when its time column is before the cutoff. A blanked row kept
//! while another store references it is past it only once nothing does; a row kept under a
//! legal obligation and restricted (its subject asked for erasure) goes as soon as the legal
//! minimum (`retain.years`) has passed, whatever longer period the tenant keeps for everyone else.
use chrono::{DateTime, Months, Utc};
use sqlx::Row;

use super::{time, CatalogStore};
use crate::{
    catalog::ErasureMode,
    resolve::IdentKind,
    stores::{ExpiredRecord, Expiry, StoreResult},
};

/// A value an expiry condition binds, after the tenant.
pub(super) enum Bind {
    Time(time::TimeValue),
    Text(String),
}

impl CatalogStore {
    /// The condition of the tenant's expired rows (over `$1` the tenant and `$2…` the values
    /// returned, in order); `None` without a time column.
    async fn expired(&self, e: &Expiry<'_>) -> StoreResult<Option<(String, Vec<Bind>)>> {
        let Some(col) = self.entry.time_column.as_ref() else { return Ok(None) };
        let format = self.entry.time_format;
        let backend = self.rows.db.backend();
        let p = |n| time::param(format, backend, n);
        let mut binds = vec![Bind::Time(time::TimeValue::of(format, e.cutoff))];
        let mut cond = format!("{} AND {col} IS NOT NULL AND ", self.rows.in_tenant());
        match (self.entry.erasure, &self.entry.retain) {
            (ErasureMode::Retain, Some(retain)) => {
                let legal: DateTime<Utc> = e
                    .now
                    .checked_sub_months(Months::new(retain.years * 12))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC);
                let legal = Bind::Time(time::TimeValue::of(format, legal));
                match &self.rows.cleared {
                    Some(restricted) => {
                        cond.push_str(&format!(
                            "({col} < {} OR (({restricted}) AND {col} < {}))",
                            p(2),
                            p(3)
                        ));
                        binds.push(legal);
                    }
                    None if self.restricts_in_ledger() => {
                        let keys = self.restricted_keys(e.tenant).await?;
                        if keys.is_empty() {
                            cond.push_str(&format!("{col} < {}", p(2)));
                        } else {
                            let list = self.rows.params(&self.entry.key, 4, keys.len());
                            cond.push_str(&format!(
                                "({col} < {} OR ({} IN ({list}) AND {col} < {}))",
                                p(2),
                                self.entry.key,
                                p(3)
                            ));
                            binds.push(legal);
                            binds.extend(keys.into_iter().map(Bind::Text));
                        }
                    }
                    None => cond.push_str(&format!("{col} < {}", p(2))),
                }
            }
            (ErasureMode::Blank, _) => {
                cond.push_str(&format!("{col} < {}", p(2)));
                let cleared = self.rows.cleared.clone().unwrap_or_else(|| "1 = 0".into());
                match self.referenced() {
                    // Personal data left, or a bare row nothing needs any more.
                    Some(r) => cond.push_str(&format!(" AND (NOT ({cleared}) OR NOT {r})")),
                    None => cond.push_str(&format!(" AND NOT ({cleared})")),
                }
            }
            _ => cond.push_str(&format!("{col} < {}", p(2))),
        }
        Ok(Some((cond, binds)))
    }

    fn query<'q>(
        sql: &'q str,
        tenant: &'q str,
        binds: &'q [Bind],
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        binds.iter().fold(sqlx::query(sql).bind(tenant), |q, b| match b {
            Bind::Time(t) => t.bind(q),
            Bind::Text(s) => q.bind(s.as_str()),
        })
    }

    /// Up to `limit` tenants after `after`, in order: one index probe each
    /// (`MIN(tenant) WHERE tenant > $1`), so millions of rows and few tenants cost a few lookups.
    pub(super) async fn tenants_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        let t = &self.entry.tenant;
        let sql = format!(
            "SELECT {} FROM {} WHERE {t} > {}",
            self.rows.text(&format!("MIN({t})")),
            self.entry.table,
            self.rows.param(t, 1)
        );
        let mut out = Vec::new();
        let mut last = after.unwrap_or("").to_owned();
        while out.len() < limit {
            let row = sqlx::query(&sql).bind(&last).fetch_one(self.rows.db.pool()).await?;
            let Some(next) = row.try_get::<Option<String>, _>(0)? else { break };
            last = next.clone();
            out.push(next);
        }
        Ok(out)
    }

    pub(super) async fn count_expired_rows(&self, expiry: &Expiry<'_>) -> StoreResult<u64> {
        let Some((cond, times)) = self.expired(expiry).await? else { return Ok(0) };
        let sql = format!("SELECT COUNT(*) FROM {} WHERE {cond}", self.entry.table);
        let row = Self::query(&sql, expiry.tenant, &times).fetch_one(self.rows.db.pool()).await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    /// The account id of a row: its own column, or its linked record's (same database).
    fn account_expr(&self) -> String {
        if self.rows.identifiers.iter().any(|(_, k)| *k == IdentKind::AccountId) {
            return self.first_column(IdentKind::AccountId);
        }
        match (&self.wiring.link_account, &self.entry.link) {
            (Some(l), Some(link)) => format!(
                "(SELECT {} FROM {lt} c WHERE c.{lten} = {t}.{ten} AND c.{lkey} = {t}.{lcol})",
                self.rows.text(&format!("c.{}", l.account_column)),
                lt = l.table,
                lten = l.tenant,
                lkey = l.key,
                t = self.entry.table,
                ten = self.entry.tenant,
                lcol = link.column
            ),
            _ => "NULL".into(),
        }
    }

    pub(super) async fn list_expired_rows(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        let Some((cond, times)) = self.expired(expiry).await? else { return Ok(Vec::new()) };
        let key = &self.entry.key;
        let after_param = times.len() + 2;
        let sql = format!(
            "SELECT {}, {}, {}, {} FROM {} WHERE {cond} AND {} > {} ORDER BY {} LIMIT {limit}",
            self.rows.text(&format!("{}.{key}", self.entry.table)),
            self.account_expr(),
            self.first_column(IdentKind::Email),
            self.first_column(IdentKind::Phone),
            self.entry.table,
            self.rows.text(key),
            format_args!("${after_param}"),
            self.rows.text(key),
        );
        let rows = Self::query(&sql, expiry.tenant, &times)
            .bind(after.unwrap_or(""))
            .fetch_all(self.rows.db.pool())
            .await?;
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
        let Some((cond, times)) = self.expired(expiry).await? else { return Ok(0) };
        let t = &self.entry.table;
        let key = &self.entry.key;
        if self.entry.objects.is_none()
            && self.entry.erasure != ErasureMode::Blank
            && !self.restricts_in_ledger()
        {
            let sql = format!(
                "DELETE FROM {t} WHERE {} AND {key} IN (SELECT {key} FROM {t} WHERE {cond} LIMIT {limit})",
                self.rows.in_tenant()
            );
            return Ok(Self::query(&sql, expiry.tenant, &times)
                .execute(self.rows.db.pool())
                .await?
                .rows_affected());
        }
        let sql = format!("SELECT {} FROM {t} WHERE {cond} LIMIT {limit}", self.rows.text(key));
        let keys: Vec<String> = Self::query(&sql, expiry.tenant, &times)
            .fetch_all(self.rows.db.pool())
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        use crate::stores::StoreAdapter;
        self.erase_records(expiry.tenant, &keys).await
    }
}
