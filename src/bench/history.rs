//! A ledger with a past, for the benchmarks: the rows of a few real requests copied until the
//! ledger holds as many finished requests as a platform that has been running for years. Each
//! statement of the engine is then measured against tables of that size, and with plans made
//! for them: a statement whose cost grows with the history (a scan of a tenant's holds, of its
//! events) shows up as a slower deletion and in the statement's buffers, where an empty ledger
//! hides it.
//!
//! The copies keep every column but their keys, which get a suffix per copy (`~1`, `~2`, …), so
//! they are the same shape as the real rows, in the same tenant: the worst case for anything
//! keyed by tenant. Sealed audit events are copied after the chain's head (their sequence
//! numbers shifted), and the head moved to the last copy, so the sealer goes on from there. The
//! copies' chain links are not recomputed: `dsr audit verify` on such a ledger fails, by design.
use std::time::Instant;

use anyhow::Context;

use crate::db::{Backend, Db};

/// Per ledger table, the columns a copy rewrites (the rest are copied as they are): keys and
/// references to keys get the copy's suffix (`NULL` stays `NULL`), sequence numbers go after the
/// chain's last, and an idempotency key is not copied (it is unique).
const COPIED: &[(&str, &[(&str, Rewrite)])] = &[
    ("dsr_requests", &[("id", Rewrite::Key), ("idempotency_hash", Rewrite::Null)]),
    ("dsr_tasks", &[("id", Rewrite::Key), ("request_id", Rewrite::Key), ("hold_id", Rewrite::Key)]),
    ("dsr_events", &[("seq", Rewrite::Seq), ("request_id", Rewrite::Key)]),
    ("dsr_event_subjects", &[("seq", Rewrite::Seq), ("request_id", Rewrite::Key)]),
    ("dsr_holds", &[("id", Rewrite::Key), ("request_id", Rewrite::Key)]),
    ("dsr_hold_subjects", &[("hold_id", Rewrite::Key)]),
    ("dsr_hold_records", &[("hold_id", Rewrite::Key)]),
    ("dsr_restrictions", &[("record_key", Rewrite::Key)]),
    ("dsr_deliveries", &[("id", Rewrite::Key), ("request_id", Rewrite::Key)]),
    ("dsr_exports", &[("request_id", Rewrite::Key)]),
];

#[derive(Clone, Copy)]
enum Rewrite {
    Key,
    Seq,
    Null,
}

/// Copies every ended request in the ledger, with its tasks, events, holds and the rest, until
/// the ledger holds at least `requests` requests. Needs a ledger with at least one ended
/// request, no unsealed events and no running service. Prints what it made.
pub async fn add_history(db: &Db, requests: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let (open,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM dsr_requests WHERE completed_at IS NULL")
        .fetch_one(db.pool())
        .await?;
    let (template,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM dsr_requests").fetch_one(db.pool()).await?;
    let (journal,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM dsr_event_journal").fetch_one(db.pool()).await?;
    anyhow::ensure!(
        open == 0 && template > 0,
        "the history is copied from ended requests only ({open} open of {template})"
    );
    anyhow::ensure!(journal == 0, "the history is copied with every event sealed ({journal} in the journal)");
    let copies = (requests.div_ceil(template as u64)).saturating_sub(1);
    if copies == 0 {
        return Ok(());
    }
    let (last_seq,): (i64,) =
        sqlx::query_as("SELECT seq FROM dsr_audit_head WHERE id = 1").fetch_one(db.pool()).await?;

    let mut tx = db.begin_write().await?;
    if db.backend() == Backend::Postgres {
        // A million requests' rows take minutes to copy: past the ledger's statement timeout.
        sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await?;
    }
    for (table, rewrites) in COPIED {
        let columns: Vec<String> =
            crate::stores::columns_of(db, table).await?.into_iter().map(|(name, _)| name).collect();
        anyhow::ensure!(!columns.is_empty(), "the ledger has no table {table}");
        let exprs: Vec<String> = columns
            .iter()
            .map(|c| match rewrites.iter().find(|(name, _)| name == c).map(|(_, r)| r) {
                Some(Rewrite::Key) => format!("{c} || '~' || CAST(s.g AS TEXT)"),
                Some(Rewrite::Seq) => format!("{c} + s.g * {last_seq}"),
                Some(Rewrite::Null) => "NULL".to_owned(),
                None => c.clone(),
            })
            .collect();
        let sql = format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {copies}) \
             INSERT INTO {table} ({}) SELECT {} FROM {table}, s",
            columns.join(", "),
            exprs.join(", ")
        );
        sqlx::query(&sql).execute(&mut *tx).await.with_context(|| format!("copying {table}"))?;
    }
    let last = last_seq + copies as i64 * last_seq;
    sqlx::query(
        "UPDATE dsr_audit_head SET seq = $1, hash = (SELECT hash FROM dsr_events WHERE seq = $1) WHERE id = 1",
    )
    .bind(last)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // Statistics as autovacuum would have them by now (the plans made next depend on them),
    // and on Postgres the copies vacuumed now rather than by autovacuum during the measurement.
    // On SQLite the copies went through the write-ahead log (gigabytes of it): moved into the
    // database now, not by the checkpoints after the first measured commits.
    let tidy = match db.backend() {
        Backend::Postgres => "VACUUM ANALYZE",
        Backend::Sqlite => "ANALYZE; PRAGMA wal_checkpoint(TRUNCATE)",
    };
    sqlx::Executor::execute(db.pool(), tidy).await?;
    let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM dsr_requests").fetch_one(db.pool()).await?;
    let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM dsr_events").fetch_one(db.pool()).await?;
    let (holds,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM dsr_holds").fetch_one(db.pool()).await?;
    println!(
        "history        {:>8.2} s   ({total} requests, {events} audit events, {holds} holds: {template} real ones copied {copies} times)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
