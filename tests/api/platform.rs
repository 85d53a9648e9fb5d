//! A platform whose tables look nothing like the reference schema, described by a catalog and
//! nothing else (`[stores] default_catalog = false`): tables in three Postgres schemas, other
//! column names, a tenant column called `org_id`, uuid and bigint keys, `timestamptz` times,
//! people blanked and kept while an invoice references them, invoices kept 7 years and
//! restricted. Deletion, export, rectification and retention, judged by reading the tables.
use std::collections::BTreeSet;

use dsr::{
    api::pb::{self, OutcomeState, RequestStatus},
    db::Db,
    startup::Overrides,
    stores::StoreRegistry,
};

use crate::{
    export::{records, unzip},
    helpers::*,
    support,
};

const A: &str = "0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a01";
const B: &str = "0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a02";
const GLOBEX_A: &str = "0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a03";

const SCHEMA: &[&str] = &[
    "CREATE SCHEMA crm",
    "CREATE SCHEMA telephony",
    "CREATE SCHEMA finance",
    "CREATE TABLE crm.people (person_uuid UUID PRIMARY KEY, org_id TEXT NOT NULL, email_address TEXT, \
     mobile TEXT, full_name TEXT, signed_up TIMESTAMPTZ NOT NULL DEFAULT now(), closed_at TIMESTAMPTZ)",
    "CREATE TABLE telephony.calls (call_no BIGINT PRIMARY KEY, org_id TEXT NOT NULL, person_uuid UUID, \
     from_number TEXT, started TIMESTAMPTZ NOT NULL, seconds INT NOT NULL DEFAULT 60)",
    "CREATE TABLE telephony.call_text (id BIGSERIAL PRIMARY KEY, org_id TEXT NOT NULL, call_no BIGINT NOT NULL, \
     body TEXT, created TIMESTAMPTZ NOT NULL)",
    "CREATE TABLE finance.invoices (invoice_id UUID PRIMARY KEY, org_id TEXT NOT NULL, person_uuid UUID, \
     cents BIGINT NOT NULL, issued_on TIMESTAMPTZ NOT NULL, restricted_on TIMESTAMPTZ)",
];

const CATALOG: &str = r#"
[stores]
default_catalog = false

[[catalog]]
name = "people"
table = "crm.people"
key = "person_uuid"
tenant = "org_id"
identity = true
identifiers = [{ column = "email_address", holds = "email" }, { column = "mobile", holds = "phone" }]
name_column = "full_name"
erasure = "blank"
erased_at_column = "closed_at"
kept_while_referenced_by = { store = "invoices", column = "person_uuid" }
time_column = "closed_at"
time_format = "timestamp"
retention_days = 30

[[catalog]]
name = "calls"
table = "telephony.calls"
key = "call_no"
tenant = "org_id"
identifiers = [{ column = "person_uuid", holds = "account_id" }, { column = "from_number", holds = "phone" }]
time_column = "started"
time_format = "timestamp"
retention_days = 365
stage = 1

[[catalog]]
name = "call_text"
table = "telephony.call_text"
tenant = "org_id"
link = { column = "call_no", store = "calls" }
size_of = "body"
time_column = "created"
time_format = "timestamp"
retention_days = 90

[[catalog]]
name = "invoices"
table = "finance.invoices"
key = "invoice_id"
tenant = "org_id"
identifiers = [{ column = "person_uuid", holds = "account_id" }]
erasure = "retain"
retain = { basis = "legal_obligation: invoices are kept 7 years from issue (tax law)", years = 7, restriction_column = "restricted_on" }
time_column = "issued_on"
time_format = "timestamp"
"#;

