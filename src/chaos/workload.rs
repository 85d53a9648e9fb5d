//! The campaign's work: seeded subjects (erased ones and controls), deletions submitted over
//! gRPC with one idempotency key per subject, and waiting for requests to end, read from the
//! ledger directly.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Deserialize;
use sqlx::PgPool;
use tonic::transport::{Channel, Endpoint};

use crate::api::pb::{self, data_subject_rights_client::DataSubjectRightsClient};

/// One line of `dsr seed`: a subject of the reference schema.
#[derive(Debug, Clone, Deserialize)]
pub struct Seeded {
    pub tenant_id: String,
    pub account_id: String,
    pub email: String,
    pub phone: String,
}

/// A deletion the service acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub id: String,
    pub subject: Seeded,
}

/// Runs `dsr seed` for `subjects` subjects of `tenant` (both databases are the cluster's).
pub async fn seed(
    bin: &Path,
    data_dir: &Path,
    database_url: &str,
    recordings_url: &str,
    tenant: &str,
    subjects: usize,
) -> anyhow::Result<Vec<Seeded>> {
    let out = tokio::process::Command::new(bin)
        .args(["seed", "--tenant", tenant, "--subjects", &subjects.to_string(), "--calls", "3"])
        .args([
            "--recording-bytes",
            "1024",
            "--database-url",
            database_url,
            "--recordings-url",
            recordings_url,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DSR_CONFIG")
        .output()
        .await
        .context("running dsr seed")?;
    anyhow::ensure!(out.status.success(), "dsr seed failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| serde_json::from_str(l).context("a line of dsr seed"))
        .collect()
}

/// A client of one replica, with short timeouts: a dead or stalled server is an error at once,
/// the caller decides whether to try again.
pub async fn client(url: &str) -> anyhow::Result<DataSubjectRightsClient<Channel>> {
    let channel = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(DataSubjectRightsClient::new(channel))
}

/// The idempotency key of a subject's deletion: a retried submit finds the same request.
fn idempotency_key(s: &Seeded) -> String {
    format!("chaos-{}", s.account_id)
}

/// One SubmitDeletion; the request id once acknowledged.
pub async fn submit(c: &mut DataSubjectRightsClient<Channel>, s: &Seeded) -> anyhow::Result<Acked> {
    let subject =
        pb::Subject { tenant_id: s.tenant_id.clone(), phone: s.phone.clone(), ..Default::default() };
    let r = c
        .submit_deletion(pb::SubmitDeletionRequest {
            subject: Some(subject),
            regime: pb::Regime::Gdpr as i32,
            idempotency_key: idempotency_key(s),
            requested_by: "chaos".into(),
        })
        .await?
        .into_inner();
    Ok(Acked { id: r.id, subject: s.clone() })
}

/// Submits every subject of `batch` to the replicas at `urls` (round robin), trying again on
/// any error until `patience` has passed: (acknowledged, never acknowledged).
pub async fn submit_all(urls: &[String], batch: &[Seeded], patience: Duration) -> (Vec<Acked>, Vec<Seeded>) {
    let deadline = Instant::now() + patience;
    let mut clients: Vec<Option<DataSubjectRightsClient<Channel>>> = urls.iter().map(|_| None).collect();
    let mut acked = Vec::new();
    let mut unacked = Vec::new();
    for (i, s) in batch.iter().enumerate() {
        let mut turn = i;
        loop {
            let k = turn % urls.len();
            turn += 1;
            let result = match &mut clients[k] {
                Some(c) => submit(c, s).await,
                None => match client(&urls[k]).await {
                    Ok(c) => {
                        let c = clients[k].insert(c);
                        submit(c, s).await
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(a) => {
                    acked.push(a);
                    break;
                }
                Err(_) if Instant::now() < deadline => {
                    clients[k] = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => {
                    unacked.push(s.clone());
                    break;
                }
            }
        }
    }
    (acked, unacked)
}

/// How many of `ids` have not ended (COMPLETED, FAILED or CANCELLED); an error while the
/// database is away counts as "not yet".
pub async fn open_count(pool: &PgPool, ids: &[String]) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM dsr.dsr_requests WHERE id = ANY($1) AND status NOT IN ('completed', 'failed', 'cancelled')",
    )
    .bind(ids)
    .fetch_one(pool)
    .await
    .ok()
}

/// Waits until every one of `ids` has ended; how long that took, or an error after `patience`.
pub async fn wait_ended(pool: &PgPool, ids: &[String], patience: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if open_count(pool, ids).await == Some(0) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > patience {
            anyhow::bail!(
                "{} of {} requests still open after {patience:?}",
                open_count(pool, ids).await.unwrap_or(-1),
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until some task of `ids` is running under a lease of a replica whose name matches
/// `owner` (a LIKE pattern): work is under way there, so a fault hits it mid-task.
pub async fn wait_running_on(pool: &PgPool, ids: &[String], owner: &str, patience: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < patience {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT COUNT(*) FROM dsr.dsr_tasks WHERE request_id = ANY($1) AND state = 'running' AND lease_owner LIKE $2",
        )
        .bind(ids)
        .bind(format!("{owner}/%"))
        .fetch_one(pool)
        .await
        .ok();
        if n.unwrap_or(0) > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

pub fn ids(acked: &[Acked]) -> Vec<String> {
    acked.iter().map(|a| a.id.clone()).collect()
}
