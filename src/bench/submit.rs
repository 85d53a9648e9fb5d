//! `dsr bench submit`: how many `SubmitDeletion`s per second the service acknowledges (each one
//! durable: the request, its resolution, its tasks and its event committed), with `--clients`
//! callers at once and the rate limit off — next to the floor, pgbench's single-row insert
//! transactions at the same concurrency against the same Postgres, in the same run.
use std::{process::Command, time::Instant};

use anyhow::Context;
use futures::{stream, StreamExt, TryStreamExt};

use crate::{
    api::pb::{self, data_subject_rights_client::DataSubjectRightsClient},
    clock::{Clock, SystemClock},
    config::Settings,
    domain::TenantId,
    seed::{seed, SeedSpec},
    startup::{open_ledger, Overrides},
    stores::{open_object_store, reference},
};

pub async fn submit(mut settings: Settings, requests: usize, clients: usize) -> anyhow::Result<()> {
    anyhow::ensure!((1..=1_000_000).contains(&requests), "--requests: between 1 and 1000000");
    anyhow::ensure!((1..=256).contains(&clients), "--clients: between 1 and 256");
    anyhow::ensure!(
        settings.database_url.starts_with("postgres"),
        "the submit benchmark compares with pgbench: give it --database-url postgres://…"
    );
    settings.file.server.rate_limit_per_second = 0;
    // The bench's data is throwaway, and so may its audit key be (Postgres requires one).
    settings.file.privacy.hmac_key.get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string());
    let ledger = open_ledger(&settings).await?;
    let db = ledger.db().clone();
    let tables = reference::Tables::default();
    reference::ensure_schema(&db, &tables).await?;
    let tenant = format!("bench-submit-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let spec = SeedSpec {
        tenant: TenantId::parse("tenant", &tenant)?,
        subjects: requests,
        calls: 1,
        recording_bytes: 64,
        first: 0,
    };
    let mut subjects = Vec::with_capacity(requests);
    let objects = open_object_store(&settings.recordings_url)?;
    seed(&db, &tables, objects, &spec, SystemClock.now(), |s| subjects.push(s)).await?;
    println!("dsr bench submit: {requests} SubmitDeletion, {clients} clients at once, rate limit off, database postgres");

    // The engine stays paused: this measures acknowledgement, not the erasure behind it.
    let served =
        super::Served::start(settings.clone(), Overrides { paused_engine: true, ..Default::default() })
            .await?;
    let channel = tonic::transport::Channel::from_shared(served.url())?.connect().await?;
    let cpu = super::cpu::MachineCpu::now();
    let started = Instant::now();
    stream::iter(subjects.iter())
        .map(|s| {
            let mut client = DataSubjectRightsClient::new(channel.clone());
            let subject =
                pb::Subject { tenant_id: s.tenant_id.clone(), phone: s.phone.clone(), ..Default::default() };
            async move {
                client
                    .submit_deletion(pb::SubmitDeletionRequest {
                        subject: Some(subject),
                        ..Default::default()
                    })
                    .await
            }
        })
        .buffer_unordered(clients)
        .try_collect::<Vec<_>>()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let spent = cpu.and_then(|c| c.spent());
    served.stop().await?;
    let rate = requests as f64 / secs;
    println!("SubmitDeletion      {rate:>9.0} /s   ({requests} in {secs:.2} s)");
    if let Some(spent) = spent {
        println!("machine CPU         {}", spent.per(requests, "submit"));
    }

    // The floor: pgbench, one-row INSERT transactions, same clients, same server. The table is
    // in the run's own schema, named in full: pgbench's sessions do not have the pool's
    // search_path.
    let table = match db.schema() {
        Some(schema) => format!("\"{}\".bench_submit_floor", schema.replace('"', "\"\"")),
        None => "bench_submit_floor".to_owned(),
    };
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (id BIGSERIAL PRIMARY KEY, tenant TEXT, payload TEXT)"
    ))
    .execute(db.pool())
    .await?;
    let script = settings.data_dir.join("bench-submit.sql");
    std::fs::write(
        &script,
        format!("INSERT INTO {table} (tenant, payload) VALUES ('t', md5(random()::text));\n"),
    )?;
    let pgbench = pgbench().context("pgbench (from the postgresql package) is needed for the floor")?;
    let out = Command::new(pgbench)
        .args(["-n", "-c", &clients.to_string(), "-j", &clients.min(4).to_string(), "-T", "5", "-f"])
        .arg(&script)
        .arg(&settings.database_url)
        .output()
        .context("running pgbench")?;
    anyhow::ensure!(out.status.success(), "pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok())
        })
        .context("pgbench printed no tps")?;
    println!("pgbench INSERT      {tps:>9.0} /s   <- floor");
    println!("ratio               {:>9.1} % of the floor", 100.0 * rate / tps);
    Ok(())
}

fn pgbench() -> Option<std::path::PathBuf> {
    if let Ok(p) = which("pgbench") {
        return Some(p);
    }
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|d| d.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.exists()))
        .ok_or(())
}
