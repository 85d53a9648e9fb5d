//! Exact erasure on messy data (`dsr seed --messy`), through the real server: each case that once
//! ended COMPLETED and `verified` while a person's data stayed, or while someone else's went.
//! Every verdict reads the tables and the recordings directory directly, against the seed's own
//! ground truth — never through the service's queries or PreviewSubject.
use std::collections::{BTreeMap, BTreeSet};

use dsr::{
    api::pb::{self, OutcomeState, RequestStatus},
    seed::MessyFixture,
};
use tonic::Code;

use crate::{
    both,
    export::{records, unzip},
    helpers::*,
};

const STORES: [&str; 5] = ["accounts", "call_logs", "transcripts", "recordings", "billing"];

impl TestApp {
    pub async fn seed_messy(&self, tenant: &str) -> MessyFixture {
        let objects = dsr::stores::open_object_store(&self.settings.recordings_url).unwrap();
        dsr::seed::seed_messy(&self.db, &Default::default(), objects, tenant, chrono::Utc::now())
            .await
            .unwrap()
    }

    /// What each store holds now, read from the tables directly (`support::live_keys`).
    pub async fn live_keys(&self, tenant: &str) -> BTreeMap<&'static str, BTreeSet<String>> {
        crate::support::live_keys(&self.db, tenant).await
    }

    /// Whether a recording is on disk, by the exact key the platform stored.
    pub fn recording_present(&self, key: &str) -> bool {
        self.dir.path().join("recordings").join(key.trim_start_matches('/')).exists()
    }

    pub async fn submit_deletion(&self, subject: pb::Subject) -> Result<pb::DsrRequest, tonic::Status> {
        self.client
            .clone()
            .submit_deletion(pb::SubmitDeletionRequest { subject: Some(subject), ..Default::default() })
            .await
            .map(|r| r.into_inner())
    }
}

fn subject(account_id: &str, email: &str, phone: &str) -> pb::Subject {
    pb::Subject {
        tenant_id: "acme".into(),
        account_id: account_id.into(),
        email: email.into(),
        phone: phone.into(),
    }
}

/// `before` minus the person's records, per store.
fn without(
    before: &BTreeMap<&'static str, BTreeSet<String>>,
    records: &BTreeMap<&'static str, BTreeSet<String>>,
) -> BTreeMap<&'static str, BTreeSet<String>> {
    before
        .iter()
        .map(|(store, keys)| {
            let theirs = records.get(store).cloned().unwrap_or_default();
            (*store, keys.difference(&theirs).cloned().collect())
        })
        .collect()
}

/// Deletes a person named by a caller, waits for the end, and checks: COMPLETED, every store
/// verified, found = the seed's count of their records, and the tables now hold exactly what
/// they held minus those records.
async fn delete_exactly(app: &TestApp, m: &MessyFixture, label: &str, s: pb::Subject) -> pb::DsrRequest {
    let person = m.person(label);
    let before = app.live_keys("acme").await;
    let r = app.submit_deletion(s).await.unwrap_or_else(|e| panic!("{label}: {e}"));
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{label}: {done:#?}");
    for store in STORES {
        let o = outcome(&done, store);
        let theirs = person.records.get(store).map_or(0, |k| k.len() as u64);
        assert_eq!(o.records_found, theirs, "{label} {store}: found");
        assert!(o.verified, "{label} {store}: verified");
    }
    assert_eq!(
        app.live_keys("acme").await,
        without(&before, &person.records),
        "{label}: exactly their records"
    );
    for key in &person.objects {
        assert!(!app.recording_present(key), "{label}: {key} is gone");
    }
    done
}

/// `Subject2@Example.COM` and `" padded@example.com \n"` as stored; the caller types them in lower
/// case. Calls in `(555) 000-1001`, `+1 555-000-1001` and `15550001001`; recordings under keys
/// with `#`, `%`, `'`, `?`, `+`, `é`, spaces and a leading `/`.
async fn an_email_stored_in_mixed_case_or_padded_erases_every_record_in_every_format(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed("acme", 2, 2).await;
    let m = app.seed_messy("acme").await;
    let done = delete_exactly(&app, &m, "mixed_case", subject("", "mixed.case@example.com", "")).await;
    assert_eq!(outcome(&done, "call_logs").records_found, 3, "all three phone formats");
    assert_eq!(outcome(&done, "recordings").records_found, 3);
    delete_exactly(&app, &m, "padded", subject("", "padded@example.com", "")).await;
    // Everyone else's objects are all still there.
    for p in m.people.iter().filter(|p| !["mixed_case", "padded"].contains(&p.label)) {
        for key in &p.objects {
            assert!(app.recording_present(key), "{}: {key}", p.label);
        }
    }
    app.shutdown().await;
}
both!(an_email_stored_in_mixed_case_or_padded_erases_every_record_in_every_format);

/// One person's email with another's phone: refused, nothing written, nobody erased.
async fn two_people_in_one_request_are_refused_and_nothing_is_written(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = app.seed_messy("acme").await;
    let before = app.live_keys("acme").await;
    let (requests, events) = (app.count("dsr_requests").await, app.count("dsr_events").await);
    for s in [
        subject("", "mixed.case@example.com", "+15550001002"),
        subject("acme-m-padded", "", "+15550001008"),
        subject("acme-m-padded", "fam.a@example.com", ""),
    ] {
        let err = app.submit_deletion(s).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().starts_with("subject: the identifiers name different people"),
            "{}",
            err.message()
        );
        for person in &m.people {
            for v in [&person.email, &person.phone].into_iter().flatten() {
                assert!(!err.message().contains(v.as_str()), "no personal data in the message");
            }
        }
    }
    assert_eq!((app.count("dsr_requests").await, app.count("dsr_events").await), (requests, events));
    assert_eq!(app.live_keys("acme").await, before);
    app.shutdown().await;
}
both!(two_people_in_one_request_are_refused_and_nothing_is_written);

