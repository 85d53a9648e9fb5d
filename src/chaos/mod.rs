//! `dsr chaos`: the fault campaign. Runs this binary as `dsr serve` replicas against a
//! PostgreSQL cluster of its own, injects faults while deletions are under way, then checks
//! every invariant by reading the ledger and the platform's tables directly.
//!
//! - `cluster`: the throwaway Postgres cluster (it must own it to restart it fast/immediate);
//! - `replicas`: `dsr serve` child processes: start, SIGKILL, SIGSTOP/SIGCONT, SIGTERM;
//! - `workload`: seeded subjects, deletions over gRPC, waiting for requests to end;
//! - `faults`: one scenario per fault, each measuring what it is about;
//! - `checks`: the invariants, judged after every server has stopped;
//! - `report`: the figures.
mod checks;
mod cluster;
mod faults;
mod replicas;
mod report;
mod workload;

use std::{
    collections::VecDeque,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::{rngs::StdRng, SeedableRng};
use sqlx::PgPool;

pub use report::Figures;

use self::{
    checks::{Controls, ErasedKeys},
    cluster::PgCluster,
    replicas::{Ports, ReplicaSpec},
    workload::{Acked, Seeded},
};

/// The faults a campaign can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// A server SIGKILLed at random moments, round after round, while deletions arrive.
    Kill,
    /// Two replicas; one is SIGKILLed mid-work, the other finishes alone.
    Replicas,
    /// Postgres restarted under two working replicas, `-m fast` then `-m immediate`.
    PgRestart,
    /// A replica SIGSTOPped past its lease while another finishes its tasks, then resumed.
    Pause,
    /// SIGTERM during work: a clean, timed shutdown; a restarted server finishes.
    Sigterm,
    /// A store that errors for a while (a trigger refusing deletes), then one that hangs (its
    /// table locked ACCESS EXCLUSIVE by another session).
    FailingStore,
}

const ALL_FAULTS: [Fault; 6] =
    [Fault::Kill, Fault::Replicas, Fault::PgRestart, Fault::Pause, Fault::Sigterm, Fault::FailingStore];

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Kill -9 rounds of the storm (default 100; 8 with --short).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Deletions submitted during the storm (default 200; 16 with --short).
    #[arg(long)]
    pub deletions: Option<usize>,
    /// Seed of the random moments and choices (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Which faults, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<Fault>,
    /// The CI version: few rounds and deletions, outages of seconds.
    #[arg(long)]
    pub short: bool,
    /// How long the failing store errors (default 120 s; 3 s with --short); it hangs half as long.
    #[arg(long)]
    pub store_outage_secs: Option<u64>,
    /// Where the run's directory is made (cluster, logs, recordings); removed afterwards.
    #[arg(long, default_value = "/tmp/chaos")]
    pub dir: PathBuf,
    /// First of 100 loopback ports to use (default: any free port).
    #[arg(long, default_value_t = 0)]
    pub port_base: u16,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Keep the run's directory (logs, cluster) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

/// Sizes of one campaign.
#[derive(Debug, Clone)]
struct Plan {
    rounds: usize,
    deletions: usize,
    /// Deletions per other fault.
    batch: usize,
    sigterms: usize,
    store_outage: Duration,
    controls: usize,
}

impl ChaosArgs {
    fn plan(&self) -> Plan {
        let (rounds, deletions, batch, sigterms, outage, controls) =
            if self.short { (8, 16, 6, 1, 3, 8) } else { (100, 200, 30, 5, 120, 40) };
        Plan {
            rounds: self.rounds.unwrap_or(rounds),
            deletions: self.deletions.unwrap_or(deletions),
            batch,
            sigterms,
            store_outage: Duration::from_secs(self.store_outage_secs.unwrap_or(outage)),
            controls,
        }
    }
}

/// Lease and retry settings short enough that faults show within seconds; retries are many so
/// an outage of minutes is waited out, not turned into FAILED requests.
const CONFIG: &str = "\
[server]
shutdown_grace_secs = 5
rate_limit_per_second = 0
[engine]
workers = 4
lease_secs = 2
max_attempts = 1000
backoff_base_ms = 50
backoff_max_ms = 1000
poll_interval_ms = 100
[database]
idle_in_transaction_timeout_secs = 5
[stores]
check_interval_secs = 5
[stores.call_logs]
timeout_secs = 2
[stores.transcripts]
timeout_secs = 2
";

/// How long the engine's lease lasts in `CONFIG`.
const LEASE: Duration = Duration::from_secs(2);
const TENANT: &str = "chaos";
const BYSTANDER: &str = "bystander";

/// One campaign's state, shared by the fault scenarios.
pub struct Campaign {
    spec: ReplicaSpec,
    cluster: PgCluster,
    pool: PgPool,
    ports: Ports,
    rng: StdRng,
    /// Subjects not erased yet, handed to the faults in turn.
    fresh: VecDeque<Seeded>,
    acked: Vec<Acked>,
    figures: Figures,
    plan: Plan,
}

impl Campaign {
    /// The next `n` subjects to erase.
    fn take(&mut self, n: usize) -> Vec<Seeded> {
        let n = n.min(self.fresh.len());
        self.figures.submitted += n;
        self.fresh.drain(..n).collect()
    }

    fn record(&mut self, acked: &[Acked], unacked: usize) {
        self.figures.acknowledged += acked.len();
        self.figures.unacknowledged += unacked;
        self.acked.extend_from_slice(acked);
    }

    fn port(&mut self) -> anyhow::Result<u16> {
        self.ports.free()
    }
}

