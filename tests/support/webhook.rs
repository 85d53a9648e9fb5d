//! A webhook receiver for tests, written as a recipient's would be after the Standard Webhooks
//! convention: it verifies the signature, refuses a timestamp outside the tolerance, and refuses
//! an id it has already accepted (a replay). It can be told to fail (answer 503 or 400) or to
//! hang (never answer) for a while, and records everything it was sent.
#![allow(dead_code)]

use std::{
    collections::HashSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

pub const TEST_SECRET: &str = "whsec_dGVzdC1zZWNyZXQtZm9yLWRzci13ZWJob29rcw==";

/// One message as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Default)]
struct State {
    /// Answer this status to the next `fail_next` messages (without accepting them).
    fail_next: usize,
    fail_status: u16,
    /// Never answer the next `hang_next` messages.
    hang_next: usize,
    seen: HashSet<String>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Notified on every message.
    pub arrived: Arc<Notify>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let arrived = Arc::new(Notify::new());
        let (s, a) = (state.clone(), arrived.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (s, a) = (s.clone(), a.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, s.clone(), a.clone()));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { addr, state, arrived }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/dsr", self.addr)
    }

    /// The next `n` messages are answered `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut s = self.state.lock().unwrap();
        s.fail_next = n;
        s.fail_status = status;
    }

    /// The next `n` messages are never answered.
    pub fn hang_next(&self, n: usize) {
        self.state.lock().unwrap().hang_next = n;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Messages it accepted (answered 2xx).
    pub fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.status < 300).collect()
    }

    /// Sends a message as given (a replay, or a forgery) and returns the receiver's answer.
    pub async fn post(&self, id: &str, timestamp: &str, signature: &str, body: &[u8]) -> u16 {
        dsr::startup::install_crypto_provider();
        reqwest::Client::new()
            .post(self.url())
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header =
        |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (id, timestamp, signature) =
        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let key = dsr::recipients::signature::secret_key(TEST_SECRET).unwrap();
    let now = chrono::Utc::now().timestamp();
    let hang;
    let status = {
        let mut s = state.lock().unwrap();
        hang = s.hang_next > 0;
        let status = if hang {
            s.hang_next -= 1;
            0
        } else if s.fail_next > 0 {
            s.fail_next -= 1;
            s.fail_status
        } else {
            match dsr::recipients::signature::verify(&key, &id, &timestamp, &signature, &body, now) {
                Err(dsr::recipients::signature::SignatureError::Stale) => 400,
                Err(_) => 401,
                // A replay of an id already accepted: refused (a real receiver would answer 2xx
                // and do nothing; refusing makes the test's replay visible).
                Ok(()) if s.seen.contains(&id) => 409,
                Ok(()) => {
                    s.seen.insert(id.clone());
                    204
                }
            }
        };
        s.received.push(Received { id, timestamp, signature, body, status });
        status
    };
    arrived.notify_waiters();
    if hang {
        std::future::pending::<()>().await;
    }
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    Ok(res)
}