/// The platform: Ann (A) with an account, two calls (one known only by her phone, written
/// another way) and an invoice; Bo (B) with a recent call and one two years old; Ann's email at
/// another tenant.
const DATA: &[&str] = &[
    "INSERT INTO crm.people (person_uuid, org_id, email_address, mobile, full_name) VALUES \
     ('0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a01', 'acme', ' Ann.Lee@Example.com', '(415) 555-0100', 'Ann Lee'), \
     ('0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a02', 'acme', 'bo@example.com', '+1 415 555 0199', 'Bo Park'), \
     ('0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a03', 'globex', 'ann.lee@example.com', '4155550100', 'Ann Lee')",
    "INSERT INTO telephony.calls (call_no, org_id, person_uuid, from_number, started) VALUES \
     (101, 'acme', '0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a01', '4155550100', now() - interval '2 days'), \
     (102, 'acme', NULL, '+1 (415) 555-0100', now() - interval '1 day'), \
     (201, 'acme', '0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a02', '+14155550199', now() - interval '3 days'), \
     (202, 'acme', '0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a02', '+14155550199', now() - interval '2 years'), \
     (301, 'globex', '0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a03', '4155550100', now())",
    "INSERT INTO telephony.call_text (org_id, call_no, body, created) VALUES \
     ('acme', 101, 'I would like to cancel.', now()), ('acme', 102, 'Calling back.', now()), \
     ('acme', 201, 'Where is my order?', now()), ('acme', 202, 'Old call.', now() - interval '2 years'), \
     ('globex', 301, 'Hello.', now())",
    "INSERT INTO finance.invoices (invoice_id, org_id, person_uuid, cents, issued_on) VALUES \
     ('9f0e0000-0000-4000-8000-000000000001', 'acme', '0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a01', 1999, '2025-06-01T00:00:00Z'), \
     ('9f0e0000-0000-4000-8000-000000000002', 'acme', '0b6c6a52-7f4e-4d61-9a43-5d0c2f1e9a02', 2999, '2025-07-01T00:00:00Z')",
];

