//! The audit record (issue 7): the event log as a hash chain, so an edited, deleted, inserted or
//! reordered event is detected; listing it by tenant, request or subject; verifying it; and
//! pruning old requests without breaking verification.
//!
//! **Chain.** Event `n` stores `prev_hash` = the hash of event `n-1` (64 zeros for the first, or
//! the newest checkpoint's hash after pruning) and `hash` = lowercase hex of
//! `SHA-256(canonical(event))`, where the canonical bytes start with the previous hash (see
//! `canonical`). The hash is deliberately unkeyed: anyone holding the rows can check them.
//!
//! **Order.** Events are written to a journal without any lock and linked into the chain, in
//! order, by a sealer that moves the head with a compare-and-set (see `journal`). The chain
//! order is the seq order, gapless, across workers and replicas, and no process holds a global
//! lock across a round trip: a paused replica stalls no one.
//!
//! **Pruning** is the one writer that takes a lock (`CHAIN_LOCK`, Postgres advisory, held by the
//! prune's transaction): it serialises prunes with each other, never with appends or sealing.
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{
    events::{EventRecord, NewEvent, EVENT_COLUMNS},
    Ledger, Result,
};
use crate::{
    clock::to_millis,
    db::{Backend, Tx},
};

/// `prev_hash` of the first event ever appended.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The key of the Postgres advisory lock that serialises prunes ("dsr_audt"). Appends and
/// sealing never take it.
pub const CHAIN_LOCK: i64 = 0x6473_725f_6175_6474;

/// Events read per round trip while verifying.
const VERIFY_BATCH: i64 = 1000;

/// Version tag at the start of every canonical encoding, so a future change of the encoding can
/// coexist with events hashed under this one.
const CANONICAL_V1: &str = "dsr.audit.event.v1";

/// Takes the prune lock for the rest of the transaction. Idempotent within a transaction.
async fn lock_chain(tx: &mut Tx) -> sqlx::Result<()> {
    if tx.backend_name() == "PostgreSQL" {
        // The function returns void, which the Any driver cannot decode; select a constant.
        sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock($1)")
            .bind(CHAIN_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The bytes an event's hash covers: every stored column but `hash`, in a fixed order, each
/// length-prefixed (strings: u32 big-endian byte length + UTF-8; integers: 8 bytes big-endian;
/// an absent value is one 0 byte, a present one is preceded by a 1 byte), then the sorted
/// subject tags (u32 count + each as a string).
pub fn canonical(e: &EventRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let text = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let opt_text = |out: &mut Vec<u8>, s: Option<&str>| match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            text(out, s);
        }
    };
    let opt_int = |out: &mut Vec<u8>, i: Option<i64>| match i {
        None => out.push(0),
        Some(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_be_bytes());
        }
    };
    text(&mut out, CANONICAL_V1);
    opt_text(&mut out, e.prev_hash.as_deref());
    out.extend_from_slice(&e.seq.to_be_bytes());
    out.extend_from_slice(&to_millis(e.at).to_be_bytes());
    opt_text(&mut out, e.request_id.as_deref());
    opt_text(&mut out, e.tenant_id.as_deref());
    opt_text(&mut out, e.store.as_deref());
    text(&mut out, &e.action);
    opt_int(&mut out, e.attempt);
    opt_int(&mut out, e.records_found);
    opt_int(&mut out, e.records_affected);
    opt_text(&mut out, e.actor.as_deref());
    opt_text(&mut out, e.subject_tag.as_deref());
    opt_text(&mut out, e.detail.as_deref());
    let mut tags: Vec<&str> = e.subject_tags.iter().map(String::as_str).collect();
    tags.sort_unstable();
    out.extend_from_slice(&(tags.len() as u32).to_be_bytes());
    for t in tags {
        text(&mut out, t);
    }
    out
}

/// The hash an event must carry: lowercase hex of SHA-256 over its canonical bytes (which begin
/// with its `prev_hash`).
pub fn chain_hash(e: &EventRecord) -> String {
    hex::encode(Sha256::digest(canonical(e)))
}

/// Fills in the subject tags of `events` (one query over their seq range).
pub(super) async fn attach_tags<'c, E>(executor: E, events: &mut [EventRecord]) -> sqlx::Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let (Some(first), Some(last)) = (events.iter().map(|e| e.seq).min(), events.iter().map(|e| e.seq).max())
    else {
        return Ok(());
    };
    let rows = sqlx::query("SELECT seq, tag FROM dsr_event_subjects WHERE seq >= $1 AND seq <= $2")
        .bind(first)
        .bind(last)
        .fetch_all(executor)
        .await?;
    for row in rows {
        let seq: i64 = row.try_get("seq")?;
        if let Some(e) = events.iter_mut().find(|e| e.seq == seq) {
            e.subject_tags.push(row.try_get("tag")?);
        }
    }
    for e in events {
        e.subject_tags.sort_unstable();
    }
    Ok(())
}

