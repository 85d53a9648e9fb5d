//! Recipients (GDPR Art. 19) end to end: the outbox's event reaches a webhook that fails for a
//! while, signed, once acknowledged; a refusing recipient is given up (the request FAILED) and
//! re-driven; NATS JetStream deduplicates a resend by the event id; a request's recipients are
//! its record — all through the real API and the real ledger on both backends.
use std::{collections::BTreeSet, path::Path, time::Duration};

use dsr::{
    api::pb::{self, OutcomeState, RequestStatus},
    startup::Overrides,
};

use crate::{
    both,
    helpers::*,
    support::webhook::{Receiver, TEST_SECRET},
};

/// Fast retries, so a recipient that fails for a while recovers within the test.
fn recipients_config(entries: &str) -> String {
    format!(
        "{TEST_CONFIG}\n[recipients]\npoll_interval_ms = 20\nbackoff_base_ms = 20\nbackoff_max_ms = 100\n\
         timeout_secs = 2\nlease_secs = 5\npermanent_failures = 2\n{entries}"
    )
}

fn secret_file(dir: &Path) -> String {
    let path = dir.join("payments.secret");
    std::fs::write(&path, format!("{TEST_SECRET}\n")).unwrap();
    path.display().to_string()
}

/// The payment processor: hears of erasures, gets the account id and the billing keys only.
fn payments(receiver: &Receiver, secret: &str) -> String {
    format!(
        "[[catalog]]\nkind = \"recipient\"\nname = \"payments\"\ndescription = \"Payment processor\"\n\
         hears = [\"deletion\", \"restriction\"]\nidentifiers = [\"account_id\"]\nrecords = [\"billing\"]\n\
         transport = \"webhook\"\nurl = \"{}\"\nsecret_file = \"{secret}\"\n\
         [[catalog]]\nkind = \"recipient\"\nname = \"crm\"\nhears = [\"rectification\"]\nidentifiers = [\"email\"]\n\
         transport = \"webhook\"\nurl = \"{}\"\nsecret_file = \"{secret}\"\n",
        receiver.url(),
        receiver.url()
    )
}

fn recipient<'a>(r: &'a pb::DsrRequest, name: &str) -> &'a pb::RecipientOutcome {
    r.recipients.iter().find(|d| d.recipient == name).unwrap_or_else(|| panic!("no recipient {name}: {r:#?}"))
}

async fn billing_keys(app: &TestApp, account: &str, phone: &str) -> BTreeSet<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM billing_records WHERE tenant_id = 'acme' AND (account_id = $1 OR caller_phone = $2)",
    )
    .bind(account)
    .bind(phone)
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    rows.into_iter().map(|r| r.0).collect()
}

