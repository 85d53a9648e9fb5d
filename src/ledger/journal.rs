//! The event journal and its sealer (issue 16, item 9): how an event gets into the hash chain
//! without any process holding a global lock across a round trip to the database.
//!
//! **Append.** An event is one `INSERT INTO dsr_event_journal`, in the transaction of the state
//! change it records: durable with it, gone with it on rollback, and taking no lock but the new
//! row's. Writers never wait for each other because of the chain.
//!
//! **Seal.** A sealer links journal rows into `dsr_events` in journal (id) order: it reads the
//! head and a batch of the journal in one statement, hashes the batch in Rust (`audit::canonical`),
//! then moves it — events in, journal rows out, head forward — only if the head is still the one
//! it read (compare-and-set). On Postgres that move is **one statement** (data-modifying CTEs), so
//! a sealer paused or killed at any moment holds nothing; two sealers racing leave one winner and
//! the loser reads again. On SQLite there is one writer anyway, and the move is one `BEGIN
//! IMMEDIATE` transaction.
//!
//! **Order.** Chain order is seal order. A journal id is taken at insert, so a transaction that
//! commits late may be sealed after events with higher ids; events of transactions that follow
//! one another (a request's steps) keep their order. Every server runs a sealer
//! (`Ledger::run_sealer`); readers of the log seal first (`Ledger::seal_journal`), so a listing or
//! a verification sees every event committed before it was asked.
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{
    audit::chain_hash,
    events::{EventRecord, NewEvent},
    Ledger, Result,
};
use crate::{
    clock::to_millis,
    db::{
        rows::{Rows, Value},
        Backend, Tx,
    },
};

/// Journal rows linked per seal: one statement's worth.
const SEAL_BATCH: i64 = 256;

/// Lost compare-and-sets in a row after which `seal_journal` gives up for now.
const MAX_RACES: u64 = 200;

/// How often a server's sealer looks for journal rows when it found none the last time.
pub const SEAL_INTERVAL: Duration = Duration::from_millis(100);

/// Records `ev` in the journal, in `tx`. It joins the chain when a sealer links it.
pub(super) async fn append(tx: &mut Tx, ev: &NewEvent<'_>, at: DateTime<Utc>) -> sqlx::Result<()> {
    append_all(tx, std::slice::from_ref(ev), at).await
}

/// The journal's columns an event fills.
pub(super) const JOURNAL_COLUMNS: &[&str] = &[
    "at",
    "request_id",
    "tenant_id",
    "store",
    "action",
    "attempt",
    "records_found",
    "records_affected",
    "actor",
    "subject_tag",
    "detail",
    "subject_tags",
];

