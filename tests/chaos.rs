//! The fault campaign's short version (`dsr chaos --short`) against the real binary and a
//! Postgres cluster it starts itself: kill -9 rounds, a killed replica, Postgres restarted fast
//! and immediate, a paused worker, SIGTERM, an erroring and a hanging store — and no violation.
use std::{os::unix::fs::PermissionsExt, process::Command};

const BIN: &str = env!("CARGO_BIN_EXE_dsr");

#[test]
fn a_short_fault_campaign_finds_no_violation() {
    let dir = tempfile::tempdir().unwrap();
    // The campaign's Postgres runs as `postgres` when the tests run as root: it must reach it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let summary = dir.path().join("summary.json");
    let out = Command::new(BIN)
        .args(["chaos", "--short", "--seed", "16"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--summary")
        .arg(&summary)
        .output()
        .expect("run dsr chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dsr chaos failed:\n{stdout}\n{stderr}");
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    eprintln!("{stdout}");
    assert_eq!(figures["violations"], serde_json::json!([]), "{stdout}");
    assert!(figures["kills"].as_u64().unwrap() >= 9, "{stdout}");
    assert_eq!(figures["pg_restarts"], 2);
    assert_eq!(figures["pauses"], 1);
    assert_eq!(figures["store_outages"], 2);
    assert_eq!(figures["unacknowledged"], 0, "{stdout}");
    assert_eq!(figures["acknowledged"], figures["completed"], "{stdout}");
    let timings = figures["timings"].as_object().unwrap();
    for measured in [
        "shutdown after SIGTERM",
        "Postgres fast restart: first deletion acknowledged after it was back",
        "Postgres immediate restart: first deletion acknowledged after it was back",
        "kill storm: all ended after the last kill",
    ] {
        assert!(timings.contains_key(measured), "{measured} was not measured:\n{stdout}");
    }
}
