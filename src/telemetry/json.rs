//! JSON log lines with the OpenTelemetry `trace_id` and `span_id` of the span they were logged
//! in, so a line found in the logs leads to its trace and back.
use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use opentelemetry::trace::TraceContextExt;
use tracing::{dispatcher::WeakDispatch, Dispatch, Event, Subscriber};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    layer::Layer,
    registry::LookupSpan,
};

/// The subscriber as installed: the OpenTelemetry data of a span is reached through it.
#[derive(Clone, Default)]
pub(super) struct DispatchCell(Arc<OnceLock<WeakDispatch>>);

/// Fills a `DispatchCell` when the subscriber is installed; does nothing else.
pub(super) struct CaptureDispatch(pub(super) DispatchCell);

impl<S: Subscriber> Layer<S> for CaptureDispatch {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.0 .0.set(subscriber.downgrade());
    }
}

/// Wraps a JSON event format (one object per line) and adds `trace_id` and `span_id` when the
/// event happened inside a span OpenTelemetry knows.
pub(super) struct WithTraceIds<F> {
    pub(super) inner: F,
    pub(super) dispatch: DispatchCell,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(ids) = self.ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&add_ids(&line, &ids))
    }
}

impl<F> WithTraceIds<F> {
    /// The ids of the innermost span of the event that OpenTelemetry tracks.
    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let dispatch = self.dispatch.0.get()?.upgrade()?;
        ctx.event_scope()?.find_map(|span| {
            let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let otel_span = cx.span();
            let sc = otel_span.span_context();
            sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
        })
    }
}

/// Inserts the ids as the last fields of a one-line JSON object.
fn add_ids(line: &str, (trace_id, span_id): &(String, String)) -> String {
    let body = line.trim_end();
    match body.strip_suffix('}') {
        Some(open) => {
            let sep = if open.trim_end().ends_with('{') { "" } else { "," };
            format!("{open}{sep}\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}\n")
        }
        // Not an object: leave the line as it is.
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_the_last_fields_of_the_object() {
        let ids = ("4bf92f3577b34da6a3ce929d0e0e4736".to_owned(), "00f067aa0ba902b7".to_owned());
        let line = "{\"level\":\"INFO\",\"fields\":{\"message\":\"hi\"}}\n";
        let out = add_ids(line, &ids);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["trace_id"], ids.0);
        assert_eq!(v["span_id"], ids.1);
        assert_eq!(v["fields"]["message"], "hi");
        assert!(out.ends_with("}\n") && out.lines().count() == 1);
        assert_eq!(
            add_ids("{}\n", &ids),
            format!("{{\"trace_id\":\"{}\",\"span_id\":\"{}\"}}\n", ids.0, ids.1)
        );
        assert_eq!(add_ids("not json\n", &ids), "not json\n");
    }
}
