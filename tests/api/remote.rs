//! Remote stores over gRPC (`[[catalog]] kind = "grpc"`): the example voicemail adapter takes
//! part in deletion, export and rectification end to end on both ledger backends, judged by
//! reading the adapter's own database; the conformance check passes it and names the rule a
//! broken adapter breaks; and the failures an adapter can inflict (a hang, garbage, a crash
//! mid-erase, an answer for another tenant, personal data in its errors) end as the contract says.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use dsr::{
    adapter::{
        check::{self, CheckOptions},
        pb::{self as apb, store_adapter_server::StoreAdapter as AdapterService},
        voicemail::{self, SeenCall, Voicemail, VoicemailAdapter},
    },
    api::pb::{self, OutcomeState, RequestStatus},
    seed::SeededSubject,
    startup::Overrides,
    stores::{CallContext, StoreAdapter as _},
};
use tonic::{Request, Response, Status};

use crate::{
    both,
    export::{records, unzip},
    helpers::*,
    support,
};

/// An adapter served on a runtime of its own, so that killing it closes its connections the
/// way a crashed process would.
struct AdapterProcess {
    addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl AdapterProcess {
    fn start<S: AdapterService>(addr: SocketAddr, service: S) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        // SO_REUSEADDR: a restarted adapter binds its old port despite the killed one's
        // connections in TIME_WAIT (the killed listener may take a moment to close).
        let listener = {
            let _in_rt = rt.enter();
            let mut tries = 0;
            loop {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                match socket.bind(addr).and_then(|()| socket.listen(128)) {
                    Ok(l) => break l,
                    Err(_) if tries < 50 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("bind the adapter's port: {e}"),
                }
            }
        };
        let addr = listener.local_addr().unwrap();
        rt.spawn(voicemail::serve(listener, service, None, std::future::pending()));
        Self { addr, rt: Some(rt) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the adapter: every task and connection of its runtime ends at once.
    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for AdapterProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a deliberately faulty adapter does wrong (everything else it passes to the example).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Erase answers without erasing anything.
    EraseDoesNothing,
    /// The first Erase never answers.
    FirstEraseHangs,
    /// The first Erase waits to be killed.
    FirstEraseStalls,
    /// Erase answers for another tenant.
    ForeignTenant,
    /// Erase answers with a retention that has no date (a broken answer).
    Garbage,
    /// Erase fails with a message that quotes the caller's phone and email.
    PersonalError,
}

#[derive(Clone)]
struct Faulty {
    inner: VoicemailAdapter,
    fault: Fault,
    erases: Arc<Mutex<Vec<(String, u32)>>>,
    stalled: Arc<tokio::sync::Notify>,
}

impl Faulty {
    fn new(inner: VoicemailAdapter, fault: Fault) -> Self {
        Self { inner, fault, erases: Arc::default(), stalled: Arc::default() }
    }
}

#[tonic::async_trait]
impl AdapterService for Faulty {
    async fn describe(
        &self,
        r: Request<apb::DescribeRequest>,
    ) -> Result<Response<apb::DescribeResponse>, Status> {
        self.inner.describe(r).await
    }
    async fn preview(
        &self,
        r: Request<apb::PreviewRequest>,
    ) -> Result<Response<apb::PreviewResponse>, Status> {
        self.inner.preview(r).await
    }
    async fn erase(&self, r: Request<apb::EraseRequest>) -> Result<Response<apb::EraseResponse>, Status> {
        let c = r.get_ref().context.clone().unwrap_or_default();
        let first = {
            let mut e = self.erases.lock().unwrap();
            e.push((c.task_id.clone(), c.attempt));
            e.len() == 1
        };
        match self.fault {
            Fault::EraseDoesNothing => {
                return Ok(Response::new(apb::EraseResponse {
                    tenant_id: c.tenant_id,
                    affected: r.get_ref().keys.len() as u64,
                    ..Default::default()
                }))
            }
            Fault::FirstEraseHangs if first => tokio::time::sleep(Duration::from_secs(30)).await,
            Fault::FirstEraseStalls if first => {
                self.stalled.notify_one();
                std::future::pending::<()>().await;
            }
            Fault::ForeignTenant => {
                return Ok(Response::new(apb::EraseResponse {
                    tenant_id: "globex".into(),
                    ..Default::default()
                }))
            }
            Fault::Garbage => {
                return Ok(Response::new(apb::EraseResponse {
                    tenant_id: c.tenant_id,
                    retained: Some(apb::Retention { basis: "legal_obligation".into(), until: None }),
                    ..Default::default()
                }))
            }
            Fault::PersonalError => {
                let res = r.get_ref().resolution.clone().unwrap_or_default();
                return Err(Status::unavailable(format!(
                    "no mailbox for {} <{}>",
                    res.phones.join(","),
                    res.emails.join(",")
                )));
            }
            _ => {}
        }
        self.inner.erase(r).await
    }
    async fn verify(&self, r: Request<apb::VerifyRequest>) -> Result<Response<apb::VerifyResponse>, Status> {
        if self.fault == Fault::EraseDoesNothing {
            let c = r.get_ref().context.clone().unwrap_or_default();
            return Ok(Response::new(apb::VerifyResponse { tenant_id: c.tenant_id, ..Default::default() }));
        }
        self.inner.verify(r).await
    }
    type ExportStream = <VoicemailAdapter as AdapterService>::ExportStream;
    async fn export(&self, r: Request<apb::ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        self.inner.export(r).await
    }
    async fn rectify(
        &self,
        r: Request<apb::RectifyRequest>,
    ) -> Result<Response<apb::RectifyResponse>, Status> {
        self.inner.rectify(r).await
    }
    async fn list_expired(
        &self,
        r: Request<apb::ListExpiredRequest>,
    ) -> Result<Response<apb::ListExpiredResponse>, Status> {
        self.inner.list_expired(r).await
    }
    async fn erase_keys(
        &self,
        r: Request<apb::EraseKeysRequest>,
    ) -> Result<Response<apb::EraseKeysResponse>, Status> {
        self.inner.erase_keys(r).await
    }
}

async fn voicemail_db(dir: &std::path::Path) -> VoicemailAdapter {
    VoicemailAdapter::open(&dsr::db::sqlite_url(&dir.join("voicemail.db"))).await.unwrap()
}

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(url: &str, extra: &str) -> String {
    config_on(TEST_CONFIG, url, extra)
}

/// The catalog entry after `base` (whose last table is `[engine]`); `extra` adds to the entry.
fn config_on(base: &str, url: &str, extra: &str) -> String {
    format!(
        "{base}
[[catalog]]
kind = \"grpc\"
name = \"voicemail\"
url = \"{url}\"
timeout_ms = 1000
concurrency = 2
holds = [\"phone\", \"email\"]
link_store = \"call_logs\"
{extra}"
    )
}

async fn app_with_adapter(backend: Backend, url: &str, extra: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(backend, dir.path()).await;
    let settings = support::settings(dir.path(), db, None, &config(url, extra));
    spawn_on(settings, dir, Overrides::default()).await
}

/// Two voicemails of the subject (one on their call, one by email only), and one of another
/// tenant's caller with the same phone.
async fn leave_voicemails(app: &TestApp, vm: &VoicemailAdapter, s: &SeededSubject, tag: &str) {
    let call: String =
        sqlx::query_scalar("SELECT id FROM call_logs WHERE tenant_id = $1 AND account_id = $2 LIMIT 1")
            .bind(&s.tenant_id)
            .bind(&s.account_id)
            .fetch_one(app.db.pool())
            .await
            .unwrap();
    for (id, tenant, call, phone, email) in [
        (format!("{tag}-1"), s.tenant_id.as_str(), Some(call), Some(s.phone.clone()), None),
        (format!("{tag}-2"), s.tenant_id.as_str(), None, None, Some(s.email.to_lowercase())),
        (format!("{tag}-other"), "globex", None, Some(s.phone.clone()), None),
    ] {
        vm.insert(&Voicemail {
            id,
            tenant_id: tenant.into(),
            call_id: call,
            caller_phone: phone,
            caller_email: email,
            caller_name: Some("Caller".into()),
            transcript: "Hi, it's me again, call me back.".into(),
            audio: vec![7u8; 300],
            received_at_ms: chrono::Utc::now().timestamp_millis(),
        })
        .await
        .unwrap();
    }
}

async fn voicemail_rows(vm: &VoicemailAdapter) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as("SELECT id, tenant_id, caller_phone FROM voicemails ORDER BY id")
        .fetch_all(vm.db().pool())
        .await
        .unwrap()
}

async fn a_remote_store_takes_part_in_deletion_export_and_rectification(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let vm = voicemail_db(dir.path()).await;
    let adapter = AdapterProcess::start(any_addr(), vm.clone());
    let app = app_with_adapter(backend, &adapter.url(), "").await;
    let acme = app.seed("acme", 3, 2).await;
    for (i, s) in acme.iter().enumerate() {
        leave_voicemails(&app, &vm, s, &format!("vm{i}")).await;
    }

    // Deletion of subject 0: their two voicemails go; nobody else's.
    let req = app.delete(by_phone("acme", &acme[0].phone)).await;
    let done = app.wait_terminal(&req.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:?}");
    let o = outcome(&done, "voicemail");
    assert_eq!(
        (o.state, o.records_found, o.records_affected, o.verified, o.attempts),
        (OutcomeState::Done as i32, 2, 2, true, 1),
        "{o:?}"
    );
    let left: Vec<String> = voicemail_rows(&vm).await.into_iter().map(|r| r.0).collect();
    assert_eq!(left, ["vm0-other", "vm1-1", "vm1-2", "vm1-other", "vm2-1", "vm2-2", "vm2-other"]);
    let erases: Vec<SeenCall> = vm.seen().into_iter().filter(|c| c.rpc == "Erase").collect();
    assert_eq!(erases.len(), 1);
    assert!(!erases[0].task_id.is_empty() && erases[0].attempt == 1, "{erases:?}");

    // Export of subject 1: their voicemails' records and audio are in the archive.
    let req = app.export(by_phone("acme", &acme[1].phone), pb::Regime::Gdpr).await;
    let done = app.wait_terminal(&req.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:?}");
    let files = unzip(&app.download(&req.id, 0).await.unwrap());
    let ids: Vec<String> =
        records(&files, "voicemail.json").iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["vm1-1", "vm1-2"]);
    let audio: Vec<&String> = files.keys().filter(|k| k.starts_with("voicemail/")).collect();
    assert_eq!(audio.len(), 2, "{:?}", files.keys().collect::<Vec<_>>());
    assert!(audio.iter().all(|k| files[*k] == vec![7u8; 300]));

    // Rectification of subject 2's phone: their voicemail now holds the new one.
    let new_phone = "+15557770002";
    let req = app
        .client
        .clone()
        .submit_rectification(pb::SubmitRectificationRequest {
            subject: Some(by_phone("acme", &acme[2].phone)),
            corrections: Some(pb::Corrections { phone: Some(new_phone.into()), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = app.wait_terminal(&req.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:?}");
    let o = outcome(&done, "voicemail");
    assert_eq!((o.state, o.records_affected, o.verified), (OutcomeState::Done as i32, 1, true), "{o:?}");
    let rows = voicemail_rows(&vm).await;
    let phone_of = |id: &str| rows.iter().find(|r| r.0 == id).unwrap().2.clone();
    assert_eq!(phone_of("vm2-1").as_deref(), Some(new_phone));
    assert_eq!(
        phone_of("vm2-other").as_deref(),
        Some(acme[2].phone.as_str()),
        "another tenant's is untouched"
    );
}
both!(a_remote_store_takes_part_in_deletion_export_and_rectification);

/// A remote store with a retention period: the sweep lists its expired records (`ListExpired`)
/// in every tenant the other stores hold and erases them (`EraseKeys`); recent ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_sweep_reaches_a_remote_store() {
    let dir = tempfile::tempdir().unwrap();
    let vm = voicemail_db(dir.path()).await;
    let adapter = AdapterProcess::start(any_addr(), vm.clone());
    let app = app_with_adapter(Backend::Sqlite, &adapter.url(), "retention_days = 30\n").await;
    let s = app.seed("acme", 1, 2).await.remove(0);
    leave_voicemails(&app, &vm, &s, "vm0").await;
    vm.insert(&Voicemail {
        id: "vm-old".into(),
        tenant_id: "acme".into(),
        call_id: None,
        caller_phone: Some(s.phone.clone()),
        caller_email: None,
        caller_name: None,
        transcript: "An old message.".into(),
        audio: vec![1u8; 10],
        received_at_ms: (chrono::Utc::now() - chrono::Duration::days(45)).timestamp_millis(),
    })
    .await
    .unwrap();
    app.sweep().await;
    let left: Vec<String> = voicemail_rows(&vm).await.into_iter().map(|r| r.0).collect();
    assert_eq!(left, ["vm0-1", "vm0-2", "vm0-other"], "only the 45-day-old voicemail went");
    let calls: Vec<&str> = vm.seen().into_iter().map(|c| c.rpc).collect();
    assert!(calls.contains(&"ListExpired") && calls.contains(&"EraseKeys"), "{calls:?}");
}

/// A remote store that takes part in deletions only: an export's outcome for it is SKIPPED, and
/// the adapter is not asked for the person's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_store_left_out_of_a_kind_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let vm = voicemail_db(dir.path()).await;
    let adapter = AdapterProcess::start(any_addr(), vm.clone());
    let app = app_with_adapter(Backend::Sqlite, &adapter.url(), "requests = [\"deletion\"]\n").await;
    let s = app.seed("acme", 1, 2).await.remove(0);
    leave_voicemails(&app, &vm, &s, "vm0").await;
    let r = app.export(by_phone("acme", &s.phone), pb::Regime::Gdpr).await;
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:?}");
    assert_eq!(outcome(&done, "voicemail").state, OutcomeState::Skipped as i32, "{done:?}");
    assert!(!vm.seen().iter().any(|c| c.rpc == "Export"), "the adapter was not asked to export");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_adapter_passes_the_conformance_check_and_a_broken_one_fails_by_rule() {
    let dir = tempfile::tempdir().unwrap();
    let good = voicemail_db(dir.path()).await;
    good.insert_check_fixture().await.unwrap();
    let adapter = AdapterProcess::start(any_addr(), good);
    let results = check::run(CheckOptions::for_fixture(&adapter.url())).await;
    let table = check::table(&results);
    println!("{table}");
    assert!(results.iter().all(|r| r.passed), "{table}");
    assert_eq!(results.len(), check::RULES.len());

    let other = tempfile::tempdir().unwrap();
    let broken_vm = voicemail_db(other.path()).await;
    broken_vm.insert_check_fixture().await.unwrap();
    let broken = AdapterProcess::start(any_addr(), Faulty::new(broken_vm, Fault::EraseDoesNothing));
    let results = check::run(CheckOptions::for_fixture(&broken.url())).await;
    let table = check::table(&results);
    println!("{table}");
    let failed: Vec<&str> = results.iter().filter(|r| !r.passed).map(|r| r.rule).collect();
    assert!(failed.contains(&"preview -> erase -> verify"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsr_adapter_check_runs_against_the_built_example_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut adapter = tokio::process::Command::new(env!("CARGO_BIN_EXE_dsr-voicemail-adapter"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--demo-data", "--database"])
        .arg(dir.path().join("vm.db"))
        .env("VOICEMAIL_ADAPTER_TOKEN", "s3cret-adapter-token")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    // Ready when it accepts connections.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dsr"))
        .args(["adapter", "check", &url, "--token", "s3cret-adapter-token"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("13 rule(s), 0 failed"), "{stdout}");
    // Without the token, the adapter refuses every call: the check fails, non-zero.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dsr"))
        .args(["adapter", "check", &url])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("describe"));
    adapter.kill().await.ok();
}

/// The subject's request with the faulty adapter, to its end.
async fn delete_with(fault: Fault, extra: &str) -> (pb::DsrRequest, Faulty, SeededSubject) {
    let dir = tempfile::tempdir().unwrap();
    let vm = voicemail_db(dir.path()).await;
    let faulty = Faulty::new(vm.clone(), fault);
    let adapter = AdapterProcess::start(any_addr(), faulty.clone());
    let app = app_with_adapter(Backend::Sqlite, &adapter.url(), extra).await;
    let s = app.seed("acme", 1, 1).await.remove(0);
    leave_voicemails(&app, &vm, &s, "vm").await;
    let req = app.delete(by_phone("acme", &s.phone)).await;
    let done = app.wait_terminal(&req.id).await;
    drop(adapter);
    (done, faulty, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_hangs_times_out_and_the_retry_finishes() {
    let (done, faulty, _) = delete_with(Fault::FirstEraseHangs, "").await;
    let o = outcome(&done, "voicemail");
    assert_eq!((o.state, o.attempts, o.verified), (OutcomeState::Done as i32, 2, true), "{o:?}");
    let erases = faulty.erases.lock().unwrap().clone();
    assert_eq!(erases.iter().map(|e| e.1).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(erases[0].0, erases[1].0, "the retry is the same task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_answering_garbage_fails_fatally_with_a_clear_message() {
    let (done, _, _) = delete_with(Fault::Garbage, "").await;
    let o = outcome(&done, "voicemail");
    assert_eq!((o.state, o.attempts), (OutcomeState::Failed as i32, 1), "{o:?}");
    assert!(
        o.last_error.contains("voicemail adapter's Erase answer breaks the contract"),
        "{}",
        o.last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_answering_for_another_tenant_is_refused() {
    let (done, _, _) = delete_with(Fault::ForeignTenant, "").await;
    let o = outcome(&done, "voicemail");
    assert_eq!((o.state, o.attempts), (OutcomeState::Failed as i32, 1), "{o:?}");
    assert!(o.last_error.contains("for another tenant: refused"), "{}", o.last_error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_in_an_adapters_error_does_not_reach_the_outcome() {
    let (done, _, s) = delete_with(Fault::PersonalError, "").await;
    let o = outcome(&done, "voicemail");
    assert_eq!((o.state, o.attempts), (OutcomeState::Failed as i32, 3), "retried as transient: {o:?}");
    let digits: String = s.phone.chars().filter(char::is_ascii_digit).collect();
    assert!(o.last_error.contains("Unavailable"), "{}", o.last_error);
    for canary in [s.phone.as_str(), &digits[digits.len() - 7..], &s.email.to_lowercase(), "@"] {
        assert!(!o.last_error.contains(canary), "{canary} in {}", o.last_error);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_killed_mid_erase_gets_the_same_task_with_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let vm = voicemail_db(dir.path()).await;
    let faulty = Faulty::new(vm.clone(), Fault::FirstEraseStalls);
    let mut adapter = AdapterProcess::start(any_addr(), faulty.clone());
    let addr = adapter.addr;
    // Attempts enough to outlast the restart (an attempt while it is down fails at its first call).
    let dir2 = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir2.path()).await;
    let base = TEST_CONFIG.replace("max_attempts = 3", "max_attempts = 10");
    let settings = support::settings(dir2.path(), db, None, &config_on(&base, &adapter.url(), ""));
    let app = spawn_on(settings, dir2, Overrides::default()).await;
    let s = app.seed("acme", 1, 1).await.remove(0);
    leave_voicemails(&app, &vm, &s, "vm").await;
    let stalled = faulty.stalled.notified();
    let req = app.delete(by_phone("acme", &s.phone)).await;
    tokio::time::timeout(Duration::from_secs(30), stalled).await.expect("the erase reached the adapter");
    // Killed mid-erase, and back on the same address at once (a restarted pod).
    adapter.kill();
    let _back = AdapterProcess::start(addr, faulty.clone());
    let done = app.wait_terminal(&req.id).await;
    let o = outcome(&done, "voicemail");
    assert_eq!((o.state, o.verified), (OutcomeState::Done as i32, true), "{o:?}");
    let erases = faulty.erases.lock().unwrap().clone();
    assert!(erases.len() >= 2 && erases[0].1 == 1, "{erases:?}");
    assert!(erases.iter().all(|e| e.0 == erases[0].0), "every attempt is the same task: {erases:?}");
    // Each retry is the next attempt; one that failed before reaching Erase (the adapter still
    // down) leaves a gap here, never a repeat or a step back.
    assert!(erases.windows(2).all(|w| w[1].1 > w[0].1), "a later attempt each time: {erases:?}");
    assert_eq!(erases.last().unwrap().1, o.attempts, "{erases:?}");
    let left: Vec<String> = voicemail_rows(&vm).await.into_iter().map(|r| r.0).collect();
    assert_eq!(left, ["vm-other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_the_task_and_the_trace_across_the_boundary() {
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let dir = tempfile::tempdir().unwrap();
    let vm = voicemail_db(dir.path()).await;
    let adapter = AdapterProcess::start(any_addr(), vm.clone());
    let entry = dsr::config::FileConfig::from_toml(&config(&adapter.url(), "")).unwrap().remote.remove(0);
    let store = dsr::stores::remote::RemoteStore::new(entry).unwrap();
    let ctx = CallContext {
        request_id: "req-1".into(),
        task_id: "task-1".into(),
        attempt: 4,
        traceparent: Some(TP.into()),
        kind: dsr::domain::RequestKind::Deletion,
        resolution: None,
    };
    let probe =
        dsr::stores::Probe { tenant: "acme", phones: vec!["+15550001111".into()], ..Default::default() };
    ctx.scope(store.candidates(&probe)).await.unwrap();
    let seen = vm.seen();
    assert_eq!(
        seen.last().unwrap(),
        &SeenCall {
            rpc: "Preview",
            task_id: "task-1".into(),
            attempt: 4,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into())
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_is_down_is_a_transient_failure_retried() {
    // Nothing listens on the port: a transient failure, which the engine retries with backoff.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let entry = dsr::config::FileConfig::from_toml(&config(&format!("http://127.0.0.1:{port}"), ""))
        .unwrap()
        .remote
        .remove(0);
    let store = dsr::stores::remote::RemoteStore::new(entry).unwrap();
    let probe =
        dsr::stores::Probe { tenant: "acme", phones: vec!["+15550001111".into()], ..Default::default() };
    match store.candidates(&probe).await {
        Err(dsr::stores::StoreError::Transient(m)) => {
            assert!(m.contains("voicemail adapter's Preview"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}
