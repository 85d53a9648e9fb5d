//! Long-lived streams are shared fairly: each caller has its own share of the WatchRequest and
//! DownloadExport slots under a server-wide cap, a stalled download holds its slot only until
//! the client goes away, and `requested_by` cannot carry a person's contact details.
use std::time::{Duration, Instant};

use dsr::{api::pb, startup::Overrides};
use tonic::{Code, Streaming};

use crate::{
    both,
    helpers::*,
    security::{token_entry, token_of, with_token},
};

/// Two tenants' tokens, and small stream limits so the test reaches them.
fn config(limits: &str) -> String {
    format!(
        "{TEST_CONFIG}\n[server]\nrate_limit_per_second = 0\n{limits}\n\n{}{}{}",
        token_entry("acme-all", &["dsr.export", "dsr.read", "dsr.delete"], Some("acme")),
        token_entry("globex-all", &["dsr.export", "dsr.read", "dsr.delete"], Some("globex")),
        token_entry("root", &["dsr.export", "dsr.read", "dsr.delete"], None),
    )
}

async fn open_download(
    app: &TestApp,
    token: &str,
    id: &str,
) -> Result<Streaming<pb::ExportChunk>, tonic::Status> {
    let mut c = app.client.clone();
    let mut stream = c
        .download_export(with_token(pb::DownloadExportRequest { id: id.to_owned(), offset: 0 }, token))
        .await?
        .into_inner();
    // One message read: the stream is live on the server, then the client stops reading.
    stream.message().await?.expect("a first chunk");
    Ok(stream)
}

async fn finished_export(app: &TestApp, tenant: &str, token: &str) -> String {
    let r = app
        .client
        .clone()
        .submit_export(with_token(
            pb::SubmitExportRequest {
                subject: Some(by_phone(tenant, &app.seed_large(tenant).await)),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("submit export")
        .into_inner();
    let done = app.wait_terminal_as(&r.id, &token_of("root")).await;
    assert_eq!(done.status, pb::RequestStatus::Completed as i32, "{done:?}");
    let size = done.export.expect("export info").size_bytes;
    assert!(size > 6 << 20, "an archive larger than the client's windows: {size}");
    r.id
}

impl TestApp {
    /// One subject with three 2 MiB recordings: an archive larger than the client's flow-control
    /// windows, so a client that stops reading leaves its stream open on the server.
    async fn seed_large(&self, tenant: &str) -> String {
        let objects = dsr::stores::open_object_store(&self.settings.recordings_url).unwrap();
        let spec = dsr::seed::SeedSpec {
            tenant: dsr::domain::TenantId::parse("tenant", tenant).unwrap(),
            subjects: 1,
            calls: 3,
            recording_bytes: 2 << 20,
            first: 0,
        };
        let mut phone = String::new();
        let tables = dsr::stores::reference::Tables::default();
        dsr::seed::seed(&self.db, &tables, objects, &spec, chrono::Utc::now(), |s| phone = s.phone)
            .await
            .expect("seed");
        phone
    }

    async fn wait_terminal_as(&self, id: &str, token: &str) -> pb::DsrRequest {
        let mut stream = self
            .client
            .clone()
            .watch_request(with_token(pb::WatchRequestRequest { id: id.to_owned() }, token))
            .await
            .expect("watch")
            .into_inner();
        let mut last = None;
        // A safety net against a hang, not a timing assertion.
        tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(r) = stream.message().await.expect("watch stream") {
                last = Some(r);
            }
        })
        .await
        .expect("the export did not end within 120 s");
        last.expect("at least one message")
    }
}

async fn a_caller_gets_its_share_of_download_streams_and_other_tenants_keep_theirs(backend: Backend) {
    let toml = config("max_downloads = 3\nmax_downloads_per_caller = 2");
    let app = spawn_app_with(backend, &toml, Overrides::default()).await;
    let (acme, globex) = (token_of("acme-all"), token_of("globex-all"));
    let acme_id = finished_export(&app, "acme", &acme).await;
    let globex_id = finished_export(&app, "globex", &globex).await;

    let first = open_download(&app, &acme, &acme_id).await.expect("1st of acme's 2");
    let second = open_download(&app, &acme, &acme_id).await.expect("2nd of acme's 2");
    let err = open_download(&app, &acme, &acme_id).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("this caller already has 2 DownloadExport streams"), "{}", err.message());
    // The other tenant still has its share, up to the server's cap of 3.
    let third = open_download(&app, &globex, &globex_id).await.expect("globex's own share");
    let err = open_download(&app, &globex, &globex_id).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("the server has 3 DownloadExport streams"), "{}", err.message());

    // A stalled client that goes away frees its slot.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match open_download(&app, &acme, &acme_id).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("the cancelled stream's slot was not freed: {e:?}"),
        }
    }
    // Stalled streams would hold the graceful shutdown open.
    drop((second, third));
    app.shutdown().await;
}
both!(a_caller_gets_its_share_of_download_streams_and_other_tenants_keep_theirs);

