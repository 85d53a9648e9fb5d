//! The stores that hold a subject's data, one adapter per catalog entry, behind small traits by
//! concern (`concerns`: a store's description and candidates, then erase, export, rectify and
//! retention, each offered or not).
//!
//! Every store is described in the catalog (`crate::catalog`; the reference stores are its
//! default entries, `config/catalog.toml`) and run by the generic adapter (`catalog`): a SQL
//! table, optionally indexing objects in an object store.
//!
//! | store         | on deletion (default catalog)                                        |
//! |---------------|----------------------------------------------------------------------|
//! | `accounts`    | personal columns blanked; row deleted unless billing references it    |
//! | `call_logs`, `transcripts` | rows deleted                                            |
//! | `recordings`  | audio objects deleted and checked gone, then their index rows         |
//! | `billing`     | retained under a 7-year legal obligation; rows restricted             |
//!
//! `table` builds every subject-facing query from a store's columns (with sea-query, `query`;
//! candidate look-ups written once per probe shape, `written`); `objects` opens object
//! stores and deletes, counts and reads objects; `reference` creates the reference schema (for
//! `dsr seed` and the embedded default only); `watch` re-checks the stores while serving.

mod call;
mod catalog;
mod concerns;
mod export;
mod local_upload;
mod objects;
mod query;
pub mod reference;
pub mod remote;
mod table;
pub mod watch;
mod written;

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};

pub use call::CallContext;
pub use catalog::{CatalogStore, Wiring};
pub use concerns::{CandidateSink, Erase, Export, Rectify, Retention, StoreAdapter};
pub use export::{row_json, ByteStream, CollectingSink, ExportFile, ExportSink, Record};
pub use objects::{object_path, open_durable_object_store, open_object_store};
pub use table::{columns_of, CHUNK};

pub use crate::resolve::CandidateRow;
use crate::{config::Settings, db::Db};

/// What a store holds on a subject (a dry run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holdings {
    pub records: u64,
    pub bytes: u64,
    pub under_legal_hold: bool,
    /// Records that name the subject but not them alone (a shared line): nobody's erasure.
    pub unattributed: u64,
}

/// What an erase did, to the records it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erasure {
    /// The records are gone (or their personal data is).
    Erased { affected: u64 },
    /// Kept under a legal obligation, and restricted from any other use until `until`.
    Retained { affected: u64, basis: String, until: DateTime<Utc> },
}

/// Records that stay under a legal obligation (billing), stated on an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalHold {
    pub basis: String,
    pub until: DateTime<Utc>,
}

/// What a rectify did. Counts are of this call only: a second call (a retry) finds nothing left
/// under the old identifier and reports zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rectification {
    /// Records that held a value being corrected (under the old identifier).
    pub found: u64,
    /// Records rewritten with the new values.
    pub affected: u64,
    /// Set when the corrected records stay under a legal hold: they are corrected, not erased.
    pub hold: Option<LegalHold>,
}

/// What to look up in a store: the tenant's rows found by any of these. Phones are E.164 (the
/// store finds them however they are written); emails are in their compared form.
#[derive(Debug, Clone, Default)]
pub struct Probe<'a> {
    pub tenant: &'a str,
    pub account_ids: Vec<String>,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    /// Keys of the linked store (`call_logs` ids, for transcripts and recordings).
    pub links: Vec<String>,
    /// The store's own keys.
    pub keys: Vec<String>,
}

/// What a retention sweep looks at: one tenant's records dated before `cutoff`.
#[derive(Debug, Clone, Copy)]
pub struct Expiry<'a> {
    pub tenant: &'a str,
    /// When the sweep runs. Billing measures the legal minimum from here for restricted rows.
    pub now: DateTime<Utc>,
    /// Records dated before this are past the tenant's period (a record dated exactly at the
    /// cutoff is exactly as old as the period allows, and stays).
    pub cutoff: DateTime<Utc>,
}

