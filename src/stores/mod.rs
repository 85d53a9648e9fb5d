//! The stores that hold a subject's data, one adapter each, behind one trait.
//!
//! | module        | store         | on deletion                                              |
//! |---------------|---------------|----------------------------------------------------------|
//! | `accounts`    | `accounts`    | personal columns erased; row deleted unless billed        |
//! | `rows`        | `call_logs`, `transcripts` | rows deleted                                 |
//! | `recordings`  | `recordings`  | audio objects deleted, then index rows; re-checked absent |
//! | `billing`     | `billing`     | retained under a 7-year legal hold; rows restricted       |
//!
//! On rectification (issue 4) `accounts` rewrites the corrected columns of the account row; the
//! four stores keyed on `caller_phone` move the subject's rows from the old phone to the new one
//! (recording objects are keyed by call id, so only index rows change); billing is corrected
//! in place although it is under a legal hold (a hold forbids erasure, not accuracy). A store
//! that holds none of the corrected fields is SKIPPED.
//!
//! On export every store writes its records as JSON objects (`export::export_rows`); recordings
//! list their audio objects, which the archive copies in byte for byte (`read_file`).
//!
//! On the retention schedule (issue 9) each adapter lists, counts and erases its records that are
//! past their period, one tenant and one bounded batch at a time (`Expiry`): call logs, transcripts
//! and recordings by age, billing at 7 years (restricted rows of an erased subject as soon as the
//! legal minimum has passed, whatever longer period the tenant keeps), accounts 30 days after
//! termination. Which records a litigation hold keeps is the sweep's decision: the adapter reports
//! each expired record's identifiers (`ExpiredRecord`) and erases the keys it is given.
//!
//! `reference` creates the reference schema; `objects` opens the object store; `sql` builds the
//! tenant-scoped subject predicates every SQL adapter uses, the phone move the four phone-keyed
//! stores share, and the expiry queries of the SQL stores.

mod accounts;
mod billing;
mod export;
mod objects;
mod recordings;
pub mod reference;
mod rows;
mod sql;

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use export::{export_rows, row_json, ByteStream, CollectingSink, ExportFile, ExportSink, Record};
pub use objects::{open_durable_object_store, open_object_store};

use crate::{
    config::Settings,
    db::Db,
    domain::{Corrections, Subject},
};

/// Every store, in the order outcomes are reported.
pub const STORE_NAMES: &[&str] = &["accounts", "call_logs", "transcripts", "recordings", "billing"];

/// What a store holds on a subject (a dry run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holdings {
    pub records: u64,
    pub bytes: u64,
    pub under_legal_hold: bool,
}

/// What an erase did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erasure {
    /// The subject's records are gone (or their personal data is).
    Erased { found: u64, affected: u64 },
    /// Kept under a legal obligation, and restricted from any other use until `until`.
    Retained { found: u64, affected: u64, basis: String, until: DateTime<Utc> },
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

