//! Logging set-up: human-readable lines by default, JSON with `--log-format json`; level from
//! `RUST_LOG` (default `info`). Log fields carry request ids, tenants, stores and keyed hashes
//! only — never an identifier.
use tracing_subscriber::{fmt, EnvFilter};

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"));
    use std::io::IsTerminal;
    let builder =
        fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    };
}
