//! `/metrics` from the ledger: the deadline gauges as a request's deadline nears and passes (on
//! a manual clock), the queue, and the counters of what this process did.
use std::net::SocketAddr;

use chrono::{Duration, Utc};
use dsr::{
    api::pb::{self, Regime},
    clock::{ManualClock, SharedClock},
    startup::Overrides,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{both, helpers::*};

pub(crate) async fn scrape(addr: SocketAddr) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{head}");
    body.to_owned()
}

pub(crate) fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from\n{metrics}"))
}

async fn the_deadline_gauges_follow_requests_as_their_deadlines_near_and_pass(backend: Backend) {
    let clock = ManualClock::new(Utc::now());
    let config = format!("{TEST_CONFIG}\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let overrides =
        Overrides { clock: Some(clock.clone() as SharedClock), paused_engine: true, ..Default::default() };
    let app = spawn_app_with(backend, &config, overrides).await;
    let metrics = app.metrics.expect("metrics endpoint");
    let seeded = app.seed("acme", 2, 1).await;
    // Due in 30 days (GDPR) and in 45 (CCPA); the engine is paused, so both stay pending.
    let submit = |i: usize, regime: Regime| {
        let subject = by_phone("acme", &seeded[i].phone);
        let mut c = app.client.clone();
        async move {
            c.submit_deletion(pb::SubmitDeletionRequest {
                subject: Some(subject),
                regime: regime as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    submit(0, Regime::Gdpr).await;
    let ccpa = submit(1, Regime::Ccpa).await;

    let pending = "{kind=\"deletion\",status=\"pending\"}";
    let soon = |days: u32| {
        format!("dsr_requests_due_soon{{kind=\"deletion\",status=\"pending\",within_days=\"{days}\"}}")
    };
    let past = format!("dsr_requests_past_deadline{pending}");

    let m = scrape(metrics).await;
    assert_eq!(value(&m, "dsr_ledger_up"), 1.0);
    assert_eq!(value(&m, &format!("dsr_requests_outstanding{pending}")), 2.0);
    assert_eq!(value(&m, &past), 0.0);
    assert_eq!(value(&m, &soon(7)), 0.0);
    assert_eq!(value(&m, "dsr_requests_submitted_total{kind=\"deletion\"}"), 2.0);
    // Stage 0 stores are due now; call_logs waits behind them.
    assert_eq!(value(&m, "dsr_queue_depth{store=\"accounts\"}"), 2.0);
    assert_eq!(value(&m, "dsr_queue_depth{store=\"call_logs\"}"), 0.0);
    assert_eq!(value(&m, "dsr_tasks_open{store=\"call_logs\",state=\"pending\"}"), 2.0);

    // Five days before the GDPR deadline: due within 7 days, not within 1.
    clock.advance(Duration::days(25));
    let m = scrape(metrics).await;
    assert_eq!(value(&m, &soon(7)), 1.0);
    assert_eq!(value(&m, &soon(1)), 0.0);
    assert_eq!(value(&m, &past), 0.0);

    // An hour past it: the number a privacy team pages on.
    clock.advance(Duration::days(5) + Duration::hours(1));
    let m = scrape(metrics).await;
    assert_eq!(value(&m, &past), 1.0);
    assert_eq!(value(&m, &soon(7)), 0.0, "the CCPA request is 15 days away");
    let waited = (Duration::days(30) + Duration::hours(1)).num_seconds() as f64;
    assert_eq!(value(&m, "dsr_queue_oldest_age_seconds{store=\"accounts\"}"), waited);

    // Cancelling (nothing runs) ends the request at once.
    app.client.clone().cancel_request(pb::CancelRequestRequest { id: ccpa.id.clone() }).await.unwrap();
    let m = scrape(metrics).await;
    assert_eq!(value(&m, "dsr_requests_ended_total{kind=\"deletion\",status=\"cancelled\"}"), 1.0);
    assert_eq!(value(&m, &format!("dsr_requests_outstanding{pending}")), 1.0);
    assert!(!m.contains(&ccpa.id) && !m.contains("acme"), "no request ids or tenants in labels");
    for s in &seeded {
        assert!(!m.contains(&s.phone) && !m.contains(&s.email), "no identifiers in the metrics");
    }
    app.shutdown().await;
}
both!(the_deadline_gauges_follow_requests_as_their_deadlines_near_and_pass);