/// Which events `list_audit_events` returns; the filters combine with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant_id: Option<String>,
    pub request_id: Option<String>,
    /// Events of the requests whose subject carries any of these identifier tags.
    pub subject_tags: Vec<String>,
}

/// The result of recomputing the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVerdict {
    pub ok: bool,
    /// Events read, up to and including the first bad one.
    pub events_checked: u64,
    /// Sequence number of the first event that fails (0 when none). For a deleted event this is
    /// the one after the gap; for events missing from the end, the first missing number.
    pub first_bad_event: u64,
    /// What failed, in words (sequence numbers only, never content).
    pub reason: Option<String>,
}

/// What `prune_audit` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub events_pruned: u64,
    pub requests_pruned: u64,
    /// The new checkpoint: the last pruned sequence number (0 when nothing was pruned).
    pub through_seq: i64,
}

/// The newest checkpoint: (last pruned seq, its hash), or the start of the chain.
async fn latest_checkpoint<'c, E>(executor: E) -> sqlx::Result<(i64, String)>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT last_pruned_seq, last_hash FROM dsr_audit_checkpoints ORDER BY last_pruned_seq DESC LIMIT 1",
    )
    .fetch_optional(executor)
    .await?;
    Ok(match row {
        Some(r) => (r.try_get("last_pruned_seq")?, r.try_get("last_hash")?),
        None => (0, GENESIS_HASH.to_owned()),
    })
}

fn checkpoint_detail(seq: i64, hash: &str) -> String {
    format!("pruned through seq {seq}, hash {hash}")
}

impl Ledger {
    /// Starts a write transaction whose events go to the journal (`journal::append`): it takes
    /// no chain lock, so transactions that record events run side by side.
    pub(super) async fn begin_chained(&self) -> sqlx::Result<Tx> {
        self.db.begin_write().await
    }

    /// The question every start asks before `seal_unchained_events` does anything: is there an
    /// event after the chain's head without a hash? Only after the head: asked of the whole
    /// table it was a scan of every audit event ever kept (1.2 s at 12 million, each start).
    pub const UNCHAINED_EVENTS_QUESTION: &'static str = "SELECT COUNT(*) FROM (SELECT 1 FROM dsr_events \
         WHERE seq > (SELECT seq FROM dsr_audit_head WHERE id = 1) AND hash IS NULL LIMIT 1) AS unchained";

