//! The ledger: the service's own durable state — requests, one task per request × store, and the
//! append-only event log — on SQLite or Postgres with the same behaviour.
//!
//! Every state change is one transaction that also appends its event, so the log never
//! disagrees with the state, and every event is a link of one hash chain (`audit`). Task completion is fenced on the attempt number: a worker whose
//! lease expired (and whose task another worker took over) cannot overwrite the newer result.

pub mod audit;
mod deliveries;
mod events;
mod exports;
mod holds;
mod journal;
mod leases;
mod requests;
mod stats;
mod tasks;

use sqlx::{any::AnyRow, Row};

pub use audit::{canonical, chain_hash, AuditFilter, ChainVerdict, PruneReport, GENESIS_HASH};
pub use deliveries::{ClaimedDelivery, DeliveryEnd, DeliveryFenced, DeliveryRecord, OutboxStats};
pub use events::{EventRecord, NewEvent};
pub use exports::{ExportRecord, ARCHIVE_TASK};
pub use holds::{
    DueHold, HoldKind, HoldRecord, NewLegalHold, NewLitigationHold, Released, LITIGATION_HOLD_BASIS,
};
pub use leases::{LeaseClaim, SWEEP_LEASE};
pub use requests::{ListFilter, NewDsrRequest, Page, Submitted};
pub use stats::{DeadlineCounts, QueueCounts, OUTSTANDING};
pub use tasks::{
    ClaimedTask, Fenced, FinishedTogether, ReadyToErase, TaskHold, TaskResult, LATE_HOLD_DETAIL,
};

use crate::{
    clock::from_millis,
    db::{Backend, Db},
    domain::{Corrections, OutcomeState, Regime, RequestKind, RequestStatus, Subject},
};
use chrono::{DateTime, Utc};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("no request with that id")]
    NotFound,
    #[error("the idempotency key was already used with a different payload")]
    IdempotencyConflict,
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Db(sqlx::Error),
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        // A lost connection: the pool pings the others before their next use.
        crate::db::liveness::note(&e);
        LedgerError::Db(e)
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct Ledger {
    db: Db,
}

/// What the ledger keeps of the subject while a request runs, as JSON in
/// `dsr_requests.subject_json`: the identifiers, and for a rectification the corrections. Old
/// and new values are both personal data, so they live only there and are dropped with it when
/// the request ends (a FAILED request keeps them for RetryRequest). The subject's fields are
/// flattened, so records written before rectification existed still parse.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubjectRecord {
    #[serde(flatten)]
    pub subject: Subject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrections: Option<Corrections>,
    /// The one person the subject resolved to at submit, and the keys of their records in
    /// every store (`crate::resolve`). Requests written before resolution existed have none:
    /// the engine resolves them when it first runs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<crate::resolve::Resolution>,
    /// An export's person, resolved at submit, in place of `resolution`: each store finds
    /// their records as it writes its part (`resolve::walk`), so a person with 100,000 calls
    /// costs a batch of memory, not the list. (A field of its own: a version before this one
    /// finds no resolution and resolves the request whole when it runs it, rather than reading
    /// a resolution without stores as "nothing found".)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<crate::resolve::Person>,
}

/// A request as stored, with one outcome per store in store order.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub id: String,
    pub tenant_id: String,
    pub kind: RequestKind,
    pub status: RequestStatus,
    pub regime: Regime,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deadline_extended: bool,
    pub version: i64,
    pub outcomes: Vec<TaskRecord>,
    /// An export's archive, once it has one.
    pub export: Option<ExportRecord>,
    /// The recipients told of the request (GDPR Art. 19), in catalog order.
    pub recipients: Vec<DeliveryRecord>,
}

