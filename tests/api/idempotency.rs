//! Idempotency keys: the same key and payload is the same request; the same key with another
//! payload is refused.
use dsr::api::pb::{self, SubmitDeletionRequest};
use tonic::Code;

use crate::{both, helpers::*};

async fn the_same_key_returns_the_same_request_and_another_payload_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = app.seed("acme", 2, 1).await;
    let req = SubmitDeletionRequest {
        subject: Some(by_phone("acme", &s[0].phone)),
        idempotency_key: "ticket-4711 \u{1F600} with anything in it".into(),
        requested_by: "privacy-inbox".into(),
        ..Default::default()
    };
    let mut c = app.client.clone();
    let first = c.submit_deletion(req.clone()).await.unwrap().into_inner();
    let again = c.submit_deletion(req.clone()).await.unwrap().into_inner();
    assert_eq!(first.id, again.id);

    for (what, other) in [
        (
            "another subject",
            SubmitDeletionRequest { subject: Some(by_phone("acme", &s[1].phone)), ..req.clone() },
        ),
        ("another regime", SubmitDeletionRequest { regime: pb::Regime::Ccpa as i32, ..req.clone() }),
        ("another requester", SubmitDeletionRequest { requested_by: "someone-else".into(), ..req.clone() }),
    ] {
        let err = c.submit_deletion(other).await.expect_err(what);
        assert_eq!(err.code(), Code::AlreadyExists, "{what}");
        assert!(err.message().starts_with("idempotency_key"), "{}", err.message());
    }
    // The same key in another tenant is another request.
    let elsewhere = SubmitDeletionRequest { subject: Some(by_phone("globex", &s[0].phone)), ..req.clone() };
    let other_tenant = c.submit_deletion(elsewhere).await.unwrap().into_inner();
    assert_ne!(other_tenant.id, first.id);
    assert_eq!(app.count("dsr_requests").await, 2);

    // Without a key every submit is a new request.
    let no_key = SubmitDeletionRequest { idempotency_key: String::new(), ..req };
    let a = c.submit_deletion(no_key.clone()).await.unwrap().into_inner();
    let b = c.submit_deletion(no_key).await.unwrap().into_inner();
    assert_ne!(a.id, b.id);
    app.wait_terminal(&first.id).await;
    app.shutdown().await;
}
both!(the_same_key_returns_the_same_request_and_another_payload_is_refused);

async fn concurrent_submits_with_one_key_make_one_request(backend: Backend) {
    let app = spawn_app(backend).await;
    let req = SubmitDeletionRequest {
        subject: Some(by_phone("acme", "+14155550100")),
        idempotency_key: "race".into(),
        ..Default::default()
    };
    let calls = (0..8).map(|_| {
        let mut c = app.client.clone();
        let req = req.clone();
        tokio::spawn(async move { c.submit_deletion(req).await.map(|r| r.into_inner().id) })
    });
    let ids: Vec<String> =
        futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    assert_eq!(app.count("dsr_requests").await, 1);
    app.shutdown().await;
}
both!(concurrent_submits_with_one_key_make_one_request);
