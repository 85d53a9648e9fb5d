//! The audit record (issue 7): every state change is a link of one hash chain; the chain holds
//! no personal data, can be searched by one identifier, detects each kind of tampering done
//! directly in the database, stays linear under concurrent workers and replicas, and survives
//! pruning.
use chrono::{Duration, Utc};
use dsr::{
    api::pb::{self, RequestStatus},
    clock::{ManualClock, SharedClock},
    ledger::{chain_hash, EventRecord, Ledger, GENESIS_HASH},
    startup::Overrides,
};
use tonic::Code;

use crate::{both, helpers::*};

/// Every event, oldest first, read through ListAuditEvents in small pages (so paging is used).
async fn all_events(app: &TestApp, filter: pb::ListAuditEventsRequest) -> Vec<pb::AuditEvent> {
    let mut client = app.audit().await;
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size: 5,
                page_token: token.clone(),
                ..filter.clone()
            })
            .await
            .expect("list audit events")
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn everything() -> pb::ListAuditEventsRequest {
    pb::ListAuditEventsRequest::default()
}

async fn verify(app: &TestApp) -> pb::VerifyAuditLogResponse {
    app.audit().await.verify_audit_log(pb::VerifyAuditLogRequest {}).await.expect("verify").into_inner()
}

async fn exec(app: &TestApp, sql: &str) {
    sqlx::query(sql).execute(app.db.pool()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Checks the events are the whole chain from its start: seqs 1..=n without gaps, each linked
/// to the one before.
fn assert_linked_from_the_start(events: &[pb::AuditEvent]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "gapless");
        let prev = if i == 0 { GENESIS_HASH } else { &events[i - 1].hash };
        assert_eq!(e.prev_hash, prev, "event {} links to the one before", e.seq);
        assert_eq!(e.hash.len(), 64);
    }
}

/// A server with one completed deletion of one subject: 12 events (submitted, task_started and
/// outcome for each of five stores, completed).
async fn one_deletion(backend: Backend) -> (TestApp, Vec<pb::AuditEvent>) {
    let app = spawn_app(backend).await;
    let s = app.seed("acme", 1, 2).await;
    let r = app.delete(by_phone("acme", &s[0].phone)).await;
    assert_eq!(app.wait_terminal(&r.id).await.status, RequestStatus::Completed as i32);
    let events = all_events(&app, everything()).await;
    assert_eq!(events.len(), 12, "{events:#?}");
    let v = verify(&app).await;
    assert!(v.ok && v.events_checked == 12 && v.first_bad_event == 0, "{v:?}");
    (app, events)
}

fn assert_broken_at(v: &pb::VerifyAuditLogResponse, seq: u64) {
    assert!(!v.ok, "{v:?}");
    assert_eq!(v.first_bad_event, seq, "{v:?}");
    assert!(!v.reason.is_empty());
}

async fn a_deletion_records_its_events_in_order_in_a_verifiable_chain(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = app.seed("acme", 1, 3).await;
    let r = app.delete(by_email("acme", &s[0].email)).await;
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32);

    let events =
        all_events(&app, pb::ListAuditEventsRequest { request_id: r.id.clone(), ..Default::default() }).await;
    assert_linked_from_the_start(&events);
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions.first(), Some(&"submitted"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"completed"), "{actions:?}");
    assert_eq!(actions.len(), 12, "{actions:?}");
    let submitted = &events[0];
    assert_eq!(submitted.actor, "anonymous");
    assert_eq!(submitted.subject_tag.len(), 64);
    // Named by email; the account row added the phone and account id: one tag each.
    assert_eq!(submitted.subject_tags.len(), 3);
    for o in &done.outcomes {
        let of_store = |action: &str| {
            events
                .iter()
                .find(|e| e.store == o.store && e.action == action)
                .unwrap_or_else(|| panic!("no {action} event for {}", o.store))
        };
        let (started, outcome) = (of_store("task_started"), of_store("outcome"));
        assert!(started.seq < outcome.seq, "{}: started before its outcome", o.store);
        assert_eq!(started.attempt, 1);
        assert_eq!((outcome.records_found, outcome.records_affected), (o.records_found, o.records_affected));
        assert_eq!(outcome.tenant_id, "acme");
        assert_eq!(outcome.request_id, r.id);
    }
    let v = verify(&app).await;
    assert_eq!((v.ok, v.events_checked, v.first_bad_event), (true, 12, 0), "{v:?}");
    app.shutdown().await;
}
both!(a_deletion_records_its_events_in_order_in_a_verifiable_chain);

