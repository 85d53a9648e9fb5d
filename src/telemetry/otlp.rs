//! The OpenTelemetry tracer provider: whether to export (the standard `OTEL_*` variables
//! decide), the resource (`service.name` defaults to `dsr`), and an OTLP/gRPC exporter whose
//! calls run on the service's tokio runtime.
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use opentelemetry::KeyValue;
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    resource::{
        EnvResourceDetector, ResourceDetector, SdkProvidedResourceDetector, TelemetryResourceDetector,
    },
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter},
    Resource,
};

/// The collector `OTEL_EXPORTER_OTLP_ENDPOINT` means when only `OTEL_TRACES_EXPORTER=otlp` is set.
const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TraceExport {
    Off,
    /// OTLP over gRPC; the endpoint as the exporter will resolve it (for the start-up log).
    Otlp {
        endpoint: String,
    },
}

/// Reads the standard variables (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/):
/// export is on when an OTLP endpoint is set or `OTEL_TRACES_EXPORTER` names `otlp`, and off
/// with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Unlike the spec's default
/// (`otlp` to localhost), nothing is exported when nothing is configured: a laptop run or a
/// test should not try to reach a collector. Also returns warnings about settings it cannot
/// honour (logged once logging is up).
pub(super) fn trace_export(env: impl Fn(&str) -> Option<String>) -> (TraceExport, Vec<String>) {
    let var = |k: &str| env(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let mut warnings = Vec::new();
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return (TraceExport::Off, warnings);
    }
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let on = match var("OTEL_TRACES_EXPORTER") {
        None => endpoint.is_some(),
        Some(list) => {
            let names: Vec<String> = list.split(',').map(|s| s.trim().to_ascii_lowercase()).collect();
            let others: Vec<&str> =
                names.iter().map(String::as_str).filter(|n| !matches!(*n, "otlp" | "none" | "")).collect();
            if !others.is_empty() {
                warnings.push(format!(
                    "OTEL_TRACES_EXPORTER: only otlp is supported; ignoring {}",
                    others.join(", ")
                ));
            }
            names.iter().any(|n| n == "otlp")
        }
    };
    if !on {
        return (TraceExport::Off, warnings);
    }
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(p) = protocol.filter(|p| p != "grpc") {
        warnings.push(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={p} is not supported: dsr exports OTLP over gRPC (port 4317 on a collector)"
        ));
    }
    let endpoint = without_credentials(endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT));
    (TraceExport::Otlp { endpoint }, warnings)
}

/// The endpoint as it may be logged: any `user:password@` removed.
fn without_credentials(endpoint: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => endpoint.to_owned(),
            }
        }
        None => endpoint.to_owned(),
    }
}

/// `service.name` is `dsr` unless `OTEL_SERVICE_NAME` or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES` says otherwise; `service.version` is this build's. The other
/// attributes of `OTEL_RESOURCE_ATTRIBUTES` are kept.
pub(super) fn resource() -> Resource {
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || EnvResourceDetector::new().detect().get(&opentelemetry::Key::new("service.name")).is_some();
    let mut detectors: Vec<Box<dyn ResourceDetector>> =
        vec![Box::new(TelemetryResourceDetector), Box::new(EnvResourceDetector::new())];
    if named_by_env {
        detectors.push(Box::new(SdkProvidedResourceDetector));
    }
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "dsr"),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .with_detectors(&detectors)
        .build()
}

