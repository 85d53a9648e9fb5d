//! The `/metrics` endpoint: plain HTTP/1.1 on hyper (already in the tree through tonic), one
//! route. A scrape reads the ledger, so scrapes run one at a time and connections are bounded:
//! a misbehaving scraper cannot turn the endpoint into load on the database.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Mutex, Semaphore},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{LedgerGauges, Metrics};
use crate::{clock::SharedClock, ledger::Ledger};

/// OpenMetrics text, for scrapers that ask for it (Prometheus does, first in its `Accept`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format 0.0.4, for everyone else (curl, promtool, older scrapers).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const MAX_CONNECTIONS: usize = 16;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a scrape reads.
struct Source {
    metrics: Arc<Metrics>,
    ledger: Ledger,
    clock: SharedClock,
    stores: Vec<String>,
    /// One scrape at a time reads the ledger.
    scraping: Mutex<()>,
}

pub struct MetricsEndpoint {
    listener: TcpListener,
    source: Arc<Source>,
}

impl MetricsEndpoint {
    /// Binds now, so a taken port fails the start instead of a later scrape.
    pub async fn bind(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        ledger: Ledger,
        clock: SharedClock,
        stores: Vec<String>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!(
                "binding the metrics endpoint {addr} (choose another with [metrics] listen, \
                 --metrics-listen or DSR_METRICS_LISTEN, or turn it off with \"off\")"
            )
        })?;
        let source = Arc::new(Source { metrics, ledger, clock, stores, scraping: Mutex::new(()) });
        Ok(Self { listener, source })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves scrapes until `stop`.
    pub async fn serve_until_stopped(self, stop: CancellationToken) {
        info!(addr = %self.local_addr(), "metrics endpoint listening on /metrics");
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!("metrics endpoint: too many connections; closing one");
                continue;
            };
            let (source, stop) = (self.source.clone(), stop.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req| respond(source.clone(), req));
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = conn => if let Err(e) = r { debug!(error = %e, "metrics endpoint: connection ended") },
                }
            });
        }
    }
}

async fn respond(source: Arc<Source>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
            let text = source.render().await;
            if super::format::wants_openmetrics(accept) {
                reply(StatusCode::OK, CONTENT_TYPE, text)
            } else {
                reply(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, super::format::to_prometheus_text(&text))
            }
        }
        (_, "/metrics") => {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into());
            r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: metrics are served at /metrics\n".into()),
    })
}

impl Source {
    async fn render(&self) -> String {
        let gauges = {
            let _one_at_a_time = self.scraping.lock().await;
            LedgerGauges::read(&self.ledger, &self.stores, self.clock.now()).await
        };
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = self.metrics.encode(&mut out);
        let _ = LedgerGauges::encode(gauges.as_ref(), &mut out);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}
