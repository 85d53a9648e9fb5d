//! The `dsr` binary as operators run it: killed with SIGKILL mid-work and restarted, stopped
//! with SIGTERM, refused a public address without credentials, driven from its own client
//! commands — and its logs searched for every identifier it handled.

#[path = "support/otlp.rs"]
mod otlp;
#[path = "support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dsr::api::pb::{self, data_subject_rights_client::DataSubjectRightsClient, RequestStatus};
use serde_json::Value;
use support::Backend;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_dsr");

struct Server {
    child: Child,
    addr: SocketAddr,
    /// `/metrics`, when `[metrics] listen` is configured.
    metrics: Option<SocketAddr>,
}

/// Starts `dsr serve` on a random loopback port, logging JSON to `log` (one file per server);
/// returns once it listens.
fn start_server(dir: &Path, db: &str, config: &Path, log: &Path) -> Server {
    launch_server(dir, db, log, "127.0.0.1:0", |cmd| {
        cmd.arg("--config").arg(config);
    })
}

/// `dsr serve` on `listen`, with `setup` adding flags or environment; returns once it listens.
fn launch_server(dir: &Path, db: &str, log: &Path, listen: &str, setup: impl FnOnce(&mut Command)) -> Server {
    let log_file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["--log-format", "json", "serve", "--listen", listen])
        .arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(db)
        .env("RUST_LOG", "debug,h2=info,tower=info,hyper=info,sqlx=warn")
        .stderr(log_file)
        .stdout(Stdio::null());
    if db.starts_with("postgres") {
        cmd.env("DSR_AUDIT_KEY", support::TEST_AUDIT_KEY);
    }
    setup(&mut cmd);
    let mut child = cmd.spawn().expect("start dsr serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("dsr serve exited with {exit}:\n{text}");
        }
        let listening = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("dsr listening")));
        if let Some(addr) = listening.as_ref().and_then(|v| v["fields"]["addr"].as_str()) {
            let metrics =
                listening.as_ref().and_then(|v| v["fields"]["metrics"].as_str()).map(|m| m.parse().unwrap());
            return Server { child, addr: addr.parse().unwrap(), metrics };
        }
        assert!(Instant::now() < deadline, "dsr serve did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a `dsr` client command against `server`: (success, stdout, stderr).
fn cli(server: SocketAddr, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("DSR_SERVER", format!("http://127.0.0.1:{}", server.port()));
    if let Some(t) = token {
        cmd.env("DSR_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn client(addr: SocketAddr) -> DataSubjectRightsClient<Channel> {
    DataSubjectRightsClient::connect(format!("http://{addr}")).await.unwrap()
}

fn seed(dir: &Path, db: &str, tenant: &str, subjects: usize, calls: usize) -> Vec<Value> {
    let out = Command::new(BIN)
        .args([
            "seed",
            "--tenant",
            tenant,
            "--subjects",
            &subjects.to_string(),
            "--calls",
            &calls.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(db)
        .output()
        .expect("run dsr seed");
    assert!(out.status.success(), "seed failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn statuses(c: &mut DataSubjectRightsClient<Channel>) -> HashMap<String, pb::DsrRequest> {
    let mut all = HashMap::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_requests(pb::ListRequestsRequest {
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.requests.into_iter().map(|r| (r.id.clone(), r)));
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("dsr.toml");
    std::fs::write(
        &path,
        "[engine]\nworkers = 4\nlease_secs = 2\npoll_interval_ms = 50\nbackoff_base_ms = 10\nbackoff_max_ms = 100\n\
         [stores.recordings]\nconcurrency = 2\n",
    )
    .unwrap();
    path
}

/// Every identifier of the seeded subjects, and the names the seed gave them.
fn canaries(seeded: &[Value]) -> Vec<String> {
    seeded
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            vec![
                s["phone"].as_str().unwrap().to_owned(),
                s["phone"].as_str().unwrap().trim_start_matches('+').to_owned(),
                s["email"].as_str().unwrap().to_owned(),
                s["account_id"].as_str().unwrap().to_owned(),
                format!("Subject {i}"),
            ]
        })
        .collect()
}

fn assert_no_canaries(log: &Path, canaries: &[String]) {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.lines().count() > 10, "the server logged almost nothing:\n{text}");
    for c in canaries {
        assert!(!text.contains(c.as_str()), "the log contains an identifier: {c}");
    }
}

/// Waits until the first request completes, then SIGKILLs the server; returns how many had
/// completed, and fails if all `total` had (the kill would prove nothing).
async fn kill_once_one_completes(
    server: &mut Server,
    c: &mut DataSubjectRightsClient<Channel>,
    total: usize,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let done_at_kill = loop {
        let done = statuses(c).await.values().filter(|r| r.status == RequestStatus::Completed as i32).count();
        if done > 0 {
            break done;
        }
        assert!(Instant::now() < deadline, "no request completed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    assert!(done_at_kill < total, "everything finished before the kill; the test proved nothing");
    done_at_kill
}

/// Polls until every request has ended (COMPLETED or FAILED); returns them by id.
async fn wait_all_ended(c: &mut DataSubjectRightsClient<Channel>) -> HashMap<String, pb::DsrRequest> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let all = statuses(c).await;
        if all
            .values()
            .all(|r| r.status == RequestStatus::Completed as i32 || r.status == RequestStatus::Failed as i32)
        {
            return all;
        }
        assert!(Instant::now() < deadline, "requests did not finish after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails if any (request, store) has more than one `outcome` event; returns how many there are.
async fn outcomes_each_once(ledger: &dsr::db::Db) -> i64 {
    support::seal_journal(ledger).await;
    let twice: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT request_id, store, COUNT(*) FROM dsr_events WHERE action = 'outcome' GROUP BY request_id, store HAVING COUNT(*) <> 1",
    )
    .fetch_all(ledger.pool())
    .await
    .unwrap();
    assert!(twice.is_empty(), "outcomes recorded more than once: {twice:?}");
    sqlx::query_scalar("SELECT COUNT(*) FROM dsr_events WHERE action = 'outcome'")
        .fetch_one(ledger.pool())
        .await
        .unwrap()
}

async fn a_server_killed_mid_work_loses_nothing_and_records_no_outcome_twice(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(backend, dir.path()).await;
    let cfg = config(dir.path());
    let (log1, log2) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let seeded = seed(dir.path(), &db, "acme", 150, 3);

    let mut first = start_server(dir.path(), &db, &cfg, &log1);
    let mut c = client(first.addr).await;
    let mut ids = Vec::new();
    for s in &seeded {
        let subject = pb::Subject {
            tenant_id: "acme".into(),
            phone: s["phone"].as_str().unwrap().into(),
            ..Default::default()
        };
        let r = c
            .submit_deletion(pb::SubmitDeletionRequest { subject: Some(subject), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        ids.push(r.id);
    }
    // Kill as soon as work is under way: some requests done, most not.
    let done_at_kill = kill_once_one_completes(&mut first, &mut c, ids.len()).await;

    let mut second = start_server(dir.path(), &db, &cfg, &log2);
    let mut c = client(second.addr).await;
    let all = wait_all_ended(&mut c).await;
    assert_eq!(all.len(), ids.len());
    for r in all.values() {
        assert_eq!(r.status, RequestStatus::Completed as i32, "{r:#?}");
        for o in &r.outcomes {
            let expected = seeded[0]["counts"][&o.store].as_u64().unwrap();
            assert_eq!(
                o.records_found, expected,
                "{} of {}: an attempt after the crash must still report the first count",
                o.store, r.id
            );
            assert!(o.verified, "{} of {}", o.store, r.id);
        }
    }
    let ledger =
        dsr::db::Db::connect_ledger(&db, 2, "dsr", Default::default(), Default::default()).await.unwrap();
    let outcomes = outcomes_each_once(&ledger).await;
    assert_eq!(outcomes, 150 * 5);
    let taken_over: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dsr_tasks WHERE attempt > 1")
        .fetch_one(ledger.pool())
        .await
        .unwrap();
    eprintln!("{backend:?}: {done_at_kill}/150 requests done at the kill; {taken_over} tasks taken over after their lease expired");
    let left = std::fs::read_dir(dir.path().join("recordings/acme")).unwrap().count();
    assert_eq!(left, 0, "every recording object is gone");

    second.child.kill().unwrap();
    second.child.wait().unwrap();
    assert_no_canaries(&log1, &canaries(&seeded));
    assert_no_canaries(&log2, &canaries(&seeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_work_loses_nothing_and_records_no_outcome_twice_on_sqlite() {
    a_server_killed_mid_work_loses_nothing_and_records_no_outcome_twice(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_work_loses_nothing_and_records_no_outcome_twice_on_postgres() {
    a_server_killed_mid_work_loses_nothing_and_records_no_outcome_twice(Backend::Postgres).await
}

/// Exports killed mid-archive: after the restart every export completes once, and every archive
/// is whole (its sha256 matches ExportInfo and any ZIP reader accepts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_killed_mid_work_finish_after_a_restart_with_whole_archives() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let cfg = config(dir.path());
    let (log1, log2) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let seeded = seed(dir.path(), &db, "acme", 24, 3);
    let mut first = start_server(dir.path(), &db, &cfg, &log1);
    let mut c = client(first.addr).await;
    let mut ids = Vec::new();
    for s in &seeded {
        let subject = pb::Subject {
            tenant_id: "acme".into(),
            phone: s["phone"].as_str().unwrap().into(),
            ..Default::default()
        };
        let r =
            c.submit_export(pb::SubmitExportRequest { subject: Some(subject), ..Default::default() }).await;
        ids.push(r.unwrap().into_inner().id);
    }
    let done_at_kill = kill_once_one_completes(&mut first, &mut c, ids.len()).await;

    let mut second = start_server(dir.path(), &db, &cfg, &log2);
    let mut c = client(second.addr).await;
    let all = wait_all_ended(&mut c).await;
    assert_eq!(all.len(), ids.len());
    for r in all.values() {
        assert_eq!(r.status, RequestStatus::Completed as i32, "{r:#?}");
        let info = r.export.clone().expect("ExportInfo");
        let mut stream = c
            .download_export(pb::DownloadExportRequest { id: r.id.clone(), offset: 0 })
            .await
            .unwrap()
            .into_inner();
        let mut archive = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            archive.extend_from_slice(&chunk.data);
        }
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(&archive)), info.sha256, "{}", r.id);
        let path = dir.path().join(format!("{}.zip", r.id));
        std::fs::write(&path, &archive).unwrap();
        let check = Command::new("python3")
            .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(len(z.namelist()))"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(check.status.success(), "{}: {}", r.id, String::from_utf8_lossy(&check.stderr));
        assert_eq!(
            String::from_utf8_lossy(&check.stdout).trim(),
            "8",
            "4 JSON files, 3 recordings, the manifest"
        );
    }
    let ledger =
        dsr::db::Db::connect_ledger(&db, 2, "dsr", Default::default(), Default::default()).await.unwrap();
    let outcomes = outcomes_each_once(&ledger).await;
    assert_eq!(outcomes, 24 * 6, "five stores and the archive step, once each");
    eprintln!("{done_at_kill}/24 exports done at the kill");
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    assert_no_canaries(&log1, &canaries(&seeded));
    assert_no_canaries(&log2, &canaries(&seeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let cfg = config(dir.path());
    let log = dir.path().join("server.log");
    let seeded = seed(dir.path(), &db, "acme", 20, 2);
    let mut server = start_server(dir.path(), &db, &cfg, &log);
    let mut c = client(server.addr).await;
    for s in &seeded {
        let subject = pb::Subject {
            tenant_id: "acme".into(),
            email: s["email"].as_str().unwrap().into(),
            ..Default::default()
        };
        c.submit_deletion(pb::SubmitDeletionRequest { subject: Some(subject), ..Default::default() })
            .await
            .unwrap();
    }
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "dsr did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let order: Vec<usize> = ["shutdown requested", "engine stopped", "dsr stopped"]
        .iter()
        .map(|m| text.find(m).unwrap_or_else(|| panic!("log lacks {m:?}:\n{text}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "shutdown steps out of order");
    assert_no_canaries(&log, &canaries(&seeded));
}

/// A SIGTERM sent the moment the port answers (an orchestrator stopping a pod it just started)
/// drains like any other: the handler is installed before the listener binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_as_soon_as_the_port_answers_still_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    for round in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = dir.path().join(format!("server-{round}.log"));
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "serve", "--listen", &addr.to_string(), "--metrics-listen", "off"])
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--database-url")
            .arg(&db)
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "dsr serve exited early");
            assert!(Instant::now() < deadline, "dsr serve did not listen");
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "dsr did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        };
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(exit.success(), "round {round}: exit status {exit:?}:\n{text}");
        assert!(text.contains("dsr stopped"), "round {round}: no drain:\n{text}");
    }
}

#[test]
fn without_credentials_the_server_refuses_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0:0") && err.contains("no credentials"), "{err}");
}

#[test]
fn a_config_file_with_a_typo_stops_the_server_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dsr.toml");
    std::fs::write(&cfg, "[engine]\nworkrs = 2\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("workrs"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_preview_delete_watch_and_show_status() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let cfg = config(dir.path());
    let log = dir.path().join("server.log");
    let seeded = seed(dir.path(), &db, "acme", 2, 3);
    let mut server = start_server(dir.path(), &db, &cfg, &log);
    let run = |args: &[&str]| cli(server.addr, None, args);
    let phone = seeded[1]["phone"].as_str().unwrap();
    let (ok, out, err) = run(&["preview", "--tenant", "acme", "--phone", phone]);
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("recordings") && l.split_whitespace().nth(1) == Some("3")),
        "{out}"
    );
    let (ok, out, err) =
        run(&["delete", "--tenant", "acme", "--phone", phone, "--regime", "ccpa", "--watch"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("COMPLETED") && out.contains("RETAINED") && out.contains("stores finished"),
        "{out}"
    );
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    let (ok, out, _) = run(&["status", &id, "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "REQUEST_STATUS_COMPLETED");
    assert_eq!(v["outcomes"].as_array().unwrap().len(), 5);
    let (ok, _, err) = run(&["delete", "--tenant", "acme", "--phone", "12345"]);
    assert!(!ok);
    assert!(err.contains("InvalidArgument") && err.contains("subject.phone"), "{err}");
    let (ok, out, _) = run(&["list", "--tenant", "acme"]);
    assert!(ok && out.contains(&id), "{out}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_and_download_commands_fetch_a_verified_archive_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let cfg = config(dir.path());
    let log = dir.path().join("server.log");
    let seeded = seed(dir.path(), &db, "acme", 2, 3);
    let mut server = start_server(dir.path(), &db, &cfg, &log);
    let run = |args: &[&str]| cli(server.addr, None, args);
    let phone = seeded[1]["phone"].as_str().unwrap();
    let out_zip = dir.path().join("subject.zip");
    let (ok, out, err) = run(&[
        "export",
        "--tenant",
        "acme",
        "--phone",
        phone,
        "--regime",
        "gdpr",
        "-o",
        out_zip.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("COMPLETED") && out.contains("(verified)"), "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    // Any ZIP reader opens it: Python's zipfile checks every entry's CRC.
    let check = std::process::Command::new("python3")
        .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print('\\n'.join(sorted(z.namelist())))"])
        .arg(&out_zip)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let names = String::from_utf8_lossy(&check.stdout);
    assert!(names.contains("manifest.json") && names.contains("call_logs.json"), "{names}");
    assert_eq!(names.lines().filter(|n| n.starts_with("recordings/")).count(), 3, "{names}");

    // A download cut short resumes from its partial file.
    let whole = std::fs::read(&out_zip).unwrap();
    let again = dir.path().join("again.zip");
    std::fs::write(dir.path().join("again.zip.part"), &whole[..whole.len() / 3]).unwrap();
    let (ok, out, err) = run(&["download", &id, "-o", again.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("resuming at byte"), "{err}");
    assert!(out.contains("(verified)"), "{out}");
    assert!(std::fs::read(&again).unwrap() == whole);
    // A corrupt partial file is caught by the sha256 and removed.
    let bad = dir.path().join("bad.zip");
    std::fs::write(dir.path().join("bad.zip.part"), vec![0u8; 10]).unwrap();
    let (ok, _, err) = run(&["download", &id, "-o", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("sha256 mismatch"), "{err}");
    assert!(!dir.path().join("bad.zip.part").exists());
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert_no_canaries(&log, &canaries(&seeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rectify_command_corrects_a_subject_and_the_log_holds_neither_old_nor_new_values() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let cfg = config(dir.path());
    let log = dir.path().join("server.log");
    let seeded = seed(dir.path(), &db, "acme", 2, 3);
    let mut server = start_server(dir.path(), &db, &cfg, &log);
    let run = |args: &[&str]| cli(server.addr, None, args);
    let old_email = seeded[1]["email"].as_str().unwrap();
    let (new_name, new_email, new_phone) = ("Corrected Caller", "corrected@example.net", "+447700900555");
    let (ok, out, err) = run(&[
        "rectify",
        "--tenant",
        "acme",
        "--email",
        old_email,
        "--set-name",
        new_name,
        "--set-email",
        new_email,
        "--set-phone",
        new_phone,
        "--watch",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("RECTIFICATION") && out.contains("COMPLETED"), "{out}");
    let (ok, out, err) = run(&["preview", "--tenant", "acme", "--phone", new_phone]);
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("recordings") && l.split_whitespace().nth(1) == Some("3")),
        "{out}"
    );
    // Another subject's email: refused, naming the field, not the value.
    let taken = seeded[0]["email"].as_str().unwrap();
    let (ok, _, err) = run(&["rectify", "--tenant", "acme", "--email", new_email, "--set-email", taken]);
    assert!(!ok);
    assert!(err.contains("AlreadyExists") && err.contains("corrections.email"), "{err}");
    assert!(!err.contains(taken), "{err}");
    let (ok, _, err) = run(&["rectify", "--tenant", "acme", "--email", new_email]);
    assert!(!ok);
    assert!(err.contains("InvalidArgument") && err.contains("corrections"), "{err}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut canaries = canaries(&seeded);
    canaries.extend(
        [new_name, new_email, new_phone, new_phone.trim_start_matches('+')].iter().map(|s| s.to_string()),
    );
    assert_no_canaries(&log, &canaries);
}

#[tokio::test]
async fn migrate_applies_the_ledger_schema_on_both_backends() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let db = support::fresh_platform_database(backend, dir.path()).await;
        for _ in 0..2 {
            let out = Command::new(BIN)
                .args(["migrate", "--database-url", &db])
                .arg("--data-dir")
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let ledger =
            dsr::db::Db::connect_ledger(&db, 1, "dsr", Default::default(), Default::default()).await.unwrap();
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM dsr_requests").fetch_one(ledger.pool()).await.unwrap();
        assert_eq!(n, 0);
    }
}

/// A Postgres database the platform already migrates with sqlx: its `_sqlx_migrations` holds a
/// migration dsr does not know. dsr keeps its ledger and its own migrations table in the schema
/// `dsr`, so `dsr migrate` and `dsr serve` work beside it, the platform's table is untouched, and
/// the stores (on the ledger's pool) still find the platform's tables where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsr_migrates_into_its_own_schema_beside_the_platforms_sqlx_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Postgres, dir.path()).await;
    let platform = dsr::db::Db::connect(&db, 1).await.unwrap();
    for sql in [
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, \
         execution_time BIGINT NOT NULL)",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (20240101000000, 'platform: create accounts', TRUE, decode('00', 'hex'), 1)",
    ] {
        sqlx::query(sql).execute(platform.pool()).await.unwrap();
    }
    for _ in 0..2 {
        let (ok, _, err) = server_cmd(dir.path(), &db, &["migrate"]);
        assert!(ok, "dsr migrate: {err}");
    }
    let seeded = seed(dir.path(), &db, "acme", 1, 2);
    let log = dir.path().join("server.log");
    let mut server = start_server(dir.path(), &db, &config(dir.path()), &log);
    let mut c = client(server.addr).await;
    let phone = seeded[0]["phone"].as_str().unwrap();
    let r = c
        .submit_deletion(pb::SubmitDeletionRequest {
            subject: Some(pb::Subject {
                tenant_id: "acme".into(),
                phone: phone.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_ended(&mut c, &r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    stop_with_sigterm(&mut server);
    server.child.wait().unwrap();

    let scalar = |sql: &'static str| {
        let pool = platform.pool().clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(scalar("SELECT COUNT(*) FROM public._sqlx_migrations").await, 1, "the platform's, untouched");
    assert_eq!(
        scalar("SELECT COUNT(*) FROM dsr._sqlx_migrations").await,
        std::fs::read_dir("migrations/postgres").unwrap().count() as i64
    );
    assert_eq!(scalar("SELECT COUNT(*) FROM dsr.dsr_requests").await, 1);
    let misplaced: i64 = scalar(
        "SELECT COUNT(*) FROM pg_tables WHERE (schemaname = 'public' AND tablename LIKE 'dsr\\_%') \
         OR (schemaname = 'dsr' AND tablename IN ('accounts', 'call_logs', 'transcripts', 'recordings', 'billing_records'))",
    )
    .await;
    assert_eq!(misplaced, 0, "dsr's tables in dsr, the platform's in public");
    // The erasure reached the platform's tables in public.
    assert_eq!(scalar("SELECT COUNT(*) FROM public.call_logs").await, 0);

    // A ledger made before dsr had its own schema is not silently replaced by an empty one.
    let old = support::fresh_platform_database(Backend::Postgres, dir.path()).await;
    let cfg = dir.path().join("public.toml");
    std::fs::write(&cfg, "[database]\nschema = \"public\"\n").unwrap();
    let (ok, _, err) = server_cmd(dir.path(), &old, &["migrate", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, _, err) = server_cmd(dir.path(), &old, &["migrate"]);
    assert!(!ok && err.contains("schema \"public\"") && err.contains("[database] schema"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_file_open_the_public_address_and_no_token_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let seeded = seed(dir.path(), &db, "acme", 2, 2);
    let canary_token = "canary-token-7f3e9b1c2d4a6f80";
    let wrong_token = "canary-wrong-token-55aa66bb77cc";
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(canary_token.as_bytes()));
    let tokens = dir.path().join("tokens.toml");
    let other_tenant = "canary-globex-token-0a1b2c3d4e5f";
    let other_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(other_tenant.as_bytes()));
    std::fs::write(
        &tokens,
        format!(
            "[[auth.tokens]]\nname = \"ops\"\ntoken_sha256 = \"{hash}\"\nscopes = [\"dsr.delete\", \"dsr.read\"]\n\n\
             [[auth.tokens]]\nname = \"globex-reader\"\ntoken_sha256 = \"{other_hash}\"\nscopes = [\"dsr.read\"]\ntenant = \"globex\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let mut server = launch_server(dir.path(), &db, &log, "0.0.0.0:0", |cmd| {
        cmd.env("DSR_TOKENS_FILE", &tokens);
    });
    let run = |args: &[&str], token: Option<&str>| {
        let (ok, out, err) = cli(server.addr, token, args);
        (ok, out + &err)
    };
    let phone = seeded[0]["phone"].as_str().unwrap();
    let (ok, out) = run(&["delete", "--tenant", "acme", "--phone", phone, "--watch"], Some(canary_token));
    assert!(ok && out.contains("COMPLETED"), "{out}");
    let (ok, out) = run(&["list"], Some(wrong_token));
    assert!(!ok && out.contains("Unauthenticated") && !out.contains(wrong_token), "{out}");
    let (ok, out) = run(&["list"], None);
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    let id = out_id(&run(&["list", "--tenant", "acme"], Some(canary_token)).1);
    let (ok, out) = run(&["status", &id], Some(other_tenant));
    assert!(!ok && out.contains("PermissionDenied"), "{out}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("2 bearer token"), "{text}");
    for secret in [canary_token, wrong_token, other_tenant, &hash, &other_hash] {
        assert!(!text.contains(secret), "the log contains a credential");
    }
    // Plaintext beyond loopback, failed authentications and a cross-tenant probe: each a WARN
    // naming the caller (when known), the RPC and the code.
    let warns: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == "WARN")
        .collect();
    let warned =
        |needle: &str| warns.iter().find(|v| v["fields"]["message"].as_str().unwrap_or("").contains(needle));
    assert!(warned("plaintext beyond loopback").is_some(), "{text}");
    let refused =
        warned("authentication failed").unwrap_or_else(|| panic!("no WARN for a bad token:\n{text}"));
    assert_eq!(refused["fields"]["rpc"], "dsr.v1.DataSubjectRights/ListRequests");
    assert_eq!(refused["fields"]["code"], "UNAUTHENTICATED");
    let probe = warned("cross-tenant").unwrap_or_else(|| panic!("no WARN for a cross-tenant call:\n{text}"));
    assert_eq!(probe["fields"]["caller"], "globex-reader");
    assert_eq!(probe["fields"]["rpc"], "dsr.v1.DataSubjectRights/GetRequest");
    assert_eq!(probe["fields"]["code"], "PERMISSION_DENIED");
    assert_no_canaries(&log, &canaries(&seeded));
}

// ------------------------------------------------------------------ observability ----

/// Sends SIGTERM and waits for a clean exit (the server drains, then flushes its spans).
fn stop_with_sigterm(server: &mut Server) {
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "dsr did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
}

/// Polls GetRequest until the request has ended.
async fn wait_ended(c: &mut DataSubjectRightsClient<Channel>, id: &str) -> pb::DsrRequest {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.get_request(pb::GetRequestRequest { id: id.into() }).await.unwrap().into_inner();
        if r.status != RequestStatus::Pending as i32 && r.status != RequestStatus::InProgress as i32 {
            return r;
        }
        assert!(Instant::now() < deadline, "request {id} did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The service's OpenTelemetry environment, pointed at an in-process receiver; whatever the
/// machine's own OTEL_* variables say is removed first.
fn otel_env(cmd: &mut Command, collector: SocketAddr) {
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        cmd.env_remove(k);
    }
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        // Longer than the test: every span reaches the receiver through the flush at shutdown.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000");
}

const STORES: [&str; 5] = ["accounts", "call_logs", "transcripts", "recordings", "billing"];
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_is_one_trace_from_the_call_through_every_store_and_names_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let cfg = config(dir.path());
    let log = dir.path().join("server.log");
    let seeded = seed(dir.path(), &db, "acme", 2, 3);
    let (collector, received) = otlp::start().await;
    let mut server = launch_server(dir.path(), &db, &log, "127.0.0.1:0", |cmd| {
        cmd.arg("--config").arg(&cfg);
        otel_env(cmd, collector);
    });

    // The subject named by every identifier it has, with an idempotency key and a tracestate
    // that are canaries too.
    let target = &seeded[1];
    let idempotency_key = "canary-idem-5c1e7a90b3";
    let mut call = tonic::Request::new(pb::SubmitDeletionRequest {
        subject: Some(pb::Subject {
            tenant_id: "acme".into(),
            phone: target["phone"].as_str().unwrap().into(),
            email: target["email"].as_str().unwrap().into(),
            account_id: target["account_id"].as_str().unwrap().into(),
        }),
        idempotency_key: idempotency_key.into(),
        requested_by: "privacy-inbox".into(),
        ..Default::default()
    });
    call.metadata_mut().insert("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01").parse().unwrap());
    call.metadata_mut().insert("tracestate", "acme=canarystate7d2f".parse().unwrap());
    let mut c = client(server.addr).await;
    let id = c.submit_deletion(call).await.unwrap().into_inner().id;
    let done = wait_ended(&mut c, &id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    stop_with_sigterm(&mut server);

    let spans = received.spans();
    let rpc =
        spans.iter().find(|s| s.name == "dsr.v1.DataSubjectRights/SubmitDeletion").unwrap_or_else(|| {
            panic!("no SubmitDeletion span among {:#?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>())
        });
    // The RPC span: a SERVER span in the caller's trace, under the caller's span, following
    // the RPC conventions.
    assert_eq!(rpc.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!((rpc.trace_id.as_str(), rpc.parent_span_id.as_str()), (CALLER_TRACE, CALLER_SPAN));
    let a = &rpc.attributes;
    assert_eq!(a["rpc.system"].str(), "grpc");
    assert_eq!(a["rpc.service"].str(), "dsr.v1.DataSubjectRights");
    assert_eq!(a["rpc.method"].str(), "SubmitDeletion");
    assert_eq!(a["rpc.grpc.status_code"], otlp::Attr::Int(0));
    assert_eq!(a["dsr.request_id"].str(), id);
    assert_eq!(a["dsr.tenant"].str(), "acme");
    assert_eq!(rpc.resource["service.name"].str(), "dsr");
    assert_eq!(rpc.resource["service.version"].str(), env!("CARGO_PKG_VERSION"));

    // One span per store task, each a child of the RPC span, with the task's attributes.
    let tasks: Vec<_> = spans.iter().filter(|s| s.name == "store_task").collect();
    let mut stores: Vec<&str> = tasks.iter().map(|s| s.attributes["dsr.store"].str()).collect();
    stores.sort();
    let mut expected = STORES.to_vec();
    expected.sort();
    assert_eq!(stores, expected, "one store_task span per store");
    for t in &tasks {
        let store = t.attributes["dsr.store"].str();
        assert_eq!(t.trace_id, CALLER_TRACE, "{store}: in the caller's trace");
        assert_eq!(t.parent_span_id, rpc.span_id, "{store}: a child of the RPC span");
        let a = &t.attributes;
        assert_eq!(a["dsr.request_id"].str(), id);
        assert_eq!(a["dsr.tenant"].str(), "acme");
        assert_eq!(a["dsr.kind"].str(), "deletion");
        assert_eq!(a["dsr.attempt"], otlp::Attr::Int(1));
        let outcome = if store == "billing" { "retained" } else { "done" };
        assert_eq!(a["dsr.outcome"].str(), outcome, "{store}");
        let found = target["counts"][store].as_i64().unwrap();
        assert_eq!(a["dsr.records_found"], otlp::Attr::Int(found), "{store}");
        assert_eq!(a["dsr.verified"], otlp::Attr::Bool(true), "{store}");
        assert!(["in_progress", "completed"].contains(&a["dsr.request_status"].str()), "{store}");
        assert!(t.event_names.iter().any(|e| e == "store task done"), "{store}: {:?}", t.event_names);
        assert_eq!(t.resource["service.name"].str(), "dsr");
    }

    // No identifier anywhere: not in a span name, attribute, event or resource, nor in a log
    // line; the caller's tracestate is not passed on either.
    let mut canaries = canaries(&seeded);
    canaries.extend([idempotency_key.to_owned(), "canarystate7d2f".to_owned()]);
    let exported = received.raw();
    for c in &canaries {
        assert!(!exported.contains(c.as_str()), "the exported spans contain an identifier: {c}");
    }
    assert_no_canaries(&log, &canaries);

    // JSON log lines carry the ids of the span they were logged in.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let task_lines: Vec<&Value> =
        lines.iter().filter(|v| v["fields"]["message"] == "store task done").collect();
    assert_eq!(task_lines.len(), 5, "{text}");
    for l in task_lines {
        assert_eq!(l["trace_id"], CALLER_TRACE, "{l}");
        assert!(tasks.iter().any(|t| l["span_id"] == t.span_id.as_str()), "{l}");
    }
    assert!(text.contains("span exporter shut down"), "{text}");
}

/// Reads `/metrics` over plain HTTP/1.0, asking for OpenMetrics as Prometheus does.
async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: dsr\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    body.to_owned()
}

/// The value of one series (`name{labels}` exactly as exposed), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_deletion_and_report_its_deadline_and_spans_survive_a_quiet_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let cfg = config(dir.path());
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + "[metrics]\nlisten = \"127.0.0.1:0\"\n")
        .unwrap();
    let log = dir.path().join("server.log");
    let seeded = seed(dir.path(), &db, "acme", 1, 2);
    let (collector, received) = otlp::start().await;
    let mut server = launch_server(dir.path(), &db, &log, "127.0.0.1:0", |cmd| {
        cmd.arg("--config").arg(&cfg);
        otel_env(cmd, collector);
        // Warnings only (and the start-up lines the launcher waits for): the spans have a filter
        // of their own.
        cmd.env("RUST_LOG", "warn,dsr::startup=info");
    });
    let metrics = server.metrics.expect("the metrics address in the start-up line");

    let before = scrape(metrics).await;
    let past = "dsr_requests_past_deadline{kind=\"deletion\",status=\"pending\"}";
    assert_eq!(sample(&before, past), Some(0.0), "{before}");
    assert_eq!(sample(&before, "dsr_ledger_up"), Some(1.0), "{before}");
    assert_eq!(sample(&before, "dsr_requests_submitted_total{kind=\"deletion\"}"), None);

    let mut c = client(server.addr).await;
    let subject = pb::Subject {
        tenant_id: "acme".into(),
        phone: seeded[0]["phone"].as_str().unwrap().into(),
        ..Default::default()
    };
    let id = c
        .submit_deletion(pb::SubmitDeletionRequest { subject: Some(subject), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .id;
    assert_eq!(wait_ended(&mut c, &id).await.status, RequestStatus::Completed as i32);

    let after = scrape(metrics).await;
    let expect =
        |series: &str, value: f64| assert_eq!(sample(&after, series), Some(value), "{series} in\n{after}");
    expect("dsr_requests_submitted_total{kind=\"deletion\"}", 1.0);
    expect("dsr_requests_ended_total{kind=\"deletion\",status=\"completed\"}", 1.0);
    for store in STORES {
        let outcome = if store == "billing" { "retained" } else { "done" };
        expect(&format!("dsr_task_duration_seconds_count{{store=\"{store}\",outcome=\"{outcome}\"}}"), 1.0);
        expect(&format!("dsr_queue_depth{{store=\"{store}\"}}"), 0.0);
    }
    expect(
        "dsr_rpc_duration_seconds_count{method=\"dsr.v1.DataSubjectRights/SubmitDeletion\",code=\"OK\"}",
        1.0,
    );
    // The deadline gauges: present, and zero now the request has ended.
    expect(past, 0.0);
    expect("dsr_requests_due_soon{kind=\"deletion\",status=\"pending\",within_days=\"7\"}", 0.0);
    expect("dsr_requests_outstanding{kind=\"deletion\",status=\"in_progress\"}", 0.0);
    for c in canaries(&seeded) {
        assert!(!after.contains(c.as_str()), "the metrics contain an identifier: {c}");
    }
    assert!(!after.contains(&id), "no request id in the metrics");

    stop_with_sigterm(&mut server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("store task done"), "RUST_LOG=warn: info lines are not logged\n{text}");
    let tasks = received.spans().into_iter().filter(|s| s.name == "store_task").count();
    assert_eq!(tasks, 5, "RUST_LOG=warn does not drop the exported spans");
}

/// Runs a server-side `dsr` command on `dir` and `db`: (success, stdout, stderr).
fn server_cmd(dir: &Path, db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("DSR_AUDIT_KEY", support::TEST_AUDIT_KEY)
        .arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(db)
        .output()
        .expect("run dsr");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dsr_sweep_dry_run_shows_what_is_past_retention_and_dsr_sweep_erases_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let seeded = seed(dir.path(), &db, "acme", 2, 3);
    let old = &seeded[0];
    let conn = dsr::db::Db::connect(&db, 1).await.unwrap();
    // The first subject's calls are from 400 days ago: past the year of call metadata and the
    // 90 days of transcripts and recordings.
    for sql in [
        "UPDATE call_logs SET started_at = started_at - 34560000000 WHERE account_id = $1",
        "UPDATE transcripts SET created_at = created_at - 34560000000 WHERE call_id LIKE $1 || '%'",
        "UPDATE recordings SET created_at = created_at - 34560000000 WHERE call_id LIKE $1 || '%'",
    ] {
        let key = if sql.contains("account_id") {
            old["account_id"].as_str().unwrap()
        } else {
            "acme-call-000000-"
        };
        sqlx::query(sql).bind(key).execute(conn.pool()).await.unwrap();
    }
    let count = |table: &'static str| {
        let pool = conn.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    let (ok, out, err) = server_cmd(dir.path(), &db, &["sweep", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(out.contains("dry run"), "{out}");
    // The schedule it applies comes first, and says where it came from.
    assert!(out.starts_with("retention schedule (built in: no --config"), "{out}");
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["recordings", "all", "90", "days"]),
        "{out}"
    );
    for store in ["call_logs", "transcripts", "recordings"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(store) && l.split_whitespace().nth(1) == Some("acme"))
            .unwrap_or_else(|| panic!("no {store} line:\n{out}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cols[1], cols[4], cols[5]), ("acme", "3", "3"), "{line}");
    }
    assert_eq!(count("call_logs").await, 6, "a dry run changes nothing");
    support::seal_journal(&conn).await;
    let swept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dsr_events WHERE action LIKE 'retention%'")
        .fetch_one(conn.pool())
        .await
        .unwrap();
    assert_eq!(swept, 0, "a dry run records nothing");

    let (ok, out2, err2) = server_cmd(dir.path(), &db, &["sweep"]);
    assert!(ok, "{err2}");
    assert!(out2.lines().any(|l| l.starts_with("recordings") && l.contains(" 3 ")), "{out2}");
    assert_eq!((count("call_logs").await, count("transcripts").await, count("recordings").await), (3, 3, 3));
    let audio = std::fs::read_dir(dir.path().join("recordings/acme")).unwrap().count();
    assert_eq!(audio, 3, "the expired calls' audio is gone, the others' is there");
    let (ok, out3, _) = server_cmd(dir.path(), &db, &["sweep"]);
    assert!(ok && out3.contains("nothing is past its retention"), "{out3}");
    for text in [&out, &err, &out2, &err2, &out3] {
        for c in canaries(&seeded) {
            assert!(!text.contains(c.as_str()), "dsr sweep printed an identifier: {c}");
        }
    }

    // With the configuration `serve` reads, a tenant's own period shows beside the default.
    let own = dir.path().join("own.toml");
    std::fs::write(&own, "[retention.tenants.acme]\nrecordings_days = 30\n").unwrap();
    let (ok, out, err) =
        server_cmd(dir.path(), &db, &["sweep", "--dry-run", "--config", own.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("retention schedule (from {}", own.display())), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["recordings", "others", "90", "days"]),
        "{out}"
    );
    assert!(out.contains("recordings     acme         30 days  (tenant's own)"), "{out}");

    // A period under the legal minimum stops the command, naming the key.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[retention.tenants.acme]\nbilling_years = 3\n").unwrap();
    let (ok, _, err) = server_cmd(dir.path(), &db, &["sweep", "--config", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("retention.tenants.acme.billing_years") && err.contains("legal minimum"), "{err}");
}

// ------------------------------------------------------------------ the store catalog ----

/// Pointed at a platform database whose tables do not match, `dsr serve` refuses to start,
/// naming the store, the table and the column, and creates nothing there; `dsr stores check`
/// prints the same and exits non-zero; with the tables fixed both pass. On Postgres and SQLite.
#[tokio::test]
async fn a_start_against_a_mismatched_platform_database_fails_naming_the_store_and_column() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let db = support::fresh_platform_database(backend, dir.path()).await;
        let platform = dsr::db::Db::connect(&db, 2).await.unwrap();
        sqlx::query("ALTER TABLE billing_records DROP COLUMN restricted_at")
            .execute(platform.pool())
            .await
            .unwrap();
        sqlx::query("DROP TABLE transcripts").execute(platform.pool()).await.unwrap();

        let (ok, out, err) = server_cmd(dir.path(), &db, &["stores", "check"]);
        assert!(!ok, "{backend:?}: {out}{err}");
        assert!(out.contains("accounts     ok") && out.contains("call_logs    ok"), "{out}");
        assert!(
            out.contains("billing      table billing_records: column \"restricted_at\" is missing"),
            "{out}"
        );
        assert!(out.contains("transcripts  table transcripts cannot be read"), "{out}");
        assert!(err.contains("2 problem(s)"), "{err}");

        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
            .env("DSR_AUDIT_KEY", support::TEST_AUDIT_KEY)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{backend:?}: serve started against a mismatched schema");
        assert!(
            err.contains("store billing: table billing_records: column \"restricted_at\" is missing"),
            "{err}"
        );
        assert!(err.contains("store transcripts: table transcripts cannot be read"), "{err}");
        let recreated: Result<i64, _> =
            sqlx::query_scalar("SELECT COUNT(*) FROM transcripts").fetch_one(platform.pool()).await;
        assert!(recreated.is_err(), "{backend:?}: dsr created a table in the platform's database");

        sqlx::query("ALTER TABLE billing_records ADD COLUMN restricted_at BIGINT")
            .execute(platform.pool())
            .await
            .unwrap();
        dsr::stores::reference::ensure_schema(&platform, &Default::default()).await.unwrap();
        let (ok, out, err) = server_cmd(dir.path(), &db, &["stores", "check"]);
        assert!(ok, "{backend:?}: {out}{err}");
        assert_eq!(out.matches(" ok").count(), 5, "{out}");
        platform.close().await;
    }
}

// ------------------------------------------------------------------ hardening ----

/// The first request id in `dsr list` output.
fn out_id(list: &str) -> String {
    list.split_whitespace()
        .find(|w| uuid::Uuid::parse_str(w).is_ok())
        .unwrap_or_else(|| panic!("no request id in {list}"))
        .to_owned()
}

/// Resident memory of a process (VmRSS), in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024.0
}

fn token_toml(name: &str, token: &str, scopes: &str, tenant: &str) -> String {
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    format!("[[auth.tokens]]\nname = {name:?}\ntoken_sha256 = {hash:?}\nscopes = [{scopes}]\ntenant = {tenant:?}\n\n")
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Opens a download on its own connection and reads one chunk, then stops reading: the stream
/// stays open on the server with whatever it buffered.
async fn stalled_download(
    addr: SocketAddr,
    token: &str,
    id: &str,
) -> Result<(DataSubjectRightsClient<Channel>, tonic::Streaming<pb::ExportChunk>), tonic::Status> {
    let mut c = client(addr).await;
    let mut s = c
        .download_export(with_token(pb::DownloadExportRequest { id: id.to_owned(), offset: 0 }, token))
        .await?
        .into_inner();
    s.message().await?.expect("a first chunk");
    Ok((c, s))
}

/// 20 callers each try to hold 6 stalled downloads of an 8 MiB archive: each gets its 4, the
/// server's 64 fill, the rest get RESOURCE_EXHAUSTED; the server's memory stays within a
/// generous bound while they stall and after they are cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_downloads_are_bounded_per_caller_and_overall_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let out = Command::new(BIN)
        .args(["seed", "--tenant", "acme", "--subjects", "1", "--calls", "4", "--recording-bytes", "2097152"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--database-url")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seeded: Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let tokens: Vec<String> = (0..20).map(|i| format!("stall-token-{i:02}-9f8e7d6c5b4a")).collect();
    let mut toml = String::from("[server]\nrate_limit_per_second = 0\n\n");
    for (i, t) in tokens.iter().enumerate() {
        toml.push_str(&token_toml(&format!("caller-{i}"), t, "\"dsr.export\", \"dsr.read\"", "acme"));
    }
    let cfg = dir.path().join("dsr.toml");
    std::fs::write(&cfg, toml).unwrap();
    let log = dir.path().join("server.log");
    let mut server = start_server(dir.path(), &db, &cfg, &log);
    let mut c = client(server.addr).await;
    let subject = pb::Subject {
        tenant_id: "acme".into(),
        phone: seeded["phone"].as_str().unwrap().into(),
        ..Default::default()
    };
    let id = c
        .submit_export(with_token(
            pb::SubmitExportRequest { subject: Some(subject), ..Default::default() },
            &tokens[0],
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut watch = c
        .watch_request(with_token(pb::WatchRequestRequest { id: id.clone() }, &tokens[0]))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(r) = watch.message().await.unwrap() {
        last = Some(r);
    }
    let done = last.unwrap();
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:?}");
    assert!(done.export.as_ref().unwrap().size_bytes > 8 << 20);

    let pid = server.child.id();
    let before = rss_mib(pid);
    let (mut open, mut per_caller, mut server_wide) = (Vec::new(), 0, 0);
    for t in &tokens {
        for _ in 0..6 {
            match stalled_download(server.addr, t, &id).await {
                Ok(s) => open.push(s),
                Err(e) => {
                    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                    if e.message().contains("this caller") {
                        per_caller += 1
                    } else {
                        server_wide += 1
                    }
                }
            }
        }
    }
    assert_eq!(open.len(), 64, "the server-wide cap");
    assert_eq!((per_caller, server_wide), (16 * 2, 4 * 6));
    // The stalled streams fill what they may; take the highest of a few samples.
    let mut during = rss_mib(pid);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        during = during.max(rss_mib(pid));
    }
    drop(open);
    // Cancelled streams give their slots back: the first caller gets its 4 again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut again = Vec::new();
    while again.len() < 4 {
        match stalled_download(server.addr, &tokens[0], &id).await {
            Ok(s) => again.push(s),
            Err(e) if e.code() == tonic::Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("slots of cancelled streams were not freed: {e:?}"),
        }
    }
    drop(again);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_mib(pid);
    eprintln!("stalled downloads (64 open, 8 MiB archive): RSS before {before:.1} MiB, during {during:.1} MiB, after {after:.1} MiB");
    // Generous bounds (1.6 MB a stream before the fix would be ~100 MiB for 64; 1,200 were 1.9 GB).
    assert!(during < before + 200.0, "before {before:.1} MiB, during {during:.1} MiB");
    assert!(after < before + 200.0, "before {before:.1} MiB, after {after:.1} MiB");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// Runs the command with umask 0000, as a careless shell or container might.
fn permissive_umask(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file and directory under `dir`, with its mode.
fn modes_under(dir: &Path, out: &mut Vec<(PathBuf, u32)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push((p.clone(), mode(&p)));
        if p.is_dir() {
            modes_under(&p, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_holding_personal_data_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let db = dsr::db::sqlite_url(&data.join("dsr.db"));
    let out = permissive_umask(
        Command::new(BIN)
            .args(["seed", "--tenant", "acme", "--subjects", "1", "--calls", "2"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--database-url")
            .arg(&db),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seeded: Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let log = tmp.path().join("server.log");
    let mut server = launch_server(&data, &db, &log, "127.0.0.1:0", |cmd| {
        permissive_umask(cmd);
    });
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let zip = downloads.join("subject.zip");
    let out = permissive_umask(
        Command::new(BIN)
            .args(["export", "--tenant", "acme", "--phone", seeded["phone"].as_str().unwrap(), "-o"])
            .arg(&zip)
            .env("DSR_SERVER", format!("http://127.0.0.1:{}", server.addr.port())),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    assert_eq!(mode(&data), 0o700, "the data directory");
    assert_eq!(mode(&data.join("dsr.db")), 0o600, "the database");
    assert_eq!(mode(&zip), 0o600, "the downloaded archive");
    let mut all = Vec::new();
    modes_under(&data, &mut all);
    let archive = all.iter().find(|(p, _)| p.ends_with("export.zip")).expect("the export archive");
    assert_eq!(archive.1, 0o600, "the export archive");
    assert!(all.iter().any(|(p, _)| p.components().any(|c| c.as_os_str() == "recordings") && p.is_file()));
    let open: Vec<_> = all.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
    // Development mode on loopback says it is plaintext, loudly.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"WARN\"") && l.contains("development mode: no credentials and no TLS")),
        "{text}"
    );
}

#[test]
fn a_token_configured_twice_stops_the_server_naming_both_entries() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dsr.toml");
    std::fs::write(&cfg, token_toml("acme-reader", "same-token-123456", "\"dsr.read\"", "acme")).unwrap();
    let tokens = dir.path().join("tokens.toml");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"same-token-123456"));
    std::fs::write(
        &tokens,
        format!("[[auth.tokens]]\nname = \"root\"\ntoken_sha256 = \"{hash}\"\nscopes = [\"dsr.admin\"]\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path())
        .env("DSR_TOKENS_FILE", &tokens)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"acme-reader\" and \"root\" have the same token_sha256"), "{err}");
    assert!(!err.contains(&hash), "{err}");
}

/// Replicas on one Postgres ledger must share the audit key: without a configured one, `serve`
/// (and `sweep`) refuse to start instead of each making its own.
#[tokio::test]
async fn a_postgres_ledger_without_an_audit_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Postgres, dir.path()).await;
    for args in [&["serve", "--listen", "127.0.0.1:0"][..], &["sweep"][..]] {
        let out = Command::new(BIN)
            .args(args)
            .args(["--database-url", &db])
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("DSR_AUDIT_KEY")
            .env_remove("DSR_HMAC_KEY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started without an audit key");
        assert!(
            err.contains("a Postgres ledger needs a configured audit key: set DSR_AUDIT_KEY"),
            "{args:?}: {err}"
        );
        assert!(!dir.path().join("hmac.key").exists(), "no key was made up");
    }
}

/// `dsr seed … | head -1`: the command ends quietly when its reader goes, as Unix tools do,
/// instead of panicking on the broken pipe.
#[tokio::test]
async fn a_command_piped_into_head_ends_quietly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["seed", "--tenant", "acme", "--subjects", "200", "--calls", "1"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("acme-acct-000000"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
}
