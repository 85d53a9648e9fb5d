//! The server-side commands: serve, migrate, seed, sweep, audit prune.
use std::{net::SocketAddr, sync::Arc};

use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Clock, SystemClock},
    config::{Locations, Settings},
    domain::TenantId,
    engine::Signals,
    privacy::KeyedHasher,
    retention::{SweepMode, SweepOutcome, Sweeper},
    seed::{seed as run_seed, SeedSpec},
    startup::{open_ledger, shutdown_signal, Application, Overrides},
    stores::{open_object_store, reference, StoreRegistry},
};

pub async fn serve(
    loc: &Locations,
    listen: Option<SocketAddr>,
    metrics_listen: Option<crate::config::MetricsListen>,
) -> anyhow::Result<()> {
    let mut settings = Settings::load(loc)?;
    if let Some(m) = metrics_listen {
        settings.file.metrics.listen = Some(m);
    }
    // Before the port opens: a SIGTERM from then on drains.
    let stopped = shutdown_signal();
    let app = Application::build_with(settings, Overrides { listen, ..Default::default() }).await?;
    app.run_until_stopped(stopped).await
}

pub async fn migrate(loc: &Locations) -> anyhow::Result<()> {
    let settings = Settings::load(loc)?;
    let ledger = open_ledger(&settings).await?;
    eprintln!("migrations applied ({})", ledger.db().backend().name());
    Ok(())
}

pub async fn seed(
    loc: &Locations,
    tenant: &str,
    subjects: usize,
    calls: usize,
    recording_bytes: usize,
    first: usize,
) -> anyhow::Result<()> {
    let settings = Settings::load(loc)?;
    let tenant = TenantId::parse("--tenant", tenant)?;
    anyhow::ensure!(subjects <= 10_000_000, "--subjects: at most 10000000");
    anyhow::ensure!(calls <= 10_000, "--calls: at most 10000 per subject");
    anyhow::ensure!(recording_bytes <= 1 << 30, "--recording-bytes: at most 1 GiB");
    let platform = platform_db(&settings).await?;
    let tables = reference::Tables::default();
    reference::ensure_schema(&platform, &tables).await?;
    let objects = open_object_store(&settings.recordings_url)?;
    let spec = SeedSpec { tenant, subjects, calls, recording_bytes, first };
    run_seed(&platform, &tables, objects, &spec, SystemClock.now(), |s| {
        println!("{}", serde_json::to_string(&s).expect("seeded subject serialises"));
    })
    .await
}

/// The platform's database as the seed writes it: the reference tables go in the connection's
/// default schema, where a platform keeps them, never in dsr's own (the ledger's pool puts that
/// first on the search path). The embedded default migrates the ledger first, as before.
async fn platform_db(settings: &Settings) -> anyhow::Result<crate::db::Db> {
    let ledger = open_ledger(settings).await?;
    if settings.embedded {
        return Ok(ledger.db().clone());
    }
    ledger.db().close().await;
    crate::db::Db::connect(&settings.database_url, 4).await
}

/// `dsr recipients retry`: given-up deliveries back in the outbox; prints how many.
pub async fn recipients_retry(
    loc: &Locations,
    request: Option<&str>,
    recipient: Option<&str>,
) -> anyhow::Result<()> {
    let settings = Settings::load(loc)?;
    let ledger = open_ledger(&settings).await?;
    let actor = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "operator".into()));
    let n = ledger.retry_deliveries(request, recipient, &actor, SystemClock.now()).await?;
    println!("{n} deliveries queued again");
    ledger.db().close().await;
    Ok(())
}

/// `dsr stores check`: every store against its live schema; an error (non-zero exit) when one
/// does not match.
pub async fn stores_check(loc: &Locations) -> anyhow::Result<()> {
    let settings = Settings::load(loc)?;
    let db = crate::db::Db::connect(&settings.database_url, 2).await?;
    let stores = StoreRegistry::open(&settings, &db).await?;
    let problems = stores.check().await;
    println!("{:<12} RESULT", "STORE");
    for a in stores.all() {
        let mine: Vec<&String> = problems.iter().filter(|(s, _)| *s == a.name()).map(|(_, p)| p).collect();
        if mine.is_empty() {
            println!("{:<12} ok", a.name());
        }
        for p in mine {
            println!("{:<12} {p}", a.name());
        }
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{} problem(s): the catalog does not match the live schema; `dsr serve` would refuse to start",
        problems.len()
    );
    Ok(())
}