/// The provider: with an OTLP exporter when `export`, else one that records nothing but still
/// gives every span a trace and span id (the JSON logs carry them, and a caller's trace id
/// shows up in our log lines).
pub(super) fn provider(export: &TraceExport) -> anyhow::Result<SdkTracerProvider> {
    let builder = SdkTracerProvider::builder().with_resource(resource());
    Ok(match export {
        TraceExport::Off => builder.with_sampler(Sampler::AlwaysOff).build(),
        TraceExport::Otlp { endpoint } => {
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|_| anyhow::anyhow!("the OTLP exporter must be built inside the tokio runtime"))?;
            // Reads OTEL_EXPORTER_OTLP_{TRACES_,}{ENDPOINT,HEADERS,TIMEOUT,COMPRESSION} itself.
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| anyhow::anyhow!("OpenTelemetry exporter to {endpoint}: {e}"))?;
            // The sampler (OTEL_TRACES_SAMPLER, default parent-based always-on) and the batch
            // settings (OTEL_BSP_*) come from the environment.
            let exporter = OnRuntime { inner: Arc::new(exporter), runtime, failing: AtomicBool::new(false) };
            builder.with_batch_exporter(exporter).build()
        }
    })
}

/// Runs each export on the service's tokio runtime. The SDK's batch processor exports from a
/// thread of its own with a plain executor, where tonic's channel (timers, I/O) has no reactor.
/// Also says when exports start failing and when they work again (the SDK itself is built
/// without its internal logs), once per change rather than once per batch.
struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
    failing: AtomicBool,
}

impl<E> fmt::Debug for OnRuntime<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnRuntime(otlp)")
    }
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        let spans = batch.len();
        let result = match self.runtime.spawn(async move { inner.export(batch).await }).await {
            Ok(result) => result,
            Err(e) => Err(OTelSdkError::InternalFailure(format!("export task: {e}"))),
        };
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(error = %e, spans, "exporting spans failed; batches are dropped until the collector answers")
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("exporting spans works again")
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once, before any export holds a clone.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        move |k| map.get(k).map(|v| v.to_string())
    }

    #[test]
    fn nothing_is_exported_unless_asked_for() {
        assert_eq!(trace_export(env(&[])).0, TraceExport::Off);
        assert_eq!(trace_export(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])).0, TraceExport::Off);
    }

    #[test]
    fn an_endpoint_switches_export_on() {
        let (e, w) = trace_export(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]));
        assert_eq!(e, TraceExport::Otlp { endpoint: "http://collector:4317".into() });
        assert!(w.is_empty());
        let (e, _) = trace_export(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ]));
        assert_eq!(e, TraceExport::Otlp { endpoint: "http://traces:4317".into() });
    }

    #[test]
    fn the_exporter_variable_and_the_kill_switch_win() {
        let (e, _) = trace_export(env(&[("OTEL_TRACES_EXPORTER", "otlp")]));
        assert_eq!(e, TraceExport::Otlp { endpoint: DEFAULT_ENDPOINT.into() });
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert_eq!(trace_export(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])).0, TraceExport::Off);
        assert_eq!(trace_export(env(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])).0, TraceExport::Off);
        let (e, w) = trace_export(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]));
        assert_eq!(e, TraceExport::Off);
        assert!(w[0].contains("zipkin"), "{w:?}");
    }

    #[test]
    fn credentials_in_the_endpoint_are_not_logged() {
        let (e, _) =
            trace_export(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:s3cret@collector:4317/x@y")]));
        assert_eq!(e, TraceExport::Otlp { endpoint: "http://collector:4317/x@y".into() });
        assert_eq!(without_credentials("collector:4317"), "collector:4317");
    }

    #[test]
    fn a_protocol_other_than_grpc_is_warned_about() {
        let (e, w) = trace_export(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]));
        assert!(matches!(e, TraceExport::Otlp { .. }));
        assert!(w[0].contains("http/protobuf"), "{w:?}");
    }

    #[test]
    fn the_service_is_called_dsr_with_its_version_unless_renamed() {
        let r = resource();
        let get = |r: &Resource, k: &'static str| r.get(&opentelemetry::Key::new(k)).map(|v| v.to_string());
        // OTEL_SERVICE_NAME in the test process's own environment would rename it.
        if std::env::var("OTEL_SERVICE_NAME").is_err() && std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_err() {
            assert_eq!(get(&r, "service.name").as_deref(), Some("dsr"));
        }
        assert_eq!(get(&r, "service.version").as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(get(&r, "telemetry.sdk.language").as_deref(), Some("rust"));
    }
}
