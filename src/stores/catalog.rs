//! The generic adapter of a catalog entry (`crate::catalog`): any SQL table described in the
//! configuration takes part in deletion, export, rectification, preview, retention and the
//! start-time schema check, with no code of its own.
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};

use super::{
    table::SubjectTable, CandidateRow, Erasure, ExpiredRecord, Expiry, ExportSink, Probe, Rectification,
    StoreAdapter, StoreResult,
};
use crate::{
    catalog::{CatalogEntry, ErasureMode, TimeFormat},
    db::Db,
    domain::Corrections,
    resolve::{IdentKind, Person},
};

pub struct CatalogStore {
    entry: CatalogEntry,
    /// The entry's name, and the store it links to, for the life of the process: the adapter
    /// interface names stores with `&'static str`, and a catalog is read once at start.
    name: &'static str,
    links_to: Option<&'static str>,
    rows: SubjectTable,
}

/// A time bound as the store's column holds it.
enum TimeValue {
    Int(i64),
    Text(String),
}

impl CatalogStore {
    pub fn new(entry: CatalogEntry, db: Db) -> Self {
        let identifiers: Vec<(String, IdentKind)> =
            entry.identifiers.iter().map(|c| (c.column.clone(), c.holds)).collect();
        // A blanked row holds none of its identifiers or blanked columns any more.
        let cleared = (entry.erasure == ErasureMode::Blank).then(|| {
            identifiers
                .iter()
                .map(|(c, _)| c.as_str())
                .chain(entry.blank.iter().map(String::as_str))
                .map(|c| format!("{c} IS NULL"))
                .collect::<Vec<_>>()
                .join(" AND ")
        });
        let rows = SubjectTable {
            db,
            table: entry.table.clone(),
            key: entry.key.clone(),
            tenant: entry.tenant.clone(),
            identifiers,
            link: entry.link.as_ref().map(|l| l.column.clone()),
            bytes: entry.bytes_column.clone(),
            object: None,
            cleared,
        };
        let name: &'static str = Box::leak(entry.name.clone().into_boxed_str());
        let links_to: Option<&'static str> =
            entry.link.as_ref().map(|l| &*Box::leak(l.store.clone().into_boxed_str()));
        Self { entry, name, links_to, rows }
    }

    fn time_value(&self, at: DateTime<Utc>) -> TimeValue {
        match self.entry.time_format {
            TimeFormat::EpochMs => TimeValue::Int(at.timestamp_millis()),
            TimeFormat::EpochS => TimeValue::Int(at.timestamp()),
            TimeFormat::Iso8601 => TimeValue::Text(at.to_rfc3339_opts(SecondsFormat::Secs, true)),
        }
    }

    /// `<tenant> = $1 AND <time> < $2`, and the value of `$2`; `None` without a time column.
    fn expired(&self, e: &Expiry<'_>) -> Option<(String, TimeValue)> {
        let time = self.entry.time_column.as_ref()?;
        let cond = format!("{} = $1 AND {time} IS NOT NULL AND {time} < $2", self.entry.tenant);
        Some((cond, self.time_value(e.cutoff)))
    }

    fn bind<'q>(
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        v: &'q TimeValue,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        match v {
            TimeValue::Int(i) => q.bind(*i),
            TimeValue::Text(s) => q.bind(s.as_str()),
        }
    }

    fn first_column(&self, kind: IdentKind) -> String {
        self.entry
            .identifiers
            .iter()
            .find(|c| c.holds == kind)
            .map_or("NULL".to_owned(), |c| format!("{}.{}", self.entry.table, c.column))
    }
}

