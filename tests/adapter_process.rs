//! A remote store as deployed: `dsr serve` and the `dsr-voicemail-adapter` binary as two
//! processes. A deletion submitted with a W3C `traceparent` reaches the adapter in the caller's
//! trace (the adapter logs the trace id of each call), erases the subject's voicemail, and no
//! identifier reaches dsr's log.

#[path = "support/otlp.rs"]
mod otlp;
#[path = "support/mod.rs"]
mod support;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dsr::{
    adapter::voicemail::{Voicemail, VoicemailAdapter},
    api::pb::{self, data_subject_rights_client::DataSubjectRightsClient, OutcomeState, RequestStatus},
};
use serde_json::Value;
use support::Backend;

const DSR: &str = env!("CARGO_BIN_EXE_dsr");
const ADAPTER: &str = env!("CARGO_BIN_EXE_dsr-voicemail-adapter");
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_log(log: &Path, child: &mut Child, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("exited with {exit}:\n{text}");
        }
        assert!(Instant::now() < deadline, "{what:?} not logged:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_reaches_the_adapter_process_in_the_callers_trace() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let out = Command::new(DSR)
        .args(["seed", "--tenant", "acme", "--subjects", "2", "--calls", "2", "--database-url", &db])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seeded: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let target = &seeded[1];
    let phone = target["phone"].as_str().unwrap();

    // The adapter's database: a voicemail of the subject's, and one of someone else's.
    let vm_db = dir.path().join("voicemail.db");
    let vm = VoicemailAdapter::open(&dsr::db::sqlite_url(&vm_db)).await.unwrap();
    for (id, p) in [("vm-target", phone), ("vm-other", seeded[0]["phone"].as_str().unwrap())] {
        vm.insert(&Voicemail {
            id: id.into(),
            tenant_id: "acme".into(),
            caller_phone: Some(p.into()),
            transcript: "Call me back.".into(),
            audio: vec![1; 64],
            received_at_ms: chrono::Utc::now().timestamp_millis(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let adapter_port = free_port();
    let adapter_log = dir.path().join("adapter.log");
    let mut adapter = Killed(
        Command::new(ADAPTER)
            .args(["--listen", &format!("127.0.0.1:{adapter_port}"), "--database"])
            .arg(&vm_db)
            .env("RUST_LOG", "info")
            .env("VOICEMAIL_ADAPTER_TOKEN", "adapter-secret-1")
            .stderr(std::fs::File::create(&adapter_log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_log(&adapter_log, &mut adapter.0, "voicemail adapter listening");

    let cfg = dir.path().join("dsr.toml");
    std::fs::write(
        &cfg,
        format!(
            "[engine]\npoll_interval_ms = 50\nbackoff_base_ms = 10\nbackoff_max_ms = 100\n\n\
             [[catalog]]\nkind = \"grpc\"\nname = \"voicemail\"\nurl = \"http://127.0.0.1:{adapter_port}\"\n\
             token_env = \"VOICEMAIL_TOKEN\"\ntimeout_ms = 5000\n"
        ),
    )
    .unwrap();
    let (collector, _received) = otlp::start().await;
    let dsr_log = dir.path().join("dsr.log");
    let mut cmd = Command::new(DSR);
    cmd.args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0", "--database-url", &db, "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "debug,h2=info,tower=info,hyper=info,sqlx=warn")
        .env("VOICEMAIL_TOKEN", "adapter-secret-1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stderr(std::fs::File::create(&dsr_log).unwrap())
        .stdout(Stdio::null());
    let mut server = Killed(cmd.spawn().unwrap());
    let text = wait_for_log(&dsr_log, &mut server.0, "dsr listening");
    let addr: String = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v["fields"]["addr"].as_str().map(str::to_owned))
        .unwrap();

    let mut c = DataSubjectRightsClient::connect(format!("http://{addr}")).await.unwrap();
    let mut call = tonic::Request::new(pb::SubmitDeletionRequest {
        subject: Some(pb::Subject { tenant_id: "acme".into(), phone: phone.into(), ..Default::default() }),
        ..Default::default()
    });
    call.metadata_mut()
        .insert("traceparent", format!("00-{CALLER_TRACE}-00f067aa0ba902b7-01").parse().unwrap());
    let id = c.submit_deletion(call).await.unwrap().into_inner().id;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let r = c.get_request(pb::GetRequestRequest { id: id.clone() }).await.unwrap().into_inner();
        if r.status != RequestStatus::Pending as i32 && r.status != RequestStatus::InProgress as i32 {
            break r;
        }
        assert!(Instant::now() < deadline, "the request did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let o = done.outcomes.iter().find(|o| o.store == "voicemail").unwrap();
    assert_eq!((o.state, o.records_affected, o.verified), (OutcomeState::Done as i32, 1, true), "{o:?}");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM voicemails").fetch_all(vm.db().pool()).await.unwrap();
    assert_eq!(left, ["vm-other"]);

    // The adapter saw the caller's trace on its Erase (and the task and attempt).
    let adapter_text = std::fs::read_to_string(&adapter_log).unwrap();
    let erase = adapter_text
        .lines()
        .find(|l| l.contains("\"Erase\""))
        .unwrap_or_else(|| panic!("no Erase in the adapter's log:\n{adapter_text}"));
    assert!(erase.contains(CALLER_TRACE), "{erase}");
    // dsr's log holds neither the subject's identifiers nor the adapter's token.
    let dsr_text = std::fs::read_to_string(&dsr_log).unwrap();
    for canary in
        [phone, phone.trim_start_matches('+'), target["email"].as_str().unwrap(), "adapter-secret-1"]
    {
        assert!(!dsr_text.contains(canary), "dsr's log contains {canary}");
    }
}