async fn no_event_holds_a_phone_email_name_or_idempotency_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = app.seed("acme", 2, 2).await;
    let name: String = sqlx::query_scalar("SELECT name FROM accounts WHERE id = $1")
        .bind(&s[0].account_id)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    let key = "idem-canary-7f3a";
    let r = app
        .client
        .clone()
        .submit_deletion(pb::SubmitDeletionRequest {
            subject: Some(pb::Subject {
                tenant_id: "acme".into(),
                email: s[0].email.to_uppercase(),
                phone: s[0].phone.clone(),
                ..Default::default()
            }),
            idempotency_key: key.into(),
            requested_by: "privacy-desk".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    app.wait_terminal(&r.id).await;
    let r2 = app.delete(by_phone("acme", &s[1].phone)).await;
    app.client.clone().cancel_request(pb::CancelRequestRequest { id: r2.id.clone() }).await.ok();
    app.wait_terminal(&r2.id).await;

    let mut dump = String::new();
    for e in all_events(&app, everything()).await {
        dump.push_str(&format!("{e:?}\n"));
    }
    for table in ["dsr_events", "dsr_event_subjects", "dsr_event_journal"] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}")).fetch_all(app.db.pool()).await.unwrap();
        for row in rows {
            use sqlx::{Column, Row};
            for c in row.columns() {
                if let Ok(Some(v)) = row.try_get::<Option<String>, _>(c.ordinal()) {
                    dump.push_str(&v);
                    dump.push('\n');
                }
            }
        }
    }
    assert!(dump.contains("submitted"), "the dump has the events");
    for subject in &s {
        let digits = subject.phone.trim_start_matches('+');
        for canary in [subject.phone.as_str(), digits, &subject.email, &subject.email.to_uppercase()] {
            assert!(!dump.contains(canary), "the audit log holds an identifier");
        }
    }
    assert!(!dump.contains(&name), "the audit log holds a name");
    assert!(!dump.contains(key), "the audit log holds an idempotency key");
    app.shutdown().await;
}
both!(no_event_holds_a_phone_email_name_or_idempotency_key);

async fn one_identifier_finds_every_event_of_that_persons_requests(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 2, 1).await;
    app.seed("globex", 2, 1).await;
    let r0 = app.delete(by_email("acme", &acme[0].email)).await;
    let r1 = app.delete(by_phone("acme", &acme[1].phone)).await;
    let g0 = app.delete(by_phone("globex", &acme[0].phone)).await;
    for id in [&r0.id, &r1.id, &g0.id] {
        app.wait_terminal(id).await;
    }
    let by = |tenant: &str, subject: &str| pb::ListAuditEventsRequest {
        tenant_id: tenant.into(),
        subject: subject.into(),
        ..Default::default()
    };
    let requests_of = |events: Vec<pb::AuditEvent>| {
        let mut ids: Vec<String> = events.into_iter().map(|e| e.request_id).collect();
        ids.dedup();
        ids
    };
    // Submitted by email: found by the phone the account row linked, and by the email in any case.
    for identifier in [acme[0].phone.clone(), acme[0].email.to_uppercase(), acme[0].account_id.clone()] {
        let events = all_events(&app, by("acme", &identifier)).await;
        assert_eq!(events.len(), 12);
        assert_eq!(requests_of(events), vec![r0.id.clone()]);
    }
    assert_eq!(requests_of(all_events(&app, by("acme", &acme[1].email)).await), vec![r1.id.clone()]);
    assert_eq!(requests_of(all_events(&app, by("globex", &acme[0].phone)).await), vec![g0.id.clone()]);
    assert!(all_events(&app, by("acme", "+15559999999")).await.is_empty());
    let tenant_only =
        all_events(&app, pb::ListAuditEventsRequest { tenant_id: "globex".into(), ..Default::default() })
            .await;
    assert!(tenant_only.iter().all(|e| e.tenant_id == "globex") && tenant_only.len() == 12);

    let mut client = app.audit().await;
    let err = client.list_audit_events(by("", &acme[0].phone)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("tenant_id"), "{}", err.message());
    assert!(!err.message().contains(&acme[0].phone));
    let err = client.list_audit_events(by("acme", "two words")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("subject"), "{}", err.message());
    let err = client
        .list_audit_events(pb::ListAuditEventsRequest { page_token: "zz".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("page_token"), "{}", err.message());
    app.shutdown().await;
}
both!(one_identifier_finds_every_event_of_that_persons_requests);

