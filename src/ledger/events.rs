//! The append-only event log: one row per state change, written (to the journal) in the same
//! transaction as the change and linked into the hash chain by a sealer (`journal`, `audit`). Holds request ids, tenants, stores, counts
//! and keyed hashes — never an identifier.
use chrono::{DateTime, Utc};
use sqlx::{any::AnyRow, Row};

use super::{audit, journal, Ledger, Result};
use crate::{clock::from_millis, db::Tx};

/// An event about to be appended.
#[derive(Debug, Clone, Default)]
pub struct NewEvent<'a> {
    pub(super) request_id: Option<&'a str>,
    pub(super) tenant_id: Option<&'a str>,
    pub(super) store: Option<&'a str>,
    pub(super) action: &'a str,
    pub(super) attempt: Option<i64>,
    pub(super) counts: Option<(u64, u64)>,
    pub(super) actor: Option<&'a str>,
    pub(super) subject_tag: Option<&'a str>,
    pub(super) detail: Option<&'a str>,
    /// One keyed hash per identifier of the subject (see `KeyedHasher::identifier_tag`).
    pub(super) subject_tags: &'a [String],
}

impl<'a> NewEvent<'a> {
    pub fn request(request_id: &'a str, tenant_id: &'a str, action: &'a str) -> Self {
        Self { request_id: Some(request_id), tenant_id: Some(tenant_id), action, ..Default::default() }
    }

    /// An event about the log itself (pruning), not about one request.
    pub fn global(action: &'a str) -> Self {
        Self { action, ..Default::default() }
    }

    /// The tenant of an event that is about no one request (a hold, a sweep).
    pub fn tenant(mut self, tenant: &'a str) -> Self {
        self.tenant_id = Some(tenant);
        self
    }

    pub fn store(mut self, store: &'a str, attempt: u32) -> Self {
        self.store = Some(store);
        self.attempt = Some(attempt as i64);
        self
    }

    pub fn counts(mut self, found: u64, affected: u64) -> Self {
        self.counts = Some((found, affected));
        self
    }

    pub fn actor(mut self, actor: &'a str) -> Self {
        self.actor = Some(actor);
        self
    }

    pub fn subject_tag(mut self, tag: &'a str) -> Self {
        self.subject_tag = Some(tag);
        self
    }

    pub fn subject_tags(mut self, tags: &'a [String]) -> Self {
        self.subject_tags = tags;
        self
    }

    pub fn detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Records these events in `tx`, in this order, in one statement.
    pub async fn append_all(events: &[NewEvent<'_>], tx: &mut Tx, at: DateTime<Utc>) -> sqlx::Result<()> {
        journal::append_all(tx, events, at).await
    }

    /// Records the event in `tx`; a sealer links it at the end of the chain (see `journal`).
    pub async fn append(self, tx: &mut Tx, at: DateTime<Utc>) -> sqlx::Result<()> {
        journal::append(tx, &self, at).await
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub request_id: Option<String>,
    pub tenant_id: Option<String>,
    pub store: Option<String>,
    pub action: String,
    pub attempt: Option<i64>,
    pub records_found: Option<i64>,
    pub records_affected: Option<i64>,
    pub actor: Option<String>,
    pub subject_tag: Option<String>,
    pub detail: Option<String>,
    /// Sorted; part of the event's hash.
    pub subject_tags: Vec<String>,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

pub(super) const EVENT_COLUMNS: &str =
    "seq, at, request_id, tenant_id, store, action, attempt, records_found, \
     records_affected, actor, subject_tag, detail, prev_hash, hash";

impl EventRecord {
    /// Without its subject tags (they live in `dsr_event_subjects`; see `audit::attach_tags`).
    pub(super) fn from_row(r: &AnyRow) -> sqlx::Result<Self> {
        Ok(EventRecord {
            seq: r.try_get("seq")?,
            at: from_millis(r.try_get("at")?),
            request_id: r.try_get("request_id")?,
            tenant_id: r.try_get("tenant_id")?,
            store: r.try_get("store")?,
            action: r.try_get("action")?,
            attempt: r.try_get("attempt")?,
            records_found: r.try_get("records_found")?,
            records_affected: r.try_get("records_affected")?,
            actor: r.try_get("actor")?,
            subject_tag: r.try_get("subject_tag")?,
            detail: r.try_get("detail")?,
            subject_tags: Vec::new(),
            prev_hash: r.try_get("prev_hash")?,
            hash: r.try_get("hash")?,
        })
    }
}

impl Ledger {
    /// Appends one event in its own transaction (for events that record no state change here:
    /// what a retention sweep erased in a store).
    pub async fn record_event(&self, event: NewEvent<'_>, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.begin_chained().await?;
        event.append(&mut tx, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A request's events, oldest first (the journal linked first).
    pub async fn events_of(&self, request_id: &str) -> Result<Vec<EventRecord>> {
        self.seal_journal().await?;
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM dsr_events WHERE request_id = $1 ORDER BY seq"
        ))
        .bind(request_id)
        .fetch_all(self.db.pool())
        .await?;
        let mut events = rows.iter().map(EventRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
        audit::attach_tags(self.db.pool(), &mut events).await?;
        Ok(events)
    }
}
