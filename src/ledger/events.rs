//! The append-only event log: one row per state change, written in the same transaction as the
//! change. Holds request ids, tenants, stores, counts and keyed hashes — never an identifier.
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Ledger, Result};
use crate::{
    clock::{from_millis, to_millis},
    db::Tx,
};

/// An event about to be appended.
#[derive(Debug, Clone, Default)]
pub struct NewEvent<'a> {
    request_id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    store: Option<&'a str>,
    action: &'a str,
    attempt: Option<i64>,
    counts: Option<(u64, u64)>,
    actor: Option<&'a str>,
    subject_tag: Option<&'a str>,
    detail: Option<&'a str>,
}

impl<'a> NewEvent<'a> {
    pub fn request(request_id: &'a str, tenant_id: &'a str, action: &'a str) -> Self {
        Self { request_id: Some(request_id), tenant_id: Some(tenant_id), action, ..Default::default() }
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

    pub fn detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    pub async fn append(self, tx: &mut Tx, at: DateTime<Utc>) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO dsr_events (at, request_id, tenant_id, store, action, attempt, records_found, \
             records_affected, actor, subject_tag, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(to_millis(at))
        .bind(self.request_id)
        .bind(self.tenant_id)
        .bind(self.store)
        .bind(self.action)
        .bind(self.attempt)
        .bind(self.counts.map(|c| c.0 as i64))
        .bind(self.counts.map(|c| c.1 as i64))
        .bind(self.actor)
        .bind(self.subject_tag)
        .bind(self.detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// An event as stored.
#[derive(Debug, Clone)]
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
}

impl Ledger {
    /// A request's events, oldest first.
    pub async fn events_of(&self, request_id: &str) -> Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT seq, at, request_id, tenant_id, store, action, attempt, records_found, records_affected, \
             actor, subject_tag, detail FROM dsr_events WHERE request_id = $1 ORDER BY seq",
        )
        .bind(request_id)
        .fetch_all(self.db.pool())
        .await?;
        let events = rows
            .iter()
            .map(|r| {
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
                })
            })
            .collect::<sqlx::Result<_>>()?;
        Ok(events)
    }
}
