//! W3C trace context: the `traceparent` of an incoming call, and the one stored with a request
//! so the workers' spans join the trace of the call that submitted it.
//!
//! Only `traceparent` is read. `tracestate` (and baggage) are the caller's free-form data: they
//! are neither kept nor exported, so nothing a caller puts there can reach a collector.
use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::TraceContextExt,
    Context,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";

/// Reads only the `traceparent` of a carrier.
struct OnlyTraceparent<'a>(Option<&'a str>);

impl Extractor for OnlyTraceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.map(|_| vec![TRACEPARENT]).unwrap_or_default()
    }
}

/// The remote parent a `traceparent` value names; an empty context when it is missing or not a
/// valid W3C `traceparent` (the span then starts a trace of its own).
pub fn context_from_traceparent(traceparent: Option<&str>) -> Context {
    TraceContextPropagator::new().extract(&OnlyTraceparent(traceparent.filter(|t| well_formed(t))))
}

/// `version-traceid-parentid-flags` in lower-case hex of exactly 2, 32, 16 and 2 digits (a later
/// version may append fields). The SDK's parser also takes `+` signs and short ids.
fn well_formed(traceparent: &str) -> bool {
    let mut parts = traceparent.trim().split('-');
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    [2, 32, 16, 2].iter().all(|len| parts.next().is_some_and(|p| hex(p, *len)))
}

/// The parent named by a call's `traceparent` metadata (gRPC metadata are HTTP/2 headers).
pub fn context_from_headers(headers: &http::HeaderMap) -> Context {
    context_from_traceparent(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()))
}

/// The `traceparent` of a context's span, if it has a valid one.
pub fn traceparent_of(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// The `traceparent` of the current tracing span (the RPC's server span inside a handler);
/// `None` when OpenTelemetry is not installed (tests that build the application in process).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current().context())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_names_a_remote_sampled_parent_and_round_trips() {
        let cx = context_from_traceparent(Some(TP));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id(), TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
        assert_eq!(sc.span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert_eq!(traceparent_of(&cx).as_deref(), Some(TP));
    }

    #[test]
    fn an_unsampled_parent_stays_unsampled() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(traceparent_of(&context_from_traceparent(Some(tp))).as_deref(), Some(tp));
    }

    #[test]
    fn anything_but_a_valid_traceparent_means_no_parent() {
        for bad in [
            "",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",    // no flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // version 00 has 4 parts
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
            "00-+14155550100-00f067aa0ba902b7-01",
        ] {
            let cx = context_from_traceparent(Some(bad));
            assert!(!cx.span().span_context().is_valid(), "{bad:?} was accepted");
            assert_eq!(traceparent_of(&cx), None, "{bad:?}");
        }
        assert!(!context_from_traceparent(None).span().span_context().is_valid());
    }

    #[test]
    fn the_callers_tracestate_is_neither_read_nor_passed_on() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", TP.parse().unwrap());
        headers.insert("tracestate", "vendor=someone@example.com".parse().unwrap());
        let cx = context_from_headers(&headers);
        assert_eq!(cx.span().span_context().trace_state(), &TraceState::default());
        assert_eq!(traceparent_of(&cx).as_deref(), Some(TP));
    }

    #[test]
    fn a_local_span_context_is_written_as_a_version_00_traceparent() {
        let sc = SpanContext::new(
            TraceId::from(0xabc),
            SpanId::from(0x1),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc);
        assert_eq!(
            traceparent_of(&cx).as_deref(),
            Some("00-00000000000000000000000000000abc-0000000000000001-01")
        );
    }
}
