//! `dsr-voicemail-adapter`: the example remote store (`dsr::adapter::voicemail`), a voicemail
//! service with its own SQLite database that takes part in dsr's requests over
//! `dsr.adapter.v1.StoreAdapter`.
//!
//! ```text
//! dsr-voicemail-adapter --listen 127.0.0.1:50070 --database voicemail.db [--demo-data]
//! ```
//! The bearer token it requires comes from `VOICEMAIL_ADAPTER_TOKEN` (none: no token required).
use std::process::ExitCode;

use clap::Parser;
use dsr::adapter::voicemail::{serve, VoicemailAdapter};

#[derive(Debug, Parser)]
#[command(name = "dsr-voicemail-adapter", about = "Example dsr remote store: voicemail in SQLite")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:50070", env = "VOICEMAIL_LISTEN")]
    listen: std::net::SocketAddr,
    /// The adapter's SQLite database file (created if missing).
    #[arg(long, default_value = "voicemail.db", env = "VOICEMAIL_DATABASE")]
    database: std::path::PathBuf,
    /// Write the fixture `dsr adapter check` looks for by default (tenant `dsr-check`).
    #[arg(long)]
    demo_data: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dsr-voicemail-adapter: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsr-voicemail-adapter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let adapter = VoicemailAdapter::open(&dsr::db::sqlite_url(&args.database)).await?;
    if args.demo_data {
        adapter.insert_check_fixture().await?;
    }
    let token = std::env::var("VOICEMAIL_ADAPTER_TOKEN").ok().filter(|t| !t.is_empty());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, token = token.is_some(), "voicemail adapter listening");
    serve(listener, adapter, token, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