/// A record past its retention: its key in the store (the primary key, never an identifier of a
/// person) and the identifiers it carries, so the sweep can keep what a litigation hold covers.
/// `Debug` shows the key only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ExpiredRecord {
    pub key: String,
    pub account_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl std::fmt::Debug for ExpiredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiredRecord").field("key", &self.key).finish_non_exhaustive()
    }
}

/// A store failure. Messages never carry identifiers (they end up in outcomes and logs).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: the store is down, busy or timed out.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help (a column has the wrong type, a value does not decode).
    #[error("{0}")]
    Fatal(String),
    /// What was asked for is no longer there: erased since it was listed (an export's file
    /// whose record a deletion erased meanwhile). Not retried.
    #[error("{0}")]
    Gone(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error::*;
        // A lost connection: the pool pings the others before their next use.
        crate::db::liveness::note(&e);
        match &e {
            ColumnNotFound(_)
            | ColumnDecode { .. }
            | TypeNotFound { .. }
            | Decode(_)
            | ColumnIndexOutOfBounds { .. } => StoreError::Fatal(format!("store schema mismatch: {e}")),
            // A table or column missing while serving: the start-up check found it, so it was
            // renamed or dropped since — maybe by a migration under way. Retried with backoff
            // (health and `dsr_store_up` show the store down meanwhile); the attempt limit ends
            // it FAILED if it stays missing. (Found by `dsr chaos`: a table renamed away for 8 s
            // failed its request for good.)
            Database(db)
                if db.message().contains("no such table") || db.message().contains("does not exist") =>
            {
                StoreError::Transient(format!("store schema mismatch (retried): {}", db.message()))
            }
            Database(db) => StoreError::Transient(format!("database error: {}", db.message())),
            _ => StoreError::Transient(format!("database unavailable: {e}")),
        }
    }
}