/// Why a rectification cannot be accepted as asked. Found at submit, before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorrectionConflict {
    /// Another subject of the tenant already has this value (`corrections.email`,
    /// `corrections.phone`): emails and phones identify one account holder.
    Taken(&'static str),
    /// The identifiers match more than one account: correcting them all to one value would merge
    /// two people.
    Ambiguous,
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
    /// Retrying will not help (the table is missing, a column has the wrong type).
    #[error("{0}")]
    Fatal(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error::*;
        match &e {
            ColumnNotFound(_)
            | ColumnDecode { .. }
            | TypeNotFound { .. }
            | Decode(_)
            | ColumnIndexOutOfBounds { .. } => StoreError::Fatal(format!("store schema mismatch: {e}")),
            Database(db)
                if db.message().contains("no such table") || db.message().contains("does not exist") =>
            {
                StoreError::Fatal(format!("store schema mismatch: {}", db.message()))
            }
            Database(db) => StoreError::Transient(format!("database error: {}", db.message())),
            _ => StoreError::Transient(format!("database unavailable: {e}")),
        }
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        StoreError::Transient(format!("object store: {e}"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One store of subject data. Every operation is scoped to `subject.tenant` and idempotent:
/// erasing twice is harmless, and a retry after a crash finishes what the first try began.
#[async_trait]
pub trait StoreAdapter: Send + Sync + 'static {
    /// The store's name in outcomes (`accounts`, …).
    fn name(&self) -> &'static str;

    /// Stores of stage 0 run first; a later stage waits for every earlier one to end (call logs
    /// link transcripts and recordings to an account, so they go last).
    fn stage(&self) -> u8 {
        0
    }

    /// Whether the store can find this subject at all by the identifiers given; when not, its
    /// outcome is SKIPPED.
    fn applies_to(&self, subject: &Subject) -> bool;

    /// Fills identifiers of the subject that this store knows (the account row knows the
    /// person's phone and email). Default: nothing to add.
    async fn resolve(&self, subject: Subject) -> StoreResult<Subject> {
        Ok(subject)
    }

    /// Counts what the store holds on the subject; changes nothing.
    async fn preview(&self, subject: &Subject) -> StoreResult<Holdings>;

    /// Erases (or, under a legal hold, restricts) the subject's records.
    async fn erase(&self, subject: &Subject, now: DateTime<Utc>) -> StoreResult<Erasure>;

    /// Queries again after an erase: `true` only if nothing of the subject is left (for a store
    /// under a hold: everything left is restricted).
    async fn verify_erased(&self, subject: &Subject) -> StoreResult<bool>;

    /// Whether the store holds any of the corrected fields at all; when not, its rectification
    /// outcome is SKIPPED (call logs hold no name or email).
    fn holds_any_of(&self, corrections: &Corrections) -> bool;

    /// Checked at submit, before anything is written: would the corrections collide with another
    /// subject of the tenant in this store? Only stores where a value identifies one person
    /// (accounts) have anything to say; a phone that appears as another call's `caller_phone`
    /// is no conflict, because callers are not unique people.
    async fn correction_conflict(
        &self,
        _subject: &Subject,
        _corrections: &Corrections,
    ) -> StoreResult<Option<CorrectionConflict>> {
        Ok(None)
    }

    /// Rewrites the subject's records with the corrected values, so that the subject is found
    /// under the new identifiers and nothing is left under the old ones. Idempotent: a second
    /// call finds nothing under the old identifier and changes nothing.
    async fn rectify(
        &self,
        subject: &Subject,
        corrections: &Corrections,
        now: DateTime<Utc>,
    ) -> StoreResult<Rectification>;

    /// Reads back after a rectify: `true` only if the subject's records hold the new values and
    /// nothing of the subject is left under a corrected identifier's old value.
    async fn verify_rectified(&self, subject: &Subject, corrections: &Corrections) -> StoreResult<bool>;

    /// Writes everything the store holds on the subject into `sink`: its records, and the files
    /// that go into the archive as they are. Returns the number of records (files count as
    /// records: a recording is one). Changes nothing.
    async fn export(&self, subject: &Subject, sink: &mut dyn ExportSink) -> StoreResult<u64>;

    /// Opens a file that `export` listed, by its key. Stores that list no files keep the default.
    async fn read_file(&self, _key: &str) -> StoreResult<ByteStream> {
        Err(StoreError::Fatal(format!("the {} store lists no files to read", self.name())))
    }

    // Retention (issue 9). The defaults keep nothing on a schedule, so an adapter without
    // retention needs none of these.

    /// Up to `limit` tenants that have records in the store, in order, after `after`.
    async fn tenants(&self, _after: Option<&str>, _limit: usize) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }

    /// How many of the tenant's records are past retention (a dry run: changes nothing).
    async fn count_expired(&self, _expiry: &Expiry<'_>) -> StoreResult<u64> {
        Ok(0)
    }

    /// Up to `limit` of the tenant's records past retention whose key is after `after`, in key
    /// order (keyset paging: records the sweep keeps are not listed again).
    async fn list_expired(
        &self,
        _expiry: &Expiry<'_>,
        _after: Option<&str>,
        _limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        Ok(Vec::new())
    }

    /// Erases the tenant's records with these keys (those still there: erasing twice is
    /// harmless) in one short transaction; returns how many went. Recordings delete each object
    /// before its index row. The caller bounds `keys` to one batch.
    async fn erase_records(&self, _tenant: &str, _keys: &[String]) -> StoreResult<u64> {
        Ok(0)
    }

    /// Erases up to `limit` of the tenant's records past retention, in one short transaction;
    /// returns how many went (fewer than `limit`: nothing expired is left). SQL stores do it in
    /// one statement.
    async fn erase_expired(&self, expiry: &Expiry<'_>, limit: usize) -> StoreResult<u64> {
        let keys: Vec<String> =
            self.list_expired(expiry, None, limit).await?.into_iter().map(|r| r.key).collect();
        if keys.is_empty() {
            return Ok(0);
        }
        self.erase_records(expiry.tenant, &keys).await
    }

    /// The keys of the subject's records that `erase` kept under a legal obligation, so that
    /// they can be erased when it ends, after the request has dropped the subject's identifiers.
    async fn retained_records(&self, _subject: &Subject) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }
}

/// The adapters in store order.
#[derive(Clone)]
pub struct StoreRegistry {
    adapters: Vec<Arc<dyn StoreAdapter>>,
}

impl StoreRegistry {
    pub fn new(adapters: Vec<Arc<dyn StoreAdapter>>) -> Self {
        Self { adapters }
    }

    /// The five reference-schema adapters, each on its configured database (default: `db`) and
    /// the recordings on the configured object store.
    pub async fn from_settings(settings: &Settings, default_db: &Db) -> anyhow::Result<Self> {
        let mut pools: HashMap<String, Db> = HashMap::new();
        let mut dbs = Vec::with_capacity(STORE_NAMES.len());
        for name in STORE_NAMES {
            let url = settings.file.store(name).database_url.filter(|u| u != &settings.database_url);
            let db = match url {
                None => default_db.clone(),
                Some(url) => match pools.get(&url) {
                    Some(db) => db.clone(),
                    None => {
                        let db = Db::connect(&url, 8).await?;
                        pools.insert(url, db.clone());
                        db
                    }
                },
            };
            dbs.push(db);
        }
        let [accounts_db, calls_db, transcripts_db, recordings_db, billing_db]: [Db; 5] =
            dbs.try_into().expect("one database per store");
        let table =
            |name: &str, default: &str| settings.file.store(name).table.unwrap_or_else(|| default.to_owned());
        let t = reference::Tables {
            accounts: table("accounts", "accounts"),
            call_logs: table("call_logs", "call_logs"),
            transcripts: table("transcripts", "transcripts"),
            recordings: table("recordings", "recordings"),
            billing: table("billing", "billing_records"),
        };
        if settings.file.stores.create_reference_schema {
            for db in [&accounts_db, &calls_db, &transcripts_db, &recordings_db, &billing_db] {
                reference::ensure_schema(db, &t).await?;
            }
        }
        let objects = open_object_store(&settings.recordings_url)?;
        Ok(Self::new(vec![
            Arc::new(accounts::AccountsStore::new(accounts_db, &t)),
            Arc::new(rows::RowStore::call_logs(calls_db, &t)),
            Arc::new(rows::RowStore::transcripts(transcripts_db, &t)),
            Arc::new(recordings::RecordingsStore::new(recordings_db, &t, objects)),
            Arc::new(billing::BillingStore::new(billing_db, &t)),
        ]))
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

    /// The first store's objection to the corrections, if any (see
    /// `StoreAdapter::correction_conflict`).
    pub async fn correction_conflict(
        &self,
        subject: &Subject,
        corrections: &Corrections,
    ) -> StoreResult<Option<CorrectionConflict>> {
        for a in &self.adapters {
            if let Some(c) = a.correction_conflict(subject, corrections).await? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Lets every store add the identifiers it knows.
    pub async fn resolve(&self, mut subject: Subject) -> StoreResult<Subject> {
        for a in &self.adapters {
            subject = a.resolve(subject).await?;
        }
        Ok(subject)
    }
}
