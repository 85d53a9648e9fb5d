//! `dsr bench deletions` seeds two identical tenants, erases every subject of the first through
//! the real gRPC API of an in-process server (ledger, engine, adapters, verification and all),
//! and erases every subject of the second with hand-written SQL and object deletes — the least
//! work that does the same erasure, without a ledger, retries or verification.
use std::{sync::Arc, time::Instant};

use futures::{stream, StreamExt, TryStreamExt};
use object_store::{path::Path, ObjectStore, ObjectStoreExt};

use crate::{
    api::pb,
    clock::{to_millis, Clock, SystemClock},
    config::Settings,
    db::Db,
    domain::TenantId,
    seed::{seed, SeedSpec, SeededSubject},
    startup::{open_ledger, Overrides},
    stores::{open_object_store, reference},
};

/// Client-side concurrency of submits, and of the SQL floor.
const CONCURRENCY: usize = 32;

pub async fn deletions(mut settings: Settings, subjects: usize, calls: usize) -> anyhow::Result<()> {
    // The bench's data is throwaway, and so may its audit key be (Postgres requires one).
    settings.file.privacy.hmac_key.get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string());
    // The benchmark is one caller sending as fast as it can: measure the service, not the
    // per-caller rate limit (which would answer RESOURCE_EXHAUSTED past 100 requests/s).
    settings.file.server.rate_limit_per_second = 0;
    let ledger = open_ledger(&settings).await?;
    let db = ledger.db().clone();
    let tables = reference::Tables::default();
    reference::ensure_schema(&db, &tables).await?;
    let objects = open_object_store(&settings.recordings_url)?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let (grpc_tenant, sql_tenant) = (format!("bench-grpc-{run}"), format!("bench-sql-{run}"));
    println!("dsr bench deletions: {subjects} subjects x {calls} calls, database {}", db.backend().name());

    let started = Instant::now();
    let grpc_subjects = seed_tenant(&db, &tables, &objects, &grpc_tenant, subjects, calls).await?;
    let seed_secs = started.elapsed().as_secs_f64();
    let rows_per_subject = 1 + 3 * calls + crate::seed::billing_records_per_subject(calls);
    println!(
        "seed           {seed_secs:>8.2} s   ({:.0} subjects/s, {} rows + {} objects)",
        subjects as f64 / seed_secs,
        subjects * rows_per_subject,
        subjects * calls
    );
    let sql_subjects = seed_tenant(&db, &tables, &objects, &sql_tenant, subjects, calls).await?;

    // Through the service.
    let served = super::Served::start(settings.clone(), Overrides::default()).await?;
    let client = served.client().await?;
    let cpu = super::cpu::MachineCpu::now();
    let started = Instant::now();
    let ids: Vec<String> = stream::iter(grpc_subjects.iter())
        .map(|s| {
            let mut client = client.clone();
            let subject =
                pb::Subject { tenant_id: s.tenant_id.clone(), phone: s.phone.clone(), ..Default::default() };
            async move {
                client
                    .submit_deletion(pb::SubmitDeletionRequest {
                        subject: Some(subject),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().id)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let submitted = started.elapsed().as_secs_f64();
    let mut failed = 0;
    for id in &ids {
        let mut watch =
            client.clone().watch_request(pb::WatchRequestRequest { id: id.clone() }).await?.into_inner();
        let mut last = None;
        while let Some(r) = super::next_change(&mut watch).await? {
            last = Some(r.status);
        }
        failed += usize::from(last != Some(pb::RequestStatus::Completed as i32));
    }
    let grpc_secs = started.elapsed().as_secs_f64();
    let grpc_cpu = cpu.and_then(|c| c.spent());
    served.stop().await?;
    anyhow::ensure!(failed == 0, "{failed} deletions did not complete");

    // The floor: the same erasure, hand-written.
    let cpu = super::cpu::MachineCpu::now();
    let started = Instant::now();
    stream::iter(sql_subjects.iter())
        .map(|s| erase_by_hand(&db, &objects, s))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let sql_secs = started.elapsed().as_secs_f64();
    let sql_cpu = cpu.and_then(|c| c.spent());

    println!(
        "gRPC deletions {grpc_secs:>8.2} s   ({:.0} subjects/s, {:.0} store tasks/s; all submits acknowledged after {submitted:.2} s)",
        subjects as f64 / grpc_secs,
        (subjects * 5) as f64 / grpc_secs
    );
    println!("hand-written   {sql_secs:>8.2} s   ({:.0} subjects/s)  <- floor", subjects as f64 / sql_secs);
    println!("ratio          {:>8.2} x the floor", grpc_secs / sql_secs);
    if let (Some(grpc), Some(sql)) = (grpc_cpu, sql_cpu) {
        println!("machine CPU    {}", grpc.per(subjects, "subject through gRPC"));
        println!("               {}", sql.per(subjects, "subject by hand"));
        println!(
            "CPU ratio      {:>8.2} x the floor's CPU",
            grpc.busy.as_secs_f64() / sql.busy.as_secs_f64().max(f64::MIN_POSITIVE)
        );
    }
    Ok(())
}

async fn seed_tenant(
    db: &Db,
    tables: &reference::Tables,
    objects: &Arc<dyn ObjectStore>,
    tenant: &str,
    subjects: usize,
    calls: usize,
) -> anyhow::Result<Vec<SeededSubject>> {
    let spec = SeedSpec {
        tenant: TenantId::parse("tenant", tenant)?,
        subjects,
        calls,
        recording_bytes: 4096,
        first: 0,
    };
    let mut out = Vec::with_capacity(subjects);
    seed(db, tables, objects.clone(), &spec, SystemClock.now(), |s| out.push(s)).await?;
    Ok(out)
}

/// What a deletion does for one seeded subject, in plain SQL: objects then index rows, the
/// other rows, the account's personal columns, billing rows restricted.
async fn erase_by_hand(db: &Db, objects: &Arc<dyn ObjectStore>, s: &SeededSubject) -> anyhow::Result<()> {
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT object_key FROM recordings WHERE tenant_id = $1 AND caller_phone = $2")
            .bind(&s.tenant_id)
            .bind(&s.phone)
            .fetch_all(db.pool())
            .await?;
    for key in &keys {
        objects.delete(&Path::from(key.as_str())).await?;
    }
    debug_assert!(keys.iter().all(|k| k.starts_with(&format!("{}/", s.tenant_id))));
    let mut tx = db.begin_write().await?;
    for table in ["recordings", "transcripts", "call_logs"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1 AND caller_phone = $2"))
            .bind(&s.tenant_id)
            .bind(&s.phone)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE accounts SET email = NULL, phone = NULL, name = NULL WHERE tenant_id = $1 AND id = $2",
    )
    .bind(&s.tenant_id)
    .bind(&s.account_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE billing_records SET restricted_at = $1 WHERE tenant_id = $2 AND account_id = $3")
        .bind(to_millis(SystemClock.now()))
        .bind(&s.tenant_id)
        .bind(&s.account_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