/// Runs the campaign; an error when it could not run or found a violation.
pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let faults = if args.faults.is_empty() { ALL_FAULTS.to_vec() } else { args.faults.clone() };
    std::fs::create_dir_all(&args.dir)?;
    let run_dir = args.dir.join(format!("run-{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    // The cluster's directory inside must be reachable by the `postgres` user.
    for d in [&args.dir, &run_dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = campaign(&args, seed, &faults, &run_dir).await;
    if !args.keep {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let figures = result?;
    println!("dsr chaos: figures\n{}", figures.table());
    if let Some(path) = &args.summary {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
    }
    anyhow::ensure!(figures.violations.is_empty(), "{} violations", figures.violations.len());
    Ok(())
}

async fn campaign(
    args: &ChaosArgs,
    seed: u64,
    faults: &[Fault],
    run_dir: &std::path::Path,
) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let plan = args.plan();
    let mut ports = Ports::new(args.port_base);
    eprintln!("dsr chaos: seed {seed}, faults {faults:?}, run directory {}", run_dir.display());
    let cluster = PgCluster::create(&run_dir.join("pg"), ports.free()?)?;
    let url = cluster.url();
    let recordings_dir = run_dir.join("recordings");
    std::fs::create_dir_all(&recordings_dir)?;
    let recordings_url = url::Url::from_directory_path(&recordings_dir)
        .map_err(|_| anyhow::anyhow!("recordings directory is not absolute"))?
        .to_string();
    let config_file = run_dir.join("dsr.toml");
    std::fs::write(&config_file, CONFIG)?;
    let spec = ReplicaSpec {
        bin: std::env::current_exe()?,
        run_dir: run_dir.to_owned(),
        database_url: url.clone(),
        recordings_url: recordings_url.clone(),
        config_file,
        audit_key: uuid::Uuid::new_v4().simple().to_string(),
    };

    // The platform's tables, as a platform has them before dsr is pointed at it; the ledger.
    let platform = crate::db::Db::connect(&url, 2).await?;
    crate::stores::reference::ensure_schema(&platform, &Default::default()).await?;
    platform.close().await;
    let out = tokio::process::Command::new(&spec.bin)
        .args(["migrate", "--database-url", &url])
        .arg("--data-dir")
        .arg(run_dir.join("migrate"))
        .env("DSR_AUDIT_KEY", &spec.audit_key)
        .env_remove("DSR_CONFIG")
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "dsr migrate failed: {}", String::from_utf8_lossy(&out.stderr));

    // The storm's, then a batch for each other scenario (two for each Postgres restart).
    let erasable = plan.deletions + plan.batch * (1 + 4 + 1 + plan.sigterms + 2);
    let seed_dir = run_dir.join("seed");
    let mut subjects =
        workload::seed(&spec.bin, &seed_dir, &url, &recordings_url, TENANT, erasable + plan.controls).await?;
    let bystanders =
        workload::seed(&spec.bin, &seed_dir, &url, &recordings_url, BYSTANDER, plan.controls.max(20)).await?;
    let controls = subjects.split_off(erasable);
    eprintln!(
        "dsr chaos: seeded {} subjects to erase, {} controls in the same tenant, {} in another",
        subjects.len(),
        controls.len(),
        bystanders.len()
    );

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .context("connecting to the campaign's cluster")?;
    let erased_keys = ErasedKeys::take(&pool, TENANT, &subjects).await?;
    let who = Controls { bystander_tenant: BYSTANDER, tenant: TENANT, subjects: &controls };
    let controls_before = who.snapshot(&pool, &recordings_dir).await?;

    let mut c = Campaign {
        spec,
        cluster,
        pool,
        ports,
        rng: StdRng::seed_from_u64(seed),
        fresh: subjects.into(),
        acked: Vec::new(),
        figures: Figures {
            seed,
            faults: faults.iter().map(|f| format!("{f:?}")).collect(),
            ..Default::default()
        },
        plan,
    };
    for fault in faults {
        eprintln!("dsr chaos: {fault:?} ({:.0} s in)", started.elapsed().as_secs_f64());
        match fault {
            Fault::Kill => c.kill_storm().await?,
            Fault::Replicas => c.replica_killed().await?,
            Fault::PgRestart => {
                c.postgres_restart(cluster::StopMode::Fast).await?;
                c.postgres_restart(cluster::StopMode::Immediate).await?;
            }
            Fault::Pause => c.paused_worker().await?,
            Fault::Sigterm => {
                for _ in 0..c.plan.sigterms {
                    c.sigterm_during_work().await?;
                }
            }
            Fault::FailingStore => {
                c.erroring_store().await?;
                c.hanging_store().await?;
            }
        }
    }

    // Every server of the run has stopped; one more verifies the audit chain (and links what
    // may be pending), then stops too. Only then is `dsr_events` read.
    eprintln!("dsr chaos: checks ({:.0} s in)", started.elapsed().as_secs_f64());
    let audit_verified = c.verify_audit().await;
    let controls_after = who.snapshot(&c.pool, &recordings_dir).await?;
    let logs = replicas::logs_under(run_dir);
    let evidence = checks::Evidence {
        acked: &c.acked,
        tenant: TENANT,
        erased_keys: &erased_keys,
        controls_before: &controls_before,
        controls_after: &controls_after,
        audit_verified,
        recordings_dir: &recordings_dir,
        logs: &logs,
    };
    let violations = checks::check(&c.pool, &evidence).await?;
    let tally = checks::tally(&c.pool).await?;
    let mut figures = std::mem::take(&mut c.figures);
    for v in violations {
        figures.violation(v.invariant, v.detail);
    }
    figures.requests = tally.requests;
    figures.completed = tally.completed;
    figures.failed = tally.failed;
    figures.tasks = tally.tasks;
    figures.tasks_taken_over = tally.taken_over;
    figures.seconds = started.elapsed().as_secs_f64();
    c.pool.close().await;
    c.cluster.stop();
    Ok(figures)
}
