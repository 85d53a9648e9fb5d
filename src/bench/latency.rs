//! `dsr bench latency`: how long one call takes on an idle service, through the real gRPC stack
//! of an in-process server — `GetRequest` (a unary read) and one deletion from submit to
//! COMPLETED (claim, five store tasks in two stages, the outcomes) — as p50 and p99 over many
//! sequential tries, after deletions that warm the service up (`WARM_UP`, timed apart). The
//! floor for the read is a `SELECT` of the same request row straight from the ledger, in the
//! same run.
use std::time::{Duration, Instant};

use crate::{
    api::pb::{self, data_subject_rights_client::DataSubjectRightsClient},
    clock::{Clock, SystemClock},
    config::Settings,
    domain::TenantId,
    seed::{seed, SeedSpec, SeededSubject},
    startup::{open_ledger, Overrides},
    stores::{open_object_store, reference},
};

/// Deletions run (and timed apart) before the measured ones. A service that has been up has
/// connections that have run its statements: Postgres plans a prepared statement for its values
/// on each of its first five runs on a connection (the claim takes ~1.8 ms to plan), and the
/// ledger's pool has 16 connections, used in turn. Right after start those plans were 44% of
/// the database's time in this benchmark (`pg_stat_statements` with `track_planning`). 50
/// deletions run a deletion's statements 50 to 250 times each, most of them more than the pool's
/// 16 connections × 5; their times are printed too: the very first alone, the rest as p50 / p99.
const WARM_UP: usize = 50;

/// With `--history`: the real deletions, through a service of their own before the measured
/// one starts, whose ledger rows are copied into the history (`history::add_history`).
const TEMPLATE: usize = 20;

pub async fn latency(mut settings: Settings, rounds: usize, history: u64) -> anyhow::Result<()> {
    // The bench's data is throwaway, and so may its audit key be (Postgres requires one).
    settings.file.privacy.hmac_key.get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string());
    anyhow::ensure!((10..=100_000).contains(&rounds), "--rounds: between 10 and 100000");
    anyhow::ensure!(history <= 10_000_000, "--history: at most 10000000 past requests");
    settings.file.server.rate_limit_per_second = 0;
    let ledger = open_ledger(&settings).await?;
    let db = ledger.db().clone();
    let tables = reference::Tables::default();
    reference::ensure_schema(&db, &tables).await?;
    let objects = open_object_store(&settings.recordings_url)?;
    let tenant = format!("bench-latency-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let deletions = (rounds / 10).max(10);
    let template = if history > 0 { TEMPLATE } else { 0 };
    let spec = SeedSpec {
        tenant: TenantId::parse("tenant", &tenant)?,
        subjects: template + WARM_UP + deletions,
        calls: 2,
        recording_bytes: 1024,
        first: 0,
    };
    let mut subjects = Vec::with_capacity(spec.subjects);
    seed(&db, &tables, objects, &spec, SystemClock.now(), |s| subjects.push(s)).await?;
    println!(
        "dsr bench latency: {rounds} GetRequest, {deletions} deletions (2 calls each) after {WARM_UP} to warm up, one at a time, database {}",
        db.backend().name()
    );
    let subjects = if history > 0 {
        let (past, now) = subjects.split_at(template);
        let served = super::Served::start(settings.clone(), Overrides::default()).await?;
        let mut client = served.client().await?;
        for s in past {
            delete_one(&mut client, s).await?;
        }
        served.stop().await?;
        super::history::add_history(&db, history).await?;
        now.to_vec()
    } else {
        subjects
    };

    let served = super::Served::start(settings, Overrides::default()).await?;
    let mut client = served.client().await?;

    // One deletion at a time, submit to COMPLETED (followed by WatchRequest, as a caller would).
    // The first `WARM_UP` are timed apart: see `WARM_UP`.
    let mut cold = Vec::with_capacity(WARM_UP);
    let mut deletion = Vec::with_capacity(deletions);
    let mut last_id = String::new();
    let mut cpu = None;
    for (i, s) in subjects.iter().enumerate() {
        if i == WARM_UP {
            cpu = super::cpu::MachineCpu::now();
        }
        let started = Instant::now();
        last_id = delete_one(&mut client, s).await?;
        if i < WARM_UP { &mut cold } else { &mut deletion }.push(started.elapsed());
    }
    let deletion_cpu = cpu.and_then(|c| c.spent());

    let mut get = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        client.get_request(pb::GetRequestRequest { id: last_id.clone() }).await?;
        get.push(started.elapsed());
    }
    let mut floor = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let _: (String,) = sqlx::query_as("SELECT status FROM dsr_requests WHERE id = $1")
            .bind(&last_id)
            .fetch_one(db.pool())
            .await?;
        floor.push(started.elapsed());
    }
    served.stop().await?;

    let line = |what: &str, v: &mut Vec<Duration>| {
        v.sort();
        let at =
            |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1000.0;
        println!("{what:<40} p50 {:>8.2} ms   p99 {:>8.2} ms", at(0.50), at(0.99));
    };
    line("GetRequest over gRPC", &mut get);
    line("the request row, one SELECT  <- floor", &mut floor);
    // The very first pays for whatever the server still loads lazily: printed alone.
    let first = cold.remove(0);
    println!("{:<40} {:>12.2} ms", "deletion, the first after start", first.as_secs_f64() * 1000.0);
    line(&format!("deletion, the next {} after start", cold.len()), &mut cold);
    line("deletion, submit -> COMPLETED", &mut deletion);
    if let Some(spent) = deletion_cpu {
        println!("  {}", spent.per(deletions, "deletion"));
    }
    Ok(())
}

/// One deletion, submit to COMPLETED (followed by WatchRequest, as a caller would): its id.
async fn delete_one(
    client: &mut DataSubjectRightsClient<tonic::transport::Channel>,
    s: &SeededSubject,
) -> anyhow::Result<String> {
    let subject =
        pb::Subject { tenant_id: s.tenant_id.clone(), phone: s.phone.clone(), ..Default::default() };
    let r = client
        .submit_deletion(pb::SubmitDeletionRequest { subject: Some(subject), ..Default::default() })
        .await?
        .into_inner();
    let mut watch = client.watch_request(pb::WatchRequestRequest { id: r.id.clone() }).await?.into_inner();
    let mut status = r.status;
    while let Some(m) = super::next_change(&mut watch).await? {
        status = m.status;
    }
    anyhow::ensure!(status == pb::RequestStatus::Completed as i32, "a deletion ended {status}");
    Ok(r.id)
}
