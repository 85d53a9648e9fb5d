//! The store interface, split by concern: a store describes itself and finds candidate rows
//! (`StoreAdapter`), and does any of four jobs, each a small trait of its own:
//!
//! | trait       | what the store does                                             | used by              |
//! |-------------|-----------------------------------------------------------------|----------------------|
//! | `Erase`     | erases (or restricts) records by key; checks objects gone       | deletions            |
//! | `Export`    | writes records and lists files; opens a listed file              | exports, the archive |
//! | `Rectify`   | rewrites corrected identifiers; reads them back                 | rectifications       |
//! | `Retention` | lists, counts and erases what is past its period                 | the retention sweep  |
//!
//! A store offers a concern through its accessor (`StoreAdapter::as_erase`, …), which answers
//! `None` by default: a store that does not do a job writes nothing for it. A deletion,
//! export or rectification then reports the store SKIPPED, and the sweep passes it by.
//!
//! What every concern shares: each call is scoped to one tenant and names records by the keys
//! the resolution (`crate::resolve`) gave it — which records are the subject's is never the
//! store's decision. Each call may be retried, after a timeout or a crash, by another worker or
//! the same one: it must be idempotent (a second call finishes what the first began, and does
//! nothing twice). Fencing is the engine's: a stale worker's result is dropped by the ledger
//! (task attempts), so a store needs no locks of its own across calls, only idempotence. Errors
//! are `StoreError`s whose messages carry no identifier.
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    ByteStream, CandidateRow, Erasure, ExpiredRecord, Expiry, ExportSink, Probe, Rectification, StoreError,
    StoreResult,
};
use crate::{
    domain::{Corrections, RequestKind},
    resolve::Person,
};

/// Where `StoreAdapter::candidates_into` hands its rows.
#[async_trait]
pub trait CandidateSink: Send {
    async fn row(&mut self, row: CandidateRow) -> StoreResult<()>;
}

/// One store of subject data: what it is, where it stands among the others, and its candidate
/// rows. The jobs it does are its concerns (`as_erase`, `as_export`, `as_rectify`,
/// `as_retention`).
///
/// Which records are the subject's is not the store's decision: the store finds candidates
/// (`candidates`), the resolution (`crate::resolve`) decides whose each is, and the store then
/// acts on the keys it is given.
#[async_trait]
pub trait StoreAdapter: Send + Sync + 'static {
    /// The store's name in outcomes (`accounts`, …).
    fn name(&self) -> &'static str;

    /// Stores of stage 0 run first; a later stage starts only once every earlier one has
    /// succeeded (DONE, RETAINED or SKIPPED).
    fn stage(&self) -> u8 {
        0
    }

    /// Whether this store holds the platform's accounts: its key is the account id, and its
    /// rows say who holds an email or a phone.
    fn is_identity(&self) -> bool {
        false
    }

    /// The store whose keys this store's link column holds (transcripts → `call_logs`).
    fn links_to(&self) -> Option<&'static str> {
        None
    }

    /// Whether a deletion keeps this store's records under a legal obligation (billing). Read
    /// by the preview too, so it belongs to the description rather than to `Erase`.
    fn keeps_under_legal_obligation(&self) -> bool {
        false
    }

    /// Whether the store takes part in requests of this kind, among the kinds whose concern it
    /// offers (a remote store may take part in some only); when not, its outcome is SKIPPED.
    fn takes_part_in(&self, _kind: RequestKind) -> bool {
        true
    }

    /// What is wrong with the store's live schema against what the adapter uses (a missing
    /// table or column, a key without a unique index), each naming the table and column. Empty
    /// when it fits. Checked at start and by `dsr stores check`.
    async fn check_schema(&self) -> Vec<String>;

    /// The tenant's rows found by any part of the probe, with the identifiers they hold as
    /// stored. May return rows that only look alike: the resolution confirms each. Changes
    /// nothing; every concern's check reads through it too (`resolve::leftovers`).
    async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>>;

    /// Whether `candidates_into` hands rows over as they are read rather than all at once: an
    /// export then finds the person's records a batch at a time (`resolve::walk`) instead of
    /// resolving every store whole first.
    fn streams_candidates(&self) -> bool {
        false
    }

    /// The rows `candidates` finds, each handed to `sink` (once, in no particular order). Rows'
    /// `cleared` may be left `false`: the exports that ask this way do not read it.
    async fn candidates_into(&self, probe: &Probe<'_>, sink: &mut dyn CandidateSink) -> StoreResult<()> {
        for row in self.candidates(probe).await? {
            sink.row(row).await?;
        }
        Ok(())
    }

    /// The store's erasure, when it erases (deletions).
    fn as_erase(&self) -> Option<&dyn Erase> {
        None
    }

    /// The store's export, when it exports (access and portability).
    fn as_export(&self) -> Option<&dyn Export> {
        None
    }

    /// The store's correction, when it corrects (rectifications).
    fn as_rectify(&self) -> Option<&dyn Rectify> {
        None
    }

    /// The store's retention, when records in it expire (the sweep).
    fn as_retention(&self) -> Option<&dyn Retention> {
        None
    }
}

