//! What erasure does to a catalog store's rows, by key: delete them (an object-backed store's
//! objects first, checked gone, then their rows, so a retry after a crash finds both or only the
//! row, never an orphaned object); blank their personal columns (a row still referenced by
//! another store is kept blanked, the others deleted); or keep them restricted under a legal
//! obligation.
use chrono::{DateTime, Utc};

use super::{time, CatalogStore};
use crate::{
    catalog::TimeFormat,
    stores::{objects, Erasure, Probe, StoreResult},
};

/// Keys per statement: well under SQLite's and Postgres' parameter limits.
const CHUNK: usize = 500;

impl CatalogStore {
    /// Deletes the tenant's rows with these keys (their objects first); returns how many.
    pub(super) async fn delete(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        if self.entry.objects.is_some() {
            let rows =
                self.rows.candidates(&Probe { tenant, keys: keys.to_vec(), ..Default::default() }).await?;
            let objects: Vec<&str> = rows.iter().filter_map(|r| r.object.as_deref()).collect();
            objects::delete_all(self.objects()?, &objects).await?;
            let keys: Vec<String> = rows.into_iter().map(|r| r.key).collect();
            return self.rows.delete(tenant, &keys).await;
        }
        self.rows.delete(tenant, keys).await
    }

    /// `EXISTS` a record of the referencing store naming the row (unaliased table), or `None`.
    pub(super) fn referenced(&self) -> Option<String> {
        let r = self.entry.kept_while_referenced_by.as_ref()?;
        let (table, tenant) = self.wiring.referenced_in.as_ref()?;
        let t = &self.entry.table;
        Some(format!(
            "EXISTS (SELECT 1 FROM {table} WHERE {table}.{tenant} = {t}.{own_tenant} AND {table}.{col} = {t}.{key})",
            col = r.column,
            own_tenant = self.entry.tenant,
            key = self.entry.key
        ))
    }

    /// Blanks the personal columns of the tenant's rows with these keys (and marks when, when
    /// `now` is given and the entry has `erased_at_column`); a row no other store references any
    /// more is deleted instead. One transaction per chunk; returns the rows changed or deleted.
    pub(super) async fn blank(
        &self,
        tenant: &str,
        keys: &[String],
        now: Option<DateTime<Utc>>,
    ) -> StoreResult<u64> {
        let backend = self.rows.db.backend();
        let format = self.entry.time_format;
        let mut set: Vec<String> = self.blanked.iter().map(|c| format!("{c} = NULL")).collect();
        let mark = match (&self.entry.erased_at_column, now) {
            (Some(col), Some(now)) => {
                set.push(format!("{col} = COALESCE({col}, {})", time::param(format, backend, 2)));
                Some(time::TimeValue::of(format, now))
            }
            _ => None,
        };
        let first = if mark.is_some() { 3 } else { 2 };
        let not_yet =
            self.blanked.iter().map(|c| format!("{c} IS NOT NULL")).collect::<Vec<_>>().join(" OR ");
        let referenced = self.referenced();
        let mut n = 0;
        for chunk in keys.chunks(CHUNK) {
            let kept = format!(
                "UPDATE {} SET {} WHERE {} AND ({not_yet}){}",
                self.entry.table,
                set.join(", "),
                self.rows.by_keys(first, chunk.len()),
                referenced.as_ref().map(|r| format!(" AND {r}")).unwrap_or_default()
            );
            let mut q = sqlx::query(&kept).bind(tenant);
            if let Some(m) = &mark {
                q = m.bind(q);
            }
            let q = chunk.iter().fold(q, |q, k| q.bind(k.as_str()));
            let mut tx = self.rows.db.begin_write().await?;
            n += q.execute(&mut *tx).await?.rows_affected();
            if let Some(r) = &referenced {
                let gone = format!(
                    "DELETE FROM {} WHERE {} AND NOT {r}",
                    self.entry.table,
                    self.rows.by_keys(2, chunk.len())
                );
                let q = chunk.iter().fold(sqlx::query(&gone).bind(tenant), |q, k| q.bind(k.as_str()));
                n += q.execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
        }
        Ok(n)
    }

    /// Restricts the rows (the first restriction's time stays) and reports the obligation they
    /// are kept under, until `retain.years` after the newest of them.
    pub(super) async fn restrict(
        &self,
        tenant: &str,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<Erasure> {
        let backend = self.rows.db.backend();
        let format = self.entry.time_format;
        let mut restricted = 0;
        if self.restricts_in_ledger() {
            let present =
                self.rows.candidates(&Probe { tenant, keys: keys.to_vec(), ..Default::default() }).await?;
            let present: Vec<String> = present.into_iter().map(|r| r.key).collect();
            restricted = self.restrict_in_ledger(tenant, &present, now).await?;
        }
        if let Some(col) = self.entry.retain.as_ref().and_then(|r| r.restriction_column.as_ref()) {
            let at = time::TimeValue::of(format, now);
            for chunk in keys.chunks(CHUNK) {
                let sql = format!(
                    "UPDATE {} SET {col} = COALESCE({col}, {}) WHERE {}",
                    self.entry.table,
                    time::param(format, backend, 2),
                    self.rows.by_keys(3, chunk.len())
                );
                let q = at.bind(sqlx::query(&sql).bind(tenant));
                let q = chunk.iter().fold(q, |q, k| q.bind(k.as_str()));
                restricted += q.execute(self.rows.db.pool()).await?.rows_affected();
            }
        }
        match self.hold(tenant, keys, "restricted until then").await? {
            None => Ok(Erasure::Erased { affected: 0 }),
            Some(hold) => {
                Ok(Erasure::Retained { affected: restricted, basis: hold.basis, until: hold.until })
            }
        }
    }

    /// Whether each time column's live type fits the entry's `time_format`.
    pub(super) fn check_time_types(&self) -> Vec<String> {
        let e = &self.entry;
        let columns = e
            .time_column
            .iter()
            .chain(&e.erased_at_column)
            .chain(e.retain.as_ref().and_then(|r| r.restriction_column.as_ref()));
        let mut problems = Vec::new();
        for col in columns {
            let Some(ty) = self.rows.column_type(col) else { continue };
            let ty = ty.to_ascii_lowercase();
            let integer = ty.contains("int");
            let native = ty.starts_with("timestamp") || ty == "date" || ty.starts_with("datetime");
            let text = ty.contains("text") || ty.contains("char");
            let fits = match e.time_format {
                TimeFormat::EpochMs | TimeFormat::EpochS => integer,
                TimeFormat::Iso8601 => text,
                TimeFormat::Timestamp => {
                    native || (self.rows.db.backend() == crate::db::Backend::Sqlite && text)
                }
            };
            // SQLite columns may be declared with no type at all: taken as they come.
            if !fits && !ty.is_empty() {
                problems.push(format!(
                    "table {}: column {col:?} is of type {ty}, which does not hold time_format = \"{}\" (epoch_ms and epoch_s need an integer, iso8601 text, timestamp a native timestamp)",
                    e.table, e.time_format.as_str()
                ));
            }
        }
        problems
    }
}
