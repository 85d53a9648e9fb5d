//! `dsr bench`: reproducible measurements, each next to a floor measured in the same run.
//!
//! - `deletions`: erasures through the service against hand-written SQL and object deletes.
//! - `export`: one subject's archive (≥ 1 GiB of recordings) against `cat` of the same files,
//!   with the server's peak memory.
//! - `sweep`: a retention sweep over a million expired call logs against a batched `DELETE`.
//! - `submit`: SubmitDeletion acknowledgements per second against pgbench's one-row inserts.
//! - `latency`: one call at a time on an idle service: `GetRequest`, and a deletion from submit to
//!   COMPLETED, as p50 and p99; with `--history N` on a ledger that already holds N finished
//!   requests (`history`).
//!
//! Each run works in scratch of its own (`Scratch`): a fresh temporary data directory and SQLite
//! ledger unless told otherwise, and on a Postgres `--database-url` a ledger schema of its own,
//! so a benchmark never writes into the tour's `./dsr-data` nor shares a ledger (and so its
//! tasks) with a running server.
mod cpu;
mod deletions;
mod export;
mod history;
mod latency;
mod submit;
mod sweep;

use std::path::PathBuf;

use crate::config::{Locations, MetricsListen, Settings};

/// The longest a benchmark waits for the request it watches to change. Longer means the
/// engine is stuck (a store or the ledger failing every attempt: its warnings are on stderr),
/// and the benchmark says so instead of waiting for ever.
const STALL: std::time::Duration = std::time::Duration::from_secs(300);

/// The next message of a `WatchRequest` stream, or an error once none came for `STALL`.
async fn next_change(
    watch: &mut tonic::Streaming<crate::api::pb::DsrRequest>,
) -> anyhow::Result<Option<crate::api::pb::DsrRequest>> {
    match tokio::time::timeout(STALL, watch.message()).await {
        Ok(next) => Ok(next?),
        Err(_) => anyhow::bail!(
            "a watched request did not change for {} s: the engine is stuck (the warnings above say why)",
            STALL.as_secs()
        ),
    }
}

/// A service of the benchmark's own, in this process, on a free loopback port.
struct Served {
    addr: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    async fn start(settings: Settings, overrides: crate::startup::Overrides) -> anyhow::Result<Self> {
        let overrides = crate::startup::Overrides { listen: Some("127.0.0.1:0".parse()?), ..overrides };
        let app = crate::startup::Application::build_with(settings, overrides).await?;
        let addr = app.local_addr();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
        Ok(Self { addr, stop, server })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(
        &self,
    ) -> anyhow::Result<
        crate::api::pb::data_subject_rights_client::DataSubjectRightsClient<tonic::transport::Channel>,
    > {
        Ok(crate::api::pb::data_subject_rights_client::DataSubjectRightsClient::connect(self.url()).await?)
    }

    /// Stops the service and waits for it to drain.
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server.await?
    }
}

/// Where a benchmark runs. Flags only, no `DSR_*`/`DATABASE_URL` environment: a shell set up for
/// `dsr serve` must not point a benchmark at the server's data.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchLocations {
    /// Data directory of this run (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` to measure on Postgres (default: SQLite in the data directory). The
    /// run's ledger goes in a schema of its own, dropped afterwards; the benchmark's tenants are
    /// seeded into the platform tables there.
    #[arg(long)]
    pub database_url: Option<String>,
    /// `file:///dir` or `s3://bucket/prefix` (default: under the data directory).
    #[arg(long)]
    pub recordings_url: Option<String>,
    /// A TOML file with the engine, store and retention settings to measure.
    #[arg(long = "config")]
    pub config_file: Option<PathBuf>,
}

/// A benchmark's own data directory and ledger, removed by `clean_up`.
pub struct Scratch {
    pub settings: Settings,
    pub config_file: Option<PathBuf>,
    temp_dir: Option<PathBuf>,
}

impl BenchLocations {
    pub fn scratch(&self) -> anyhow::Result<Scratch> {
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let temp_dir = match &self.data_dir {
            Some(_) => None,
            None => Some(std::env::temp_dir().join(format!("dsr-bench-{run}"))),
        };
        let data_dir = self.data_dir.clone().or_else(|| temp_dir.clone()).expect("one of the two");
        let loc = Locations {
            data_dir,
            database_url: self.database_url.clone(),
            recordings_url: self.recordings_url.clone(),
            config_file: self.config_file.clone(),
            exports_url: None,
        };
        let mut settings = Settings::load(&loc)?;
        // Its own ledger schema on Postgres; no /metrics port to collide with a running server.
        settings.file.database.schema = format!("dsr_bench_{run}");
        settings.file.metrics.listen = Some(MetricsListen::Off);
        eprintln!(
            "dsr bench: data in {}, ledger {}",
            settings.data_dir.display(),
            if settings.embedded {
                "in its SQLite file".to_owned()
            } else {
                format!("in the schema {} (Postgres) or its own file", settings.file.database.schema)
            }
        );
        Ok(Scratch { settings, config_file: self.config_file.clone(), temp_dir })
    }
}

impl Scratch {
    /// Drops the run's ledger schema (Postgres) and its temporary data directory.
    pub async fn clean_up(self) {
        if self.settings.database_url.starts_with("postgres") {
            if let Ok(db) = crate::db::Db::connect(&self.settings.database_url, 1).await {
                let schema = &self.settings.file.database.schema;
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(db.pool())
                    .await;
                db.close().await;
            }
        }
        if let Some(dir) = self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub use deletions::deletions;
pub use export::export;
pub use latency::latency;
pub use submit::submit;
pub use sweep::sweep;