async fn one_tenant_cannot_take_every_watch_slot(backend: Backend) {
    let toml = config("max_watchers = 3\nmax_watchers_per_caller = 2");
    // Paused: the requests stay PENDING, so their watches stay open.
    let app = spawn_app_with(backend, &toml, Overrides { paused_engine: true, ..Default::default() }).await;
    let mut c = app.client.clone();
    let pending = |tenant: &'static str, token: String| {
        let mut c = c.clone();
        async move {
            c.submit_deletion(with_token(
                pb::SubmitDeletionRequest {
                    subject: Some(by_phone(tenant, "+14155550100")),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .id
        }
    };
    let (acme, globex) = (token_of("acme-all"), token_of("globex-all"));
    let acme_id = pending("acme", acme.clone()).await;
    let globex_id = pending("globex", globex.clone()).await;
    let watch = |token: &str, id: &str| with_token(pb::WatchRequestRequest { id: id.to_owned() }, token);
    let a1 = c.watch_request(watch(&acme, &acme_id)).await.expect("acme 1");
    let a2 = c.watch_request(watch(&acme, &acme_id)).await.expect("acme 2");
    let err = c.watch_request(watch(&acme, &acme_id)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("this caller already has 2 WatchRequest streams"), "{}", err.message());
    let g1 = c.watch_request(watch(&globex, &globex_id)).await.expect("globex keeps its share");
    let err = c.watch_request(watch(&globex, &globex_id)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "the server-wide cap of 3");
    // Open watches of pending requests would hold the graceful shutdown open.
    drop((a1, a2, g1));
    app.shutdown().await;
}
both!(one_tenant_cannot_take_every_watch_slot);

async fn requested_by_holding_an_email_or_phone_is_refused_and_nothing_is_written(backend: Backend) {
    let app = spawn_app(backend).await;
    for requested_by in ["jane.doe@example.com", "+14155550123", "on behalf of (415) 555-0123"] {
        let err = app
            .client
            .clone()
            .submit_deletion(pb::SubmitDeletionRequest {
                subject: Some(by_phone("acme", "+14155550100")),
                requested_by: requested_by.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{requested_by}");
        assert!(err.message().starts_with("requested_by:"), "{}", err.message());
        assert!(!err.message().contains(requested_by), "the message repeats the value");
    }
    assert_eq!(app.count("dsr_requests").await, 0);
    let ok = app
        .client
        .clone()
        .submit_deletion(pb::SubmitDeletionRequest {
            subject: Some(by_phone("acme", "+14155550100")),
            requested_by: "privacy-desk (ticket 4711)".into(),
            ..Default::default()
        })
        .await
        .expect("a team and a ticket number are fine")
        .into_inner();
    assert_eq!(ok.requested_by, "privacy-desk (ticket 4711)");
    app.shutdown().await;
}
both!(requested_by_holding_an_email_or_phone_is_refused_and_nothing_is_written);
