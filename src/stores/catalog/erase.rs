//! What erasure does to a catalog store's rows, by key: delete them (an object-backed store's
//! objects first, checked gone, then their rows, so a retry after a crash finds both or only the
//! row, never an orphaned object); blank their personal columns (a row still referenced by
//! another store is kept blanked, the others deleted); or keep them restricted under a legal
//! obligation.
use chrono::{DateTime, Utc};
use sea_query::{Alias, CommonTableExpression, Expr, Func, Query, SimpleExpr, WithClause, WithQuery};

use super::{time, CatalogStore};
use crate::{
    catalog::TimeFormat,
    db::Backend,
    stores::{objects, query, table::CHUNK, Erasure, Probe, StoreResult},
};

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

    /// Whether a record of the referencing store names the row, or `None`.
    pub(super) fn referenced(&self) -> Option<SimpleExpr> {
        let r = self.entry.kept_while_referenced_by.as_ref()?;
        let (table, tenant) = self.wiring.referenced_in.as_ref()?;
        let t = &self.entry.table;
        let mut q = Query::select();
        q.expr(Expr::val(1i64))
            .from(query::table(table))
            .and_where(
                Expr::col(query::qualified(table, tenant)).equals(query::qualified(t, &self.entry.tenant)),
            )
            .and_where(
                Expr::col(query::qualified(table, &r.column)).equals(query::qualified(t, &self.entry.key)),
            );
        Some(Expr::exists(q))
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
        let backend = self.rows.backend();
        let not_yet = self
            .blanked
            .iter()
            .map(|c| query::col(c).is_not_null())
            .reduce(SimpleExpr::or)
            .unwrap_or_else(|| Expr::cust("1 = 0"));
        let referenced = self.referenced();
        let mut n = 0;
        for chunk in keys.chunks(CHUNK) {
            let mut kept = Query::update();
            kept.table(query::table(&self.entry.table));
            for c in &self.blanked {
                kept.value(Alias::new(c), Expr::cust("NULL"));
            }
            if let (Some(col), Some(now)) = (&self.entry.erased_at_column, now) {
                let at = time::value(self.entry.time_format, backend, now);
                kept.value(Alias::new(col), Func::coalesce([query::col(col).into(), at]));
            }
            kept.and_where(self.rows.by_keys(tenant, chunk)).and_where(not_yet.clone());
            if let Some(r) = &referenced {
                kept.and_where(r.clone());
            }
            let Some(r) = &referenced else {
                n += self.rows.execute(&kept).await?;
                continue;
            };
            let mut gone = Query::delete();
            gone.from_table(query::table(&self.entry.table))
                .and_where(self.rows.by_keys(tenant, chunk))
                .and_where(r.clone().not());
            n += match backend {
                // One statement: the same atomicity as the transaction, without its BEGIN and
                // COMMIT round trips. Both parts read one snapshot; their rows are disjoint
                // (referenced or not).
                Backend::Postgres => {
                    self.rows.fetch_count(&blank_and_delete(&self.entry.key, kept, gone)).await?
                }
                Backend::Sqlite => {
                    let mut tx = self.rows.db.begin_write().await?;
                    let changed = self.rows.execute_in(&mut tx, &kept).await?
                        + self.rows.execute_in(&mut tx, &gone).await?;
                    tx.commit().await?;
                    changed
                }
            };
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
        let mut restricted = 0;
        if self.restricts_in_ledger() {
            let present =
                self.rows.candidates(&Probe { tenant, keys: keys.to_vec(), ..Default::default() }).await?;
            let present: Vec<String> = present.into_iter().map(|r| r.key).collect();
            restricted = self.restrict_in_ledger(tenant, &present, now).await?;
        }
        if let Some(col) = self.entry.retain.as_ref().and_then(|r| r.restriction_column.as_ref()) {
            let at = time::value(self.entry.time_format, self.rows.backend(), now);
            for chunk in keys.chunks(CHUNK) {
                let mut q = Query::update();
                q.table(query::table(&self.entry.table))
                    .value(Alias::new(col), Func::coalesce([query::col(col).into(), at.clone()]))
                    .and_where(self.rows.by_keys(tenant, chunk));
                restricted += self.rows.execute(&q).await?;
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

/// Postgres: `kept` (the blanking `UPDATE`) and `gone` (the `DELETE` of rows nobody references)
/// as data-modifying `WITH` parts of one statement that counts the rows both changed (`n`).
fn blank_and_delete(
    key: &str,
    mut kept: sea_query::UpdateStatement,
    mut gone: sea_query::DeleteStatement,
) -> WithQuery {
    kept.returning_col(Alias::new(key));
    gone.returning_col(Alias::new(key));
    let mut count = Query::select();
    count.expr_as(Expr::cust("(SELECT COUNT(*) FROM kept) + (SELECT COUNT(*) FROM gone)"), Alias::new("n"));
    WithClause::new()
        .cte(CommonTableExpression::new().query(kept).table_name(Alias::new("kept")).to_owned())
        .cte(CommonTableExpression::new().query(gone).table_name(Alias::new("gone")).to_owned())
        .to_owned()
        .query(count)
}