async fn an_edited_event_is_detected_at_its_sequence_number(backend: Backend) {
    let (app, _) = one_deletion(backend).await;
    exec(&app, "UPDATE dsr_events SET records_found = 0 WHERE seq = 7").await;
    assert_broken_at(&verify(&app).await, 7);
    app.shutdown().await;
}
both!(an_edited_event_is_detected_at_its_sequence_number);

async fn an_edited_event_with_a_recomputed_hash_is_detected_at_the_next_one(backend: Backend) {
    let (app, events) = one_deletion(backend).await;
    let e = &events[6];
    assert_eq!(chain_hash(&record_of(e)), e.hash);
    let mut forged = record_of(e);
    forged.detail = Some("skipped".into());
    let hash = chain_hash(&forged);
    sqlx::query("UPDATE dsr_events SET detail = $1, hash = $2 WHERE seq = $3")
        .bind(&forged.detail)
        .bind(&hash)
        .bind(e.seq as i64)
        .execute(app.db.pool())
        .await
        .unwrap();
    assert_broken_at(&verify(&app).await, e.seq + 1);
    app.shutdown().await;
}
both!(an_edited_event_with_a_recomputed_hash_is_detected_at_the_next_one);

async fn a_deleted_event_is_detected_at_the_event_after_the_gap(backend: Backend) {
    let (app, _) = one_deletion(backend).await;
    exec(&app, "DELETE FROM dsr_events WHERE seq = 5").await;
    assert_broken_at(&verify(&app).await, 6);
    app.shutdown().await;
}
both!(a_deleted_event_is_detected_at_the_event_after_the_gap);

async fn an_event_deleted_from_the_end_is_detected_at_its_sequence_number(backend: Backend) {
    let (app, _) = one_deletion(backend).await;
    exec(&app, "DELETE FROM dsr_events WHERE seq = 12").await;
    assert_broken_at(&verify(&app).await, 12);
    app.shutdown().await;
}
both!(an_event_deleted_from_the_end_is_detected_at_its_sequence_number);

async fn two_swapped_events_are_detected_at_the_first_of_them(backend: Backend) {
    let (app, _) = one_deletion(backend).await;
    exec(&app, "UPDATE dsr_events SET seq = -1 WHERE seq = 4").await;
    exec(&app, "UPDATE dsr_events SET seq = 4 WHERE seq = 9").await;
    exec(&app, "UPDATE dsr_events SET seq = 9 WHERE seq = -1").await;
    assert_broken_at(&verify(&app).await, 4);
    app.shutdown().await;
}
both!(two_swapped_events_are_detected_at_the_first_of_them);

/// An attacker who knows the algorithm forges a well-hashed event linked to the one before.
fn forged_after(prev: &pb::AuditEvent, seq: u64) -> EventRecord {
    let mut e = record_of(prev);
    e.seq = seq as i64;
    e.action = "outcome".into();
    e.store = Some("billing".into());
    e.attempt = Some(1);
    e.records_found = Some(0);
    e.records_affected = Some(0);
    e.subject_tags = Vec::new();
    e.prev_hash = Some(prev.hash.clone());
    e.hash = Some(chain_hash(&e));
    e
}

fn record_of(e: &pb::AuditEvent) -> EventRecord {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let at = e.at.as_ref().unwrap();
    EventRecord {
        seq: e.seq as i64,
        at: chrono::DateTime::from_timestamp(at.seconds, at.nanos as u32).unwrap(),
        request_id: opt(&e.request_id),
        tenant_id: opt(&e.tenant_id),
        store: opt(&e.store),
        action: e.action.clone(),
        attempt: (e.attempt > 0).then_some(e.attempt.into()),
        records_found: (e.action == "outcome" || e.action.ends_with("_requested"))
            .then_some(e.records_found as i64),
        records_affected: (e.action == "outcome" || e.action.ends_with("_requested"))
            .then_some(e.records_affected as i64),
        actor: opt(&e.actor),
        subject_tag: opt(&e.subject_tag),
        detail: opt(&e.detail),
        subject_tags: e.subject_tags.clone(),
        prev_hash: opt(&e.prev_hash),
        hash: opt(&e.hash),
    }
}