/// Object store errors name the object's path (and their sources often the request URL), and a
/// recording's key may hold a phone number: only the kind of failure goes into an outcome or a
/// log. Missing credentials or permissions will not fix themselves: fatal.
impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        use object_store::Error::*;
        match e {
            Generic { store, .. } => {
                StoreError::Transient(format!("object store ({store}): the request failed"))
            }
            NotFound { .. } => StoreError::Transient("object store: an object was not found".into()),
            AlreadyExists { .. } => StoreError::Transient("object store: an object already exists".into()),
            Precondition { .. } | NotModified { .. } => {
                StoreError::Transient("object store: a conditional request did not apply".into())
            }
            InvalidPath { .. } => StoreError::Fatal("object store: an object path is invalid".into()),
            PermissionDenied { .. } => StoreError::Fatal("object store: permission denied".into()),
            Unauthenticated { .. } => StoreError::Fatal("object store: not authenticated".into()),
            NotSupported { .. } | NotImplemented { .. } => {
                StoreError::Fatal("object store: the operation is not supported by this store".into())
            }
            _ => StoreError::Transient("object store: the request failed".into()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The adapters in store order.
#[derive(Clone)]
pub struct StoreRegistry {
    adapters: Vec<Arc<dyn StoreAdapter>>,
}

impl StoreRegistry {
    pub fn new(adapters: Vec<Arc<dyn StoreAdapter>>) -> Self {
        Self { adapters }
    }

    /// The stores, each checked against its live schema: a missing table, column or key index
    /// refuses the start, naming the store, the table and the column. Never creates a table
    /// outside the embedded default (`dsr seed` creates the reference schema for trying dsr).
    pub async fn from_settings(settings: &Settings, default_db: &Db) -> anyhow::Result<Self> {
        let stores = Self::open(settings, default_db).await?;
        let problems = stores.check().await;
        if !problems.is_empty() {
            let lines: Vec<String> =
                problems.iter().map(|(store, p)| format!("  store {store}: {p}")).collect();
            anyhow::bail!(
                "the store catalog does not match the live schema (nothing was changed; `dsr stores check` prints this too):\n{}",
                lines.join("\n")
            );
        }
        Ok(stores)
    }

    /// Every store's schema problems, in store order: (store, problem).
    pub async fn check(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for a in &self.adapters {
            out.extend(a.check_schema().await.into_iter().map(|p| (a.name(), p)));
        }
        out
    }

    /// Every catalog store on its database (default: `default_db`; a link to another database
    /// works: the resolution carries the linked keys, no SQL joins across) and, for an
    /// object-backed store, its object store; unchecked. The embedded default (no database URL
    /// given) gets the reference schema created in its own SQLite file.
    pub async fn open(settings: &Settings, default_db: &Db) -> anyhow::Result<Self> {
        let catalog = &settings.file.catalog;
        if settings.embedded {
            let table = |name: &str, default: &str| {
                catalog
                    .iter()
                    .find(|e| e.name == name)
                    .map_or_else(|| default.to_owned(), |e| e.table.clone())
            };
            let t = reference::Tables {
                accounts: table("accounts", "accounts"),
                call_logs: table("call_logs", "call_logs"),
                transcripts: table("transcripts", "transcripts"),
                recordings: table("recordings", "recordings"),
                billing: table("billing", "billing_records"),
            };
            reference::ensure_schema(default_db, &t).await?;
        }
        let mut pools: HashMap<String, Db> = HashMap::new();
        let mut urls: HashMap<&str, Option<String>> = HashMap::new();
        let mut dbs: Vec<Db> = Vec::with_capacity(catalog.len());
        for entry in catalog {
            // A URL from the entry's secret, or (for the default entries) `[stores.<name>]`.
            let url = match entry.database_url()? {
                Some(url) => Some(url),
                None => settings.file.store(&entry.name).database_url,
            }
            .filter(|u| u != &settings.database_url);
            let db = match &url {
                None => default_db.clone(),
                Some(url) => match pools.get(url) {
                    Some(db) => db.clone(),
                    None => {
                        let db = Db::connect(url, 8).await.map_err(|e| {
                            anyhow::anyhow!("catalog.{}: cannot connect to its database: {e:#}", entry.name)
                        })?;
                        pools.insert(url.clone(), db.clone());
                        db
                    }
                },
            };
            urls.insert(&entry.name, url);
            dbs.push(db);
        }
        let same_db = |a: &str, b: &str| urls.get(a) == urls.get(b);
        let mut object_stores: HashMap<String, Arc<dyn object_store::ObjectStore>> = HashMap::new();
        let mut adapters: Vec<Arc<dyn StoreAdapter>> = Vec::with_capacity(catalog.len());
        for (entry, db) in catalog.iter().zip(dbs) {
            let mut wiring = Wiring { ledger: Some(default_db.clone()), ..Default::default() };
            if let Some(o) = &entry.objects {
                let url = match &o.url_env {
                    Some(var) => std::env::var(var).map_err(|_| {
                        anyhow::anyhow!(
                            "catalog.{}.objects.url_env: the environment variable {var} is not set",
                            entry.name
                        )
                    })?,
                    None => settings.recordings_url.clone(),
                };
                let store = match object_stores.get(&url) {
                    Some(s) => s.clone(),
                    None => {
                        let s = open_object_store(&url)
                            .map_err(|e| anyhow::anyhow!("catalog.{}.objects: {e:#}", entry.name))?;
                        object_stores.insert(url, s.clone());
                        s
                    }
                };
                wiring.objects = Some(store);
            }
            if let Some(r) = &entry.kept_while_referenced_by {
                let other = catalog.iter().find(|e| e.name == r.store).expect("validated reference");
                anyhow::ensure!(
                    same_db(&entry.name, &other.name),
                    "catalog.{}.kept_while_referenced_by: the store {} must be in the same database",
                    entry.name,
                    other.name
                );
                wiring.referenced_in = Some((other.table.clone(), other.tenant.clone()));
            }
            if let Some(link) = &entry.link {
                let target = catalog.iter().find(|e| e.name == link.store);
                let account = target.and_then(|t| {
                    t.identifiers
                        .iter()
                        .find(|c| c.holds == crate::resolve::IdentKind::AccountId)
                        .map(|c| c.column.clone())
                        .or_else(|| t.identity.then(|| t.key.clone()))
                });
                if let (Some(t), Some(account_column)) = (target, account) {
                    if same_db(&entry.name, &t.name) {
                        wiring.link_account = Some(catalog::LinkAccount {
                            table: t.table.clone(),
                            key: t.key.clone(),
                            tenant: t.tenant.clone(),
                            account_column,
                        });
                    }
                }
            }
            adapters.push(Arc::new(CatalogStore::new(entry.clone(), db, wiring)));
        }
        // The catalog's remote stores (`kind = "grpc"`): other teams' services.
        for entry in &settings.file.remote {
            adapters.push(Arc::new(remote::RemoteStore::new(entry.clone())?));
        }
        Ok(Self::new(adapters))
    }

    pub fn all(&self) -> &[Arc<dyn StoreAdapter>] {
        &self.adapters
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn StoreAdapter>> {
        self.adapters.iter().find(|a| a.name() == name)
    }

    /// Replaces each adapter with `wrap(adapter)` (tests inject faults this way).
    pub fn map(self, wrap: impl Fn(Arc<dyn StoreAdapter>) -> Arc<dyn StoreAdapter>) -> Self {
        Self::new(self.adapters.into_iter().map(wrap).collect())
    }

    /// The store that holds accounts (`StoreAdapter::is_identity`), if any.
    pub fn identity(&self) -> Option<&Arc<dyn StoreAdapter>> {
        self.adapters.iter().find(|a| a.is_identity())
    }

    /// Every store, each after the store it links to (a linked store's records follow their
    /// target's owner, so the target is resolved first).
    pub fn in_link_order(&self) -> Vec<&Arc<dyn StoreAdapter>> {
        let mut out: Vec<&Arc<dyn StoreAdapter>> = Vec::with_capacity(self.adapters.len());
        let mut left: Vec<&Arc<dyn StoreAdapter>> = self.adapters.iter().collect();
        while !left.is_empty() {
            let before = left.len();
            left.retain(|a| {
                let ready =
                    a.links_to().is_none_or(|t| out.iter().any(|o| o.name() == t) || self.get(t).is_none());
                if ready {
                    out.push(a);
                }
                !ready
            });
            if left.len() == before {
                // A cycle of links: resolve the rest in store order; their links fall back to
                // each record's own identifiers.
                out.append(&mut left);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table renamed or dropped while serving (a migration under way) is retried, not failed
    /// for good: the error real SQLite gives for it maps to a transient failure.
    #[tokio::test]
    async fn a_table_missing_while_serving_is_a_transient_failure() {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect("sqlite::memory:").await.unwrap();
        let e = sqlx::query("SELECT id FROM call_logs_moved_away")
            .fetch_all(&pool)
            .await
            .err()
            .expect("no such table");
        match StoreError::from(e) {
            StoreError::Transient(m) => assert!(m.contains("no such table"), "{m}"),
            other => panic!("not transient: {other:?}"),
        }
    }

    #[test]
    fn object_store_errors_carry_no_object_path() {
        let path = "acme/calls/+15550001234 ann@example.com.wav".to_owned();
        let source: Box<dyn std::error::Error + Send + Sync> =
            format!("GET https://bucket.s3/{path} failed").into();
        for e in [
            object_store::Error::NotFound { path: path.clone(), source: format!("{path} missing").into() },
            object_store::Error::Generic { store: "S3", source },
            object_store::Error::PermissionDenied { path: path.clone(), source: "denied".into() },
        ] {
            let msg = StoreError::from(e).to_string();
            assert!(!msg.contains("5550001234") && !msg.contains("ann@"), "{msg}");
        }
    }
}
