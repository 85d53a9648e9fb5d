//! Who may call what, for which tenant: the full matrix of scopes × RPCs × same/other tenant,
//! missing and wrong credentials, open health checks, mTLS identities, and the rate limit.
use std::time::Duration;

use dsr::{
    api::pb::{
        self, audit_client::AuditClient, data_subject_rights_client::DataSubjectRightsClient,
        holds_client::HoldsClient,
    },
    startup::Overrides,
};
use sha2::{Digest, Sha256};
use tonic::{transport::Channel, Code, Request};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::helpers::*;

const SCOPES: [&str; 5] = ["dsr.export", "dsr.delete", "dsr.rectify", "dsr.read", "dsr.admin"];

pub(crate) fn token_of(name: &str) -> String {
    format!("tok-{name}-0123456789abcdef")
}

pub(crate) fn token_entry(name: &str, scopes: &[&str], tenant: Option<&str>) -> String {
    let hash = hex::encode(Sha256::digest(token_of(name).as_bytes()));
    let scopes = scopes.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    let tenant = tenant.map(|t| format!("tenant = {t:?}\n")).unwrap_or_default();
    format!("[[auth.tokens]]\nname = {name:?}\ntoken_sha256 = {hash:?}\nscopes = [{scopes}]\n{tenant}\n")
}

/// One acme-bound token per scope, plus an unbound token with every scope.
fn config() -> String {
    let mut toml = format!("{TEST_CONFIG}\n[server]\nrate_limit_per_second = 0\n\n");
    for s in SCOPES {
        toml.push_str(&token_entry(&format!("acme-{s}"), &[s], Some("acme")));
    }
    toml.push_str(&token_entry("root", &SCOPES, None));
    toml
}

pub(crate) fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn subject(tenant: &str) -> Option<pb::Subject> {
    Some(by_phone(tenant, "+14155550100"))
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    SubmitExport,
    SubmitDeletion,
    SubmitRectification,
    GetRequest,
    ListRequests,
    WatchRequest,
    CancelRequest,
    RetryRequest,
    PreviewSubject,
    DownloadExport,
    ExtendDeadline,
    ListAuditEvents,
    VerifyAuditLog,
    PlaceHold,
    ReleaseHold,
    ListHolds,
}

impl Rpc {
    const ALL: [Rpc; 16] = [
        Rpc::SubmitExport,
        Rpc::SubmitDeletion,
        Rpc::SubmitRectification,
        Rpc::GetRequest,
        Rpc::ListRequests,
        Rpc::WatchRequest,
        Rpc::CancelRequest,
        Rpc::RetryRequest,
        Rpc::PreviewSubject,
        Rpc::DownloadExport,
        Rpc::ExtendDeadline,
        Rpc::ListAuditEvents,
        Rpc::VerifyAuditLog,
        Rpc::PlaceHold,
        Rpc::ReleaseHold,
        Rpc::ListHolds,
    ];

    /// The scope the RPC needs (for actions on a deletion request: dsr.delete).
    fn scope(self) -> &'static str {
        match self {
            Rpc::SubmitExport | Rpc::DownloadExport => "dsr.export",
            Rpc::SubmitDeletion | Rpc::CancelRequest | Rpc::RetryRequest | Rpc::ExtendDeadline => {
                "dsr.delete"
            }
            Rpc::SubmitRectification => "dsr.rectify",
            Rpc::GetRequest | Rpc::ListRequests | Rpc::WatchRequest | Rpc::PreviewSubject => "dsr.read",
            Rpc::ListAuditEvents
            | Rpc::VerifyAuditLog
            | Rpc::PlaceHold
            | Rpc::ReleaseHold
            | Rpc::ListHolds => "dsr.admin",
        }
    }

    /// VerifyAuditLog checks the whole chain, which belongs to no tenant.
    fn tenant_scoped(self) -> bool {
        !matches!(self, Rpc::VerifyAuditLog)
    }

    /// What a permitted caller gets in this version (the request is a fresh, pending deletion).
    fn permitted(self) -> Code {
        match self {
            // A pending deletion: nothing to retry, no archive to download.
            Rpc::RetryRequest | Rpc::DownloadExport => Code::FailedPrecondition,
            _ => Code::Ok,
        }
    }
}