async fn insert(app: &TestApp, e: &EventRecord) {
    sqlx::query(
        "INSERT INTO dsr_events (seq, at, request_id, tenant_id, store, action, attempt, records_found, \
         records_affected, actor, subject_tag, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(e.seq)
    .bind(e.at.timestamp_millis())
    .bind(&e.request_id)
    .bind(&e.tenant_id)
    .bind(&e.store)
    .bind(&e.action)
    .bind(e.attempt)
    .bind(e.records_found)
    .bind(e.records_affected)
    .bind(&e.actor)
    .bind(&e.subject_tag)
    .bind(&e.detail)
    .bind(&e.prev_hash)
    .bind(&e.hash)
    .execute(app.db.pool())
    .await
    .unwrap();
}

async fn an_event_inserted_after_the_end_is_detected_at_its_sequence_number(backend: Backend) {
    let (app, events) = one_deletion(backend).await;
    // Sanity: record_of reproduces the stored hash, so the forgery below is a good one.
    assert_eq!(chain_hash(&record_of(&events[11])), events[11].hash);
    insert(&app, &forged_after(&events[11], 13)).await;
    assert_broken_at(&verify(&app).await, 13);
    app.shutdown().await;
}
both!(an_event_inserted_after_the_end_is_detected_at_its_sequence_number);

async fn an_event_inserted_in_the_middle_is_detected_where_the_chain_stops_linking(backend: Backend) {
    let (app, events) = one_deletion(backend).await;
    // Make room at seq 6 (the events after move up by one), then put a well-formed forgery there.
    exec(&app, "UPDATE dsr_events SET seq = -seq WHERE seq >= 6").await;
    exec(&app, "UPDATE dsr_events SET seq = 1 - seq WHERE seq < 0").await;
    insert(&app, &forged_after(&events[4], 6)).await;
    // The forgery links to event 5, so the first event that fails is the genuine one it displaced,
    // now at seq 7: its seq is part of its hash.
    assert_broken_at(&verify(&app).await, 7);
    app.shutdown().await;
}
both!(an_event_inserted_in_the_middle_is_detected_where_the_chain_stops_linking);

async fn a_forged_event_in_the_middle_is_detected_at_its_sequence_number(backend: Backend) {
    let (app, events) = one_deletion(backend).await;
    exec(&app, "UPDATE dsr_events SET seq = -seq WHERE seq >= 6").await;
    exec(&app, "UPDATE dsr_events SET seq = 1 - seq WHERE seq < 0").await;
    let mut forged = forged_after(&events[4], 6);
    forged.hash = Some("f".repeat(64));
    insert(&app, &forged).await;
    assert_broken_at(&verify(&app).await, 6);
    app.shutdown().await;
}
both!(a_forged_event_in_the_middle_is_detected_at_its_sequence_number);

async fn dsr_audit_verify_prints_the_result_and_fails_on_a_broken_chain(backend: Backend) {
    let (app, _) = one_deletion(backend).await;
    let server = format!("http://{}", app.addr);
    let run = |server: String| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_dsr"))
                .args(["audit", "verify", "--server", &server])
                .env_remove("DSR_TOKEN")
                .output()
                .expect("run dsr")
        })
    };
    let ok = run(server.clone()).await.unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("audit chain OK: 12 events checked"), "{ok:?}");
    exec(&app, "UPDATE dsr_events SET action = 'cancelled' WHERE seq = 12").await;
    let broken = run(server).await.unwrap();
    assert!(!broken.status.success(), "{broken:?}");
    assert!(String::from_utf8_lossy(&broken.stdout).contains("BROKEN at event 12"), "{broken:?}");
    app.shutdown().await;
}
both!(dsr_audit_verify_prints_the_result_and_fails_on_a_broken_chain);

