//! An OTLP/gRPC trace receiver inside the test process (opentelemetry-proto's collector
//! service): it keeps every export the service sends, for the test to inspect.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value, AnyValue, KeyValue},
};
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
pub struct Receiver {
    exports: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.exports.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Starts a receiver on a random loopback port; it runs until the test's runtime ends.
pub async fn start() -> (SocketAddr, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (addr, receiver)
}

/// A span as received, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: HashMap<String, Attr>,
    pub resource: HashMap<String, Attr>,
    pub event_names: Vec<String>,
    pub status_code: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
    Other(String),
}

impl Attr {
    pub fn str(&self) -> &str {
        match self {
            Attr::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, Attr> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|AnyValue { value }| value.as_ref()) {
                Some(Value::StringValue(s)) => Attr::Str(s.clone()),
                Some(Value::IntValue(i)) => Attr::Int(*i),
                Some(Value::BoolValue(b)) => Attr::Bool(*b),
                other => Attr::Other(format!("{other:?}")),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

impl Receiver {
    /// Everything received, as the collector got it (for searching whole exports).
    pub fn raw(&self) -> String {
        format!("{:?}", self.exports.lock().unwrap())
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let exports = self.exports.lock().unwrap();
        let mut out = Vec::new();
        for export in exports.iter() {
            for rs in &export.resource_spans {
                let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(ReceivedSpan {
                            name: s.name.clone(),
                            kind: s.kind,
                            trace_id: hex::encode(&s.trace_id),
                            span_id: hex::encode(&s.span_id),
                            parent_span_id: hex::encode(&s.parent_span_id),
                            attributes: attrs(&s.attributes),
                            resource: resource.clone(),
                            event_names: s.events.iter().map(|e| e.name.clone()).collect(),
                            status_code: s.status.as_ref().map_or(0, |st| st.code),
                        });
                    }
                }
            }
        }
        out
    }
}