/// A family shares one line. By the shared phone: refused. By one member's account id: that
/// member's records go; the other member's stay; the line's anonymous calls (nobody's alone)
/// stay and are counted.
async fn a_shared_family_line_erases_one_member_and_counts_the_lines_calls(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = app.seed_messy("acme").await;
    let err = app.submit_deletion(subject("", "", "+15550001003")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("subject.phone: matches 2 accounts"), "{}", err.message());
    let done = delete_exactly(&app, &m, "family_a", subject("acme-m-fam-a", "", "")).await;
    for (store, n) in
        [("accounts", 0), ("call_logs", 2), ("transcripts", 2), ("recordings", 2), ("billing", 1)]
    {
        assert_eq!(outcome(&done, store).records_unattributed, n, "{store}");
    }
    let live = app.live_keys("acme").await;
    for (store, keys) in m.person("family_b").records.iter().chain(m.unattributed.iter()) {
        assert!(keys.is_subset(&live[store]), "{store}: the other member and the shared line stay");
    }
    for key in m.person("family_b").objects.iter().chain(m.unattributed_objects.iter()) {
        assert!(app.recording_present(key), "{key}");
    }
    app.shutdown().await;
}
both!(a_shared_family_line_erases_one_member_and_counts_the_lines_calls);

/// Two accounts with one email (`dup@example.com`, `" Dup@Example.COM"`): by the email, refused; by
/// one account's id, only that account's data goes.
async fn a_duplicate_email_is_refused_and_one_account_goes_by_its_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = app.seed_messy("acme").await;
    let err = app.submit_deletion(subject("", "dup@example.com", "")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("subject.email: matches 2 accounts"), "{}", err.message());
    delete_exactly(&app, &m, "dup_a", subject("acme-m-dup-a", "", "")).await;
    let live = app.live_keys("acme").await;
    for (store, keys) in &m.person("dup_b").records {
        assert!(keys.is_subset(&live[store]), "{store}: the other account is untouched");
    }
    app.shutdown().await;
}
both!(a_duplicate_email_is_refused_and_one_account_goes_by_its_id);

/// Anonymous calls made before signup belong to the account that now holds the number; calls
/// linked only by account id (no phone, or another number) are found; an anonymous caller is a
/// subject of their own; a terminated account is erased like any other.
async fn calls_before_signup_by_account_only_and_anonymous_callers_are_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = app.seed_messy("acme").await;
    let done = delete_exactly(&app, &m, "before_signup", subject("", "signup@example.com", "")).await;
    assert_eq!(outcome(&done, "call_logs").records_found, 3);
    delete_exactly(&app, &m, "account_only", subject("", "acct.only@example.com", "")).await;
    delete_exactly(&app, &m, "anonymous", subject("", "", "+15550001008")).await;
    delete_exactly(&app, &m, "terminated", subject("", "", "+15550001006")).await;
    app.shutdown().await;
}
both!(calls_before_signup_by_account_only_and_anonymous_callers_are_found);

/// The stores whose records an archive holds as a JSON file, and that file.
const RECORD_FILES: [(&str, &str); 4] = [
    ("accounts", "accounts.json"),
    ("call_logs", "call_logs.json"),
    ("transcripts", "transcripts.json"),
    ("billing", "billing.json"),
];