async fn the_chain_stays_linear_under_concurrent_workers_and_two_replicas(backend: Backend) {
    let config = format!("{TEST_CONFIG}workers = 8\n");
    let app = spawn_app_with(backend, &config, Overrides::default()).await;
    // A second replica on the same database and data directory (so the same HMAC key).
    let other = spawn_on(app.settings.clone(), tempfile::tempdir().unwrap(), Overrides::default()).await;
    let subjects = app.seed("acme", 16, 1).await;
    let submits = subjects.iter().enumerate().map(|(i, s)| {
        let replica = if i % 2 == 0 { &app } else { &other };
        replica.delete(by_phone("acme", &s.phone))
    });
    let requests = futures::future::join_all(submits).await;
    for r in &requests {
        assert_eq!(app.wait_terminal(&r.id).await.status, RequestStatus::Completed as i32);
    }
    let events = all_events(&app, everything()).await;
    assert_eq!(events.len(), 16 * 12);
    assert_linked_from_the_start(&events);
    let v = verify(&other).await;
    assert_eq!((v.ok, v.events_checked, v.first_bad_event), (true, 16 * 12, 0), "{v:?}");
    other.shutdown().await;
    app.shutdown().await;
}
both!(the_chain_stays_linear_under_concurrent_workers_and_two_replicas);

