//! A sixth store added by configuration alone: `agent_notes`, notes the voice agent kept about a
//! caller, linked to the call by `call_id`, in a table the reference schema does not have, with
//! its time as ISO 8601 text. It takes part in deletion, export, rectification, preview and
//! retention like the five reference stores, on both backends — and from another database,
//! found through the request's resolution rather than a join. Judged by reading its table.
use std::collections::BTreeSet;

use chrono::{Duration, SecondsFormat, Utc};
use dsr::{
    api::pb::{self, OutcomeState, RequestStatus},
    seed::MessyFixture,
    startup::Overrides,
    stores::{CandidateRow, Probe, StoreAdapter, StoreResult},
};

use crate::{
    both,
    export::{records, unzip},
    helpers::*,
    support,
};

const NOTES_TABLE: &str =
    "CREATE TABLE agent_notes (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, call_id TEXT, \
     caller_phone TEXT, note TEXT, noted_at TEXT)";

fn catalog(database_url_env: Option<&str>) -> String {
    let db = database_url_env.map(|v| format!("database_url_env = \"{v}\"\n")).unwrap_or_default();
    format!(
        "{TEST_CONFIG}
[[catalog]]
name = \"agent_notes\"
table = \"agent_notes\"
{db}identifiers = [{{ column = \"caller_phone\", holds = \"phone\" }}]
link = {{ column = \"call_id\", store = \"call_logs\" }}
time_column = \"noted_at\"
time_format = \"iso8601\"
retention_days = 30
retention_notice = \"30 days from the note\"
"
    )
}

/// The app with the platform's tables, `agent_notes` among them (in `notes_url`'s database when
/// given), and the messy data with notes on its calls.
async fn app_with_notes(
    backend: Backend,
    notes_url: Option<(&str, String)>,
) -> (TestApp, MessyFixture, dsr::db::Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = support::fresh_platform_database(backend, dir.path()).await;
    let notes_db_url = notes_url.as_ref().map_or(url.clone(), |(_, u)| u.clone());
    let notes = dsr::db::Db::connect(&notes_db_url, 2).await.unwrap();
    sqlx::query(NOTES_TABLE).execute(notes.pool()).await.unwrap();
    let settings = support::settings(dir.path(), url, None, &catalog(notes_url.as_ref().map(|(v, _)| *v)));
    let app = spawn_on(settings, dir, Overrides::default()).await;
    let m = app.seed_messy("acme").await;
    // A note per call, with the call's phone as the agent heard it.
    let calls: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, caller_phone FROM call_logs WHERE tenant_id = 'acme'")
            .fetch_all(app.db.pool())
            .await
            .unwrap();
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    for (call, phone) in &calls {
        note(&notes, &format!("{call}-n"), Some(call), phone.as_deref(), &now).await;
    }
    // One the agent kept without a call (a voicemail callback), by the anonymous caller's phone,
    // and one of family_b's from long ago.
    note(&notes, "acme-anon-note", None, Some("(555) 000-1008"), &now).await;
    let old = (Utc::now() - Duration::days(40)).to_rfc3339_opts(SecondsFormat::Secs, true);
    note(&notes, "acme-fam-b-old-n", Some("acme-fam-b-1"), Some("5550001003"), &old).await;
    (app, m, notes)
}

async fn note(db: &dsr::db::Db, id: &str, call: Option<&str>, phone: Option<&str>, at: &str) {
    sqlx::query("INSERT INTO agent_notes (id, tenant_id, call_id, caller_phone, note, noted_at) VALUES ($1, 'acme', $2, $3, 'Caller asked about billing.', $4)")
        .bind(id)
        .bind(call)
        .bind(phone)
        .bind(at)
        .execute(db.pool())
        .await
        .unwrap();
}

async fn notes(db: &dsr::db::Db) -> BTreeSet<String> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM agent_notes").fetch_all(db.pool()).await.unwrap();
    rows.into_iter().map(|r| r.0).collect()
}

/// The notes of a person's calls, by the seed's ground truth.
fn notes_of(m: &MessyFixture, label: &str) -> BTreeSet<String> {
    m.person(label).records["call_logs"].iter().map(|c| format!("{c}-n")).collect()
}

async fn delete(app: &TestApp, s: pb::Subject) -> pb::DsrRequest {
    let r = app.submit_deletion(s).await.unwrap();
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    done
}

fn acme(account_id: &str, email: &str, phone: &str) -> pb::Subject {
    pb::Subject {
        tenant_id: "acme".into(),
        account_id: account_id.into(),
        email: email.into(),
        phone: phone.into(),
    }
}

async fn a_store_added_by_configuration_takes_part_in_every_deletion(backend: Backend) {
    let (app, m, db) = app_with_notes(backend, None).await;
    let before = notes(&db).await;
    let preview = app.preview(acme("", "mixed.case@example.com", "")).await;
    assert_eq!(holdings(&preview, "agent_notes").records, 3, "PreviewSubject shows the sixth store");

    let done = delete(&app, acme("", "mixed.case@example.com", "")).await;
    let o = outcome(&done, "agent_notes");
    assert_eq!((o.state, o.records_found, o.verified), (OutcomeState::Done as i32, 3, true));
    let mut expected: BTreeSet<String> = before.difference(&notes_of(&m, "mixed_case")).cloned().collect();
    assert_eq!(notes(&db).await, expected, "exactly mixed_case's notes are gone");

    // A family member: the line's anonymous calls are nobody's alone, and so are their notes.
    let done = delete(&app, acme("acme-m-fam-a", "", "")).await;
    let o = outcome(&done, "agent_notes");
    assert_eq!((o.records_found, o.records_unattributed), (2, 2));
    expected = expected.difference(&notes_of(&m, "family_a")).cloned().collect();
    assert_eq!(notes(&db).await, expected);

    // The anonymous caller's note without a call is found by its phone, in a national format.
    let done = delete(&app, acme("", "", "+15550001008")).await;
    assert_eq!(outcome(&done, "agent_notes").records_found, 3);
    expected = expected.difference(&notes_of(&m, "anonymous")).cloned().collect();
    expected.remove("acme-anon-note");
    assert_eq!(notes(&db).await, expected);
    app.shutdown().await;
}
both!(a_store_added_by_configuration_takes_part_in_every_deletion);

async fn a_store_added_by_configuration_is_exported_rectified_and_swept(backend: Backend) {
    let (app, m, db) = app_with_notes(backend, None).await;
    // Export: the person's notes, and the manifest says how long they are kept.
    let r = app.export(acme("acme-m-fam-b", "", ""), pb::Regime::Gdpr).await;
    assert_eq!(app.wait_terminal(&r.id).await.status, RequestStatus::Completed as i32);
    let files = unzip(&app.download(&r.id, 0).await.unwrap());
    let ids: BTreeSet<String> =
        records(&files, "agent_notes.json").iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, BTreeSet::from(["acme-fam-b-1-n".to_owned(), "acme-fam-b-old-n".to_owned()]));
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let entry = manifest["stores"].as_array().unwrap().iter().find(|s| s["store"] == "agent_notes").unwrap();
    assert_eq!(entry["retention"], "30 days from the note");

    // Rectification: the person's notes take the new phone; the shared line's keep theirs.
    let c = app
        .client
        .clone()
        .submit_rectification(pb::SubmitRectificationRequest {
            subject: Some(acme("acme-m-fam-a", "", "")),
            corrections: Some(pb::Corrections { phone: Some("+15559990003".into()), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = app.wait_terminal(&c.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    assert_eq!(outcome(&done, "agent_notes").records_found, 2);
    let phones: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, caller_phone FROM agent_notes").fetch_all(db.pool()).await.unwrap();
    let family_a = notes_of(&m, "family_a");
    for (id, phone) in phones {
        assert_eq!(phone.as_deref() == Some("+15559990003"), family_a.contains(&id), "{id}: {phone:?}");
    }

    // Retention: the 40-day-old note goes at 30 days; everything else stays.
    let before = notes(&db).await;
    app.sweep().await;
    let after = notes(&db).await;
    let gone: Vec<&String> = before.difference(&after).collect();
    assert_eq!(gone, ["acme-fam-b-old-n"], "only the note past its period");
    app.shutdown().await;
}
both!(a_store_added_by_configuration_is_exported_rectified_and_swept);

/// The notes live in a second Postgres database, named by an environment variable: a deletion
/// finds them through the call ids the resolution recorded (no query spans the two databases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_another_database_is_found_through_the_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let second = support::fresh_database(Backend::Postgres, dir.path()).await;
    let var = format!("DSR_TEST_NOTES_DB_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // SAFETY of set_var: the name is this test's own; nothing else reads it.
    unsafe { std::env::set_var(&var, &second) };
    let (app, m, db) = app_with_notes(Backend::Postgres, Some((&var, second.clone()))).await;
    let in_ledger_db: Result<i64, _> =
        sqlx::query_scalar("SELECT COUNT(*) FROM agent_notes").fetch_one(app.db.pool()).await;
    assert!(in_ledger_db.is_err(), "the notes are not in the service's database");
    let before = notes(&db).await;
    let done = delete(&app, acme("", "mixed.case@example.com", "")).await;
    assert_eq!(outcome(&done, "agent_notes").records_found, 3);
    let expected: BTreeSet<String> = before.difference(&notes_of(&m, "mixed_case")).cloned().collect();
    assert_eq!(notes(&db).await, expected);
    app.shutdown().await;
}

/// A store that goes missing while the service runs shows in health (`dsr.store.<name>`) and in
/// `dsr_store_up`, and comes back when its table does.
async fn a_store_that_goes_missing_while_serving_shows_in_health_and_metrics(backend: Backend) {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let config = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n[stores]\ncheck_interval_secs = 1\n",
        catalog(None)
    );
    let dir = tempfile::tempdir().unwrap();
    let url = support::fresh_platform_database(backend, dir.path()).await;
    let platform = dsr::db::Db::connect(&url, 2).await.unwrap();
    sqlx::query(NOTES_TABLE).execute(platform.pool()).await.unwrap();
    let app = spawn_on(support::settings(dir.path(), url, None, &config), dir, Overrides::default()).await;
    let mut health = HealthClient::new(channel(app.addr).await);
    let status = |name: &'static str| {
        let mut h = health.clone();
        async move {
            h.check(HealthCheckRequest { service: name.into() }).await.map(|r| r.into_inner().status).ok()
        }
    };
    let wait_for = |name: &'static str, want: ServingStatus| {
        let status = &status;
        async move {
            // A safety net against a hang, not a timing assertion.
            for _ in 0..300 {
                if status(name).await == Some(want as i32) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("{name} did not become {want:?}");
        }
    };
    wait_for("dsr.store.agent_notes", ServingStatus::Serving).await;
    wait_for("dsr.store.transcripts", ServingStatus::Serving).await;
    sqlx::query("ALTER TABLE agent_notes RENAME TO agent_notes_moved")
        .execute(platform.pool())
        .await
        .unwrap();
    wait_for("dsr.store.agent_notes", ServingStatus::NotServing).await;
    let metrics = crate::metrics::scrape(app.metrics.unwrap()).await;
    assert!(metrics.contains("dsr_store_up{store=\"agent_notes\"} 0"), "{metrics}");
    assert!(metrics.contains("dsr_store_up{store=\"transcripts\"} 1"), "{metrics}");
    assert_eq!(status("dsr.store.transcripts").await, Some(ServingStatus::Serving as i32));
    sqlx::query("ALTER TABLE agent_notes_moved RENAME TO agent_notes")
        .execute(platform.pool())
        .await
        .unwrap();
    wait_for("dsr.store.agent_notes", ServingStatus::Serving).await;
    health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    platform.close().await;
    app.shutdown().await;
}
both!(a_store_that_goes_missing_while_serving_shows_in_health_and_metrics);

/// A store that describes itself and finds candidates, and does none of the four jobs: it
/// writes no stub for them (every accessor keeps its default, `None`).
struct DescribedOnly {
    inner: std::sync::Arc<dyn StoreAdapter>,
}

#[async_trait::async_trait]
impl StoreAdapter for DescribedOnly {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn stage(&self) -> u8 {
        self.inner.stage()
    }
    fn links_to(&self) -> Option<&'static str> {
        self.inner.links_to()
    }
    async fn check_schema(&self) -> Vec<String> {
        self.inner.check_schema().await
    }
    async fn candidates(&self, p: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
        self.inner.candidates(p).await
    }
}

/// A store that offers no concern is SKIPPED in exports, rectifications and deletions (which
/// complete without it), and its records stay, read directly.
async fn a_store_that_offers_no_concern_is_skipped_in_every_request(backend: Backend) {
    let overrides = Overrides {
        wrap_store: Some(Box::new(|inner| -> std::sync::Arc<dyn StoreAdapter> {
            if inner.name() == "transcripts" {
                std::sync::Arc::new(DescribedOnly { inner })
            } else {
                inner
            }
        })),
        ..Default::default()
    };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 2, 3).await;
    let transcripts = app.count("transcripts").await;
    let skipped = |r: &pb::DsrRequest| {
        assert_eq!(r.status, RequestStatus::Completed as i32, "{r:#?}");
        assert_eq!(outcome(r, "transcripts").state, OutcomeState::Skipped as i32, "{r:#?}");
    };

    let r = app.export(by_phone("acme", &s[0].phone), pb::Regime::Gdpr).await;
    skipped(&app.wait_terminal(&r.id).await);
    let files = unzip(&app.download(&r.id, 0).await.unwrap());
    assert!(!files.keys().any(|f| f.starts_with("transcripts")), "{:?}", files.keys());
    assert!(files.contains_key("call_logs.json"), "{:?}", files.keys());

    let r = app
        .client
        .clone()
        .submit_rectification(pb::SubmitRectificationRequest {
            subject: Some(by_phone("acme", &s[0].phone)),
            corrections: Some(pb::Corrections { phone: Some("+15559990007".into()), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    skipped(&app.wait_terminal(&r.id).await);

    let r = app.delete(by_account("acme", &s[1].account_id)).await;
    let done = app.wait_terminal(&r.id).await;
    skipped(&done);
    assert_eq!(outcome(&done, "call_logs").state, OutcomeState::Done as i32, "a later stage still runs");
    assert_eq!(app.count("transcripts").await, transcripts, "read directly: every transcript stays");
    app.shutdown().await;
}
both!(a_store_that_offers_no_concern_is_skipped_in_every_request);
