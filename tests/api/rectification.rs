//! Rectification end to end (issue 4): a corrected phone moves every record of the subject to the
//! new phone, a corrected email and name change the account, a correction that collides with
//! another subject is refused with nothing changed, other tenants are untouched, and the ledger
//! keeps neither the old nor the new values.
use dsr::{
    api::pb::{self, OutcomeState, RequestStatus, SubmitRectificationRequest},
    seed::{email_of, phone_of},
};
use sqlx::Row;
use tonic::Code;

use crate::{both, helpers::*};

const STORES: [&str; 5] = ["accounts", "call_logs", "transcripts", "recordings", "billing"];

fn corrections(name: Option<&str>, email: Option<&str>, phone: Option<&str>) -> Option<pb::Corrections> {
    Some(pb::Corrections {
        name: name.map(Into::into),
        email: email.map(Into::into),
        phone: phone.map(Into::into),
    })
}

fn rectification(subject: pb::Subject, c: Option<pb::Corrections>) -> SubmitRectificationRequest {
    SubmitRectificationRequest { subject: Some(subject), corrections: c, ..Default::default() }
}

async fn rectify(app: &TestApp, req: SubmitRectificationRequest) -> Result<pb::DsrRequest, tonic::Status> {
    app.client.clone().submit_rectification(req).await.map(|r| r.into_inner())
}

/// Every text a request left in the ledger: its events (all columns) and its request row.
async fn ledger_text(app: &TestApp, id: &str) -> String {
    app.seal_journal().await;
    let mut text = String::new();
    for (table, column) in [("dsr_events", "request_id"), ("dsr_requests", "id"), ("dsr_tasks", "request_id")]
    {
        let rows = sqlx::query(&format!("SELECT * FROM {table} WHERE {column} = $1"))
            .bind(id)
            .fetch_all(app.db.pool())
            .await
            .unwrap();
        assert!(!rows.is_empty(), "{table} holds the request");
        for row in rows {
            for i in 0..row.len() {
                if let Ok(Some(s)) = row.try_get::<Option<String>, _>(i) {
                    text.push_str(&s);
                    text.push('\n');
                }
            }
        }
    }
    text
}

