//! Bad input: INVALID_ARGUMENT naming the field, and nothing written.
use dsr::api::pb::{self, SubmitDeletionRequest};
use tonic::Code;

use crate::{both, helpers::*};

fn subject(tenant: &str, account_id: &str, email: &str, phone: &str) -> Option<pb::Subject> {
    Some(pb::Subject {
        tenant_id: tenant.into(),
        account_id: account_id.into(),
        email: email.into(),
        phone: phone.into(),
    })
}

async fn bad_submissions_are_refused_naming_the_field_and_write_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let long = |n: usize| "x".repeat(n);
    let long_email = format!("{}@example.com", "a".repeat(250));
    let base =
        SubmitDeletionRequest { subject: subject("acme", "", "", "+14155550100"), ..Default::default() };
    let cases: Vec<(&str, SubmitDeletionRequest, &str)> = vec![
        ("no subject", SubmitDeletionRequest { subject: None, ..base.clone() }, "subject"),
        (
            "no tenant",
            SubmitDeletionRequest { subject: subject("", "", "", "+14155550100"), ..base.clone() },
            "subject.tenant_id",
        ),
        (
            "no identifier",
            SubmitDeletionRequest { subject: subject("acme", "", "", ""), ..base.clone() },
            "subject",
        ),
        (
            "phone without +",
            SubmitDeletionRequest { subject: subject("acme", "", "", "14155550100"), ..base.clone() },
            "subject.phone",
        ),
        (
            "phone in a national format",
            SubmitDeletionRequest { subject: subject("acme", "", "", "(415) 555-0100"), ..base.clone() },
            "subject.phone",
        ),
        (
            "phone too short",
            SubmitDeletionRequest { subject: subject("acme", "", "", "+1 415"), ..base.clone() },
            "subject.phone",
        ),
        (
            "phone with an extra group",
            SubmitDeletionRequest {
                subject: subject("acme", "", "", "+1 415 555 0100 000 000"),
                ..base.clone()
            },
            "subject.phone",
        ),
        (
            "phone too long",
            SubmitDeletionRequest { subject: subject("acme", "", "", "+1234567890123456"), ..base.clone() },
            "subject.phone",
        ),
        (
            "malformed email",
            SubmitDeletionRequest { subject: subject("acme", "", "not-an-email", ""), ..base.clone() },
            "subject.email",
        ),
        (
            "email too long",
            SubmitDeletionRequest { subject: subject("acme", "", &long_email, ""), ..base.clone() },
            "subject.email",
        ),
        (
            "tenant too long",
            SubmitDeletionRequest { subject: subject(&long(65), "", "", "+14155550100"), ..base.clone() },
            "subject.tenant_id",
        ),
        (
            "tenant with a slash",
            SubmitDeletionRequest { subject: subject("ac/me", "", "", "+14155550100"), ..base.clone() },
            "subject.tenant_id",
        ),
        (
            "account id too long",
            SubmitDeletionRequest { subject: subject("acme", &long(129), "", ""), ..base.clone() },
            "subject.account_id",
        ),
        (
            "requested_by too long",
            SubmitDeletionRequest { requested_by: long(513), ..base.clone() },
            "requested_by",
        ),
        (
            "requested_by with control characters",
            SubmitDeletionRequest { requested_by: "a\u{0}b".into(), ..base.clone() },
            "requested_by",
        ),
        (
            "idempotency key too long",
            SubmitDeletionRequest { idempotency_key: long(257), ..base.clone() },
            "idempotency_key",
        ),
        ("unknown regime", SubmitDeletionRequest { regime: 42, ..base.clone() }, "regime"),
    ];
    for (case, req, field) in cases {
        // An export is validated exactly like a deletion.
        let export = pb::SubmitExportRequest {
            subject: req.subject.clone(),
            regime: req.regime,
            idempotency_key: req.idempotency_key.clone(),
            requested_by: req.requested_by.clone(),
        };
        let err = app.client.clone().submit_deletion(req).await.expect_err(case);
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
        assert!(err.message().starts_with(field), "{case}: message {:?} should name {field}", err.message());
        let err = app.client.clone().submit_export(export).await.expect_err(case);
        assert_eq!(err.code(), Code::InvalidArgument, "export, {case}: {err:?}");
        assert!(err.message().starts_with(field), "export, {case}: {:?} should name {field}", err.message());
    }
    assert_eq!(app.count("dsr_requests").await, 0);
    assert_eq!(app.count("dsr_tasks").await, 0);
    assert_eq!(app.count("dsr_events").await, 0);
    app.shutdown().await;
}
both!(bad_submissions_are_refused_naming_the_field_and_write_nothing);

#[tokio::test]
async fn malformed_and_unknown_request_ids_are_told_apart() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut c = app.client.clone();
    let err = c.get_request(pb::GetRequestRequest { id: "not-a-uuid".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("id"), "{}", err.message());
    let err = c.get_request(pb::GetRequestRequest { id: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        c.get_request(pb::GetRequestRequest { id: unknown.clone() }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.cancel_request(pb::CancelRequestRequest { id: unknown.clone() }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.retry_request(pb::RetryRequestRequest { id: unknown.clone() }).await.unwrap_err().code(),
        Code::NotFound
    );
    let err = c.watch_request(pb::WatchRequestRequest { id: unknown }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c.watch_request(pb::WatchRequestRequest { id: "x".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c.download_export(pb::DownloadExportRequest { id: "x".into(), offset: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("id"), "{}", err.message());
    app.shutdown().await;
}

#[tokio::test]
async fn list_filters_are_validated() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut c = app.client.clone();
    for (req, field) in [
        (pb::ListRequestsRequest { status: 99, ..Default::default() }, "status"),
        (pb::ListRequestsRequest { kind: 99, ..Default::default() }, "kind"),
        (pb::ListRequestsRequest { page_token: "zz".into(), ..Default::default() }, "page_token"),
        (pb::ListRequestsRequest { tenant_id: "a b".into(), ..Default::default() }, "tenant_id"),
        (pb::ListRequestsRequest { due_within_days: 100_000, ..Default::default() }, "due_within_days"),
    ] {
        let err = c.list_requests(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    app.shutdown().await;
}