async fn a_webhook_that_fails_for_a_while_gets_the_event_after_recovery_signed_and_a_replay_is_rejected(
    backend: Backend,
) {
    let receiver = Receiver::start().await;
    receiver.fail_next(3, 503);
    let secrets = tempfile::tempdir().unwrap();
    let config = recipients_config(&payments(&receiver, &secret_file(secrets.path())));
    let app = spawn_app_with(backend, &config, Overrides::default()).await;
    let acme = app.seed("acme", 2, 3).await;
    let target = &acme[0];

    let submitted = app.delete(by_account("acme", &target.account_id)).await;
    // Only the recipient that hears of erasures has an outcome, PENDING from the start.
    assert_eq!(submitted.recipients.len(), 1, "{submitted:#?}");
    let pending = recipient(&submitted, "payments");
    assert_eq!(pending.state, OutcomeState::Pending as i32);
    assert!(!pending.event_id.is_empty());

    let seen = app.watch_to_end(&submitted.id).await;
    let done = seen.last().unwrap();
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    // Between the stores' success and the acknowledgement, the request was still open.
    assert!(
        seen.iter().any(|r| r.status == RequestStatus::InProgress as i32
            && r.outcomes
                .iter()
                .all(|o| o.state != OutcomeState::Pending as i32 && o.state != OutcomeState::Running as i32)
            && recipient(r, "payments").state == OutcomeState::Pending as i32),
        "no message showed the stores done and the recipient pending: {seen:#?}"
    );
    let told = recipient(done, "payments");
    assert_eq!(told.state, OutcomeState::Done as i32, "{told:?}");
    assert_eq!(told.attempts, 4, "three failures, then the acknowledgement");
    assert_eq!(told.event_id, pending.event_id, "the id is stable across retries");
    assert!(told.finished_at.is_some());

    // The receiver saw four attempts of one event id, and accepted the last.
    let received = receiver.received();
    assert_eq!(received.iter().map(|r| r.status).collect::<Vec<_>>(), [503, 503, 503, 204]);
    assert!(received.iter().all(|r| r.id == told.event_id), "one event id: {received:?}");
    let accepted = &receiver.accepted()[0];
    let event = accepted.json();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["id"], told.event_id.as_str());
    assert_eq!(event["source"], "/dsr");
    assert_eq!(event["type"], "dev.dsr.subject.erased.v1");
    assert_eq!(event["subject"], done.id.as_str());
    assert_eq!(event["data"]["request_id"], done.id.as_str());
    assert_eq!(event["data"]["restricted_stores"], serde_json::json!(["billing"]));
    // Only what the entry names: the account id and the billing keys; no email, no phone.
    let subject = &event["data"]["subject"];
    assert_eq!(subject["account_id"], target.account_id.as_str());
    let keys: BTreeSet<String> = subject["records"]["billing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, billing_keys(&app, &target.account_id, &target.phone).await);
    assert!(!keys.is_empty());
    let body = String::from_utf8(accepted.body.clone()).unwrap();
    eprintln!(
        "event as received: webhook-id {} webhook-timestamp {} webhook-signature {}\n{body}",
        accepted.id, accepted.timestamp, accepted.signature
    );
    for leak in [&target.email, &target.phone, &target.phone[1..].to_owned()] {
        assert!(!body.contains(leak.as_str()), "the event holds an identifier it was not allowed: {body}");
    }
    assert_eq!(subject.as_object().unwrap().keys().collect::<Vec<_>>(), ["account_id", "records"]);

    // The receiver checks signature, timestamp and seen ids: a replay of the accepted message is
    // refused, and so are a changed body and an old (re-signed) timestamp.
    let replay = receiver.post(&accepted.id, &accepted.timestamp, &accepted.signature, &accepted.body).await;
    assert_eq!(replay, 409, "a replay is rejected by its id");
    let mut forged = accepted.body.clone();
    forged[10] ^= 1;
    assert_eq!(receiver.post("other-id", &accepted.timestamp, &accepted.signature, &forged).await, 401);
    let key = dsr::recipients::signature::secret_key(TEST_SECRET).unwrap();
    let old = chrono::Utc::now().timestamp() - 600;
    let resigned = dsr::recipients::signature::sign(&key, "old-id", old, &accepted.body);
    assert_eq!(
        receiver.post("old-id", &old.to_string(), &resigned, &accepted.body).await,
        400,
        "stale timestamp"
    );

    // The delivery is in the audit log, by event id, without the payload.
    let events = app
        .audit()
        .await
        .list_audit_events(dsr::api::pb::ListAuditEventsRequest {
            request_id: done.id.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let notified: Vec<_> = events.iter().filter(|e| e.action == "recipient_notified").collect();
    assert_eq!(notified.len(), 1, "{events:#?}");
    assert!(format!("{:?}", notified[0]).contains(&told.event_id));
    // The outbox row keeps no personal data once delivered.
    let data: Option<String> = sqlx::query_scalar("SELECT data_json FROM dsr_deliveries WHERE id = $1")
        .bind(&told.event_id)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(data, None);
}
both!(a_webhook_that_fails_for_a_while_gets_the_event_after_recovery_signed_and_a_replay_is_rejected);

async fn a_recipient_that_refuses_is_given_up_the_request_fails_and_a_retry_redrives_it(backend: Backend) {
    let receiver = Receiver::start().await;
    receiver.fail_next(1000, 400);
    let secrets = tempfile::tempdir().unwrap();
    let config = recipients_config(&payments(&receiver, &secret_file(secrets.path())));
    let app = spawn_app_with(backend, &config, Overrides::default()).await;
    let acme = app.seed("acme", 1, 2).await;

    let submitted = app.delete(by_phone("acme", &acme[0].phone)).await;
    let failed = app.wait_terminal(&submitted.id).await;
    assert_eq!(failed.status, RequestStatus::Failed as i32, "{failed:#?}");
    assert!(failed.outcomes.iter().all(|o| o.state != OutcomeState::Failed as i32), "the stores succeeded");
    let given_up = recipient(&failed, "payments");
    assert_eq!(given_up.state, OutcomeState::Failed as i32);
    assert_eq!(given_up.attempts, 2, "permanent_failures = 2 refusals");
    assert!(
        given_up.last_error.contains("refused 2 times") && given_up.last_error.contains("400"),
        "{given_up:?}"
    );

    // `dsr recipients retry` (the ledger call behind it): queued again, refused again.
    let ledger = dsr::ledger::Ledger::new(app.db.clone());
    let n = ledger.retry_deliveries(None, Some("payments"), "test", chrono::Utc::now()).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(app.get(&submitted.id).await.status, RequestStatus::InProgress as i32);
    let again = app.wait_terminal(&submitted.id).await;
    assert_eq!(again.status, RequestStatus::Failed as i32);
    assert_eq!(recipient(&again, "payments").attempts, 4);

    // Fixed on the recipient's side: RetryRequest re-drives the delivery and the request completes.
    receiver.fail_next(0, 400);
    app.client
        .clone()
        .retry_request(pb::RetryRequestRequest { id: submitted.id.clone() })
        .await
        .expect("retry");
    let done = app.wait_terminal(&submitted.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let told = recipient(&done, "payments");
    assert_eq!((told.state, told.attempts), (OutcomeState::Done as i32, 5));
    let ids: BTreeSet<_> = receiver.received().iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 1, "one event id across every retry");
    assert_eq!(receiver.accepted().len(), 1);
    assert_eq!(app.count("dsr_deliveries WHERE state = 'failed'").await, 0);
}
both!(a_recipient_that_refuses_is_given_up_the_request_fails_and_a_retry_redrives_it);

async fn a_recipient_down_past_the_give_up_fails_the_request_and_raises_the_alert(backend: Backend) {
    let receiver = Receiver::start().await;
    receiver.fail_next(100_000, 503);
    let secrets = tempfile::tempdir().unwrap();
    let config = recipients_config(&payments(&receiver, &secret_file(secrets.path())))
        .replace("[recipients]\n", "[recipients]\ngive_up_secs = 1\n")
        + "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let app = spawn_app_with(backend, &config, Overrides::default()).await;
    let acme = app.seed("acme", 1, 1).await;
    let failed = app.wait_terminal(&app.delete(by_phone("acme", &acme[0].phone)).await.id).await;
    assert_eq!(failed.status, RequestStatus::Failed as i32, "{failed:#?}");
    let given_up = recipient(&failed, "payments");
    assert_eq!(given_up.state, OutcomeState::Failed as i32);
    assert!(given_up.attempts >= 2, "{given_up:?}");
    assert!(
        given_up.last_error.contains("not acknowledged within 1 s") && given_up.last_error.contains("503"),
        "{given_up:?}"
    );
    let m = crate::metrics::scrape(app.metrics.unwrap()).await;
    let value = crate::metrics::value;
    assert_eq!(value(&m, "dsr_recipient_gave_up_total{recipient=\"payments\"}"), 1.0, "the alert");
    assert_eq!(value(&m, "dsr_recipient_dead_letters"), 1.0);
    assert_eq!(value(&m, "dsr_outbox_pending"), 0.0);
    assert_eq!(value(&m, "dsr_recipient_deliveries_total{recipient=\"payments\",result=\"failed\"}"), 1.0);
    assert!(value(&m, "dsr_recipient_deliveries_total{recipient=\"payments\",result=\"retry\"}") >= 1.0);
}
both!(a_recipient_down_past_the_give_up_fails_the_request_and_raises_the_alert);

async fn a_rectification_reaches_only_the_recipients_that_hear_of_it(backend: Backend) {
    let receiver = Receiver::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let config = recipients_config(&payments(&receiver, &secret_file(secrets.path())));
    let app = spawn_app_with(backend, &config, Overrides::default()).await;
    let acme = app.seed("acme", 1, 1).await;
    let submitted = app
        .client
        .clone()
        .submit_rectification(pb::SubmitRectificationRequest {
            subject: Some(by_account("acme", &acme[0].account_id)),
            corrections: Some(pb::Corrections {
                email: Some("fixed@example.org".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(submitted.recipients.iter().map(|d| d.recipient.as_str()).collect::<Vec<_>>(), ["crm"]);
    let done = app.wait_terminal(&submitted.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let event = receiver.accepted()[0].json();
    assert_eq!(event["type"], "dev.dsr.subject.rectified.v1");
    assert_eq!(event["data"]["subject"]["corrected"]["email"], "fixed@example.org");
    assert!(event["data"]["subject"].get("account_id").is_none());
    assert_eq!(listed(&app).await, [done], "a page of ListRequests reads what GetRequest reads");
}
both!(a_rectification_reaches_only_the_recipients_that_hear_of_it);

/// Every request of tenant `acme`, as ListRequests pages them (the page's tasks, deliveries and
/// archives are read for the whole page at once).
async fn listed(app: &TestApp) -> Vec<pb::DsrRequest> {
    app.client
        .clone()
        .list_requests(pb::ListRequestsRequest { tenant_id: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .requests
}

async fn an_export_tells_no_recipient_and_its_manifest_names_them(backend: Backend) {
    let receiver = Receiver::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let config = recipients_config(&payments(&receiver, &secret_file(secrets.path())));
    let app = spawn_app_with(backend, &config, Overrides::default()).await;
    let acme = app.seed("acme", 1, 1).await;
    let submitted = app.export(by_account("acme", &acme[0].account_id), pb::Regime::Gdpr).await;
    assert!(submitted.recipients.is_empty());
    let done = app.wait_terminal(&submitted.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32);
    let files = crate::export::unzip(&app.download(&done.id, 0).await.unwrap());
    let manifest: dsr::export::Manifest = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let named: Vec<_> = manifest.recipients.iter().map(|r| (r.name.as_str(), r.purpose.as_str())).collect();
    assert!(named.contains(&("payments", "Payment processor")), "{named:?}");
    assert!(named.iter().any(|(n, _)| *n == "crm"), "{named:?}");
    assert!(receiver.received().is_empty());
    let again = app.get(&done.id).await;
    assert!(again.export.is_some());
    assert_eq!(listed(&app).await, [again], "a page of ListRequests reads what GetRequest reads");
}
both!(an_export_tells_no_recipient_and_its_manifest_names_them);

/// The NATS server the test command started (`DSR_TEST_NATS_URL`). Never skipped.
fn nats_url() -> String {
    std::env::var("DSR_TEST_NATS_URL").expect(
        "DSR_TEST_NATS_URL is not set: run the suite with `scripts/test.sh`, which starts `nats-server -js`",
    )
}

async fn nats_jetstream_gets_the_event_once_deduplicated_by_id_across_a_resend(backend: Backend) {
    let url = nats_url();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let subject = format!("dsr.test.{suffix}");
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.expect("connect to NATS"));
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: format!("DSR_{suffix}"),
            subjects: vec![subject.clone()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create stream");
    let entry = format!(
        "[[catalog]]\nkind = \"recipient\"\nname = \"stt\"\nhears = [\"deletion\"]\nidentifiers = [\"phone\"]\n\
         records = [\"call_logs\"]\ntransport = \"nats\"\nurl = \"{url}\"\nsubject = \"{subject}\"\n"
    );
    let app = spawn_app_with(backend, &recipients_config(&entry), Overrides::default()).await;
    let acme = app.seed("acme", 2, 2).await;
    let done = app.wait_terminal(&app.delete(by_phone("acme", &acme[1].phone)).await.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let told = recipient(&done, "stt");
    assert_eq!((told.state, told.attempts), (OutcomeState::Done as i32, 1));
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    // A resend under the same id (a dispatcher that died after the publish, before recording
    // the acknowledgement): acknowledged, and dropped by the stream as a duplicate.
    let message = stream.get_raw_message(1).await.unwrap();
    let nats =
        dsr::recipients::nats::Nats::new(&app.settings.file.recipients.entries[0], Duration::from_secs(5));
    use dsr::recipients::Transport;
    nats.send(&told.event_id, &message.payload).await.expect("resend acknowledged");
    assert_eq!(stream.info().await.unwrap().state.messages, 1, "deduplicated by Nats-Msg-Id");

    let headers = message.headers;
    assert_eq!(
        headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str()),
        Some(told.event_id.as_str()),
        "{headers:?}"
    );
    let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(event["id"], told.event_id.as_str());
    assert_eq!(event["data"]["subject"]["phones"], serde_json::json!([acme[1].phone]));
    assert!(!event["data"]["subject"]["records"]["call_logs"].as_array().unwrap().is_empty());
    js.delete_stream(format!("DSR_{suffix}")).await.ok();
}
both!(nats_jetstream_gets_the_event_once_deduplicated_by_id_across_a_resend);

/// A submit answers with the request as it was committed, without reading it back: the answer
/// must be exactly what GetRequest reads right after (stores and recipients alike, for every
/// kind; an export's archive task never shows while it has not failed).
async fn a_submits_answer_is_what_get_request_reads_right_after(backend: Backend) {
    let receiver = Receiver::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let config = recipients_config(&payments(&receiver, &secret_file(secrets.path())));
    let app = spawn_app_with(backend, &config, Overrides { paused_engine: true, ..Default::default() }).await;
    let s = app.seed("acme", 3, 1).await;
    let mut c = app.client.clone();
    let deletion = app.delete(by_account("acme", &s[0].account_id)).await;
    let export = c
        .submit_export(pb::SubmitExportRequest {
            subject: Some(by_phone("acme", &s[1].phone)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rectification = c
        .submit_rectification(pb::SubmitRectificationRequest {
            subject: Some(by_account("acme", &s[2].account_id)),
            corrections: Some(pb::Corrections {
                email: Some("new-address@example.net".into()),
                ..Default::default()
            }),
            requested_by: "support-agent-7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deletion.recipients.len(), 1, "{deletion:#?}");
    assert_eq!(rectification.recipients.len(), 1, "{rectification:#?}");
    for submitted in [deletion, export, rectification] {
        assert!(!submitted.outcomes.is_empty());
        assert_eq!(submitted, app.get(&submitted.id).await);
    }
    app.shutdown().await;
}
both!(a_submits_answer_is_what_get_request_reads_right_after);