/// The ids of the records in one of an archive's JSON files.
fn exported_ids(files: &BTreeMap<String, Vec<u8>>, file: &str) -> BTreeSet<String> {
    records(files, file).iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

/// An export of a person whose data is messy holds all of their records and only theirs.
async fn an_export_of_messy_data_holds_every_record_of_the_person_and_no_one_elses(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = app.seed_messy("acme").await;
    let person = m.person("mixed_case");
    let r = app.export(subject("", "Mixed.Case@example.com", ""), pb::Regime::Gdpr).await;
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let files = unzip(&app.download(&r.id, 0).await.unwrap());
    for (store, file) in RECORD_FILES {
        assert_eq!(&exported_ids(&files, file), &person.records[store], "{file}");
    }
    let audio: Vec<&String> = files.keys().filter(|k| k.starts_with("recordings/")).collect();
    assert_eq!(audio.len(), person.objects.len(), "{audio:?}");
    // Not a byte of anybody else's identifiers.
    let all = files.values().flatten().copied().collect::<Vec<u8>>();
    let text = String::from_utf8_lossy(&all);
    for other in m.people.iter().filter(|p| p.label != "mixed_case") {
        assert!(!text.contains(&format!("\"acme-{}", other.label)), "{}", other.label);
        for key in other.records.values().flatten() {
            assert!(!text.contains(&format!("\"{key}\"")), "{}: {key}", other.label);
        }
    }
    app.shutdown().await;
}
both!(an_export_of_messy_data_holds_every_record_of_the_person_and_no_one_elses);

/// Every person of the messy data, exported (named by their account when they have one): each
/// store's part holds exactly the seed's records of theirs. An export finds a person's records
/// as each store writes its part, a batch at a time (`resolve::walk`), not from a resolution
/// made at submit; this holds it to the same ground truth as the deletions above.
async fn every_messy_person_exports_exactly_their_records(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed("acme", 2, 2).await;
    let m = app.seed_messy("acme").await;
    for person in &m.people {
        let s = match (&person.account_id, &person.phone, &person.email) {
            (Some(a), _, _) => subject(a, "", ""),
            (None, Some(p), _) => subject("", "", p),
            (None, None, Some(e)) => subject("", e, ""),
            _ => panic!("{}: no identifier", person.label),
        };
        let r = app.export(s, pb::Regime::Gdpr).await;
        let done = app.wait_terminal(&r.id).await;
        assert_eq!(done.status, RequestStatus::Completed as i32, "{}: {done:#?}", person.label);
        let files = unzip(&app.download(&r.id, 0).await.unwrap());
        for (store, file) in RECORD_FILES {
            let theirs = person.records.get(store).cloned().unwrap_or_default();
            assert_eq!(exported_ids(&files, file), theirs, "{} {file}", person.label);
            assert_eq!(outcome(&done, store).records_found, theirs.len() as u64, "{} {store}", person.label);
        }
        let audio = files.keys().filter(|k| k.starts_with("recordings/")).count();
        assert_eq!(audio, person.objects.len(), "{}: recordings", person.label);
    }
    app.shutdown().await;
}
both!(every_messy_person_exports_exactly_their_records);

/// A phone correction reaches every row of the person however the old phone was written, and
/// no row of the shared line or of anyone else.
async fn a_rectification_of_messy_data_corrects_every_row_of_the_person_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let m = app.seed_messy("acme").await;
    let r = app
        .client
        .clone()
        .submit_rectification(pb::SubmitRectificationRequest {
            subject: Some(subject("acme-m-fam-a", "", "")),
            corrections: Some(pb::Corrections { phone: Some("+15559990003".into()), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let person = m.person("family_a");
    for (table, store) in
        [("call_logs", "call_logs"), ("transcripts", "transcripts"), ("recordings", "recordings")]
    {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as(&format!("SELECT id, caller_phone FROM {table} WHERE tenant_id = 'acme'"))
                .fetch_all(app.db.pool())
                .await
                .unwrap();
        for (id, phone) in rows {
            let theirs = person.records[store].contains(&id);
            assert_eq!(phone.as_deref() == Some("+15559990003"), theirs, "{table} {id}: {phone:?}");
        }
    }
    let phones: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT id, phone FROM accounts WHERE id IN ('acme-m-fam-a', 'acme-m-fam-b') ORDER BY id",
    )
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    assert_eq!(phones[0].1.as_deref(), Some("+15559990003"));
    assert_eq!(phones[1].1.as_deref(), Some("5550001003"), "the other member keeps the line");
    assert_eq!(outcome(&done, "call_logs").records_unattributed, 2);
    assert_eq!(outcome(&done, "call_logs").state, OutcomeState::Done as i32);
    app.shutdown().await;
}
both!(a_rectification_of_messy_data_corrects_every_row_of_the_person_only);
