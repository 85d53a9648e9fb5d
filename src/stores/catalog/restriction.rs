//! Restrictions kept in dsr's own ledger (`dsr_restrictions`), for a store kept under a legal
//! obligation whose table has no restriction column: the platform's table is never altered.
//! A restricted record reads as such (`CandidateRow::cleared`), expires at the legal minimum,
//! and its restriction goes with it.
use chrono::{DateTime, Utc};
use sea_query::{Alias, OnConflict, Order, Query, SimpleExpr};
use sqlx::Row;

use super::CatalogStore;
use crate::{
    catalog::ErasureMode,
    clock::to_millis,
    stores::{
        query::{self, Statement},
        table::CHUNK,
        CandidateRow, StoreError, StoreResult,
    },
};

/// At most this many of a tenant's ledger restrictions are looked at by one expiry query; the
/// rest are reached by later sweeps, once the first have gone.
pub(super) const EXPIRY_KEYS: usize = 10_000;

impl CatalogStore {
    /// Whether this store's restrictions live in the ledger.
    pub(super) fn restricts_in_ledger(&self) -> bool {
        self.entry.erasure == ErasureMode::Retain
            && self.entry.retain.as_ref().is_some_and(|r| r.restriction_column.is_none())
    }

    fn ledger(&self) -> StoreResult<&crate::db::Db> {
        self.wiring.ledger.as_ref().ok_or_else(|| {
            StoreError::Fatal(format!(
                "the {} store keeps restrictions in a ledger it was not given",
                self.name
            ))
        })
    }

    /// Runs a statement on the ledger.
    async fn on_ledger(&self, stmt: &impl Statement) -> StoreResult<Vec<sqlx::any::AnyRow>> {
        let ledger = self.ledger()?;
        let (sql, values) = stmt.build_for(ledger.backend());
        // Through `conn`: inside a resolution (`db::held`) the ledger may be the very database
        // whose connection the resolution holds.
        let mut conn = ledger.conn().await?;
        let rows = query::bind(&sql, &values).fetch_all(&mut *conn).await;
        Ok(conn.settle(rows)?)
    }

    /// The ledger rows of this store and tenant.
    fn mine(&self, tenant: &str) -> SimpleExpr {
        query::col("store").eq(self.name).and(query::col("tenant_id").eq(tenant))
    }

    /// Records the restriction of these keys (the first time stays); returns how many keys.
    pub(super) async fn restrict_in_ledger(
        &self,
        tenant: &str,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        for chunk in keys.chunks(CHUNK) {
            let mut q = Query::insert();
            q.into_table(Alias::new("dsr_restrictions"))
                .columns(["store", "tenant_id", "record_key", "restricted_at"].map(Alias::new))
                .on_conflict(
                    OnConflict::columns(["store", "tenant_id", "record_key"].map(Alias::new))
                        .do_nothing()
                        .to_owned(),
                );
            for k in chunk {
                q.values_panic([self.name.into(), tenant.into(), k.as_str().into(), to_millis(now).into()]);
            }
            self.on_ledger(&q).await?;
        }
        Ok(keys.len() as u64)
    }

    /// Marks the rows the ledger holds restricted.
    pub(super) async fn mark_restricted(&self, tenant: &str, rows: &mut [CandidateRow]) -> StoreResult<()> {
        let mut restricted = std::collections::BTreeSet::new();
        for chunk in rows.chunks(CHUNK) {
            let mut q = Query::select();
            q.column(Alias::new("record_key"))
                .from(Alias::new("dsr_restrictions"))
                .and_where(self.mine(tenant))
                .and_where(query::col("record_key").is_in(chunk.iter().map(|r| r.key.as_str())));
            for row in self.on_ledger(&q).await? {
                restricted.insert(row.try_get::<String, _>(0)?);
            }
        }
        for r in rows.iter_mut() {
            r.cleared = restricted.contains(&r.key);
        }
        Ok(())
    }

    /// Up to `EXPIRY_KEYS` of the tenant's restricted keys, in key order.
    pub(super) async fn restricted_keys(&self, tenant: &str) -> StoreResult<Vec<String>> {
        let mut q = Query::select();
        q.column(Alias::new("record_key"))
            .from(Alias::new("dsr_restrictions"))
            .and_where(self.mine(tenant))
            .order_by(Alias::new("record_key"), Order::Asc)
            .limit(EXPIRY_KEYS as u64);
        self.on_ledger(&q)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// Forgets the restrictions of records that have gone.
    pub(super) async fn forget_restrictions(&self, tenant: &str, keys: &[String]) -> StoreResult<()> {
        for chunk in keys.chunks(CHUNK) {
            let mut q = Query::delete();
            q.from_table(Alias::new("dsr_restrictions"))
                .and_where(self.mine(tenant))
                .and_where(query::col("record_key").is_in(chunk.iter().map(String::as_str)));
            self.on_ledger(&q).await?;
        }
        Ok(())
    }
}