/// Adds `events` to `rows`, as journal rows in this order (ids ascend within one statement).
pub(super) fn add_rows(rows: &mut Rows, events: &[NewEvent<'_>], at: DateTime<Utc>) -> sqlx::Result<()> {
    rows.add("dsr_event_journal", JOURNAL_COLUMNS, event_values(events, at)?);
    Ok(())
}

/// Each event's journal row, one value per `JOURNAL_COLUMNS`.
pub(super) fn event_values(events: &[NewEvent<'_>], at: DateTime<Utc>) -> sqlx::Result<Vec<Vec<Value>>> {
    let mut values = Vec::with_capacity(events.len());
    for ev in events {
        let mut tags = ev.subject_tags.to_vec();
        tags.sort_unstable();
        tags.dedup();
        let tags = serde_json::to_string(&tags).map_err(|e| sqlx::Error::Encode(e.into()))?;
        values.push(vec![
            to_millis(at).into(),
            ev.request_id.into(),
            ev.tenant_id.into(),
            ev.store.into(),
            ev.action.into(),
            ev.attempt.into(),
            ev.counts.map(|c| c.0 as i64).into(),
            ev.counts.map(|c| c.1 as i64).into(),
            ev.actor.into(),
            ev.subject_tag.into(),
            ev.detail.into(),
            Value::from(&tags),
        ]);
    }
    Ok(values)
}

/// Records `events` in the journal, in `tx`, in this order (ids ascend within one statement),
/// in one `INSERT` per `MAX_ROWS`.
pub(super) async fn append_all(tx: &mut Tx, events: &[NewEvent<'_>], at: DateTime<Utc>) -> sqlx::Result<()> {
    const MAX_ROWS: usize = 500;
    for chunk in events.chunks(MAX_ROWS) {
        let mut rows = Rows::default();
        add_rows(&mut rows, chunk, at)?;
        rows.insert_each(tx).await?;
    }
    Ok(())
}

/// What one seal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seal {
    /// The journal was empty.
    Empty,
    /// This many events joined the chain.
    Linked(u64),
    /// Another sealer moved the head first; nothing was written.
    Raced,
}

/// An event as the sealer writes it into `dsr_events`.
#[derive(Serialize)]
struct SealedRow<'a> {
    seq: i64,
    at: i64,
    request_id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    store: Option<&'a str>,
    action: &'a str,
    attempt: Option<i64>,
    records_found: Option<i64>,
    records_affected: Option<i64>,
    actor: Option<&'a str>,
    subject_tag: Option<&'a str>,
    detail: Option<&'a str>,
    prev_hash: &'a str,
    hash: &'a str,
}

#[derive(Serialize)]
struct TagRow<'a> {
    seq: i64,
    request_id: &'a str,
    tag: &'a str,
}

/// A batch read from the journal and linked in memory, ready to move.
struct Batch {
    head_seq: i64,
    new_head: (i64, String),
    journal_ids: Vec<i64>,
    events: Vec<EventRecord>,
}

impl Batch {
    fn events_json(&self) -> String {
        let rows: Vec<SealedRow> = self
            .events
            .iter()
            .map(|e| SealedRow {
                seq: e.seq,
                at: to_millis(e.at),
                request_id: e.request_id.as_deref(),
                tenant_id: e.tenant_id.as_deref(),
                store: e.store.as_deref(),
                action: &e.action,
                attempt: e.attempt,
                records_found: e.records_found,
                records_affected: e.records_affected,
                actor: e.actor.as_deref(),
                subject_tag: e.subject_tag.as_deref(),
                detail: e.detail.as_deref(),
                prev_hash: e.prev_hash.as_deref().unwrap_or_default(),
                hash: e.hash.as_deref().unwrap_or_default(),
            })
            .collect();
        serde_json::to_string(&rows).expect("events serialise")
    }

    fn tags_json(&self) -> String {
        let rows: Vec<TagRow> = self
            .events
            .iter()
            .flat_map(|e| {
                e.subject_tags.iter().map(|tag| TagRow {
                    seq: e.seq,
                    request_id: e.request_id.as_deref().unwrap_or(""),
                    tag,
                })
            })
            .collect();
        serde_json::to_string(&rows).expect("tags serialise")
    }

    fn ids_json(&self) -> String {
        serde_json::to_string(&self.journal_ids).expect("ids serialise")
    }
}

