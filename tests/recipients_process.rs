//! The recipients' outbox under SIGKILL: the `dsr` binary is killed after the request's stores
//! succeeded and the event was committed, while its webhook call is in flight; after a restart
//! the event is delivered — one event id, received at least once — and the request completes.
//! Also: two servers on one ledger never deliver one event twice at once.

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dsr::api::pb::{self, data_subject_rights_client::DataSubjectRightsClient, OutcomeState, RequestStatus};
use serde_json::Value;
use support::{
    webhook::{Receiver, TEST_SECRET},
    Backend,
};

const BIN: &str = env!("CARGO_BIN_EXE_dsr");

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, db: &str, config: &Path, log: &Path) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(db)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info,h2=info,tower=info,hyper=info,sqlx=warn")
        .stderr(std::fs::File::create(log).unwrap())
        .stdout(Stdio::null());
    if db.starts_with("postgres") {
        cmd.env("DSR_AUDIT_KEY", support::TEST_AUDIT_KEY);
    }
    let mut child = cmd.spawn().expect("start dsr serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("dsr serve exited with {exit}:\n{text}");
        }
        let addr = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("dsr listening")))
            .and_then(|v| v["fields"]["addr"].as_str().map(str::to_owned));
        if let Some(addr) = addr {
            return Server { child, addr: addr.parse().unwrap() };
        }
        assert!(Instant::now() < deadline, "dsr serve did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn seed(dir: &Path, db: &str, subjects: usize) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["seed", "--tenant", "acme", "--subjects", &subjects.to_string(), "--calls", "2"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(db)
        .output()
        .expect("run dsr seed");
    assert!(out.status.success(), "seed failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A webhook recipient, a short delivery lease (a killed server's delivery is resent soon), and
/// a send timeout under it.
fn config(dir: &Path, receiver: &Receiver) -> std::path::PathBuf {
    config_with(dir, receiver, "")
}

/// `config` with more `[recipients]` keys.
fn config_with(dir: &Path, receiver: &Receiver, recipients: &str) -> std::path::PathBuf {
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, TEST_SECRET).unwrap();
    let path = dir.join("dsr.toml");
    std::fs::write(
        &path,
        format!(
            "[engine]\nlease_secs = 2\npoll_interval_ms = 50\nbackoff_base_ms = 10\nbackoff_max_ms = 100\n\
             [recipients]\npoll_interval_ms = 50\nlease_secs = 4\ntimeout_secs = 3\nbackoff_base_ms = 20\nbackoff_max_ms = 200\n{recipients}\n\
             [[catalog]]\nkind = \"recipient\"\nname = \"analytics\"\nhears = [\"deletion\"]\nidentifiers = [\"account_id\"]\n\
             transport = \"webhook\"\nurl = \"{}\"\nsecret_file = \"{}\"\n",
            receiver.url(),
            secret.display()
        ),
    )
    .unwrap();
    path
}

async fn get(addr: SocketAddr, id: &str) -> pb::DsrRequest {
    let mut c = DataSubjectRightsClient::connect(format!("http://{addr}")).await.unwrap();
    c.get_request(pb::GetRequestRequest { id: id.to_owned() }).await.unwrap().into_inner()
}

async fn wait_for(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_server_killed_between_commit_and_delivery_delivers_after_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(backend, dir.path()).await;
    let receiver = Receiver::start().await;
    // The first call never answers: the server is killed while it is in flight.
    receiver.hang_next(1);
    let config = config(dir.path(), &receiver);
    let seeded = seed(dir.path(), &db, 3);
    let mut server = start(dir.path(), &db, &config, &dir.path().join("first.log"));
    let mut c = DataSubjectRightsClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let account = seeded[0]["account_id"].as_str().unwrap().to_owned();
    let id = c
        .submit_deletion(pb::SubmitDeletionRequest {
            subject: Some(pb::Subject {
                tenant_id: "acme".into(),
                account_id: account.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    wait_for("the first delivery attempt", async || !receiver.received().is_empty()).await;
    // Committed: every store ended, the event is in the outbox, the request waits on it.
    let before = get(server.addr, &id).await;
    assert_eq!(before.status, RequestStatus::InProgress as i32, "{before:#?}");
    assert!(before
        .outcomes
        .iter()
        .all(|o| o.state != OutcomeState::Pending as i32 && o.state != OutcomeState::Running as i32));
    assert_eq!(before.recipients[0].state, OutcomeState::Pending as i32);
    server.child.kill().unwrap(); // SIGKILL, mid-send
    server.child.wait().unwrap();
    drop(server);

    let server = start(dir.path(), &db, &config, &dir.path().join("second.log"));
    let mut done = get(server.addr, &id).await;
    wait_for("the request to end", async || {
        done = get(server.addr, &id).await;
        done.status != RequestStatus::InProgress as i32
    })
    .await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let told = &done.recipients[0];
    assert_eq!(told.state, OutcomeState::Done as i32);
    assert_eq!(told.attempts, 2, "the killed attempt, then the resend");
    let received = receiver.received();
    let ids: BTreeSet<_> = received.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([told.event_id.as_str()]), "exactly one event id");
    assert!(!receiver.accepted().is_empty(), "received at least once");
    assert_eq!(receiver.accepted()[0].json()["data"]["subject"]["account_id"], account.as_str());
    // Neither log holds the payload's identifier.
    for log in ["first.log", "second.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        assert!(!text.contains(&account), "{log} holds the account id");
        assert!(text.contains(&told.event_id) || log == "first.log", "{log} names the event id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_between_commit_and_delivery_delivers_after_restart_on_sqlite() {
    a_server_killed_between_commit_and_delivery_delivers_after_restart(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_between_commit_and_delivery_delivers_after_restart_on_postgres() {
    a_server_killed_between_commit_and_delivery_delivers_after_restart(Backend::Postgres).await
}

/// Two replicas on one Postgres ledger, many requests, a slow recipient: every event is received
/// exactly once (no delivery ran twice at once, none was lost), counted by the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_deliver_one_event_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Postgres, dir.path()).await;
    let receiver = Receiver::start().await;
    let config = config(dir.path(), &receiver);
    let seeded = seed(dir.path(), &db, 12);
    let a = start(dir.path(), &db, &config, &dir.path().join("a.log"));
    let b = start(dir.path(), &db, &config, &dir.path().join("b.log"));
    let mut ids = Vec::new();
    for (i, s) in seeded.iter().enumerate() {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let mut c = DataSubjectRightsClient::connect(format!("http://{addr}")).await.unwrap();
        let r = c
            .submit_deletion(pb::SubmitDeletionRequest {
                subject: Some(pb::Subject {
                    tenant_id: "acme".into(),
                    phone: s["phone"].as_str().unwrap().into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(r.id);
    }
    for id in &ids {
        wait_for("every request to end", async || {
            get(a.addr, id).await.status == RequestStatus::Completed as i32
        })
        .await;
    }
    let received = receiver.received();
    let distinct: BTreeSet<_> = received.iter().map(|r| r.id.clone()).collect();
    assert_eq!(distinct.len(), ids.len(), "one event per request");
    assert_eq!(received.len(), ids.len(), "no event was sent twice: {received:?}");
    let mut sent_by = [0usize; 2];
    for (i, log) in ["a.log", "b.log"].iter().enumerate() {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        sent_by[i] = text.matches("recipient acknowledged").count();
    }
    assert_eq!(sent_by[0] + sent_by[1], ids.len(), "acknowledgements by replica: {sent_by:?}");
    eprintln!("deliveries by replica: {sent_by:?} of {}", ids.len());
}

/// `dsr recipients retry` re-drives a delivery that was given up, and `dsr status` shows the
/// recipient's outcome under the stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsr_recipients_retry_redrives_a_given_up_delivery_and_dsr_status_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let receiver = Receiver::start().await;
    receiver.fail_next(1000, 410);
    let config = config_with(dir.path(), &receiver, "permanent_failures = 1");
    let seeded = seed(dir.path(), &db, 1);
    let server = start(dir.path(), &db, &config, &dir.path().join("serve.log"));
    let mut c = DataSubjectRightsClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let id = c
        .submit_deletion(pb::SubmitDeletionRequest {
            subject: Some(pb::Subject {
                tenant_id: "acme".into(),
                phone: seeded[0]["phone"].as_str().unwrap().into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    wait_for("the give-up", async || get(server.addr, &id).await.status == RequestStatus::Failed as i32)
        .await;
    receiver.fail_next(0, 410);

    let out = Command::new(BIN)
        .args(["recipients", "retry", "--recipient", "analytics"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--database-url")
        .arg(&db)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "1 deliveries queued again");
    wait_for("the delivery", async || get(server.addr, &id).await.status == RequestStatus::Completed as i32)
        .await;

    let out = Command::new(BIN)
        .args(["status", &id])
        .env("DSR_SERVER", format!("http://{}", server.addr))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line =
        text.lines().find(|l| l.trim_start().starts_with("analytics")).unwrap_or_else(|| panic!("{text}"));
    let event_id = &get(server.addr, &id).await.recipients[0].event_id;
    assert!(line.contains("DONE") && line.contains(event_id.as_str()), "{text}");
    assert!(text.contains("RECIPIENT"), "{text}");
}
