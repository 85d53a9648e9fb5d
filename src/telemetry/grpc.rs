//! The server span and metrics of every gRPC call: a tower layer around the whole tonic server.
//!
//! The span follows OpenTelemetry's RPC conventions (`rpc.system=grpc`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`, kind SERVER, named `package.Service/Method`), takes
//! its parent from the call's W3C `traceparent`, and lasts until the last response message,
//! so a WatchRequest stream is one span. Only the method is read from the call: never its
//! message, and never a header other than `traceparent`. A path that is not a method of the
//! services served is named `_OTHER`, so callers cannot mint span names or metric series.
use std::{
    collections::BTreeSet,
    future::Future,
    pin::Pin,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tower::{Layer, Service};
use tracing::{field::Empty, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::context_from_headers;
use crate::metrics::Metrics;

/// `rpc.method` etc. of a path that names no method served here.
const OTHER: &str = "_OTHER";
/// gRPC's CANCELLED: a call whose response ended without a status (the client went away).
const CANCELLED: i32 = 1;

/// Every `/package.Service/Method` this server answers: its own API, health and reflection.
static KNOWN_METHODS: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    [
        crate::api::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .filter_map(|fds| prost_types::FileDescriptorSet::decode(fds).ok())
    .flat_map(|set| set.file)
    .flat_map(|file| {
        let package = file.package().to_owned();
        file.service.into_iter().flat_map(move |svc| {
            let service = format!("{package}.{}", svc.name());
            svc.method.into_iter().map(move |m| format!("{service}/{}", m.name()))
        })
    })
    .collect()
});

/// The full method name of a request path (`/dsr.v1.DataSubjectRights/SubmitDeletion` →
/// `dsr.v1.DataSubjectRights/SubmitDeletion`), or `_OTHER`.
pub fn method_of(path: &str) -> &'static str {
    path.strip_prefix('/').and_then(|p| KNOWN_METHODS.get(p)).map_or(OTHER, String::as_str)
}

/// The method a call is for (`dsr.v1.DataSubjectRights/GetRequest`, or `_OTHER`), put in the
/// request's extensions so that authentication can name it in its warnings.
#[derive(Debug, Clone, Copy)]
pub struct RpcMethod(pub &'static str);

/// gRPC status code names, as the gRPC spec spells them.
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

/// The codes that mark a server span as failed (OpenTelemetry's gRPC conventions): the
/// server's fault, not the caller's.
fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// One call in flight: its span, and what its metrics need when it ends (on drop).
struct RpcCall {
    span: Span,
    method: &'static str,
    started: Instant,
    code: Option<i32>,
    metrics: Arc<Metrics>,
}

impl RpcCall {
    fn start(path: &str, headers: &HeaderMap, metrics: Arc<Metrics>) -> Self {
        let method = method_of(path);
        let (service, name) = method.split_once('/').unwrap_or((OTHER, OTHER));
        // Health probes and reflection: not worth a span in the traces (and every few seconds).
        let span = if service.starts_with("grpc.") {
            tracing::debug_span!(
                "grpc",
                otel.name = method,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = name,
                rpc.grpc.status_code = Empty,
                otel.status_code = Empty
            )
        } else {
            tracing::info_span!(
                "grpc",
                otel.name = method,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = name,
                rpc.grpc.status_code = Empty,
                otel.status_code = Empty,
                dsr.request_id = Empty,
                dsr.tenant = Empty
            )
        };
        // Fails only when OpenTelemetry is not installed (the application built inside a test).
        let _ = span.set_parent(context_from_headers(headers));
        Self { span, method, started: Instant::now(), code: None, metrics }
    }
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(CANCELLED);
        self.span.record("rpc.grpc.status_code", code);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
        self.metrics.rpc_finished(self.method, code_name(code), self.started.elapsed());
    }
}

/// Wraps the tonic server: one `RpcCall` per request.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let mut call = RpcCall::start(req.uri().path(), req.headers(), self.metrics.clone());
        req.extensions_mut().insert(RpcMethod(call.method));
        let span = call.span.clone();
        // Interceptors (authentication) run inside `call`: inside the span too.
        let response = span.in_scope(|| self.inner.call(req));
        Box::pin(async move {
            let response = response.instrument(span).await?;
            // Trailers-only responses (every error) carry the status in the headers.
            call.code = grpc_status(response.headers());
            Ok(response.map(|inner| tonic::body::Body::new(CallBody { inner, call: Some(call) })))
        })
    }
}

/// The response body: notes the status from the trailers, and ends the call with the body.
struct CallBody {
    inner: tonic::body::Body,
    call: Option<RpcCall>,
}

impl Body for CallBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(call)) = (frame.trailers_ref(), self.call.as_mut()) {
                    call.code = grpc_status(trailers).or(call.code);
                }
            }
            Poll::Ready(None) => drop(self.call.take()),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Records what a handler learnt about the call on its server span (the request it created
/// or acted on, and its tenant), so the trace can be found from a request id.
pub fn record_request(request_id: &str, tenant: &str) {
    let span = Span::current();
    span.record("dsr.request_id", request_id);
    span.record("dsr.tenant", tenant);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_methods_served_here_are_named() {
        assert_eq!(
            method_of("/dsr.v1.DataSubjectRights/SubmitDeletion"),
            "dsr.v1.DataSubjectRights/SubmitDeletion"
        );
        assert_eq!(method_of("/dsr.v1.Audit/VerifyAuditLog"), "dsr.v1.Audit/VerifyAuditLog");
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), "grpc.health.v1.Health/Check");
        for unknown in [
            "/dsr.v1.DataSubjectRights/+14155550100",
            "/",
            "",
            "/x/y",
            "dsr.v1.DataSubjectRights/SubmitDeletion",
        ] {
            assert_eq!(method_of(unknown), "_OTHER", "{unknown}");
        }
    }

    #[test]
    fn status_codes_have_their_spec_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(3), "INVALID_ARGUMENT");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(17), "UNKNOWN");
        assert_eq!(code_name(-1), "UNKNOWN");
        for (code, name) in (0..17).map(|c| (c, code_name(c))) {
            assert_eq!(
                format!("{:?}", tonic::Code::from_i32(code)).to_ascii_uppercase(),
                name.replace('_', "")
            );
        }
    }

    #[test]
    fn only_the_servers_faults_mark_the_span_failed() {
        let failed: Vec<&str> = (0..17).filter(|c| is_server_error(*c)).map(code_name).collect();
        assert_eq!(
            failed,
            ["UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"]
        );
    }
}
