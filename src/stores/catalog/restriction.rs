//! Restrictions kept in dsr's own ledger (`dsr_restrictions`), for a store kept under a legal
//! obligation whose table has no restriction column: the platform's table is never altered.
//! A restricted record reads as such (`CandidateRow::cleared`), expires at the legal minimum,
//! and its restriction goes with it.
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::CatalogStore;
use crate::{
    catalog::ErasureMode,
    clock::to_millis,
    stores::{CandidateRow, StoreError, StoreResult},
};

/// Keys per statement.
const CHUNK: usize = 500;

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

    /// Records the restriction of these keys (the first time stays); returns how many keys.
    pub(super) async fn restrict_in_ledger(
        &self,
        tenant: &str,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let ledger = self.ledger()?;
        for chunk in keys.chunks(CHUNK) {
            let values =
                (0..chunk.len()).map(|i| format!("($1, $2, ${}, $3)", i + 4)).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "INSERT INTO dsr_restrictions (store, tenant_id, record_key, restricted_at) VALUES {values} \
                 ON CONFLICT (store, tenant_id, record_key) DO NOTHING"
            );
            let q = sqlx::query(&sql).bind(self.name).bind(tenant).bind(to_millis(now));
            chunk.iter().fold(q, |q, k| q.bind(k.as_str())).execute(ledger.pool()).await?;
        }
        Ok(keys.len() as u64)
    }

    /// Marks the rows the ledger holds restricted.
    pub(super) async fn mark_restricted(&self, tenant: &str, rows: &mut [CandidateRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let ledger = self.ledger()?;
        let mut restricted = std::collections::BTreeSet::new();
        for chunk in rows.chunks(CHUNK) {
            let sql = format!(
                "SELECT record_key FROM dsr_restrictions WHERE store = $1 AND tenant_id = $2 AND record_key IN ({})",
                crate::stores::sql::params(3, chunk.len())
            );
            let q = sqlx::query(&sql).bind(self.name).bind(tenant);
            for row in chunk.iter().fold(q, |q, r| q.bind(r.key.as_str())).fetch_all(ledger.pool()).await? {
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
        let sql = format!(
            "SELECT record_key FROM dsr_restrictions WHERE store = $1 AND tenant_id = $2 ORDER BY record_key LIMIT {EXPIRY_KEYS}"
        );
        let rows = sqlx::query(&sql).bind(self.name).bind(tenant).fetch_all(self.ledger()?.pool()).await?;
        rows.iter().map(|r| r.try_get::<String, _>(0).map_err(StoreError::from)).collect()
    }

    /// Forgets the restrictions of records that have gone.
    pub(super) async fn forget_restrictions(&self, tenant: &str, keys: &[String]) -> StoreResult<()> {
        let ledger = self.ledger()?;
        for chunk in keys.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM dsr_restrictions WHERE store = $1 AND tenant_id = $2 AND record_key IN ({})",
                crate::stores::sql::params(3, chunk.len())
            );
            let q = sqlx::query(&sql).bind(self.name).bind(tenant);
            chunk.iter().fold(q, |q, k| q.bind(k.as_str())).execute(ledger.pool()).await?;
        }
        Ok(())
    }
}