/// `dsr seed --messy`: production-like data and, per person, the keys of their records.
pub async fn seed_messy(loc: &Locations, tenant: &str) -> anyhow::Result<()> {
    let settings = Settings::load(loc)?;
    let tenant = TenantId::parse("--tenant", tenant)?;
    let platform = platform_db(&settings).await?;
    let tables = reference::Tables::default();
    reference::ensure_schema(&platform, &tables).await?;
    let objects = open_object_store(&settings.recordings_url)?;
    let fixture =
        crate::seed::seed_messy(&platform, &tables, objects, tenant.as_str(), SystemClock.now()).await?;
    for p in &fixture.people {
        println!("{}", serde_json::to_string(p)?);
    }
    println!(
        "{}",
        serde_json::json!({ "tenant_id": fixture.tenant_id, "unattributed": fixture.unattributed })
    );
    Ok(())
}

/// Prunes requests that ended more than `before_days` ago (see `Ledger::prune_audit`).
pub async fn audit_prune(loc: &Locations, before_days: u32) -> anyhow::Result<()> {
    anyhow::ensure!(before_days >= 1, "--before-days: at least 1");
    let settings = Settings::load(loc)?;
    let ledger = open_ledger(&settings).await?;
    let now = SystemClock.now();
    let before = now - chrono::Duration::days(before_days.into());
    let r = ledger.prune_audit(before, "dsr audit prune", now).await?;
    if r.events_pruned == 0 {
        println!("nothing to prune: no request ended before {}", before.format("%Y-%m-%d"));
    } else {
        println!(
            "pruned {} requests and {} audit events (through event {}); the checkpoint keeps the chain verifiable",
            r.requests_pruned, r.events_pruned, r.through_seq
        );
    }
    Ok(())
}

/// One retention sweep now, under the sweep lease (or, with `dry_run`, what it would erase).
/// SIGINT/SIGTERM stop it between two batches, and the lease is given back.
pub async fn sweep(loc: &Locations, dry_run: bool) -> anyhow::Result<()> {
    let settings = Settings::load(loc)?;
    let ledger = open_ledger(&settings).await?;
    let stores = StoreRegistry::from_settings(&settings, ledger.db()).await?;
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
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        let stopped = shutdown_signal();
        async move {
            stopped.await;
            stop.cancel();
        }
    });
    // The schedule it applies, and where it came from: the sweep reads the same configuration
    // as `serve`, so a tenant's period is only known when the same --config / DSR_CONFIG is given.
    let source = match &loc.config_file {
        Some(path) => format!("from {}", path.display()),
        None => "built in: no --config or DSR_CONFIG given, so no tenant has a period of its own".into(),
    };
    println!("retention schedule ({source}):");
    print!("{}", settings.file.retention.schedule().render());
    println!();
    let mode = if dry_run { SweepMode::DryRun } else { SweepMode::Now };
    let outcome = sweeper.sweep(mode, &stop).await;
    // Link the events it recorded into the audit chain now, not whenever a server's sealer next
    // looks (there may be none running).
    ledger.seal_journal().await?;
    match outcome? {
        SweepOutcome::Swept(report) => {
            print!("{}", report.render());
            anyhow::ensure!(
                report.is_clean(),
                "the sweep did not finish cleanly; what it left is still expired, and the next sweep erases it"
            );
            Ok(())
        }
        SweepOutcome::Busy { until } => anyhow::bail!(
            "another replica is sweeping (its lease runs until {}); nothing was done",
            until.format("%Y-%m-%d %H:%M:%SZ")
        ),
        SweepOutcome::NotDue { next } => {
            anyhow::bail!("the sweep is not due until {next}")
        }
    }
}