#[async_trait]
impl StoreAdapter for CatalogStore {
    fn name(&self) -> &'static str {
        self.name
    }

    fn stage(&self) -> u8 {
        self.entry.stage
    }

    fn links_to(&self) -> Option<&'static str> {
        self.links_to
    }

    async fn check_schema(&self) -> Vec<String> {
        let extra: Vec<&str> = self
            .entry
            .blank
            .iter()
            .chain(&self.entry.bytes_column)
            .chain(&self.entry.time_column)
            .map(String::as_str)
            .collect();
        self.rows.check(&extra).await
    }

    async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
        self.rows.candidates(probe).await
    }

    async fn erase(&self, tenant: &str, keys: &[String], _now: DateTime<Utc>) -> StoreResult<Erasure> {
        let affected = match self.entry.erasure {
            ErasureMode::Delete => self.rows.delete(tenant, keys).await?,
            ErasureMode::Blank => {
                let mut n = 0;
                let columns: Vec<&str> = self
                    .entry
                    .identifiers
                    .iter()
                    .map(|c| c.column.as_str())
                    .chain(self.entry.blank.iter().map(String::as_str))
                    .collect();
                let set = columns.iter().map(|c| format!("{c} = NULL")).collect::<Vec<_>>().join(", ");
                let not_yet =
                    columns.iter().map(|c| format!("{c} IS NOT NULL")).collect::<Vec<_>>().join(" OR ");
                for chunk in keys.chunks(500) {
                    let sql = format!(
                        "UPDATE {} SET {set} WHERE {} = $1 AND {} IN ({}) AND ({not_yet})",
                        self.entry.table,
                        self.entry.tenant,
                        self.entry.key,
                        super::sql::params(2, chunk.len())
                    );
                    let q = chunk.iter().fold(sqlx::query(&sql).bind(tenant), |q, k| q.bind(k.as_str()));
                    n += q.execute(self.rows.db.pool()).await?.rows_affected();
                }
                n
            }
        };
        Ok(Erasure::Erased { affected })
    }

    fn holds_any_of(&self, c: &Corrections) -> bool {
        (c.email.is_some() && self.entry.holds(IdentKind::Email))
            || (c.phone.is_some() && self.entry.holds(IdentKind::Phone))
    }

    async fn rectify(
        &self,
        person: &Person,
        mine: &[CandidateRow],
        corrections: &Corrections,
        _now: DateTime<Utc>,
    ) -> StoreResult<Rectification> {
        let (found, affected) = self.rows.rectify(person, mine, corrections).await?;
        Ok(Rectification { found, affected, hold: None })
    }

    async fn verify_rectified(&self, person: &Person, keys: &[String], c: &Corrections) -> StoreResult<bool> {
        self.rows.rectified(person, keys, c).await
    }

    async fn export(&self, tenant: &str, keys: &[String], sink: &mut dyn ExportSink) -> StoreResult<u64> {
        if !self.entry.export {
            return Ok(0);
        }
        self.rows.export(tenant, keys, "", sink).await
    }

    async fn tenants(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        let t = &self.entry.tenant;
        let sql = format!("SELECT MIN({t}) FROM {} WHERE {t} > $1", self.entry.table);
        let mut out = Vec::new();
        let mut last = after.unwrap_or("").to_owned();
        while out.len() < limit {
            let next: Option<String> =
                sqlx::query_scalar(&sql).bind(&last).fetch_one(self.rows.db.pool()).await?;
            let Some(next) = next else { break };
            last = next.clone();
            out.push(next);
        }
        Ok(out)
    }

    async fn count_expired(&self, expiry: &Expiry<'_>) -> StoreResult<u64> {
        let Some((cond, at)) = self.expired(expiry) else { return Ok(0) };
        let sql = format!("SELECT COUNT(*) FROM {} WHERE {cond}", self.entry.table);
        let q = Self::bind(sqlx::query(&sql).bind(expiry.tenant), &at);
        let row = q.fetch_one(self.rows.db.pool()).await?;
        Ok(sqlx::Row::try_get::<i64, _>(&row, 0)? as u64)
    }

    async fn list_expired(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        let Some((cond, at)) = self.expired(expiry) else { return Ok(Vec::new()) };
        let key = &self.entry.key;
        let sql = format!(
            "SELECT {key}, {}, {}, {} FROM {} WHERE {cond} AND {key} > $3 ORDER BY {key} LIMIT {limit}",
            self.first_column(IdentKind::AccountId),
            self.first_column(IdentKind::Email),
            self.first_column(IdentKind::Phone),
            self.entry.table
        );
        let q = Self::bind(sqlx::query(&sql).bind(expiry.tenant), &at).bind(after.unwrap_or(""));
        let rows = q.fetch_all(self.rows.db.pool()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            use sqlx::Row;
            out.push(ExpiredRecord {
                key: row.try_get(0)?,
                account_id: row.try_get(1)?,
                email: row.try_get(2)?,
                phone: row.try_get(3)?,
            });
        }
        Ok(out)
    }

    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        self.rows.delete(tenant, keys).await
    }
}
