//! The `dsr` command line: server-side commands (`serve`, `migrate`, `seed`, `sweep`) and a gRPC
//! client for people (`export`, `download`, `delete`, `rectify`, `status`, `watch`, `preview`, `list`, `cancel`,
//! `retry`, `extend`, `holds place|release|list`, `audit verify|list`); `audit prune` works on the
//! database directly, like `migrate`.

mod adapter;
mod client;
pub use client::{as_json, DOWNLOAD_FRAME, DOWNLOAD_WINDOW};
mod export;
mod holds;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{config::Locations, telemetry::LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "dsr",
    version,
    about = "Data-subject-rights service: export, erase and rectify a person's data"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true, env = "DSR_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (embedded SQLite + ./dsr-data/recordings with no configuration).
    Serve {
        #[command(flatten)]
        loc: Locations,
        /// Address to listen on (default from the config file, else 127.0.0.1:50051).
        #[arg(long, env = "DSR_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// Where to serve /metrics, or `off` (default from the config file; else 127.0.0.1:9090
        /// in the embedded default, off with a --database-url).
        #[arg(long, env = "DSR_METRICS_LISTEN")]
        metrics_listen: Option<crate::config::MetricsListen>,
    },
    /// Apply the service's database migrations.
    Migrate {
        #[command(flatten)]
        loc: Locations,
    },
    /// Fill the reference schema with deterministic synthetic data; one JSON line per subject.
    Seed {
        #[command(flatten)]
        loc: Locations,
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value_t = 10)]
        subjects: usize,
        #[arg(long, default_value_t = 5)]
        calls: usize,
        /// Bytes per synthetic recording.
        #[arg(long, default_value_t = 4096)]
        recording_bytes: usize,
        /// Index of the first subject (to add more subjects to a seeded tenant).
        #[arg(long, default_value_t = 0)]
        first: usize,
        /// Write production-like data instead (mixed-case and padded emails, national phone
        /// formats, a shared family line, duplicate emails, anonymous calls, awkward object
        /// keys); prints one JSON line per person with the keys of their records.
        #[arg(long, conflicts_with_all = ["subjects", "calls", "recording_bytes", "first"])]
        messy: bool,
    },
    /// Run one retention sweep now over every store and tenant, under the sweep lease (exits
    /// non-zero if another replica is sweeping or a store failed).
    Sweep {
        #[command(flatten)]
        loc: Locations,
        /// Print what the sweep would erase, per store and tenant; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Measure against a floor taken in the same run: `deletions` (hand-written SQL), `export`
    /// (`cat` of the same recordings) or `sweep` (a batched DELETE). Build with --release for real
    /// numbers.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// The fault campaign: `dsr serve` replicas of this binary on a Postgres cluster of its own,
    /// SIGKILLed, paused, SIGTERMed, their database restarted and a store failing while
    /// deletions run; then every invariant is checked. Non-zero exit on any violation.
    Chaos(crate::chaos::ChaosArgs),
    /// Submit an export of everything held on a subject; with -o, wait for it and download the
    /// archive.
    Export {
        #[command(flatten)]
        conn: client::Connection,
        #[command(flatten)]
        subject: client::SubjectArgs,
        #[command(flatten)]
        submit: client::SubmitArgs,
        /// Wait for the export, then download its archive here (the sha256 is checked).
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// Download a finished export's archive (resumes a partial download; checks the sha256).
    Download {
        #[command(flatten)]
        conn: client::Connection,
        id: String,
        #[arg(short, long)]
        output: std::path::PathBuf,
    },
    /// Submit a deletion of everything held on a subject.
    Delete {
        #[command(flatten)]
        conn: client::Connection,
        #[command(flatten)]
        subject: client::SubjectArgs,
        #[command(flatten)]
        submit: client::SubmitArgs,
    },
    /// Submit a correction of a subject's name, email and/or phone in every store that holds it.
    /// The subject is named by its current identifiers; `--set-*` give the new values.
    Rectify {
        #[command(flatten)]
        conn: client::Connection,
        #[command(flatten)]
        subject: client::SubjectArgs,
        #[command(flatten)]
        corrections: client::CorrectionArgs,
        #[command(flatten)]
        submit: client::SubmitArgs,
    },
    /// Show a request and its per-store outcomes.
    Status {
        #[command(flatten)]
        conn: client::Connection,
        id: String,
        /// Print the request as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a request until it ends, printing each change.
    Watch {
        #[command(flatten)]
        conn: client::Connection,
        id: String,
    },
    /// Show what each store holds on a subject (changes nothing).
    Preview {
        #[command(flatten)]
        conn: client::Connection,
        #[command(flatten)]
        subject: client::SubjectArgs,
    },
    /// List requests, newest first, a page at a time.
    List {
        #[command(flatten)]
        conn: client::Connection,
        #[command(flatten)]
        args: client::ListArgs,
    },
    /// Cancel the stores of a request that have not started.
    Cancel {
        #[command(flatten)]
        conn: client::Connection,
        id: String,
    },
    /// Re-run the failed stores of a FAILED request.
    Retry {
        #[command(flatten)]
        conn: client::Connection,
        id: String,
    },
    /// Extend a request's deadline once, by what its law allows (+2 months GDPR, +45 days CCPA).
    Extend {
        #[command(flatten)]
        conn: client::Connection,
        id: String,
        /// Why (required; stored with the request's events, never logged).
        #[arg(long)]
        reason: String,
    },
    /// Litigation holds (and the legal obligations deletions leave): place, release, list.
    Holds {
        #[command(subcommand)]
        command: HoldsCommand,
    },
    /// The audit trail: verify its hash chain, list it, prune old requests.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The store catalog against the live schemas.
    Stores {
        #[command(subcommand)]
        command: StoresCommand,
    },
    /// The recipients told of erasures and corrections (GDPR Art. 19).
    Recipients {
        #[command(subcommand)]
        command: RecipientsCommand,
    },
    /// Remote store adapters (`dsr.adapter.v1`): the conformance check.
    Adapter {
        #[command(subcommand)]
        command: AdapterCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecipientsCommand {
    /// Re-drive deliveries that were given up (FAILED): due again at once, with a new give-up,
    /// and their requests back IN_PROGRESS until the recipients acknowledge. Runs on the
    /// ledger's database, like `sweep`.
    Retry {
        #[command(flatten)]
        loc: Locations,
        /// Only this request's deliveries.
        #[arg(long)]
        request: Option<String>,
        /// Only this recipient's deliveries.
        #[arg(long)]
        recipient: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdapterCommand {
    /// Run the conformance suite against a running adapter: a pass/fail table, non-zero exit on
    /// any failure. It previews, exports, rectifies and erases a test subject: use a test instance.
    Check(adapter::CheckArgs),
}

#[derive(Debug, Subcommand)]
pub enum HoldsCommand {
    /// Keep everything held on a subject from deletions and retention sweeps until released.
    Place {
        #[command(flatten)]
        conn: client::Connection,
        #[command(flatten)]
        subject: client::SubjectArgs,
        /// Why (a case number); required, stored with the hold, never logged.
        #[arg(long)]
        reason: String,
    },
    /// Release a litigation hold: the deletions it kept run again.
    Release {
        #[command(flatten)]
        conn: client::Connection,
        id: String,
        /// Why; required, stored with the hold, never logged.
        #[arg(long)]
        reason: String,
    },
    /// List holds in id order, a page at a time.
    List {
        #[command(flatten)]
        conn: client::Connection,
        #[arg(long)]
        tenant: Option<String>,
        /// Only holds that stand.
        #[arg(long)]
        active: bool,
        #[command(flatten)]
        page: client::PageArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoresCommand {
    /// Print every store against its live table (ok, or what is missing); exit non-zero when
    /// one does not match, so a deployment's CI (and the chart's migration job) can run it.
    Check {
        #[command(flatten)]
        loc: Locations,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Seed two identical tenants; erase one through gRPC and one by hand-written SQL.
    Deletions {
        #[command(flatten)]
        loc: crate::bench::BenchLocations,
        #[arg(long, default_value_t = 1000)]
        subjects: usize,
        #[arg(long, default_value_t = 20)]
        calls: usize,
    },
    /// Export one subject with --total-mib of recordings through a `dsr serve` child process;
    /// compare with `cat` of the same files and report the server's peak memory.
    Export {
        #[command(flatten)]
        loc: crate::bench::BenchLocations,
        #[arg(long, default_value_t = 1024)]
        total_mib: usize,
        /// Recordings the total is split into.
        #[arg(long, default_value_t = 64)]
        calls: usize,
        /// Runs of (cat, export, download); the median of each is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Then export a second subject with this many recordings of 1 KiB, on a fresh server,
        /// and report its peak memory on its own (0: skip).
        #[arg(long, default_value_t = 0)]
        many_files: usize,
    },
    /// Seed expired call-log rows and time the retention sweep against a hand-written batched
    /// DELETE of the same rows.
    Sweep {
        #[command(flatten)]
        loc: crate::bench::BenchLocations,
        /// Expired call-log rows to seed.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
    },
    /// SubmitDeletion acknowledgements per second (rate limit off, engine paused) against
    /// pgbench's one-row INSERT transactions at the same concurrency (Postgres only).
    Submit {
        #[command(flatten)]
        loc: crate::bench::BenchLocations,
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
    },
    /// One call at a time on an idle service: GetRequest and a deletion (submit to COMPLETED),
    /// p50 and p99, next to a SELECT of the same row.
    Latency {
        #[command(flatten)]
        loc: crate::bench::BenchLocations,
        /// GetRequest calls (a tenth as many deletions, at least 10).
        #[arg(long, default_value_t = 1000)]
        rounds: usize,
        /// Finished requests in the ledger before the measured ones: 20 real deletions, their
        /// rows (tasks, audit events, holds, restrictions) copied until there are this many.
        #[arg(long, default_value_t = 0)]
        history: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain on the server; exits non-zero when it is broken.
    Verify {
        #[command(flatten)]
        conn: client::Connection,
    },
    /// List audit events, oldest first.
    List {
        #[command(flatten)]
        conn: client::Connection,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        request: Option<String>,
        /// One identifier (email, phone or account id) of a person; needs --tenant. Sent to the
        /// server, which hashes it; never stored.
        #[arg(long)]
        subject: Option<String>,
        #[command(flatten)]
        page: client::PageArgs,
    },
    /// Delete requests that ended more than --before-days ago (default 730: CCPA's 24 months),
    /// with their tasks and audit events, leaving a checkpoint so the rest still verifies.
    Prune {
        #[command(flatten)]
        loc: Locations,
        #[arg(long, default_value_t = 730)]
        before_days: u32,
    },
}

/// Tunes glibc's malloc before any thread starts; each setting given in the environment wins
/// (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`). Both measured
/// (README, "Benchmarks"):
/// - Two arenas. glibc gives threads that allocate at once arenas of their own (up to eight a
///   core), and what is freed in one stays with it: an export of 100,000 small recordings, its
///   reads spread over the blocking threads, left the server at 90 MiB resident while its heap
///   peaked at 22 MiB. Two arenas held the same export to 53–56 MiB, and the deletion benchmark
///   did not move.
/// - Large buffers kept. Exports and downloads pass their bytes in buffers of up to 512 KiB
///   (`stores::objects`); by default glibc maps each one from the kernel and unmaps it when
///   freed (or trims the heap it came from), so every buffer was faulted in and zeroed again.
///   Buffers below 4 MiB now come from the heap, which keeps up to 128 MiB free before it is
///   trimmed. Over `dsr bench export` (1 GiB, 3 runs; `perf stat`): 757,000–889,000 page faults ->
///   274,000, the export's median 1.7 -> 1.3 s, peak memory 39 -> 41 MiB.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (env, param, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2),
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 4 << 20),
        ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 128 << 20),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: a malloc tuning call, made before the process starts any other thread.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

pub fn main() -> ExitCode {
    // Before anything is written: the database, recordings, archives and downloads are
    // personal data, private to this user whatever umask the shell or container gave us.
    crate::files::restrict_umask();
    tune_malloc();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dsr: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Only the server exports traces; the exporter's channel lives on the runtime.
    let export_traces = matches!(cli.command, Command::Serve { .. });
    if !export_traces {
        // A command whose output is piped into `head` ends quietly when the reader goes, as
        // Unix tools do, instead of panicking on the broken pipe. (Rust ignores SIGPIPE by
        // default; the server keeps that, a closed log pipe must not kill it.)
        #[cfg(unix)]
        // SAFETY: restores the default disposition of one signal, process-wide; nothing here
        // has installed a handler for it.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let telemetry = {
        let _runtime = runtime.enter();
        crate::telemetry::init(cli.log_format, export_traces)
    };
    let result = runtime.block_on(run(cli.command));
    // After the server's graceful stop (SIGTERM included), before the runtime goes away.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsr: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { loc, listen, metrics_listen } => server::serve(&loc, listen, metrics_listen).await,
        Command::Migrate { loc } => server::migrate(&loc).await,
        Command::Seed { loc, tenant, messy: true, .. } => server::seed_messy(&loc, &tenant).await,
        Command::Seed { loc, tenant, subjects, calls, recording_bytes, first, messy: false } => {
            server::seed(&loc, &tenant, subjects, calls, recording_bytes, first).await
        }
        Command::Bench { what } => {
            // Its own data directory and ledger, whatever runs beside it.
            let scratch = match &what {
                BenchCommand::Deletions { loc, .. }
                | BenchCommand::Export { loc, .. }
                | BenchCommand::Sweep { loc, .. }
                | BenchCommand::Submit { loc, .. }
                | BenchCommand::Latency { loc, .. } => loc.scratch()?,
            };
            let settings = scratch.settings.clone();
            let result = match what {
                BenchCommand::Deletions { subjects, calls, .. } => {
                    crate::bench::deletions(settings, subjects, calls).await
                }
                BenchCommand::Export { total_mib, calls, runs, many_files, .. } => {
                    let config = scratch.config_file.clone();
                    crate::bench::export(settings, config, total_mib, calls, runs, many_files).await
                }
                BenchCommand::Sweep { rows, .. } => crate::bench::sweep(settings, rows).await,
                BenchCommand::Submit { requests, clients, .. } => {
                    crate::bench::submit(settings, requests, clients).await
                }
                BenchCommand::Latency { rounds, history, .. } => {
                    crate::bench::latency(settings, rounds, history).await
                }
            };
            scratch.clean_up().await;
            result
        }
        Command::Sweep { loc, dry_run } => server::sweep(&loc, dry_run).await,
        Command::Chaos(args) => crate::chaos::run(args).await,
        Command::Export { conn, subject, submit, output } => {
            export::export(&conn, &subject, &submit, output.as_deref()).await
        }
        Command::Download { conn, id, output } => export::download(&conn, &id, &output).await,
        Command::Delete { conn, subject, submit } => client::delete(&conn, &subject, &submit).await,
        Command::Rectify { conn, subject, corrections, submit } => {
            client::rectify(&conn, &subject, &corrections, &submit).await
        }
        Command::Status { conn, id, json } => client::status(&conn, &id, json).await,
        Command::Watch { conn, id } => client::watch(&conn, &id).await,
        Command::Preview { conn, subject } => client::preview(&conn, &subject).await,
        Command::List { conn, args } => client::list(&conn, &args).await,
        Command::Cancel { conn, id } => client::cancel(&conn, &id).await,
        Command::Retry { conn, id } => client::retry(&conn, &id).await,
        Command::Extend { conn, id, reason } => holds::extend(&conn, &id, &reason).await,
        Command::Holds { command } => match command {
            HoldsCommand::Place { conn, subject, reason } => holds::place(&conn, &subject, &reason).await,
            HoldsCommand::Release { conn, id, reason } => holds::release(&conn, &id, &reason).await,
            HoldsCommand::List { conn, tenant, active, page } => {
                holds::list(&conn, tenant, active, &page).await
            }
        },
        Command::Audit { command } => match command {
            AuditCommand::Verify { conn } => client::audit_verify(&conn).await,
            AuditCommand::List { conn, tenant, request, subject, page } => {
                client::audit_list(&conn, tenant, request, subject, &page).await
            }
            AuditCommand::Prune { loc, before_days } => server::audit_prune(&loc, before_days).await,
        },
        Command::Stores { command: StoresCommand::Check { loc } } => server::stores_check(&loc).await,
        Command::Recipients { command: RecipientsCommand::Retry { loc, request, recipient } } => {
            server::recipients_retry(&loc, request.as_deref(), recipient.as_deref()).await
        }
        Command::Adapter { command: AdapterCommand::Check(args) } => adapter::check(args).await,
    }
}