async fn account_row(app: &TestApp, id: &str) -> (Option<String>, Option<String>, Option<String>) {
    sqlx::query_as("SELECT name, email, phone FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_one(app.db.pool())
        .await
        .unwrap()
}

async fn a_phone_correction_moves_every_record_of_the_subject_to_the_new_phone(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 3, 4).await;
    // globex has two more subjects: the new phone belongs to someone there, which is no conflict.
    let globex = app.seed("globex", 5, 4).await;
    let target = &acme[1];
    let new_phone = phone_of(4);
    assert_eq!(globex[4].phone, new_phone);

    let submitted = rectify(
        &app,
        rectification(by_phone("acme", &target.phone), corrections(None, None, Some(&new_phone))),
    )
    .await
    .unwrap();
    assert_eq!(submitted.kind, pb::RequestKind::Rectification as i32);
    assert_eq!(submitted.outcomes.len(), 5);
    let done = app.wait_terminal(&submitted.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    for store in STORES {
        let o = outcome(&done, store);
        assert_eq!(o.state, OutcomeState::Done as i32, "{store}: {o:?}");
        assert_eq!(o.records_found, target.counts[store], "{store} found");
        assert_eq!(o.records_affected, target.counts[store], "{store} affected");
        assert!(o.verified, "{store} verified");
    }
    // Billing is corrected although it is under the hold, and the outcome says it stays held.
    let billing = outcome(&done, "billing");
    assert!(billing.retention_basis.contains("legal_obligation"), "{}", billing.retention_basis);
    assert!(billing.retention_basis.contains("corrected"), "{}", billing.retention_basis);
    assert!(billing.retained_until.is_some());

    let by_new = app.preview(by_phone("acme", &new_phone)).await;
    let by_old = app.preview(by_phone("acme", &target.phone)).await;
    for store in STORES {
        assert_eq!(holdings(&by_new, store).records, target.counts[store], "{store} under the new phone");
        assert_eq!(holdings(&by_old, store).records, 0, "{store} under the old phone");
    }
    assert_eq!(account_row(&app, &target.account_id).await.2.as_deref(), Some(new_phone.as_str()));
    // Recordings are keyed by call id: no audio moved or vanished.
    assert_eq!(std::fs::read_dir(app.dir.path().join("recordings/acme")).unwrap().count(), 12);

    // The neighbours, the same old phone in globex and the new phone's owner in globex are
    // untouched.
    for (tenant, subject, expected) in [
        ("acme", &acme[0], &acme[0]),
        ("acme", &acme[2], &acme[2]),
        ("globex", target, &globex[1]),
        ("globex", &globex[4], &globex[4]),
    ] {
        let h = app.preview(by_phone(tenant, &subject.phone)).await;
        for store in STORES {
            assert_eq!(holdings(&h, store).records, expected.counts[store], "{tenant} {store}");
        }
    }
    let globex_phone: String =
        sqlx::query_scalar("SELECT phone FROM accounts WHERE id = 'globex-acct-000001'")
            .fetch_one(app.db.pool())
            .await
            .unwrap();
    assert_eq!(globex_phone, target.phone);
    app.shutdown().await;
}
both!(a_phone_correction_moves_every_record_of_the_subject_to_the_new_phone);

async fn an_email_and_name_correction_changes_the_account_and_skips_the_stores_without_them(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 2, 3).await;
    app.seed("globex", 2, 3).await;
    let target = &acme[0];
    let r = rectify(
        &app,
        rectification(
            by_email("acme", &target.email),
            corrections(Some("Ann Example"), Some("Ann.New@Example.org"), None),
        ),
    )
    .await
    .unwrap();
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let accounts = outcome(&done, "accounts");
    assert_eq!(accounts.state, OutcomeState::Done as i32);
    assert_eq!((accounts.records_found, accounts.records_affected), (1, 1));
    assert!(accounts.verified);
    for store in ["call_logs", "transcripts", "recordings", "billing"] {
        let o = outcome(&done, store);
        assert_eq!(o.state, OutcomeState::Skipped as i32, "{store}: no name or email there");
        assert_eq!(o.records_affected, 0);
    }
    // Emails are normalised to lower case, like every email the service reads.
    assert_eq!(
        account_row(&app, &target.account_id).await,
        (Some("Ann Example".into()), Some("ann.new@example.org".into()), Some(target.phone.clone()))
    );
    let by_new = app.preview(by_email("acme", "ann.new@example.org")).await;
    assert_eq!(holdings(&by_new, "accounts").records, 1);
    assert_eq!(holdings(&by_new, "call_logs").records, 3, "the calls are found through the account");
    let by_old = app.preview(by_email("acme", &target.email)).await;
    assert_eq!(holdings(&by_old, "accounts").records, 0);
    // The same person in globex keeps their email.
    assert_eq!(holdings(&app.preview(by_email("globex", &target.email)).await, "accounts").records, 1);
    app.shutdown().await;
}
both!(an_email_and_name_correction_changes_the_account_and_skips_the_stores_without_them);

async fn a_correction_to_another_subjects_email_or_phone_is_refused_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 2, 2).await;
    let target = &acme[1];
    for (c, field) in [
        (corrections(None, Some(&acme[0].email), None), "corrections.email"),
        (corrections(None, None, Some(&acme[0].phone)), "corrections.phone"),
        (corrections(Some("New Name"), Some("fresh@example.com"), Some(&acme[0].phone)), "corrections.phone"),
    ] {
        let err = rectify(&app, rectification(by_phone("acme", &target.phone), c)).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        assert!(err.message().starts_with(field), "{}", err.message());
        for value in [&acme[0].email, &acme[0].phone, &target.email, &target.phone] {
            assert!(!err.message().contains(value.as_str()), "the error names no value: {}", err.message());
        }
    }
    assert_eq!(app.count("dsr_requests").await, 0);
    assert_eq!(app.count("dsr_events").await, 0);
    for s in &acme {
        let h = app.preview(by_phone("acme", &s.phone)).await;
        for store in STORES {
            assert_eq!(holdings(&h, store).records, s.counts[store], "{store}");
        }
    }
    assert_eq!(
        account_row(&app, &target.account_id).await,
        (Some("Subject 1".into()), Some(target.email.clone()), Some(target.phone.clone()))
    );
    // Correcting a value to what the subject already has is no conflict.
    let r = rectify(
        &app,
        rectification(by_phone("acme", &target.phone), corrections(None, Some(&target.email), None)),
    )
    .await
    .unwrap();
    assert_eq!(app.wait_terminal(&r.id).await.status, RequestStatus::Completed as i32);
    app.shutdown().await;
}
both!(a_correction_to_another_subjects_email_or_phone_is_refused_and_changes_nothing);