async fn platform() -> (TestApp, Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = support::fresh_database(Backend::Postgres, dir.path()).await;
    let db = Db::connect(&url, 2).await.unwrap();
    for s in SCHEMA.iter().chain(DATA) {
        sqlx::query(s).execute(db.pool()).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let settings = support::settings(dir.path(), url, None, &format!("{TEST_CONFIG}{CATALOG}"));
    (spawn_on(settings, dir, Overrides::default()).await, db)
}

async fn keys(db: &Db, sql: &str) -> BTreeSet<String> {
    let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(db.pool()).await.unwrap();
    rows.into_iter().map(|r| r.0).collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn subject(tenant: &str, account: &str, email: &str) -> pb::Subject {
    pb::Subject {
        tenant_id: tenant.into(),
        account_id: account.into(),
        email: email.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_unlike_the_reference_schema_is_erased_exactly_by_its_catalog() {
    let (app, db) = platform().await;
    let r = app.delete(subject("acme", "", "ann.lee@example.com")).await;
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let names: Vec<&str> = done.outcomes.iter().map(|o| o.store.as_str()).collect();
    assert_eq!(names, ["people", "calls", "call_text", "invoices"]);
    for (store, found) in [("people", 1), ("calls", 2), ("call_text", 2)] {
        let o = outcome(&done, store);
        assert_eq!(
            (o.state, o.records_found, o.verified),
            (OutcomeState::Done as i32, found, true),
            "{store}: {o:?}"
        );
    }
    let inv = outcome(&done, "invoices");
    assert_eq!((inv.state, inv.records_found), (OutcomeState::Retained as i32, 1), "{inv:?}");
    assert!(inv.retention_basis.starts_with("legal_obligation: invoices"), "{}", inv.retention_basis);
    let until = inv.retained_until.as_ref().expect("retained until");
    assert_eq!(
        chrono::DateTime::from_timestamp(until.seconds, 0).unwrap().to_rfc3339(),
        "2032-06-01T00:00:00+00:00",
        "7 years from the invoice's issue"
    );

    // Read directly: Ann's calls and their text are gone, Bo's and globex's stay.
    assert_eq!(
        keys(&db, "SELECT CAST(call_no AS TEXT) FROM telephony.calls").await,
        set(&["201", "202", "301"])
    );
    assert_eq!(
        keys(&db, "SELECT CAST(call_no AS TEXT) FROM telephony.call_text").await,
        set(&["201", "202", "301"])
    );
    // Her row is kept bare (her invoice references it) and marked closed; the others keep theirs.
    let (email, mobile, name, closed): (Option<String>, Option<String>, Option<String>, bool) = sqlx::query_as(
        "SELECT email_address, mobile, full_name, closed_at IS NOT NULL FROM crm.people WHERE person_uuid = $1::uuid",
    )
    .bind(A)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((email, mobile, name, closed), (None, None, None, true));
    assert_eq!(
        keys(&db, "SELECT CAST(person_uuid AS TEXT) FROM crm.people WHERE email_address IS NOT NULL").await,
        set(&[B, GLOBEX_A])
    );
    // Her invoice is restricted, Bo's is not.
    assert_eq!(
        keys(&db, "SELECT CAST(person_uuid AS TEXT) FROM finance.invoices WHERE restricted_on IS NOT NULL")
            .await,
        set(&[A])
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_unlike_the_reference_schema_is_exported_rectified_and_swept() {
    let (app, db) = platform().await;
    // Export: uuid keys and timestamptz times come out as text.
    let r = app.export(subject("acme", B, ""), pb::Regime::Gdpr).await;
    assert_eq!(app.wait_terminal(&r.id).await.status, RequestStatus::Completed as i32);
    let files = unzip(&app.download(&r.id, 0).await.unwrap());
    let people = records(&files, "people.json");
    assert_eq!(people.len(), 1);
    assert_eq!(people[0]["person_uuid"], B);
    assert_eq!(people[0]["full_name"], "Bo Park");
    let calls = records(&files, "calls.json");
    let numbers: BTreeSet<i64> = calls.iter().map(|c| c["call_no"].as_i64().unwrap()).collect();
    assert_eq!(numbers, BTreeSet::from([201, 202]));
    assert!(calls[0]["started"].as_str().is_some_and(|t| t.contains(':')), "{:?}", calls[0]);
    assert_eq!(records(&files, "call_text.json").len(), 2);
    assert_eq!(records(&files, "invoices.json").len(), 1);

    // Rectification: the new phone goes to every column holding Bo's phone, in every store.
    let c = app
        .client
        .clone()
        .submit_rectification(pb::SubmitRectificationRequest {
            subject: Some(subject("acme", B, "")),
            corrections: Some(pb::Corrections {
                phone: Some("+14155550123".into()),
                name: Some("Bo Park-Lee".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = app.wait_terminal(&c.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let (mobile, name): (String, String) =
        sqlx::query_as("SELECT mobile, full_name FROM crm.people WHERE person_uuid = $1::uuid")
            .bind(B)
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((mobile.as_str(), name.as_str()), ("+14155550123", "Bo Park-Lee"));
    assert_eq!(
        keys(&db, "SELECT from_number FROM telephony.calls WHERE person_uuid IS NOT NULL AND org_id = 'acme' AND call_no > 200").await,
        set(&["+14155550123"])
    );

    // Retention: Bo's two-year-old call (365 days) and its text (90 days) go; nothing else.
    app.sweep().await;
    assert_eq!(
        keys(&db, "SELECT CAST(call_no AS TEXT) FROM telephony.calls").await,
        set(&["101", "102", "201", "301"])
    );
    assert_eq!(
        keys(&db, "SELECT CAST(call_no AS TEXT) FROM telephony.call_text").await,
        set(&["101", "102", "201", "301"])
    );
    app.shutdown().await;
}

/// The start-time check reads the live column types: a timestamptz column described as epoch
/// milliseconds, a missing column, and a text column holding account ids of another type are
/// named, with their table, before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_that_does_not_fit_the_live_types_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = support::fresh_database(Backend::Postgres, dir.path()).await;
    let db = Db::connect(&url, 2).await.unwrap();
    for s in SCHEMA {
        sqlx::query(s).execute(db.pool()).await.unwrap();
    }
    let wrong = CATALOG
        .replace(
            "time_column = \"started\"\ntime_format = \"timestamp\"",
            "time_column = \"started\"\ntime_format = \"epoch_ms\"",
        )
        .replace("size_of = \"body\"", "size_of = \"transcript\"");
    let settings = support::settings(dir.path(), url, None, &format!("{TEST_CONFIG}{wrong}"));
    let err = StoreRegistry::from_settings(&settings, &db).await.err().expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("store calls: table telephony.calls: column \"started\" is of type timestamptz"),
        "{msg}"
    );
    assert!(
        msg.contains("store call_text: table telephony.call_text: column \"transcript\" is missing"),
        "{msg}"
    );
}

/// Invoices without a restriction column: dsr keeps the restriction in its own ledger
/// (`dsr_restrictions`), never altering the platform's table. The deletion reports RETAINED and
/// verifies, and a preview shows the records under the obligation. The store keeps invoices 10
/// years, but the sweep deletes a restricted one once the legal minimum (7 years) has passed,
/// and its restriction with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_restriction_column_is_restricted_in_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let url = support::fresh_database(Backend::Postgres, dir.path()).await;
    let db = Db::connect(&url, 2).await.unwrap();
    for s in SCHEMA.iter().chain(DATA) {
        sqlx::query(s).execute(db.pool()).await.unwrap();
    }
    sqlx::query("ALTER TABLE finance.invoices DROP COLUMN restricted_on").execute(db.pool()).await.unwrap();
    // An invoice of Ann's from eight years ago: past the legal minimum.
    sqlx::query(
        "INSERT INTO finance.invoices (invoice_id, org_id, person_uuid, cents, issued_on) VALUES \
         ('9f0e0000-0000-4000-8000-000000000003', 'acme', $1::uuid, 500, now() - interval '8 years')",
    )
    .bind(A)
    .execute(db.pool())
    .await
    .unwrap();
    let catalog = CATALOG
        .replace(", restriction_column = \"restricted_on\"", "")
        .replace("time_column = \"issued_on\"", "time_column = \"issued_on\"\nretention_days = 3650");
    let settings = support::settings(dir.path(), url, None, &format!("{TEST_CONFIG}{catalog}"));
    let app = spawn_on(settings, dir, Overrides::default()).await;

    let r = app.delete(subject("acme", A, "")).await;
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let inv = outcome(&done, "invoices");
    assert_eq!(
        (inv.state, inv.records_found, inv.verified),
        (OutcomeState::Retained as i32, 2, true),
        "{inv:?}"
    );
    let restricted = keys(&app.db, "SELECT record_key FROM dsr_restrictions WHERE store = 'invoices'").await;
    assert_eq!(
        restricted,
        set(&["9f0e0000-0000-4000-8000-000000000001", "9f0e0000-0000-4000-8000-000000000003"])
    );
    let preview = app.preview(subject("acme", A, "")).await;
    let held = holdings(&preview, "invoices");
    assert!(held.under_legal_hold && held.records == 2, "{held:?}");

    // The sweep: the store keeps invoices 10 years, but a restricted one goes at the legal
    // minimum (7 years): Ann's eight-year-old invoice, and its restriction, go.
    app.sweep().await;
    assert_eq!(
        keys(&db, "SELECT CAST(invoice_id AS TEXT) FROM finance.invoices").await,
        set(&["9f0e0000-0000-4000-8000-000000000001", "9f0e0000-0000-4000-8000-000000000002"])
    );
    assert_eq!(
        keys(&app.db, "SELECT record_key FROM dsr_restrictions WHERE store = 'invoices'").await,
        set(&["9f0e0000-0000-4000-8000-000000000001"])
    );
    app.shutdown().await;
}
