//! The `dsr` client commands as an operator types them, against a real `dsr serve`: servers
//! named without a scheme, TLS with a client certificate, the hint for a missing token, holds,
//! deadline extensions, list filters and paging, and `status --json` for machines.

#[path = "support/mod.rs"]
mod support;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::Backend;

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

/// `dsr serve` on a random loopback port with `config`; returns once it listens.
fn serve(dir: &Path, db: &str, config: &str) -> Server {
    let cfg = dir.join("dsr.toml");
    std::fs::write(&cfg, config).unwrap();
    let log = dir.join("server.log");
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(db)
        .arg("--config")
        .arg(&cfg)
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .expect("start dsr serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("dsr serve exited with {exit}:\n{text}");
        }
        let addr = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("dsr listening")))
            .and_then(|v| v["fields"]["addr"].as_str().map(|a| a.parse().unwrap()));
        if let Some(addr) = addr {
            return Server { child, addr };
        }
        assert!(Instant::now() < deadline, "dsr serve did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `dsr` with `env`: (success, stdout, stderr).
fn dsr(env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("DSR_TOKEN").env_remove("DSR_SERVER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn seed(dir: &Path, db: &str, tenant: &str, subjects: usize) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["seed", "--tenant", tenant, "--subjects", &subjects.to_string(), "--calls", "2"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--database-url")
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const ENGINE: &str = "[engine]\npoll_interval_ms = 50\nbackoff_base_ms = 10\nbackoff_max_ms = 100\n";

/// Request ids (UUIDs) in the order a command printed them.
fn ids(out: &str) -> Vec<String> {
    out.split_whitespace().filter(|w| uuid::Uuid::parse_str(w).is_ok()).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_scheme_is_reached_and_a_missing_token_says_how_to_pass_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let token = "cli-test-token-0123456789abcdef";
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let server = serve(
        dir.path(),
        &db,
        &format!("{ENGINE}\n[[auth.tokens]]\nname = \"ops\"\ntoken_sha256 = \"{hash}\"\nscopes = [\"dsr.read\", \"dsr.admin\"]\n"),
    );
    let bare = format!("127.0.0.1:{}", server.addr.port());

    let (ok, _, err) = dsr(&[], &["list", "--server", &bare]);
    assert!(!ok);
    assert!(err.contains("Unauthenticated") && err.contains("--token") && err.contains("DSR_TOKEN"), "{err}");
    assert!(!err.contains("scheme is missing"), "{err}");

    let (ok, out, err) = dsr(&[("DSR_SERVER", &bare), ("DSR_TOKEN", token)], &["list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID"), "{out}");

    // Nothing listens there: one clear line, the cause said once.
    let (ok, _, err) = dsr(&[("DSR_TOKEN", token)], &["list", "--server", "127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the dsr server at http://127.0.0.1:1"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

mod tls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    use super::*;

    fn ca() -> (Issuer<'static, KeyPair>, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "dsr test CA");
        let pem = params.self_signed(&key).unwrap().pem();
        (Issuer::new(params, key), pem)
    }

    fn leaf(ca: &Issuer<'static, KeyPair>, cn: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        (params.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cli_speaks_tls_to_the_server_and_presents_its_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
        let (issuer, ca_pem) = ca();
        let (server_cert, server_key) = leaf(&issuer, "dsr", &["localhost", "127.0.0.1"]);
        let (client_cert, client_key) = leaf(&issuer, "ops-laptop", &[]);
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        for (name, text) in [
            ("server.pem", &server_cert),
            ("server.key", &server_key),
            ("ca.pem", &ca_pem),
            ("client.pem", &client_cert),
            ("client.key", &client_key),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let server = serve(
            dir.path(),
            &db,
            &format!(
                "{ENGINE}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n\n\
                 [[auth.certificates]]\nname = \"ops\"\nsubject_cn = \"ops-laptop\"\nscopes = [\"dsr.read\", \"dsr.admin\"]\n",
                p("server.pem"),
                p("server.key"),
                p("ca.pem"),
            ),
        );
        let port = server.addr.port();
        let https = format!("https://127.0.0.1:{port}");
        let mtls = ["--ca-cert", &p("ca.pem"), "--cert", &p("client.pem"), "--key", &p("client.key")];

        let (ok, out, err) = dsr(&[], &[&["list", "--server", &https][..], &mtls].concat());
        assert!(ok, "{err}");
        assert!(out.starts_with("ID"), "{out}");
        // No scheme with TLS options: https, checked against the name the certificate carries.
        let (ok, _, err) = dsr(
            &[("DSR_SERVER", &format!("localhost:{port}"))],
            &[&["audit", "verify"][..], &mtls, &["--tls-server-name", "localhost"]].concat(),
        );
        assert!(ok, "{err}");
        // The server requires a client certificate: without one nothing gets through.
        let (ok, _, err) = dsr(&[], &["list", "--server", &https, "--ca-cert", &p("ca.pem")]);
        assert!(!ok, "{err}");
        // Plain HTTP/2 against the TLS port, or TLS options with http://, fail saying so.
        let (ok, _, err) =
            dsr(&[], &[&["list", "--server", &format!("http://127.0.0.1:{port}")][..], &mtls].concat());
        assert!(!ok && err.contains("use https://"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_extensions_filters_paging_and_json_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let seeded = seed(dir.path(), &db, "acme", 3);
    let server = serve(dir.path(), &db, ENGINE);
    let bare = format!("127.0.0.1:{}", server.addr.port());
    let run = |args: &[&str]| {
        let (ok, out, err) = dsr(&[("DSR_SERVER", &bare)], args);
        assert!(ok, "dsr {args:?} failed: {err}");
        out
    };
    let phone = |i: usize| seeded[i]["phone"].as_str().unwrap().to_owned();

    // A litigation hold on the first subject.
    let out = run(&["holds", "place", "--tenant", "acme", "--phone", &phone(0), "--reason", "case 2026-17"]);
    let hold_id = out.lines().nth(1).and_then(|l| l.split_whitespace().next()).unwrap().to_owned();
    assert!(out.contains("LITIGATION") && !out.contains("case 2026-17"), "{out}");
    let listed = run(&["holds", "list", "--tenant", "acme", "--active"]);
    assert!(listed.contains(&hold_id), "{listed}");

    // Its deletion waits for the hold; the others complete.
    let held = ids(&run(&["delete", "--tenant", "acme", "--phone", &phone(0)]))[0].clone();
    for i in 1..3 {
        let out = run(&["delete", "--tenant", "acme", "--phone", &phone(i), "--watch"]);
        assert!(out.contains("COMPLETED"), "{out}");
    }
    let exported = ids(&run(&["export", "--tenant", "acme", "--phone", &phone(1)]))[0].clone();

    // Filters and paging.
    let page = run(&["list", "--tenant", "acme", "--kind", "deletion", "--limit", "1"]);
    assert_eq!(ids(&page).len(), 1, "{page}");
    let token = page.lines().last().unwrap();
    assert!(token.contains("--page-token"), "{page}");
    let token = token.split_whitespace().nth(2).unwrap().trim_end_matches(',');
    let next =
        run(&["list", "--tenant", "acme", "--kind", "deletion", "--limit", "1", "--page-token", token]);
    assert_eq!(ids(&next).len(), 1, "{next}");
    assert_ne!(ids(&next), ids(&page));
    let all = run(&["list", "--tenant", "acme", "--kind", "deletion", "--limit", "1", "--all"]);
    assert_eq!(ids(&all).len(), 3, "{all}");
    assert!(!ids(&all).contains(&exported), "{all}");
    let kinds = run(&["list", "--tenant", "acme", "--kind", "export"]);
    assert_eq!(ids(&kinds), vec![exported.clone()], "{kinds}");
    let open = run(&["list", "--tenant", "acme", "--status", "in_progress", "--all"]);
    assert!(ids(&open).contains(&held), "a deletion kept by a hold is still in progress: {open}");
    // Paused by the hold: not due, and never overdue, while it stands.
    let soon = run(&["list", "--tenant", "acme", "--kind", "deletion", "--due-within", "31"]);
    assert!(ids(&soon).is_empty(), "{soon}");
    let open_all = run(&["list", "--tenant", "acme", "--due-within", "31", "--all"]);
    assert!(!ids(&open_all).contains(&held) && ids(&open_all).len() <= 1, "only open requests: {open_all}");
    assert!(ids(&run(&["list", "--tenant", "acme", "--overdue"])).is_empty());
    let (ok, _, err) = dsr(&[("DSR_SERVER", &bare)], &["list", "--status", "done"]);
    assert!(!ok && err.contains("--status"), "{err}");

    // Extend once; a second time is refused.
    let before: Value = serde_json::from_str(&run(&["status", &held, "--json"])).unwrap();
    let out = run(&["extend", &held, "--reason", "complex request"]);
    assert!(out.contains(&held), "{out}");
    let after: Value = serde_json::from_str(&run(&["status", &held, "--json"])).unwrap();
    assert_eq!(after["deadline_extended"], true);
    assert!(after["due_at"].as_str().unwrap() > before["due_at"].as_str().unwrap(), "{after}");
    let (ok, _, err) = dsr(&[("DSR_SERVER", &bare)], &["extend", &held, "--reason", "again"]);
    assert!(!ok && err.contains("FailedPrecondition"), "{err}");

    // JSON for machines: RFC 3339 times, the proto's enum names.
    assert_eq!(after["status"], "REQUEST_STATUS_IN_PROGRESS", "{after}");
    assert_eq!(after["kind"], "REQUEST_KIND_DELETION");
    for t in ["created_at", "due_at"] {
        let s = after[t].as_str().unwrap();
        assert!(s.contains('T') && s.ends_with('Z'), "{t}: {s}");
        chrono::DateTime::parse_from_rfc3339(s).unwrap();
    }
    assert_eq!(after["completed_at"], Value::Null);
    let kept = after["outcomes"].as_array().unwrap();
    assert!(
        kept.iter().any(|o| o["state"] == "OUTCOME_STATE_RETAINED"
            && o["retention_basis"].as_str().unwrap().starts_with("litigation_hold")),
        "{after}"
    );

    // Released: the deletion runs to the end.
    let out = run(&["holds", "release", &hold_id, "--reason", "case closed"]);
    assert!(out.contains(&hold_id) && out.contains(" no "), "{out}");
    let done = run(&["watch", &held]);
    assert!(done.contains("COMPLETED"), "{done}");
    let done: Value = serde_json::from_str(&run(&["status", &held, "--json"])).unwrap();
    assert_eq!(done["status"], "REQUEST_STATUS_COMPLETED", "{done}");
    assert!(done["completed_at"].as_str().unwrap().ends_with('Z'));

    // The audit trail pages too.
    let page = run(&["audit", "list", "--tenant", "acme", "--limit", "2"]);
    assert_eq!(page.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count(), 2, "{page}");
    assert!(page.contains("--page-token"), "{page}");
    let every = run(&["audit", "list", "--tenant", "acme", "--limit", "2", "--all"]);
    assert!(every.lines().count() > 6 && !every.contains("--page-token"), "{every}");
}

/// Run from the tour's directory with the tour's environment, `dsr bench` writes nothing there:
/// its data directory and ledger are its own, and gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benchmark_uses_its_own_scratch_never_the_tours_data_directory() {
    let tour = tempfile::tempdir().unwrap();
    let data = tour.path().join("dsr-data");
    let out = Command::new(BIN)
        .args(["bench", "latency", "--rounds", "10"])
        .current_dir(tour.path())
        .env("DSR_DATA_DIR", &data)
        .env("DATABASE_URL", dsr::db::sqlite_url(&data.join("dsr.db")))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("GetRequest over gRPC"));
    let scratch = err
        .lines()
        .find_map(|l| l.strip_prefix("dsr bench: data in "))
        .and_then(|l| l.split(", ledger").next())
        .unwrap_or_else(|| panic!("the scratch directory is not named:\n{err}"))
        .to_owned();
    assert!(!scratch.starts_with(tour.path().to_str().unwrap()), "{scratch}");
    assert!(!Path::new(&scratch).exists(), "the scratch directory is removed: {scratch}");
    assert!(
        !data.exists() && std::fs::read_dir(tour.path()).unwrap().next().is_none(),
        "nothing in the tour's directory"
    );
}

/// `dsr bench latency --history N` copies its first 20 deletions' ledger rows until the ledger
/// holds N finished requests, then measures on that ledger (both backends: the copy reads each
/// table's columns from the catalog, and moves the audit chain's head past the copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_latency_measures_on_a_ledger_with_a_history() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["bench".to_owned(), "latency".into(), "--rounds".into(), "10".into()];
        args.extend(["--history".into(), "200".into()]);
        if backend == Backend::Postgres {
            let url = support::fresh_database(backend, dir.path()).await;
            args.extend(["--database-url".into(), url]);
        }
        let out = Command::new(BIN).args(&args).current_dir(dir.path()).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{backend:?}: {stderr}");
        let history = stdout.lines().find(|l| l.starts_with("history")).unwrap_or_else(|| panic!("{stdout}"));
        assert!(
            history.contains("(200 requests") && history.contains("copied 9 times"),
            "{backend:?}: {history}"
        );
        assert!(stdout.contains("deletion, submit -> COMPLETED"), "{backend:?}: {stdout}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["bench", "latency", "--history", "20000000"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--history: at most 10000000"), "{stderr}");
}