/// One store's outcome as stored.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub store: String,
    pub state: OutcomeState,
    pub records_found: u64,
    pub records_affected: u64,
    pub records_unattributed: u64,
    pub retention_basis: Option<String>,
    pub retained_until: Option<DateTime<Utc>>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub verified: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Ledger {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Applies the service's migrations (idempotent; safe to run from several processes), then
    /// links any events written before the audit chain existed into it.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.db.backend() {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        if let Some(schema) = self.db.schema() {
            self.prepare_schema(schema).await?;
        }
        migrator.run(self.db.pool()).await?;
        self.seal_unchained_events().await?;
        Ok(())
    }
}

impl Ledger {
    /// Postgres: creates dsr's schema, after checking that no ledger already lives elsewhere on
    /// the search path (one made before dsr had its own schema): migrating would start an empty
    /// ledger beside it.
    async fn prepare_schema(&self, schema: &str) -> anyhow::Result<()> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass('dsr_requests')",
        )
        .fetch_optional(self.db.pool())
        .await?
        .flatten();
        if let Some(other) = found.filter(|n| n != schema) {
            anyhow::bail!(
                "the ledger's tables are in the schema {other:?}, not in {schema:?}: set [database] schema = {other:?} \
                 to keep using them there, or move them (ALTER TABLE … SET SCHEMA) with dsr's _sqlx_migrations"
            );
        }
        let ident = schema.replace('"', "\"\"");
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{ident}\"")).execute(self.db.pool()).await?;
        Ok(())
    }
}

fn opt_time(row: &AnyRow, col: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(from_millis))
}

fn decode_enum<T>(value: String, parse: fn(&str) -> Option<T>) -> sqlx::Result<T> {
    parse(&value).ok_or_else(|| sqlx::Error::Decode(format!("unknown state {value:?} in the ledger").into()))
}

impl TaskRecord {
    fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        Ok(Self {
            store: row.try_get("store")?,
            state: decode_enum(row.try_get("state")?, OutcomeState::from_db)?,
            records_found: row.try_get::<i64, _>("records_found")? as u64,
            records_affected: row.try_get::<i64, _>("records_affected")? as u64,
            records_unattributed: row.try_get::<i64, _>("records_unattributed")? as u64,
            retention_basis: row.try_get("retention_basis")?,
            retained_until: opt_time(row, "retained_until")?,
            attempts: row.try_get::<i64, _>("attempt")? as u32,
            last_error: row.try_get("last_error")?,
            verified: row.try_get::<i64, _>("verified")? != 0,
            started_at: opt_time(row, "started_at")?,
            finished_at: opt_time(row, "finished_at")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_record_written_before_rectification_existed_still_parses() {
        let subject = Subject::parse("acme", "acct-1", "", "+14155550100").unwrap();
        let old = serde_json::to_string(&subject).unwrap();
        let record: SubjectRecord = serde_json::from_str(&old).unwrap();
        assert_eq!(
            record,
            SubjectRecord { subject: subject.clone(), corrections: None, resolution: None, person: None }
        );
        assert_eq!(serde_json::to_string(&record).unwrap(), old, "a deletion's record is unchanged");
        let corrections = Corrections::parse(None, Some("a@example.com"), None).unwrap();
        let with = SubjectRecord { subject, corrections: Some(corrections), resolution: None, person: None };
        let back: SubjectRecord = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back, with);
    }

    /// An export's record carries its person beside, not in, `resolution`: a version that does
    /// not know `person` finds no resolution and resolves the export whole when it runs it,
    /// instead of reading an empty one as "the person holds nothing".
    #[test]
    fn an_exports_record_holds_its_person_where_older_versions_do_not_look() {
        let subject = Subject::parse("acme", "", "", "+14155550100").unwrap();
        let mut person = crate::resolve::Person::new("acme", "US");
        person.phones.insert("+14155550100".into());
        let record = SubjectRecord { subject, corrections: None, resolution: None, person: Some(person) };
        let json: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert!(json.get("resolution").is_none(), "{json}");
        assert_eq!(json["person"]["phones"][0], "+14155550100");
        let back: SubjectRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