async fn call(ch: &Channel, rpc: Rpc, token: &str, tenant: &str, id: &str) -> Code {
    let mut c = DataSubjectRightsClient::new(ch.clone());
    let mut a = AuditClient::new(ch.clone());
    let mut h = HoldsClient::new(ch.clone());
    let id = id.to_owned();
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |e| e.code());
    match rpc {
        Rpc::SubmitExport => code(
            c.submit_export(with_token(
                pb::SubmitExportRequest { subject: subject(tenant), ..Default::default() },
                token,
            ))
            .await
            .map(drop),
        ),
        Rpc::SubmitDeletion => code(
            c.submit_deletion(with_token(
                pb::SubmitDeletionRequest { subject: subject(tenant), ..Default::default() },
                token,
            ))
            .await
            .map(drop),
        ),
        Rpc::SubmitRectification => code(
            c.submit_rectification(with_token(
                pb::SubmitRectificationRequest {
                    subject: subject(tenant),
                    corrections: Some(pb::Corrections {
                        name: Some("New Name".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(drop),
        ),
        Rpc::GetRequest => {
            code(c.get_request(with_token(pb::GetRequestRequest { id }, token)).await.map(drop))
        }
        Rpc::ListRequests => code(
            c.list_requests(with_token(
                pb::ListRequestsRequest { tenant_id: tenant.into(), ..Default::default() },
                token,
            ))
            .await
            .map(drop),
        ),
        Rpc::WatchRequest => {
            code(c.watch_request(with_token(pb::WatchRequestRequest { id }, token)).await.map(drop))
        }
        Rpc::CancelRequest => {
            code(c.cancel_request(with_token(pb::CancelRequestRequest { id }, token)).await.map(drop))
        }
        Rpc::RetryRequest => {
            code(c.retry_request(with_token(pb::RetryRequestRequest { id }, token)).await.map(drop))
        }
        Rpc::PreviewSubject => code(
            c.preview_subject(with_token(pb::PreviewSubjectRequest { subject: subject(tenant) }, token))
                .await
                .map(drop),
        ),
        Rpc::DownloadExport => code(
            c.download_export(with_token(pb::DownloadExportRequest { id, offset: 0 }, token)).await.map(drop),
        ),
        Rpc::ExtendDeadline => code(
            c.extend_deadline(with_token(
                pb::ExtendDeadlineRequest { id, reason: "complex request".into() },
                token,
            ))
            .await
            .map(drop),
        ),
        Rpc::ListAuditEvents => code(
            a.list_audit_events(with_token(
                pb::ListAuditEventsRequest { tenant_id: tenant.into(), ..Default::default() },
                token,
            ))
            .await
            .map(drop),
        ),
        Rpc::VerifyAuditLog => {
            code(a.verify_audit_log(with_token(pb::VerifyAuditLogRequest {}, token)).await.map(drop))
        }
        Rpc::PlaceHold => code(
            h.place_hold(with_token(
                pb::PlaceHoldRequest { subject: subject(tenant), reason: "case 1".into() },
                token,
            ))
            .await
            .map(drop),
        ),
        Rpc::ReleaseHold => {
            // A hold in the target tenant, placed by the unbound root token.
            let hold = h
                .place_hold(with_token(
                    pb::PlaceHoldRequest { subject: subject(tenant), reason: "case 2".into() },
                    &token_of("root"),
                ))
                .await
                .expect("root places a hold")
                .into_inner();
            code(
                h.release_hold(with_token(
                    pb::ReleaseHoldRequest { id: hold.id, reason: "done".into() },
                    token,
                ))
                .await
                .map(drop),
            )
        }
        Rpc::ListHolds => code(
            h.list_holds(with_token(
                pb::ListHoldsRequest { tenant_id: tenant.into(), ..Default::default() },
                token,
            ))
            .await
            .map(drop),
        ),
    }
}

async fn every_scope_and_tenant_combination_gets_exactly_its_code(backend: Backend) {
    let overrides = Overrides { paused_engine: true, ..Default::default() };
    let app = spawn_app_with(backend, &config(), overrides).await;
    let ch = channel(app.addr).await;
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for rpc in Rpc::ALL {
        for scope in SCOPES {
            for tenant in ["acme", "globex"] {
                // A fresh pending deletion in the target tenant, made by the unbound root token.
                let mut c = DataSubjectRightsClient::new(ch.clone());
                let target = c
                    .submit_deletion(with_token(
                        pb::SubmitDeletionRequest { subject: subject(tenant), ..Default::default() },
                        &token_of("root"),
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                let expected = if scope != rpc.scope() || (tenant != "acme" && rpc.tenant_scoped()) {
                    Code::PermissionDenied
                } else {
                    rpc.permitted()
                };
                let got = call(&ch, rpc, &token_of(&format!("acme-{scope}")), tenant, &target.id).await;
                checked += 1;
                if got != expected {
                    mismatches.push(format!(
                        "{rpc:?} with acme-{scope} on {tenant}: got {got:?}, expected {expected:?}"
                    ));
                }
            }
        }
        // No token, and a wrong one, are refused before anything else.
        for token in ["", "not-a-token"] {
            let got = call(&ch, rpc, token, "acme", &uuid::Uuid::now_v7().to_string()).await;
            checked += 1;
            if got != Code::Unauthenticated {
                mismatches.push(format!("{rpc:?} with token {token:?}: got {got:?}"));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} combinations wrong:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(checked, 16 * (5 * 2 + 2));

    // A tenant-bound reader listing with no tenant sees its own tenant only.
    let mut c = DataSubjectRightsClient::new(ch.clone());
    let listed = c
        .list_requests(with_token(
            pb::ListRequestsRequest { page_size: 500, ..Default::default() },
            &token_of("acme-dsr.read"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!listed.requests.is_empty());
    assert!(listed.requests.iter().all(|r| r.tenant_id == "acme"));
    app.shutdown().await;
}
crate::both!(every_scope_and_tenant_combination_gets_exactly_its_code);

#[tokio::test]
async fn health_and_reflection_need_no_credentials() {
    let app = spawn_app_with(Backend::Sqlite, &config(), Default::default()).await;
    let mut health = HealthClient::new(channel(app.addr).await);
    for service in ["", "dsr.v1.DataSubjectRights"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32);
    }
    let err = app.client.clone().list_requests(pb::ListRequestsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("authorization"), "{}", err.message());
    app.shutdown().await;
}

#[tokio::test]
async fn with_credentials_configured_the_server_may_listen_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::support::fresh_platform_database(Backend::Sqlite, dir.path()).await;
    let settings = crate::support::settings(dir.path(), url, None, &config());
    let app = dsr::startup::Application::build_with(
        settings,
        Overrides { listen: Some("0.0.0.0:0".parse().unwrap()), ..Default::default() },
    )
    .await
    .expect("tokens are configured, so 0.0.0.0 is allowed");
    assert!(app.local_addr().ip().is_unspecified());
}

#[tokio::test]
async fn the_rate_limit_is_hit_with_a_retry_hint_and_recovers() {
    let toml = format!(
        "{TEST_CONFIG}\n[server]\nrate_limit_per_second = 2\nrate_limit_burst = 3\n\n{}",
        token_entry("busy", &["dsr.read"], None)
    );
    let app = spawn_app_with(Backend::Sqlite, &toml, Default::default()).await;
    let mut c = app.client.clone();
    let list = || with_token(pb::ListRequestsRequest::default(), &token_of("busy"));
    for _ in 0..3 {
        c.list_requests(list()).await.expect("within the burst");
    }
    let err = c.list_requests(list()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let wait: u64 = err.metadata().get("retry-after-ms").unwrap().to_str().unwrap().parse().unwrap();
    assert!(wait > 0 && wait <= 1000, "{wait}");
    assert!(err.message().contains("retry in"), "{}", err.message());
    // Waiting as long as the server said is enough (a wait on the limiter, not a timing assertion).
    tokio::time::sleep(Duration::from_millis(wait + 20)).await;
    c.list_requests(list()).await.expect("recovered after the hinted wait");
    app.shutdown().await;
}

mod mtls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    use super::*;

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { issuer: Issuer::new(params, key), pem }
    }

    fn leaf(ca: &Ca, cn: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        (params.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
    }

    async fn client(
        addr: std::net::SocketAddr,
        server_ca: &str,
        identity: Option<(String, String)>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(server_ca)).domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?.connect().await
    }

    #[tokio::test]
    async fn a_client_certificate_from_the_trusted_ca_is_its_identity_and_another_ca_is_refused() {
        let trusted = ca("dsr clients");
        let stranger = ca("somebody else");
        let dir = tempfile::tempdir().unwrap();
        let (server_cert, server_key) = leaf(&trusted, "dsr", &["localhost", "127.0.0.1"]);
        for (name, text) in
            [("server.pem", &server_cert), ("server.key", &server_key), ("ca.pem", &trusted.pem)]
        {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let toml = format!(
            "{TEST_CONFIG}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n\n\
             [[auth.certificates]]\nname = \"billing-service\"\nsubject_cn = \"billing-service\"\nscopes = [\"dsr.read\"]\ntenant = \"acme\"\n",
            dir.path().join("server.pem"),
            dir.path().join("server.key"),
            dir.path().join("ca.pem"),
        );
        let db_dir = tempfile::tempdir().unwrap();
        let url = crate::support::fresh_platform_database(Backend::Sqlite, db_dir.path()).await;
        let settings = crate::support::settings(db_dir.path(), url, None, &toml);
        let app = dsr::startup::Application::build_with(
            settings,
            Overrides { listen: Some("127.0.0.1:0".parse().unwrap()), ..Default::default() },
        )
        .await
        .unwrap();
        let addr = app.local_addr();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));

        let ch = client(addr, &trusted.pem, Some(leaf(&trusted, "billing-service", &[]))).await.unwrap();
        let mut c = DataSubjectRightsClient::new(ch);
        c.list_requests(pb::ListRequestsRequest { tenant_id: "acme".into(), ..Default::default() })
            .await
            .expect("mapped identity may read");
        let err = c
            .submit_deletion(pb::SubmitDeletionRequest { subject: subject("acme"), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "read-only identity");
        let err =
            c.preview_subject(pb::PreviewSubjectRequest { subject: subject("globex") }).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "bound to acme");

        // Signed by a CA the server does not trust: the handshake fails, no RPC gets through.
        let refused = match client(addr, &trusted.pem, Some(leaf(&stranger, "billing-service", &[]))).await {
            Err(_) => true,
            Ok(ch) => DataSubjectRightsClient::new(ch)
                .list_requests(pb::ListRequestsRequest::default())
                .await
                .is_err(),
        };
        assert!(refused, "a certificate from another CA must be refused");
        // A trusted certificate whose name maps to no identity is unauthenticated.
        let ch = client(addr, &trusted.pem, Some(leaf(&trusted, "someone", &[]))).await.unwrap();
        let err = DataSubjectRightsClient::new(ch)
            .list_requests(pb::ListRequestsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