/// Reads the head and the oldest journal rows in one statement (one snapshot: a head read before
/// a batch another sealer has just moved would link that batch twice) and links them in memory.
async fn read_batch<'c, E>(executor: E) -> sqlx::Result<Option<Batch>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let rows = sqlx::query(&format!(
        "SELECT h.seq AS head_seq, h.hash AS head_hash, j.id, CAST(0 AS BIGINT) AS seq, j.at, j.request_id, \
         j.tenant_id, j.store, j.action, j.attempt, j.records_found, j.records_affected, j.actor, \
         j.subject_tag, j.detail, j.subject_tags, CAST(NULL AS TEXT) AS prev_hash, CAST(NULL AS TEXT) AS hash \
         FROM dsr_audit_head h LEFT JOIN (SELECT * FROM dsr_event_journal ORDER BY id \
         LIMIT {SEAL_BATCH}) j ON 1 = 1 WHERE h.id = 1 ORDER BY j.id"
    ))
    .fetch_all(executor)
    .await?;
    let Some(first) = rows.first() else {
        return Err(sqlx::Error::RowNotFound);
    };
    let head_seq: i64 = first.try_get("head_seq")?;
    let (mut seq, mut prev): (i64, String) = (head_seq, first.try_get("head_hash")?);
    let mut batch =
        Batch { head_seq, new_head: (0, String::new()), journal_ids: Vec::new(), events: Vec::new() };
    for r in &rows {
        let Some(id) = r.try_get::<Option<i64>, _>("id")? else {
            continue;
        };
        let tags: String = r.try_get("subject_tags")?;
        let subject_tags: Vec<String> =
            serde_json::from_str(&tags).map_err(|e| sqlx::Error::Decode(e.into()))?;
        seq += 1;
        // The journal row in the event's columns (seq and links filled in here).
        let mut e = EventRecord::from_row(r)?;
        (e.seq, e.subject_tags, e.prev_hash) = (seq, subject_tags, Some(prev));
        let hash = chain_hash(&e);
        e.hash = Some(hash.clone());
        prev = hash;
        batch.journal_ids.push(id);
        batch.events.push(e);
    }
    if batch.events.is_empty() {
        return Ok(None);
    }
    batch.new_head = (seq, prev);
    Ok(Some(batch))
}

/// Postgres: the whole move in one statement, so nothing is held between round trips. Every
/// part is conditional on the head still being at `head_seq` (the `moved` CTE).
const MOVE_POSTGRES: &str = "\
WITH moved AS (
    UPDATE dsr_audit_head SET seq = $1, hash = $2 WHERE id = 1 AND seq = $3 RETURNING id
), linked AS (
    INSERT INTO dsr_events (seq, at, request_id, tenant_id, store, action, attempt, records_found,
                            records_affected, actor, subject_tag, detail, prev_hash, hash)
    SELECT v.seq, v.at, v.request_id, v.tenant_id, v.store, v.action, v.attempt, v.records_found,
           v.records_affected, v.actor, v.subject_tag, v.detail, v.prev_hash, v.hash
    FROM json_to_recordset($4::json) AS v(seq BIGINT, at BIGINT, request_id TEXT, tenant_id TEXT,
         store TEXT, action TEXT, attempt BIGINT, records_found BIGINT, records_affected BIGINT,
         actor TEXT, subject_tag TEXT, detail TEXT, prev_hash TEXT, hash TEXT)
    WHERE EXISTS (SELECT 1 FROM moved)
    RETURNING seq
), tagged AS (
    INSERT INTO dsr_event_subjects (seq, request_id, tag)
    SELECT t.seq, t.request_id, t.tag FROM json_to_recordset($5::json) AS t(seq BIGINT, request_id TEXT, tag TEXT)
    WHERE EXISTS (SELECT 1 FROM moved)
), taken AS (
    DELETE FROM dsr_event_journal
    WHERE id IN (SELECT value::bigint FROM json_array_elements_text($6::json))
      AND EXISTS (SELECT 1 FROM moved)
)
SELECT COUNT(*) AS linked FROM linked";

