//! The fault scenarios. Each submits its own deletions, injects its fault while they are under
//! way, waits for them to end and records what it measured; invariants are checked at the end.
use std::time::{Duration, Instant};

use rand::Rng;

use super::{
    cluster::StopMode,
    replicas::Replica,
    workload::{self, Acked},
    Campaign, LEASE,
};

/// Longest wait for a batch of requests to end after its fault.
const FINISH_PATIENCE: Duration = Duration::from_secs(300);
/// How long a SIGTERMed server may take before it counts as hung (grace 5 s, and slack).
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(30);

impl Campaign {
    async fn start(&mut self, name: &str) -> anyhow::Result<Replica> {
        let port = self.port()?;
        let started = Instant::now();
        let r = self.spec.start(name, port).await?;
        self.figures.time("server start to listening", started.elapsed());
        Ok(r)
    }

    /// SIGTERM, timed; a server that does not exit cleanly in time is a violation.
    async fn stop(&mut self, r: Replica) {
        let name = r.name.clone();
        let (took, problem) = r.terminate(SHUTDOWN_PATIENCE).await;
        self.figures.sigterms += 1;
        self.figures.time("shutdown after SIGTERM", took);
        if let Some(problem) = problem {
            self.figures.violation(
                "unclean shutdown",
                format!("{name}: not a clean exit within {SHUTDOWN_PATIENCE:?}: {problem}"),
            );
        }
    }

    async fn submit(&mut self, urls: &[String], n: usize) -> Vec<Acked> {
        let batch = self.take(n);
        let (acked, unacked) = workload::submit_all(urls, &batch, Duration::from_secs(60)).await;
        self.record(&acked, unacked.len());
        acked
    }

    async fn wait_ended(&mut self, what: &str, ids: &[String], since: Instant) {
        match workload::wait_ended(&self.pool, ids, FINISH_PATIENCE).await {
            Ok(_) => self.figures.time(what, since.elapsed()),
            Err(e) => self.figures.violation("requests did not end", format!("{what}: {e}")),
        }
    }

