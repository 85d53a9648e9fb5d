//! `dsr bench sweep` (issue 9) seeds a million expired call-log rows (one `INSERT … SELECT`
//! over `generate_series` on Postgres) and erases them four times over, re-seeding in between:
//! by a retention sweep (lease, tenant discovery, the litigation-hold check before each batch,
//! bounded batches, events), then twice by a hand-written batched `DELETE` of the same batch
//! size (the floor), then by a sweep again, so drift in the run weighs on both alike.
use std::{sync::Arc, time::Instant};

use tokio_util::sync::CancellationToken;

use crate::{
    clock::{to_millis, Clock, SystemClock},
    config::Settings,
    db::{Backend, Db},
    engine::Signals,
    privacy::KeyedHasher,
    retention::{SweepMode, SweepOutcome, Sweeper},
    startup::open_ledger,
    stores::{reference, StoreRegistry},
};

/// Rows seeded younger than the retention, which both erasures must leave alone.
const KEPT_ROWS: i64 = 1000;

pub async fn sweep(mut settings: Settings, rows: usize) -> anyhow::Result<()> {
    // The bench's data is throwaway, and so may its audit key be (Postgres requires one).
    settings.file.privacy.hmac_key.get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string());
    anyhow::ensure!((1..=100_000_000).contains(&rows), "--rows: between 1 and 100000000");
    let ledger = open_ledger(&settings).await?;
    let db = ledger.db().clone();
    reference::ensure_schema(&db, &reference::Tables::default()).await?;
    let tenant = format!("bench-sweep-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let now = SystemClock.now();
    let expired_at = now - chrono::Duration::days(2 * 365);
    let batch = settings.file.retention.batch_size;
    println!(
        "dsr bench sweep: {rows} expired call-log rows (+{KEPT_ROWS} recent ones kept), batch size {batch}, database {}",
        db.backend().name()
    );

    let stores = StoreRegistry::from_settings(&settings, &db).await?;
    let hasher = KeyedHasher::for_settings(&settings)?;
    let sweeper = Sweeper::new(
        ledger.clone(),
        stores,
        Arc::new(SystemClock),
        hasher,
        Signals::default(),
        &settings.file.retention,
        Arc::new(crate::metrics::Metrics::new()),
    );
    let cutoff = to_millis(now - chrono::Duration::days(365));
    let delete = format!(
        "DELETE FROM call_logs WHERE id IN (SELECT id FROM call_logs WHERE tenant_id = $1 AND started_at < $2 LIMIT {batch})"
    );
    // Four rounds, sweep / hand / hand / sweep, each on a fresh seed of the same rows: whatever
    // drifts during the run (the table's history, a busy machine) weighs on both alike.
    let (mut sweep_secs, mut hand_secs, mut batches) = (Vec::new(), Vec::new(), 0);
    for (round, by_sweep) in [true, false, false, true].into_iter().enumerate() {
        let started = Instant::now();
        seed_call_logs(&db, &tenant, rows as i64, expired_at, (round == 0).then_some(now)).await?;
        println!("seed           {:>8.2} s   (round {})", started.elapsed().as_secs_f64(), round + 1);
        let started = Instant::now();
        let erased = if by_sweep {
            let outcome = sweeper.sweep(SweepMode::Now, &CancellationToken::new()).await?;
            let SweepOutcome::Swept(report) = outcome else {
                anyhow::bail!("another sweep holds the lease: {outcome:?}");
            };
            anyhow::ensure!(report.is_clean(), "the sweep failed:\n{}", report.render());
            batches = report.batches;
            report.unit("call_logs", &tenant).map_or(0, |u| u.erased)
        } else {
            let mut by_hand = 0;
            loop {
                let n =
                    sqlx::query(&delete).bind(&tenant).bind(cutoff).execute(db.pool()).await?.rows_affected();
                by_hand += n;
                if n < batch as u64 {
                    break by_hand;
                }
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let (name, times) =
            if by_sweep { ("sweep", &mut sweep_secs) } else { ("hand-written", &mut hand_secs) };
        anyhow::ensure!(
            erased == rows as u64,
            "round {}: {name} erased {erased} rows, not {rows}",
            round + 1
        );
        check_left(&db, &tenant).await?;
        println!("{name:<14} {secs:>8.2} s   ({:.0} rows/s)", rows as f64 / secs);
        times.push(secs);
    }
    sqlx::query("DELETE FROM call_logs WHERE tenant_id = $1").bind(&tenant).execute(db.pool()).await?;

    let (sweep, hand) = (sweep_secs.iter().sum::<f64>() / 2.0, hand_secs.iter().sum::<f64>() / 2.0);
    println!(
        "sweep          {sweep:>8.2} s   mean of 2 ({:.0} rows/s, {batches} batches, events and lease included)",
        rows as f64 / sweep
    );
    println!("hand-written   {hand:>8.2} s   mean of 2 ({:.0} rows/s)  <- floor", rows as f64 / hand);
    println!("ratio          {:>8.2} x the floor (goal: at most 1.5)", sweep / hand);
    Ok(())
}

/// `n` call logs started two years ago and, with `recent_at`, `KEPT_ROWS` started an hour
/// before it, in one statement each; then fresh planner statistics (and on Postgres the dead
/// rows of the last round vacuumed), so both rounds start alike.
async fn seed_call_logs(
    db: &Db,
    tenant: &str,
    n: i64,
    expired_at: chrono::DateTime<chrono::Utc>,
    recent_at: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<()> {
    let sql = match db.backend() {
        Backend::Postgres => {
            "INSERT INTO call_logs (id, tenant_id, account_id, caller_phone, agent_id, started_at, duration_s, outcome) \
             SELECT $1 || '-' || $4 || '-' || lpad(i::text, 9, '0'), $1, $1 || '-acct-' || (i % 100000)::text, \
             '+1555' || lpad((i % 10000000)::text, 7, '0'), 'agent-' || (i % 3)::text, $2 - i, 30 + i % 600, 'completed' \
             FROM generate_series(1, $3) AS s(i)"
        }
        Backend::Sqlite => {
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < $3) \
             INSERT INTO call_logs (id, tenant_id, account_id, caller_phone, agent_id, started_at, duration_s, outcome) \
             SELECT $1 || '-' || $4 || '-' || printf('%09d', i), $1, $1 || '-acct-' || (i % 100000), \
             '+1555' || printf('%07d', i % 10000000), 'agent-' || (i % 3), $2 - i, 30 + i % 600, 'completed' FROM s"
        }
    };
    let recent = recent_at.map(|now| ("new", now - chrono::Duration::hours(1), KEPT_ROWS));
    for (prefix, at, count) in [("old", expired_at, n)].into_iter().chain(recent) {
        sqlx::query(sql).bind(tenant).bind(to_millis(at)).bind(count).bind(prefix).execute(db.pool()).await?;
    }
    let analyze = match db.backend() {
        Backend::Postgres => "VACUUM ANALYZE call_logs",
        Backend::Sqlite => "ANALYZE call_logs",
    };
    sqlx::query(analyze).execute(db.pool()).await?;
    Ok(())
}

/// Nothing expired is left of the tenant, and the recent rows all are.
async fn check_left(db: &Db, tenant: &str) -> anyhow::Result<()> {
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_logs WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(db.pool())
        .await?;
    anyhow::ensure!(left == KEPT_ROWS, "{left} rows left, expected the {KEPT_ROWS} recent ones");
    Ok(())
}