    /// Links events written before the chain existed (hash NULL, after the head) into it, in seq
    /// order. Runs at every start; a no-op once done.
    pub(super) async fn seal_unchained_events(&self) -> Result<u64> {
        let unchained: i64 =
            sqlx::query_scalar(Self::UNCHAINED_EVENTS_QUESTION).fetch_one(self.db.pool()).await?;
        if unchained == 0 {
            return Ok(0);
        }
        let mut tx = self.db.begin_write().await?;
        // The head's row lock keeps sealers (whose compare-and-set waits on it, then fails and
        // reads again) from linking journal rows at the seqs these old events hold.
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let head = sqlx::query(&format!("SELECT seq, hash FROM dsr_audit_head WHERE id = 1{lock}"))
            .fetch_one(&mut *tx)
            .await?;
        let (mut seq, mut prev): (i64, String) = (head.try_get("seq")?, head.try_get("hash")?);
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM dsr_events WHERE seq > $1 AND hash IS NULL ORDER BY seq"
        ))
        .bind(seq)
        .fetch_all(&mut *tx)
        .await?;
        let sealed = rows.len() as u64;
        let mut events = rows.iter().map(EventRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
        attach_tags(&mut *tx, &mut events).await?;
        for mut e in events {
            e.prev_hash = Some(prev);
            let hash = chain_hash(&e);
            sqlx::query("UPDATE dsr_events SET prev_hash = $1, hash = $2 WHERE seq = $3")
                .bind(&e.prev_hash)
                .bind(&hash)
                .bind(e.seq)
                .execute(&mut *tx)
                .await?;
            (seq, prev) = (e.seq, hash);
        }
        if sealed > 0 {
            sqlx::query("UPDATE dsr_audit_head SET seq = $1, hash = $2 WHERE id = 1")
                .bind(seq)
                .bind(&prev)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(sealed)
    }

    /// Oldest first, from after `after_seq`. Returns the page and, when there is more, the seq
    /// to continue after.
    pub async fn list_audit_events(
        &self,
        filter: &AuditFilter,
        after_seq: Option<i64>,
        size: usize,
    ) -> Result<(Vec<EventRecord>, Option<i64>)> {
        self.seal_journal().await?;
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM dsr_events WHERE 1=1");
        let mut binds: Vec<Bind> = Vec::new();
        let mut n = 0;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        if let Some(t) = &filter.tenant_id {
            sql.push_str(&format!(" AND tenant_id = {}", param()));
            binds.push(Bind::Text(t.clone()));
        }
        if let Some(r) = &filter.request_id {
            sql.push_str(&format!(" AND request_id = {}", param()));
            binds.push(Bind::Text(r.clone()));
        }
        if !filter.subject_tags.is_empty() {
            let list: Vec<String> = filter.subject_tags.iter().map(|_| param()).collect();
            sql.push_str(&format!(
                " AND request_id IN (SELECT request_id FROM dsr_event_subjects WHERE tag IN ({}))",
                list.join(", ")
            ));
            binds.extend(filter.subject_tags.iter().cloned().map(Bind::Text));
        }
        if let Some(after) = after_seq {
            sql.push_str(&format!(" AND seq > {}", param()));
            binds.push(Bind::Int(after));
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT {}", size + 1));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(self.db.pool()).await?;
        let mut events = rows.iter().map(EventRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
        let next = if events.len() > size {
            events.truncate(size);
            events.last().map(|e| e.seq)
        } else {
            None
        };
        attach_tags(self.db.pool(), &mut events).await?;
        Ok((events, next))
    }

    /// Links the journal, then recomputes the chain from the newest checkpoint (or the start) to
    /// the head, on one consistent snapshot, and reports the first event that fails:
    /// - an edited event: its own seq (its hash no longer matches its contents);
    /// - a deleted event: the seq of the event after the gap (its `prev_hash` links to nothing);
    /// - an inserted or reordered event: the first position whose hash or link fails (the seq is
    ///   part of the hash, so a row moved to another seq fails there);
    /// - events deleted from the end: the first missing seq (the head still names the last);
    /// - events added after the head: the first of them;
    /// - a checkpoint that no `audit_pruned` event in the chain vouches for: the seq after it.
    pub async fn verify_audit_chain(&self) -> Result<ChainVerdict> {
        self.seal_journal().await?;
        let begin = match self.db.backend() {
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            Backend::Sqlite => "BEGIN",
        };
        let mut tx = self.db.pool().begin_with(begin).await?;
        let head =
            sqlx::query("SELECT seq, hash FROM dsr_audit_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let (head_seq, head_hash): (i64, String) = (head.try_get("seq")?, head.try_get("hash")?);
        let (checkpoint_seq, checkpoint_hash) = latest_checkpoint(&mut *tx).await?;
        let vouching = checkpoint_detail(checkpoint_seq, &checkpoint_hash);
        let mut vouched = checkpoint_seq == 0;
        let (mut last_seq, mut expected_prev) = (checkpoint_seq, checkpoint_hash);
        let mut checked = 0u64;
        let bad = |checked: u64, seq: i64, reason: String| ChainVerdict {
            ok: false,
            events_checked: checked,
            first_bad_event: seq.max(0) as u64,
            reason: Some(reason),
        };
        loop {
            let rows = sqlx::query(&format!(
                "SELECT {EVENT_COLUMNS} FROM dsr_events WHERE seq > $1 ORDER BY seq LIMIT {VERIFY_BATCH}"
            ))
            .bind(last_seq)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                break;
            }
            let mut events = rows.iter().map(EventRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
            attach_tags(&mut *tx, &mut events).await?;
            for e in events {
                checked += 1;
                if e.seq > head_seq {
                    return Ok(bad(
                        checked,
                        e.seq,
                        format!("event {} is beyond the end of the chain", e.seq),
                    ));
                }
                if e.hash.as_deref() != Some(chain_hash(&e).as_str()) {
                    return Ok(bad(
                        checked,
                        e.seq,
                        format!("event {}: its hash does not match its contents", e.seq),
                    ));
                }
                if e.prev_hash.as_deref() != Some(expected_prev.as_str()) {
                    return Ok(bad(
                        checked,
                        e.seq,
                        format!("event {}: prev_hash does not link to the event before it", e.seq),
                    ));
                }
                if !vouched && e.action == "audit_pruned" && e.detail.as_deref() == Some(vouching.as_str()) {
                    vouched = true;
                }
                last_seq = e.seq;
                expected_prev = e.hash.unwrap_or_default();
            }
        }
        if last_seq < head_seq {
            return Ok(bad(
                checked,
                last_seq + 1,
                format!("events {} to {head_seq} are missing from the end of the chain", last_seq + 1),
            ));
        }
        if expected_prev != head_hash {
            return Ok(bad(
                checked,
                head_seq,
                format!("event {head_seq}: does not match the head of the chain"),
            ));
        }
        if !vouched {
            return Ok(bad(
                checked,
                checkpoint_seq + 1,
                format!("the checkpoint through event {checkpoint_seq} is not recorded in the chain"),
            ));
        }
        Ok(ChainVerdict { ok: true, events_checked: checked, first_bad_event: 0, reason: None })
    }

    /// Deletes requests that ended before `before` (24 months of CCPA record keeping), with their
    /// tasks and the prefix of the log that holds only their events, in one transaction. The
    /// chain stays verifiable: a checkpoint keeps the hash of the last pruned event, and an
    /// `audit_pruned` event (in the chain) records it, so a forged checkpoint is detected.
    ///
    /// Only a prefix can go: the cut stops before the first event that is recent or belongs to a
    /// request that is kept. A request whose events straddle the cut waits for a later prune. A
    /// deletion whose billing records are still under their legal obligation may be pruned: when
    /// the obligation ends, its `hold_ended` event still names the request.
    pub async fn prune_audit(
        &self,
        before: DateTime<Utc>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<PruneReport> {
        let before_ms = to_millis(before);
        self.seal_journal().await?;
        let mut tx = self.db.begin_write().await?;
        lock_chain(&mut tx).await?;
        let head_seq: i64 =
            sqlx::query_scalar("SELECT seq FROM dsr_audit_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let (checkpoint_seq, _) = latest_checkpoint(&mut *tx).await?;
        // A request a litigation hold keeps open (issue 9) is not ended: its held stores run
        // again on release, so it stays, with everything after it. So does a deletion whose
        // billing records a legal obligation still keeps: when it ends, the sweep moves that
        // outcome from RETAINED to DONE, and needs the request for it.
        let keep_from: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(e.seq) FROM dsr_events e LEFT JOIN dsr_requests r ON r.id = e.request_id \
             WHERE e.at >= $1 OR (r.id IS NOT NULL AND (r.completed_at IS NULL OR r.completed_at >= $1 \
             OR EXISTS (SELECT 1 FROM dsr_tasks t WHERE t.request_id = r.id AND t.hold_id IS NOT NULL) \
             OR EXISTS (SELECT 1 FROM dsr_holds h WHERE h.request_id = r.id AND h.ended_at IS NULL)))",
        )
        .bind(before_ms)
        .fetch_one(&mut *tx)
        .await?;
        let cut = keep_from.map_or(head_seq, |k| k - 1);
        if cut <= checkpoint_seq {
            return Ok(PruneReport::default());
        }
        let cut_hash: String = sqlx::query_scalar("SELECT hash FROM dsr_events WHERE seq = $1")
            .bind(cut)
            .fetch_optional(&mut *tx)
            .await?
            .flatten()
            .ok_or_else(|| {
                super::LedgerError::FailedPrecondition(format!(
                    "event {cut} is missing or unhashed; run `dsr audit verify` before pruning"
                ))
            })?;
        let events =
            sqlx::query("DELETE FROM dsr_events WHERE seq <= $1").bind(cut).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM dsr_event_subjects WHERE seq <= $1").bind(cut).execute(&mut *tx).await?;
        const ENDED_WITHOUT_EVENTS: &str =
            "SELECT r.id FROM dsr_requests r WHERE r.completed_at IS NOT NULL \
             AND r.completed_at < $1 AND NOT EXISTS (SELECT 1 FROM dsr_events e WHERE e.request_id = r.id) \
             AND NOT EXISTS (SELECT 1 FROM dsr_event_journal j WHERE j.request_id = r.id)";
        sqlx::query(&format!("DELETE FROM dsr_tasks WHERE request_id IN ({ENDED_WITHOUT_EVENTS})"))
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        // An export's record refers to its request; its archive expired long before (days, not
        // the months a prune looks back), so the record goes with the request.
        sqlx::query(&format!("DELETE FROM dsr_exports WHERE request_id IN ({ENDED_WITHOUT_EVENTS})"))
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        let requests = sqlx::query(&format!("DELETE FROM dsr_requests WHERE id IN ({ENDED_WITHOUT_EVENTS})"))
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        let report = PruneReport {
            events_pruned: events.rows_affected(),
            requests_pruned: requests.rows_affected(),
            through_seq: cut,
        };
        sqlx::query(
            "INSERT INTO dsr_audit_checkpoints (last_pruned_seq, last_hash, events_pruned, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(cut)
        .bind(&cut_hash)
        .bind(report.events_pruned as i64)
        .bind(to_millis(now))
        .execute(&mut *tx)
        .await?;
        NewEvent::global("audit_pruned")
            .actor(actor)
            .counts(report.events_pruned, report.requests_pruned)
            .detail(&checkpoint_detail(cut, &cut_hash))
            .append(&mut tx, now)
            .await?;
        tx.commit().await?;
        Ok(report)
    }
}

enum Bind {
    Text(String),
    Int(i64),
}