    /// One server, SIGKILLed at a random moment of every round while deletions keep arriving
    /// (submits cut by the kill are tried again, under the same idempotency key, next round).
    pub async fn kill_storm(&mut self) -> anyhow::Result<()> {
        let rounds = self.plan.rounds.max(1);
        let mut queue: std::collections::VecDeque<_> = self.take(self.plan.deletions).into();
        let per_round = queue.len().div_ceil(rounds);
        let mut carried = Vec::new();
        let mut storm = Vec::new();
        let mut last_kill = Instant::now();
        let mut kill_times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let r = self.start("storm").await?;
            let mut batch = std::mem::take(&mut carried);
            batch.extend(queue.drain(..per_round.min(queue.len())));
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let url = r.url();
            let submitting = batch.clone();
            let submitter = tokio::spawn(async move {
                let mut c = None;
                for s in submitting {
                    loop {
                        if c.is_none() {
                            c = workload::client(&url).await.ok();
                        }
                        let Some(client) = c.as_mut() else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        match workload::submit(client, &s).await {
                            Ok(a) => {
                                let _ = tx.send(a);
                                break;
                            }
                            Err(_) => {
                                c = None;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
            });
            let moment = Duration::from_millis(self.rng.random_range(100..1500));
            tokio::time::sleep(moment).await;
            r.kill().await;
            last_kill = Instant::now();
            kill_times.push(crate::clock::to_millis(chrono::Utc::now()));
            submitter.abort();
            let _ = submitter.await;
            self.figures.kills += 1;
            self.figures.kill_rounds += 1;
            let mut acked = Vec::new();
            while let Ok(a) = rx.try_recv() {
                acked.push(a);
            }
            carried = batch
                .into_iter()
                .filter(|s| !acked.iter().any(|a: &Acked| a.subject.account_id == s.account_id))
                .collect();
            self.record(&acked, 0);
            storm.extend(acked);
        }
        // The last server: what was never acknowledged is submitted once more, then everything ends.
        carried.extend(queue.drain(..));
        let r = self.start("storm").await?;
        let (acked, unacked) = workload::submit_all(&[r.url()], &carried, Duration::from_secs(60)).await;
        self.record(&acked, unacked.len());
        storm.extend(acked);
        self.wait_ended("kill storm: all ended after the last kill", &workload::ids(&storm), last_kill).await;
        self.stop(r).await;
        // Work resumed after each kill: the first store task finished after it (the ledger's
        // times are this machine's clock too).
        for killed_at in kill_times {
            let first: Option<i64> =
                sqlx::query_scalar("SELECT MIN(finished_at) FROM dsr.dsr_tasks WHERE finished_at > $1")
                    .bind(killed_at)
                    .fetch_one(&self.pool)
                    .await?;
            if let Some(first) = first {
                let resumed = Duration::from_millis((first - killed_at) as u64);
                self.figures.time("kill storm: first store task finished after a kill", resumed);
            }
        }
        Ok(())
    }

    /// Two replicas; one is SIGKILLed while it holds tasks; the other finishes everything.
    pub async fn replica_killed(&mut self) -> anyhow::Result<()> {
        let a = self.start("two-a").await?;
        let b = self.start("two-b").await?;
        let acked = self.submit(&[a.url(), b.url()], self.plan.batch).await;
        let ids = workload::ids(&acked);
        workload::wait_running_on(&self.pool, &ids, "two-a/%", Duration::from_secs(20)).await;
        let killed = Instant::now();
        a.kill().await;
        self.figures.kills += 1;
        self.wait_ended("one of two replicas killed: all ended after the kill", &ids, killed).await;
        self.stop(b).await;
        Ok(())
    }

    /// Postgres restarted in `mode` under two working replicas, which must recover alone.
    pub async fn postgres_restart(&mut self, mode: StopMode) -> anyhow::Result<()> {
        let mut a = self.start("pg-a").await?;
        let mut b = self.start("pg-b").await?;
        let urls = [a.url(), b.url()];
        let mut acked = self.submit(&urls, self.plan.batch).await;
        workload::wait_running_on(&self.pool, &workload::ids(&acked), "pg-_/%", Duration::from_secs(20))
            .await;
        let began = Instant::now();
        let down = self.cluster.restart(mode)?;
        self.figures.pg_restarts += 1;
        self.figures.time(&format!("Postgres {} restart: database down", mode.as_str()), down);
        let back = Instant::now();
        // Recovery: the first deletion acknowledged after the database is back.
        let after = self.take(self.plan.batch);
        let mut next = 0;
        let mut turn = 0;
        while next < after.len() && back.elapsed() < Duration::from_secs(120) {
            let url = &urls[turn % 2];
            turn += 1;
            let result = match workload::client(url).await {
                Ok(mut c) => workload::submit(&mut c, &after[next]).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(first) => {
                    self.figures.time(
                        &format!(
                            "Postgres {} restart: first deletion acknowledged after it was back",
                            mode.as_str()
                        ),
                        back.elapsed(),
                    );
                    self.figures.time(
                        &format!(
                            "Postgres {} restart: first deletion acknowledged after the restart began",
                            mode.as_str()
                        ),
                        began.elapsed(),
                    );
                    self.record(std::slice::from_ref(&first), 0);
                    acked.push(first);
                    next += 1;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        if next == 0 {
            self.figures.violation(
                "no recovery after a Postgres restart",
                format!("{}: no deletion acknowledged in 120 s", mode.as_str()),
            );
        }
        let (rest, unacked) = workload::submit_all(&urls, &after[next..], Duration::from_secs(60)).await;
        self.record(&rest, unacked.len());
        acked.extend(rest);
        self.wait_ended(
            &format!("Postgres {} restart: all ended after it was back", mode.as_str()),
            &workload::ids(&acked),
            back,
        )
        .await;
        for r in [&mut a, &mut b] {
            if !r.is_alive() {
                self.figures.violation(
                    "replica died with the database",
                    format!("{} exited after a {} restart", r.name, mode.as_str()),
                );
            }
        }
        self.stop(a).await;
        self.stop(b).await;
        Ok(())
    }

    /// A replica SIGSTOPped while it holds tasks, past its lease, while another finishes them;
    /// then resumed. Its late results must change nothing.
    pub async fn paused_worker(&mut self) -> anyhow::Result<()> {
        let a = self.start("paused").await?;
        let acked = self.submit(&[a.url()], self.plan.batch).await;
        let ids = workload::ids(&acked);
        workload::wait_running_on(&self.pool, &ids, "paused/%", Duration::from_secs(20)).await;
        a.pause();
        let paused = Instant::now();
        self.figures.pauses += 1;
        let held: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, attempt FROM dsr.dsr_tasks WHERE request_id = ANY($1) AND state = 'running' AND lease_owner LIKE 'paused/%'",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let b = self.start("finisher").await?;
        self.wait_ended("paused replica: all ended by another replica", &ids, paused).await;
        // Paused past its lease, whatever happened meanwhile.
        let past_lease = LEASE * 2;
        if paused.elapsed() < past_lease {
            tokio::time::sleep(past_lease - paused.elapsed()).await;
        }
        let before = task_states(&self.pool, &ids).await?;
        a.resume();
        // Long enough for the late worker to renew its lease (every third of it) and to try to
        // write what it had.
        tokio::time::sleep(LEASE * 2).await;
        let after = task_states(&self.pool, &ids).await?;
        let changed =
            before.iter().zip(&after).filter(|(x, y)| x != y).count() + before.len().abs_diff(after.len());
        if changed > 0 {
            self.figures.violation("a paused worker's late result changed tasks", format!("{changed} tasks"));
        }
        let taken: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM dsr.dsr_tasks t JOIN unnest($1::text[], $2::bigint[]) AS h(id, attempt) ON h.id = t.id WHERE t.attempt > h.attempt",
        )
        .bind(held.iter().map(|h| h.0.clone()).collect::<Vec<_>>())
        .bind(held.iter().map(|h| h.1).collect::<Vec<_>>())
        .fetch_one(&self.pool)
        .await?;
        self.figures.paused_tasks_held += held.len();
        self.figures.paused_tasks_taken_over += taken as usize;
        self.stop(a).await;
        self.stop(b).await;
        Ok(())
    }

    /// SIGTERM while tasks run: a timed, clean exit; a new server finishes what was left.
    pub async fn sigterm_during_work(&mut self) -> anyhow::Result<()> {
        let a = self.start("term").await?;
        let acked = self.submit(&[a.url()], self.plan.batch).await;
        let ids = workload::ids(&acked);
        workload::wait_running_on(&self.pool, &ids, "term/%", Duration::from_secs(20)).await;
        self.stop(a).await;
        let restarted = Instant::now();
        let b = self.start("term").await?;
        self.wait_ended("SIGTERM: all ended after a new server started", &ids, restarted).await;
        self.stop(b).await;
        Ok(())
    }

    /// The transcripts store refuses every delete (a trigger raising an error) for the outage,
    /// then works again; the deletions wait it out and finish.
    pub async fn erroring_store(&mut self) -> anyhow::Result<()> {
        sqlx::raw_sql(
            "CREATE OR REPLACE FUNCTION chaos_store_down() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'chaos: the store is down'; END $$; \
             CREATE TRIGGER chaos_store_down BEFORE DELETE ON transcripts \
             FOR EACH STATEMENT EXECUTE FUNCTION chaos_store_down();",
        )
        .execute(&self.pool)
        .await?;
        let a = self.start("err-a").await?;
        let b = self.start("err-b").await?;
        let acked = self.submit(&[a.url(), b.url()], self.plan.batch).await;
        let ids = workload::ids(&acked);
        tokio::time::sleep(self.plan.store_outage).await;
        sqlx::raw_sql("DROP TRIGGER chaos_store_down ON transcripts").execute(&self.pool).await?;
        let recovered = Instant::now();
        self.figures.store_outages += 1;
        let attempts: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(attempt), 0)::bigint FROM dsr.dsr_tasks WHERE request_id = ANY($1) AND store = 'transcripts'",
        )
        .bind(&ids)
        .fetch_one(&self.pool)
        .await?;
        eprintln!("dsr chaos: {attempts} attempts against the erroring store during its outage");
        self.wait_ended("erroring store: all ended after it recovered", &ids, recovered).await;
        self.stop(a).await;
        self.stop(b).await;
        Ok(())
    }

    /// The call_logs table locked ACCESS EXCLUSIVE by another session: every call into the
    /// store hangs until its `timeout_secs`, a transient failure; after the lock goes, the
    /// deletions finish. Submitted before the lock (resolution reads the table too).
    pub async fn hanging_store(&mut self) -> anyhow::Result<()> {
        let a = self.start("hang-a").await?;
        let b = self.start("hang-b").await?;
        let acked = self.submit(&[a.url(), b.url()], self.plan.batch).await;
        let ids = workload::ids(&acked);
        let mut lock = self.pool.acquire().await?;
        sqlx::raw_sql("BEGIN; LOCK TABLE call_logs IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await?;
        tokio::time::sleep(self.plan.store_outage / 2).await;
        sqlx::raw_sql("ROLLBACK").execute(&mut *lock).await?;
        drop(lock);
        let released = Instant::now();
        self.figures.store_outages += 1;
        self.wait_ended("hanging store: all ended after it recovered", &ids, released).await;
        self.stop(a).await;
        self.stop(b).await;
        Ok(())
    }

    /// `dsr audit verify` against a server started for it once all others have stopped.
    pub async fn verify_audit(&mut self) -> Result<(), String> {
        let r = self.start("verify").await.map_err(|e| format!("{e:#}"))?;
        let out = tokio::process::Command::new(&self.spec.bin)
            .args(["audit", "verify", "--server", &r.url()])
            .output()
            .await
            .map_err(|e| e.to_string());
        self.stop(r).await;
        let out = out?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// Every task of `ids` as it stands (state, attempt, counts, verified, finish time), in id order.
async fn task_states(
    pool: &sqlx::PgPool,
    ids: &[String],
) -> anyhow::Result<Vec<(String, String, i64, i64, i64, i64, Option<i64>)>> {
    Ok(sqlx::query_as(
        "SELECT id, state, attempt, records_found, records_affected, verified, finished_at FROM dsr.dsr_tasks \
         WHERE request_id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}
