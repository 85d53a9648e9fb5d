//! Logs and traces. Logs: human-readable lines by default, JSON with `--log-format json` (each
//! line inside a span carries `trace_id` and `span_id`); level from `RUST_LOG` (default `info`).
//! Traces: OpenTelemetry spans exported over OTLP/gRPC when the standard `OTEL_*` variables ask
//! for it (see `otlp`), with a filter of their own, so `RUST_LOG=warn` quietens the logs without
//! emptying the traces. Log fields and span attributes carry request ids, tenants, stores and
//! keyed hashes only — never an identifier.
//!
//! | module        | owns                                                              |
//! |---------------|-------------------------------------------------------------------|
//! | `otlp`        | when to export, the resource, the tracer provider and exporter    |
//! | `propagation` | W3C `traceparent` in and out (calls, the ledger)                  |
//! | `grpc`        | the server span and metrics of every gRPC call                    |
//! | `json`        | trace and span ids in JSON log lines                              |

pub mod grpc;
mod json;
mod otlp;
pub mod propagation;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::{
    filter::Targets, fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer,
};

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// What `init` installed; `shutdown` sends the spans still queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs logging and tracing for the process. `export_traces`: whether this command may
/// export spans at all (`serve` does; one-shot client commands do not). Must run inside the
/// tokio runtime when it may export (the exporter's channel lives there). Never fails: an
/// unusable OTLP configuration is logged and the service runs without export.
pub fn init(format: LogFormat, export_traces: bool) -> Telemetry {
    let (export, mut warnings) = match export_traces {
        true => otlp::trace_export(|k| std::env::var(k).ok()),
        false => (otlp::TraceExport::Off, Vec::new()),
    };
    let (provider, export) = match otlp::provider(&export) {
        Ok(p) => (p, export),
        Err(e) => {
            warnings.push(format!("traces will not be exported: {e:#}"));
            let off = otlp::TraceExport::Off;
            (otlp::provider(&off).expect("a provider without export always builds"), off)
        }
    };
    let log_filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"))
    };
    // The service's own spans and events, whatever RUST_LOG says. Other crates' spans (h2,
    // hyper, sqlx) would only add noise — and their fields are not ours to vouch for.
    let span_filter = Targets::new().with_target("dsr", Level::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("dsr"))
        .with_threads(false)
        .with_filter(span_filter);

    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let dispatch = json::DispatchCell::default();
    let (human, json) = match format {
        LogFormat::Human => (Some(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)), None),
        LogFormat::Json => {
            let event_format = json::WithTraceIds {
                inner: fmt::format().json().with_current_span(true).with_span_list(true),
                dispatch: dispatch.clone(),
            };
            let layer = fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .fmt_fields(fmt::format::JsonFields::new())
                .event_format(event_format);
            (None, Some(layer))
        }
    };
    let installed = tracing_subscriber::registry()
        .with(otel)
        .with(json::CaptureDispatch(dispatch))
        .with(human.with_filter(log_filter()))
        .with(json.with_filter(log_filter()))
        .try_init()
        .is_ok();
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let exporting = installed && matches!(export, otlp::TraceExport::Otlp { .. });
    if let (true, otlp::TraceExport::Otlp { endpoint }) = (exporting, &export) {
        tracing::info!(%endpoint, "exporting traces over OTLP/gRPC");
    }
    Telemetry { provider, exporting }
}

impl Telemetry {
    /// Exports the spans still queued (waiting up to `FLUSH_TIMEOUT` for the collector) and
    /// stops the exporter. Call it after the server has stopped, while the runtime still runs.
    pub fn shutdown(self) {
        if !self.exporting {
            return;
        }
        let provider = self.provider;
        // The provider's shutdown blocks until its batch thread has exported, and that export
        // runs on the runtime: do not block a runtime thread on it.
        let flushed = std::thread::spawn(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT)).join();
        match flushed {
            Ok(Ok(())) => tracing::info!("span exporter shut down: queued spans sent"),
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing traces at shutdown failed"),
            Err(_) => tracing::warn!("flushing traces at shutdown panicked"),
        }
    }
}
