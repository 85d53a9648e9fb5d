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
    scrape_accepting(addr, None).await.1
}

/// A scrape with an `Accept` header (or none): the response's head and body.
async fn scrape_accepting(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    conn.write_all(format!("GET /metrics HTTP/1.0\r\n{accept}\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{head}");
    (head.to_ascii_lowercase(), body.to_owned())
}

/// `promtool check metrics` (the `prometheus` package) over `text`: (passed, what it said).
fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is not installed: `apt-get install prometheus` (scripts/test.sh does it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// After a deletion (so every counter and histogram has samples), the exposition passes
/// Prometheus' own linter, and the format follows the scraper's `Accept`.
async fn the_exposition_passes_promtool_and_follows_content_negotiation(backend: Backend) {
    let config = format!("{TEST_CONFIG}\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let app = spawn_app_with(backend, &config, Overrides::default()).await;
    let metrics = app.metrics.expect("metrics endpoint");
    let seeded = app.seed("acme", 1, 1).await;
    let r = app.delete(by_phone("acme", &seeded[0].phone)).await;
    app.wait_terminal(&r.id).await;

    let (head, text) = scrape_accepting(metrics, None).await;
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(!text.contains("# EOF"), "{text}");
    assert!(text.contains("# HELP dsr_requests_ended_total "), "{text}");
    let (passed, said) = promtool_check(&text);
    assert!(passed && said.trim().is_empty(), "promtool check metrics:\n{said}\n{text}");

    // What Prometheus sends: OpenMetrics first.
    let prometheus =
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                      text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (head, om) = scrape_accepting(metrics, Some(prometheus)).await;
    assert!(head.contains("content-type: application/openmetrics-text; version=1.0.0"), "{head}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE dsr_requests_ended counter"), "{om}");
    let (_, plain) = scrape_accepting(metrics, Some("text/plain;version=0.0.4")).await;
    assert!(plain.contains("# TYPE dsr_requests_ended_total counter"), "{plain}");
    app.shutdown().await;
}
both!(the_exposition_passes_promtool_and_follows_content_negotiation);

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