impl Ledger {
    /// Links one batch of the journal into the chain.
    async fn seal_batch(&self) -> sqlx::Result<Seal> {
        match self.db.backend() {
            Backend::Postgres => {
                let Some(batch) = read_batch(self.db.pool()).await? else {
                    return Ok(Seal::Empty);
                };
                let linked: i64 = sqlx::query_scalar(MOVE_POSTGRES)
                    .bind(batch.new_head.0)
                    .bind(&batch.new_head.1)
                    .bind(batch.head_seq)
                    .bind(batch.events_json())
                    .bind(batch.tags_json())
                    .bind(batch.ids_json())
                    .fetch_one(self.db.pool())
                    .await?;
                Ok(if linked == 0 { Seal::Raced } else { Seal::Linked(linked as u64) })
            }
            Backend::Sqlite => {
                let mut tx = self.db.begin_write().await?;
                let Some(batch) = read_batch(&mut *tx).await? else {
                    return Ok(Seal::Empty);
                };
                sqlx::query(
                    "INSERT INTO dsr_events (seq, at, request_id, tenant_id, store, action, attempt, records_found, \
                     records_affected, actor, subject_tag, detail, prev_hash, hash) \
                     SELECT json_extract(value, '$.seq'), json_extract(value, '$.at'), \
                     json_extract(value, '$.request_id'), json_extract(value, '$.tenant_id'), \
                     json_extract(value, '$.store'), json_extract(value, '$.action'), \
                     json_extract(value, '$.attempt'), json_extract(value, '$.records_found'), \
                     json_extract(value, '$.records_affected'), json_extract(value, '$.actor'), \
                     json_extract(value, '$.subject_tag'), json_extract(value, '$.detail'), \
                     json_extract(value, '$.prev_hash'), json_extract(value, '$.hash') FROM json_each($1)",
                )
                .bind(batch.events_json())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO dsr_event_subjects (seq, request_id, tag) SELECT json_extract(value, '$.seq'), \
                     json_extract(value, '$.request_id'), json_extract(value, '$.tag') FROM json_each($1)",
                )
                .bind(batch.tags_json())
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM dsr_event_journal WHERE id IN (SELECT value FROM json_each($1))")
                    .bind(batch.ids_json())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE dsr_audit_head SET seq = $1, hash = $2 WHERE id = 1")
                    .bind(batch.new_head.0)
                    .bind(&batch.new_head.1)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Seal::Linked(batch.events.len() as u64))
            }
        }
    }

    /// Links every journal row committed before the call into the chain (racing sealers may
    /// link some of them instead). Returns how many this call linked.
    ///
    /// A batch short of `SEAL_BATCH` was every row its snapshot saw, a snapshot taken after the
    /// call began: the call's work is done. Reading again until the journal is empty would
    /// chase rows committed since, a few at a time: under load the server's sealer did that
    /// without pause, 2.25 seals (four statements) per deletion in `dsr bench deletions`.
    pub async fn seal_journal(&self) -> Result<u64> {
        let (mut linked, mut races) = (0, 0);
        loop {
            match self.seal_batch().await? {
                Seal::Empty => return Ok(linked),
                Seal::Linked(n) if n < SEAL_BATCH as u64 => return Ok(linked + n),
                Seal::Linked(n) => linked += n,
                // Another sealer moved the head between our read and our move: it is linking
                // the same rows; read again. Racing for ever means something else moves the
                // head: say so rather than spin.
                Seal::Raced if races < MAX_RACES => {
                    races += 1;
                    tokio::time::sleep(Duration::from_millis(races)).await;
                }
                Seal::Raced => {
                    warn!(races, "the audit chain's head kept moving under this sealer; sealing again later");
                    return Ok(linked);
                }
            }
        }
    }

    /// Events waiting in the journal to be linked into the chain.
    pub async fn journal_len(&self) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM dsr_event_journal").fetch_one(self.db.pool()).await?;
        Ok(n as u64)
    }

    /// A server's sealer: links the journal into the chain until `stop`, then once more so a
    /// drained server leaves nothing behind that it wrote. A failure (the database away) is
    /// logged and retried; the journal keeps the events meanwhile.
    pub async fn run_sealer(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.seal_journal().await {
                warn!(error = %e, "sealing the audit journal failed; retrying");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(SEAL_INTERVAL) => {}
            }
        }
        if let Err(e) = self.seal_journal().await {
            warn!(error = %e, "sealing the audit journal at shutdown failed; another server or the next start links it");
        }
    }
}