async fn bad_corrections_are_refused_naming_the_field_and_write_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed("acme", 1, 1).await;
    let who = || by_phone("acme", &phone_of(0));
    let cases = [
        ("no corrections message", None, "corrections"),
        ("no corrected field", corrections(None, None, None), "corrections"),
        ("malformed phone", corrections(None, None, Some("555-0100")), "corrections.phone"),
        ("phone too long", corrections(None, None, Some("+1234567890123456")), "corrections.phone"),
        ("malformed email", corrections(None, Some("not-an-email"), None), "corrections.email"),
        ("empty email", corrections(None, Some(""), None), "corrections.email"),
        (
            "email too long",
            corrections(None, Some(&format!("{}@example.com", "a".repeat(250))), None),
            "corrections.email",
        ),
        ("empty name", corrections(Some("  "), None, None), "corrections.name"),
        ("name too long", corrections(Some(&"x".repeat(201)), None, None), "corrections.name"),
        ("name with control characters", corrections(Some("Ann\u{7}"), None, None), "corrections.name"),
    ];
    for (case, c, field) in cases {
        let err = rectify(&app, rectification(who(), c)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
        assert!(err.message().starts_with(&format!("{field}:")), "{case}: {}", err.message());
    }
    // The subject is checked as for any other request.
    let err = rectify(&app, rectification(by_phone("acme", "12345"), corrections(Some("Ann"), None, None)))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("subject.phone:"), "{}", err.message());
    assert_eq!(app.count("dsr_requests").await, 0);
    assert_eq!(app.count("dsr_tasks").await, 0);
    assert_eq!(app.count("dsr_events").await, 0);
    app.shutdown().await;
}
both!(bad_corrections_are_refused_naming_the_field_and_write_nothing);

async fn the_ledger_records_which_fields_changed_but_neither_the_old_nor_the_new_values(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 2, 2).await;
    let target = &acme[1];
    let (new_name, new_email, new_phone) = ("Renamed Person", "renamed@example.net", "+447700900123");
    let r = rectify(
        &app,
        rectification(
            by_email("acme", &target.email),
            corrections(Some(new_name), Some(new_email), Some(new_phone)),
        ),
    )
    .await
    .unwrap();
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    for store in STORES {
        assert_eq!(outcome(&done, store).state, OutcomeState::Done as i32, "{store}");
    }
    let text = ledger_text(&app, &r.id).await;
    assert!(text.contains("fields=name,email,phone"), "the submitted event names the fields:\n{text}");
    for value in [
        target.phone.as_str(),
        target.phone.trim_start_matches('+'),
        target.email.as_str(),
        target.account_id.as_str(),
        "Subject 1",
        new_name,
        new_email,
        new_phone,
        new_phone.trim_start_matches('+'),
    ] {
        assert!(!text.contains(value), "the ledger holds a value: {value}\n{text}");
    }
    let kept: Option<String> = sqlx::query_scalar("SELECT subject_json FROM dsr_requests WHERE id = $1")
        .bind(&r.id)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(kept, None, "the identifiers and corrections are dropped when the request ends");
    app.shutdown().await;
}
both!(the_ledger_records_which_fields_changed_but_neither_the_old_nor_the_new_values);

async fn an_idempotency_key_covers_the_corrections(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 1, 1).await;
    let with_key = |c| SubmitRectificationRequest {
        idempotency_key: "fix-1".into(),
        ..rectification(by_email("acme", &acme[0].email), c)
    };
    let first = rectify(&app, with_key(corrections(None, Some("new0@example.com"), None))).await.unwrap();
    app.wait_terminal(&first.id).await;
    // After the correction the subject is no longer under the old email, and the new email is
    // taken (by the subject itself): the same call still returns the original request.
    let again = rectify(&app, with_key(corrections(None, Some("new0@example.com"), None))).await.unwrap();
    assert_eq!(again.id, first.id);
    let other =
        rectify(&app, with_key(corrections(None, Some("other0@example.com"), None))).await.unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
    assert!(other.message().starts_with("idempotency_key"), "{}", other.message());
    assert_eq!(app.count("dsr_requests").await, 1);
    assert_eq!(email_of(0), acme[0].email);
    app.shutdown().await;
}
both!(an_idempotency_key_covers_the_corrections);
