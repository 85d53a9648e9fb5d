//! A deletion end to end: every store, exact counts, verification, the legal hold, and nobody
//! else's data touched.
use chrono::{Duration, Utc};
use dsr::api::pb::{OutcomeState, RequestStatus};

use crate::{both, helpers::*};

async fn a_deletion_erases_every_store_and_reports_one_outcome_per_store(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.seed("acme", 3, 4).await;
    app.seed("globex", 3, 4).await;
    let target = &acme[1];
    let recordings_dir = app.dir.path().join("recordings/acme");
    let target_files = || {
        std::fs::read_dir(&recordings_dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("-000001-"))
            .count()
    };
    assert_eq!(target_files(), 4);

    // Named by email alone: the account row links the phone, so calls are found too.
    let submitted = app.delete(by_email("acme", &target.email)).await;
    // Acknowledged once committed; the engine may already have started by the time it answers.
    assert!(
        submitted.status == RequestStatus::Pending as i32
            || submitted.status == RequestStatus::InProgress as i32,
        "{}",
        submitted.status
    );
    assert_eq!(submitted.outcomes.len(), 5);
    let due = submitted.due_at.as_ref().unwrap().seconds - submitted.created_at.as_ref().unwrap().seconds;
    assert_eq!(due, Duration::days(30).num_seconds());

    let done = app.wait_terminal(&submitted.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    assert!(done.completed_at.is_some());
    for store in ["accounts", "call_logs", "transcripts", "recordings"] {
        let o = outcome(&done, store);
        assert_eq!(o.state, OutcomeState::Done as i32, "{store}: {o:?}");
        assert_eq!(o.records_found, target.counts[store], "{store} found");
        assert_eq!(o.records_affected, target.counts[store], "{store} affected");
        assert!(o.verified, "{store} verified");
        assert_eq!(o.attempts, 1);
        assert!(o.started_at.is_some() && o.finished_at.is_some());
    }
    let billing = outcome(&done, "billing");
    assert_eq!(billing.state, OutcomeState::Retained as i32);
    assert_eq!(billing.records_found, target.counts["billing"]);
    assert!(billing.retention_basis.contains("legal_obligation"), "{}", billing.retention_basis);
    let until = billing.retained_until.as_ref().unwrap().seconds;
    let seven_years = Utc::now() + Duration::days(7 * 365);
    assert!(
        (until - seven_years.timestamp()).abs() < Duration::days(3).num_seconds(),
        "retained_until {until}"
    );

    // Nothing left where the data was erased; billing still there, under the hold (its rows
    // name the account, which the erased account row still has the id of).
    let after = app.preview(by_email("acme", &target.email)).await;
    let after_by_phone = app.preview(by_phone("acme", &target.phone)).await;
    let after_by_account = app.preview(by_account("acme", &target.account_id)).await;
    for store in ["accounts", "call_logs", "transcripts", "recordings", "billing"] {
        assert_eq!(holdings(&after_by_phone, store).records, 0, "{store} by phone");
        assert_eq!(holdings(&after, store).records, 0, "{store} by email");
    }
    for store in ["accounts", "call_logs", "transcripts", "recordings"] {
        assert_eq!(holdings(&after_by_account, store).records, 0, "{store} by account");
    }
    assert_eq!(holdings(&after_by_account, "billing").records, target.counts["billing"]);
    assert!(holdings(&after_by_account, "billing").under_legal_hold);
    assert_eq!(target_files(), 0, "the audio files are gone");

    // The neighbours and the same phone in another tenant are untouched.
    for (tenant, subject) in [("acme", &acme[0]), ("acme", &acme[2]), ("globex", target)] {
        let h = app.preview(by_phone(tenant, &subject.phone)).await;
        for store in ["accounts", "call_logs", "transcripts", "recordings", "billing"] {
            assert_eq!(holdings(&h, store).records, target.counts[store], "{tenant} {store}");
        }
    }
    assert_eq!(std::fs::read_dir(app.dir.path().join("recordings/globex")).unwrap().count(), 12);
    assert_eq!(std::fs::read_dir(&recordings_dir).unwrap().count(), 8);
    app.shutdown().await;
}
both!(a_deletion_erases_every_store_and_reports_one_outcome_per_store);

async fn a_subject_unknown_to_every_store_completes_with_nothing_found(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed("acme", 1, 1).await;
    let r = app.delete(by_phone("acme", "+442071234567")).await;
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32);
    for o in &done.outcomes {
        assert_eq!(o.records_found, 0, "{}", o.store);
        assert_eq!(o.state, OutcomeState::Done as i32, "{}: nothing held, nothing retained", o.store);
        assert!(o.verified);
    }
    app.shutdown().await;
}
both!(a_subject_unknown_to_every_store_completes_with_nothing_found);

/// An email nobody has: no account links a phone, yet every store is still asked (by every
/// identifier the request has) and answers, checked, that it holds nothing — never SKIPPED.
async fn a_subject_known_by_an_unknown_email_is_checked_in_every_store(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed("acme", 1, 1).await;
    let r = app.delete(by_email("acme", "nobody@example.org")).await;
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32);
    for o in &done.outcomes {
        assert_eq!(
            (o.state, o.records_found, o.verified),
            (OutcomeState::Done as i32, 0, true),
            "{}",
            o.store
        );
    }
    app.shutdown().await;
}
both!(a_subject_known_by_an_unknown_email_is_checked_in_every_store);