/// Erasure, and what the check after it needs beyond `candidates`.
///
/// What a store guarantees:
/// - **Idempotent.** Erasing keys that are gone (or already blanked, or already restricted) is
///   harmless and reports them as not affected again; a retry after a crash finishes what the
///   first try began. An object-backed store deletes each object before its index row, so a
///   crash leaves either both or only the row, which the retry finds.
/// - **Only these keys, only this tenant.** Records the keys do not name stay, whoever they
///   belong to.
/// - **Verifiable by others.** After an erase, dsr checks the store again with other queries
///   than the erase's own (`resolve::leftovers`: `candidates` by each identifier alone, by key,
///   by link, and `objects_present` by exact object key). `verified` is only true when those
///   find nothing of the person; an erase that reports success and leaves data fails its task.
#[async_trait]
pub trait Erase: Send + Sync {
    /// Erases (or, under a legal obligation, restricts) the tenant's records with these keys.
    async fn erase(&self, tenant: &str, keys: &[String], now: DateTime<Utc>) -> StoreResult<Erasure>;

    /// How many of these object keys are still present in the object store (exact keys). A
    /// store without objects keeps the default.
    async fn objects_present(&self, _objects: &[String]) -> StoreResult<u64> {
        Ok(0)
    }
}

/// Export: the subject's records as JSON, and the files that go into the archive as they are.
///
/// What a store guarantees: an export **changes nothing**, so a retry simply writes the part
/// again; it writes only the tenant's records with the given keys; a file it lists can be
/// opened by `read_file` later (the archive copies files once every store's part is written),
/// or is reported `StoreError::Gone` when a deletion erased it meanwhile.
#[async_trait]
pub trait Export: Send + Sync {
    /// Writes the tenant's records with these keys into `sink`: its records, and the files
    /// that go into the archive as they are. Returns the number of records (files count as
    /// records: a recording is one).
    async fn export(&self, tenant: &str, keys: &[String], sink: &mut dyn ExportSink) -> StoreResult<u64>;

    /// Opens a file that `export` listed, by its key. A store that lists no files keeps the
    /// default.
    async fn read_file(&self, _key: &str) -> StoreResult<ByteStream> {
        Err(StoreError::Fatal("the store lists no files to read".into()))
    }
}

/// Correction of the subject's identifiers and name (Art. 16).
///
/// What a store guarantees:
/// - **Idempotent.** A second `rectify` finds nothing under the old values and reports zeros.
/// - **Only the person's values.** A column is rewritten only where it names the person; a
///   shared line or a neighbour keeps theirs. Records under a legal hold are corrected in place:
///   a hold forbids erasure, not accuracy.
/// - **Verify means read back.** `verify_rectified` is true only when none of the records still
///   holds an old value of a corrected identifier (and the account holds the new name), read by
///   the store after the rectify; a false answer makes the task retry.
#[async_trait]
pub trait Rectify: Send + Sync {
    /// Whether the store holds any of the corrected fields at all; when not, its rectification
    /// outcome is SKIPPED (call logs hold no name or email).
    fn holds_any_of(&self, corrections: &Corrections) -> bool;

    /// Rewrites the person's records (`mine`, as found) with the corrected values: every column
    /// that holds a corrected kind of identifier and names the person gets the new value.
    async fn rectify(
        &self,
        person: &Person,
        mine: &[CandidateRow],
        corrections: &Corrections,
        now: DateTime<Utc>,
    ) -> StoreResult<Rectification>;

    /// Reads back after a rectify: `true` only if none of these records still holds an old
    /// value of a corrected identifier (and the account holds the new name).
    async fn verify_rectified(
        &self,
        person: &Person,
        keys: &[String],
        corrections: &Corrections,
    ) -> StoreResult<bool>;
}

/// Retention: what the sweep erases on a schedule, tenant by tenant, in bounded batches.
///
/// What a store guarantees:
/// - **Counting and listing change nothing** (a dry run uses them).
/// - **Erasing is idempotent and bounded**: `erase_records` and `erase_expired` each run in one
///   short transaction over at most one batch, and erase only records still there; the sweep
///   checkpoints between batches, so a crash loses at most one batch's report, never its
///   effect.
/// - **Keyset order**: `list_expired` pages by key, so records the sweep keeps (under a
///   litigation hold) are not listed again.
#[async_trait]
pub trait Retention: Send + Sync {
    /// Whether `tenants` lists the store's tenants. A store that cannot (a remote one) keeps
    /// the default: the sweep visits it in every tenant the stores that can list hold.
    fn lists_tenants(&self) -> bool {
        false
    }

    /// Up to `limit` tenants that have records in the store, in order, after `after`.
    async fn tenants(&self, _after: Option<&str>, _limit: usize) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }

    /// How many of the tenant's records are past retention (a dry run). A store that cannot
    /// count keeps the default, and a dry run shows nothing expired in it.
    async fn count_expired(&self, _expiry: &Expiry<'_>) -> StoreResult<u64> {
        Ok(0)
    }

    /// Up to `limit` of the tenant's records past retention whose key is after `after`, in key
    /// order (keyset paging: records the sweep keeps are not listed again).
    async fn list_expired(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>>;

    /// Erases the tenant's records with these keys (those still there: erasing twice is
    /// harmless) in one short transaction; returns how many went. Recordings delete each object
    /// before its index row. The caller bounds `keys` to one batch.
    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64>;

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
}
