//! `dsr bench sweep`: expired call-log rows erased by the retention sweep, next to a
//! hand-written batched DELETE of the same rows in the same run.
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

pub async fn sweep(settings: Settings, rows: usize) -> anyhow::Result<()> {
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

    let started = Instant::now();
    seed_call_logs(&db, &tenant, rows as i64, expired_at, now).await?;
    println!("seed           {:>8.2} s", started.elapsed().as_secs_f64());
    let stores = StoreRegistry::from_settings(&settings, &db).await?;
    let hasher = KeyedHasher::load_or_create(settings.file.privacy.hmac_key.as_deref(), &settings.data_dir)?;
    let sweeper = Sweeper::new(
        ledger.clone(),
        stores,
        Arc::new(SystemClock),
        hasher,
        Signals::default(),
        &settings.file.retention,
    );
    let started = Instant::now();
    let outcome = sweeper.sweep(SweepMode::Now, &CancellationToken::new()).await?;
    let sweep_secs = started.elapsed().as_secs_f64();
    let SweepOutcome::Swept(report) = outcome else {
        anyhow::bail!("another sweep holds the lease: {outcome:?}");
    };
    anyhow::ensure!(report.is_clean(), "the sweep failed:\n{}", report.render());
    let erased = report.unit("call_logs", &tenant).map_or(0, |u| u.erased);
    anyhow::ensure!(erased == rows as u64, "the sweep erased {erased} rows, not {rows}");
    check_left(&db, &tenant).await?;

    seed_call_logs(&db, &tenant, rows as i64, expired_at, now).await?;
    let cutoff = to_millis(now - chrono::Duration::days(365));
    let started = Instant::now();
    let delete = format!(
        "DELETE FROM call_logs WHERE id IN (SELECT id FROM call_logs WHERE tenant_id = $1 AND started_at < $2 LIMIT {batch})"
    );
    let mut by_hand = 0;
    loop {
        let n = sqlx::query(&delete).bind(&tenant).bind(cutoff).execute(db.pool()).await?.rows_affected();
        by_hand += n;
        if n < batch as u64 {
            break;
        }
    }
    let hand_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(by_hand == rows as u64, "the hand-written DELETE erased {by_hand} rows, not {rows}");
    check_left(&db, &tenant).await?;
    sqlx::query("DELETE FROM call_logs WHERE tenant_id = $1").bind(&tenant).execute(db.pool()).await?;

    println!(
        "sweep          {sweep_secs:>8.2} s   ({:.0} rows/s, {} batches, events and lease included)",
        rows as f64 / sweep_secs,
        report.batches
    );
    println!("hand-written   {hand_secs:>8.2} s   ({:.0} rows/s)  <- floor", rows as f64 / hand_secs);
    println!("ratio          {:>8.2} x the floor (goal: at most 1.5)", sweep_secs / hand_secs);
    Ok(())
}

/// `n` call logs started two years ago and `KEPT_ROWS` started an hour ago, in one statement
/// each; then fresh planner statistics (and on Postgres the dead rows of the last round vacuumed),
/// so both rounds start alike.
async fn seed_call_logs(
    db: &Db,
    tenant: &str,
    n: i64,
    expired_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
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
    for (prefix, at, count) in [("old", expired_at, n), ("new", now - chrono::Duration::hours(1), KEPT_ROWS)]
    {
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