async fn pruning_requests_older_than_24_months_keeps_the_rest_verifiable(backend: Backend) {
    let now = Utc::now();
    let clock = ManualClock::new(now - Duration::days(800));
    let shared: SharedClock = clock.clone();
    let app =
        spawn_app_with(backend, TEST_CONFIG, Overrides { clock: Some(shared), ..Default::default() }).await;
    let s = app.seed("acme", 3, 1).await;
    // No billing records: a deletion that keeps billing under its legal obligation is not
    // pruned while that lasts (see the test below).
    sqlx::query("DELETE FROM billing_records WHERE account_id IN ($1, $2)")
        .bind(&s[0].account_id)
        .bind(&s[1].account_id)
        .execute(app.db.pool())
        .await
        .unwrap();
    let old = app.delete(by_phone("acme", &s[0].phone)).await;
    app.wait_terminal(&old.id).await;
    let old2 = app.delete(by_phone("acme", &s[1].phone)).await;
    app.wait_terminal(&old2.id).await;
    clock.set(now);
    let recent = app.delete(by_phone("acme", &s[2].phone)).await;
    app.wait_terminal(&recent.id).await;

    let ledger = Ledger::new(app.db.clone());
    let report = ledger.prune_audit(now - Duration::days(730), "test", now).await.unwrap();
    assert_eq!((report.requests_pruned, report.events_pruned, report.through_seq), (2, 24, 24), "{report:?}");
    for id in [&old.id, &old2.id] {
        let err = app.client.clone().get_request(pb::GetRequestRequest { id: id.clone() }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    assert_eq!(app.get(&recent.id).await.status, RequestStatus::Completed as i32);
    assert_eq!(app.count("dsr_tasks").await, 5);
    let events = all_events(&app, everything()).await;
    assert_eq!(events.first().unwrap().seq, 25);
    let pruned = events.last().unwrap();
    assert_eq!((pruned.action.as_str(), pruned.seq, pruned.records_found), ("audit_pruned", 37, 24));
    let v = verify(&app).await;
    assert_eq!((v.ok, v.events_checked, v.first_bad_event), (true, 13, 0), "{v:?}");

    // Nothing more is old enough: a second prune changes nothing.
    let again = ledger.prune_audit(now - Duration::days(730), "test", now).await.unwrap();
    assert_eq!(again.events_pruned, 0);
    assert!(verify(&app).await.ok);

    // The first event after the checkpoint must link to it.
    exec(&app, "DELETE FROM dsr_events WHERE seq = 25").await;
    assert_broken_at(&verify(&app).await, 26);
    app.shutdown().await;
}
both!(pruning_requests_older_than_24_months_keeps_the_rest_verifiable);

async fn a_forged_or_missing_checkpoint_is_detected(backend: Backend) {
    let now = Utc::now();
    let clock = ManualClock::new(now - Duration::days(800));
    let shared: SharedClock = clock.clone();
    let app =
        spawn_app_with(backend, TEST_CONFIG, Overrides { clock: Some(shared), ..Default::default() }).await;
    let s = app.seed("acme", 2, 1).await;
    // No billing: the old deletion has no open legal obligation, so it is pruned.
    sqlx::query("DELETE FROM billing_records WHERE account_id = $1")
        .bind(&s[0].account_id)
        .execute(app.db.pool())
        .await
        .unwrap();
    let old = app.delete(by_phone("acme", &s[0].phone)).await;
    app.wait_terminal(&old.id).await;
    clock.set(now);
    let recent = app.delete(by_phone("acme", &s[1].phone)).await;
    app.wait_terminal(&recent.id).await;
    let ledger = Ledger::new(app.db.clone());
    ledger.prune_audit(now - Duration::days(730), "test", now).await.unwrap();
    assert!(verify(&app).await.ok);

    // Hiding more history behind a later checkpoint: no audit_pruned event vouches for it.
    let events = all_events(&app, everything()).await;
    assert_eq!(events[0].seq, 13);
    exec(&app, "DELETE FROM dsr_events WHERE seq = 13").await;
    sqlx::query("INSERT INTO dsr_audit_checkpoints (last_pruned_seq, last_hash, events_pruned, at) VALUES (13, $1, 1, 0)")
        .bind(&events[0].hash)
        .execute(app.db.pool())
        .await
        .unwrap();
    assert_broken_at(&verify(&app).await, 14);

    // Without any checkpoint, the first event does not link to the start of the chain.
    exec(&app, "DELETE FROM dsr_audit_checkpoints").await;
    assert_broken_at(&verify(&app).await, 14);
    app.shutdown().await;
}
both!(a_forged_or_missing_checkpoint_is_detected);

#[test]
fn the_canonical_encoding_covers_every_field() {
    let base = EventRecord {
        seq: 1,
        at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
        request_id: Some("r".into()),
        tenant_id: Some("t".into()),
        store: None,
        action: "submitted".into(),
        attempt: None,
        records_found: None,
        records_affected: None,
        actor: Some("a".into()),
        subject_tag: Some("x".into()),
        detail: None,
        subject_tags: vec!["b".into(), "a".into()],
        prev_hash: Some(GENESIS_HASH.into()),
        hash: None,
    };
    let h = chain_hash(&base);
    let variants: Vec<fn(&mut EventRecord)> = vec![
        |e| e.seq = 2,
        |e| e.at += Duration::milliseconds(1),
        |e| e.request_id = None,
        |e| e.tenant_id = Some("u".into()),
        |e| e.store = Some(String::new()),
        |e| e.action = "completed".into(),
        |e| e.attempt = Some(0),
        |e| e.records_found = Some(0),
        |e| e.records_affected = Some(0),
        |e| e.actor = Some("b".into()),
        |e| e.subject_tag = None,
        |e| e.detail = Some(String::new()),
        |e| {
            e.subject_tags.pop();
        },
        |e| e.prev_hash = Some("1".repeat(64)),
        // Moving bytes between adjacent fields changes the hash (length prefixes).
        |e| (e.request_id, e.tenant_id) = (Some("rt".into()), Some(String::new())),
    ];
    for (i, change) in variants.iter().enumerate() {
        let mut e = base.clone();
        change(&mut e);
        assert_ne!(chain_hash(&e), h, "variant {i}");
    }
    let mut reordered = base.clone();
    reordered.subject_tags.reverse();
    assert_eq!(chain_hash(&reordered), h, "tags are hashed as a set");
}

async fn events_written_before_the_chain_existed_are_linked_into_it_at_start(backend: Backend) {
    let (app, _) = one_deletion(backend).await;
    // What a ledger migrated before issue 7 looks like: events without hashes, an empty head.
    exec(&app, "UPDATE dsr_events SET prev_hash = NULL, hash = NULL").await;
    sqlx::query("UPDATE dsr_audit_head SET seq = 0, hash = $1")
        .bind(GENESIS_HASH)
        .execute(app.db.pool())
        .await
        .unwrap();
    let (settings, dir) = app.shutdown().await;
    let app = spawn_on(settings, dir, Overrides::default()).await;
    let v = verify(&app).await;
    assert_eq!((v.ok, v.events_checked), (true, 12), "{v:?}");
    assert_linked_from_the_start(&all_events(&app, everything()).await);
    app.shutdown().await;
}
both!(events_written_before_the_chain_existed_are_linked_into_it_at_start);

/// Pruning keeps a deletion whose billing records are still kept under the legal obligation
/// (its outcome becomes DONE when that ends), and prunes an old export with its record.
async fn pruning_keeps_open_legal_obligations_and_takes_old_exports_along(backend: Backend) {
    let now = Utc::now();
    let clock = ManualClock::new(now - Duration::days(800));
    let shared: SharedClock = clock.clone();
    let app =
        spawn_app_with(backend, TEST_CONFIG, Overrides { clock: Some(shared), ..Default::default() }).await;
    let s = app.seed("acme", 2, 1).await;
    let export = app
        .client
        .clone()
        .submit_export(pb::SubmitExportRequest {
            subject: Some(by_phone("acme", &s[0].phone)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(app.wait_terminal(&export.id).await.status, RequestStatus::Completed as i32);
    let held = app.delete(by_phone("acme", &s[1].phone)).await;
    assert_eq!(app.wait_terminal(&held.id).await.status, RequestStatus::Completed as i32);
    clock.set(now);
    let ledger = Ledger::new(app.db.clone());
    let report = ledger.prune_audit(now - Duration::days(730), "test", now).await.unwrap();
    assert_eq!(
        report.requests_pruned, 1,
        "the export goes; the deletion with an open hold stays: {report:?}"
    );
    let err =
        app.client.clone().get_request(pb::GetRequestRequest { id: export.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let exports: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM dsr_exports").fetch_one(app.db.pool()).await.unwrap();
    assert_eq!(exports, 0, "the export's record went with it");
    let kept = app.get(&held.id).await;
    assert_eq!(outcome(&kept, "billing").state, pb::OutcomeState::Retained as i32);
    app.shutdown().await;
}
both!(pruning_keeps_open_legal_obligations_and_takes_old_exports_along);

/// Every start asks whether events from before the chain wait to be linked. On a ledger that
/// has kept years of events the question reads after the chain's head only (it read every
/// event: 1.2 s at 12 million, `dsr bench latency --history`), and events after the head
/// without a hash are still linked, in order, from the head.
async fn the_start_looks_for_unlinked_events_after_the_head_only(backend: Backend) {
    use sqlx::Row;
    let bare = BareLedger::new(backend).await;
    let (db, ledger) = (&bare.db, &bare.ledger);
    let run = |sql: &'static str| bare.exec(sql);
    // 20,000 linked events (their links are not what this checks), the head at the last, and
    // two events from before the chain after it.
    run("WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 20000) \
         INSERT INTO dsr_events (seq, at, action, prev_hash, hash) SELECT g, 0, 'old', 'p', 'h' FROM s")
    .await;
    run("UPDATE dsr_audit_head SET seq = 20000, hash = 'h' WHERE id = 1").await;
    run("INSERT INTO dsr_events (seq, at, tenant_id, action) VALUES (20001, 1, 't1', 'submitted'), (20002, 2, 't1', 'completed')")
        .await;
    run("ANALYZE").await;

    let plan = bare.plan(Ledger::UNCHAINED_EVENTS_QUESTION).await;
    let text = plan.join("\n");
    match backend {
        Backend::Postgres => {
            // The top node's buffers: the whole question's.
            let buffers: i64 = plan
                .iter()
                .find_map(|l| l.trim().strip_prefix("Buffers: shared "))
                .map(|b| {
                    b.split(' ')
                        .filter_map(|kv| kv.split_once('='))
                        .filter(|(k, _)| *k == "hit" || *k == "read")
                        .map(|(_, v)| v.parse::<i64>().unwrap())
                        .sum()
                })
                .unwrap_or(0);
            // Read over the whole table: about 150 buffers here, growing with every event.
            assert!(buffers < 20, "{buffers} buffers read for the question: {text}");
        }
        Backend::Sqlite => {
            assert!(!text.contains("SCAN dsr_events"), "the question reads dsr_events by seq: {text}");
        }
    }

    ledger.migrate().await.unwrap();
    let head =
        sqlx::query("SELECT seq, hash FROM dsr_audit_head WHERE id = 1").fetch_one(db.pool()).await.unwrap();
    assert_eq!(head.get::<i64, _>(0), 20002, "both linked, the head moved to the last");
    let linked = sqlx::query("SELECT seq, prev_hash, hash FROM dsr_events WHERE seq > 20000 ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let hash = |i: usize| linked[i].get::<Option<String>, _>(2).expect("linked");
    assert_eq!(linked[0].get::<Option<String>, _>(1).as_deref(), Some("h"), "the first links to the head");
    assert_eq!(linked[1].get::<Option<String>, _>(1), Some(hash(0)), "the second to the first");
    assert_eq!(head.get::<String, _>(1), hash(1));
    db.close().await;
}
both!(the_start_looks_for_unlinked_events_after_the_head_only);
