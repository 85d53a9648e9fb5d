//! Building and running the service: `Application::build` connects and migrates the ledger,
//! opens the stores, binds the listener (port 0 in tests) and wires the gRPC stack;
//! `run_until_stopped` serves until the shutdown future resolves, then drains in order. The
//! retention sweeper runs beside the engine.
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::{
    api::{
        pb, AuditService, AuthInterceptor, Authenticator, HoldsService, RightsService, ServiceContext,
        StreamSlots,
    },
    clock::{SharedClock, SystemClock},
    config::{Settings, TlsConfig},
    db::Db,
    engine::{Engine, Signals},
    export::ExportStorage,
    ledger::{Ledger, ARCHIVE_TASK},
    metrics::{Metrics, MetricsEndpoint},
    privacy::KeyedHasher,
    retention::Sweeper,
    stores::{StoreAdapter, StoreRegistry},
};

/// Wraps a store adapter in another (tests inject faults this way).
pub type StoreWrapper = Box<dyn Fn(Arc<dyn StoreAdapter>) -> Arc<dyn StoreAdapter> + Send + Sync>;

/// What tests (and embedders) may replace.
#[derive(Default)]
pub struct Overrides {
    pub clock: Option<SharedClock>,
    /// Wraps each store adapter (fault injection in tests).
    pub wrap_store: Option<StoreWrapper>,
    /// Listen here instead of the configured address (tests pass port 0).
    pub listen: Option<SocketAddr>,
    /// Do not run the engine: requests are accepted but no store task starts (tests of what
    /// happens before work begins).
    pub paused_engine: bool,
    /// Do not run the recipients' dispatcher: events stay in the outbox (tests of what happens
    /// between the commit and the delivery).
    pub paused_dispatcher: bool,
}

pub struct Application {
    listener: TcpListener,
    ctx: Arc<ServiceContext>,
    engine: Arc<Engine>,
    sweeper: Arc<Sweeper>,
    /// Tells the recipients (GDPR Art. 19); `None` when paused.
    dispatcher: Option<Arc<crate::recipients::Dispatcher>>,
    auth: Arc<Authenticator>,
    tls: Option<ServerTlsConfig>,
    paused_engine: bool,
    settings: Settings,
    /// `/metrics`, bound when `[metrics] listen` is set.
    metrics_endpoint: Option<MetricsEndpoint>,
}

/// Opens the service's own database and applies its migrations.
pub async fn open_ledger(settings: &Settings) -> anyhow::Result<Ledger> {
    settings.ensure_data_dir()?;
    let db = Db::connect_ledger(
        &settings.database_url,
        16,
        &settings.file.database.schema,
        settings.file.database.sqlite_synchronous,
        settings.file.database.timeouts(),
    )
    .await?;
    let ledger = Ledger::new(db);
    ledger.migrate().await.context("applying the ledger's migrations")?;
    Ok(ledger)
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with(settings, Overrides::default()).await
    }

    pub async fn build_with(settings: Settings, overrides: Overrides) -> anyhow::Result<Self> {
        let listen = overrides.listen.unwrap_or(settings.file.server.listen);
        install_crypto_provider();
        // Everything the server writes holds personal data (cli::main does this too; an
        // embedder gets it here).
        crate::files::restrict_umask();
        let auth = Arc::new(Authenticator::new(&settings.file.auth, &settings.file.server)?);
        // Development mode: no credentials are configured, so the server must not be reachable
        // from other machines.
        if auth.is_dev_mode() && !listen.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {listen}: no credentials are configured (development mode), so dsr \
                 only listens on a loopback address such as 127.0.0.1:50051; configure [[auth.tokens]] \
                 (or DSR_TOKENS_FILE) or client certificates to listen elsewhere"
            );
        }
        let tls = match &settings.file.tls {
            Some(cfg) => Some(tls_config(cfg, auth.is_dev_mode() || !settings.file.auth.tokens.is_empty())?),
            None => None,
        };
        // The phone metadata loads on a thread of its own while the ledger opens, so the first
        // request does not wait for it.
        let phone_metadata = tokio::task::spawn_blocking(crate::resolve::normalize::load_phone_metadata);
        let ledger = open_ledger(&settings).await?;
        let stores = StoreRegistry::from_settings(&settings, ledger.db()).await?;
        phone_metadata.await.context("loading the phone number metadata")?;
        let stores = match &overrides.wrap_store {
            Some(wrap) => stores.map(wrap),
            None => stores,
        };
        let clock = overrides.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let hasher = KeyedHasher::for_settings(&settings)?;
        let signals = Signals::default();
        let exports = Arc::new(ExportStorage::open(&settings).context("opening the export storage")?);
        let metrics = Arc::new(Metrics::new());
        let metrics_endpoint = match settings.file.metrics.addr() {
            Some(addr) => Some(
                MetricsEndpoint::bind(
                    addr,
                    metrics.clone(),
                    ledger.clone(),
                    clock.clone(),
                    // Each store's queue, and the exports' archive step.
                    stores.all().iter().map(|a| a.name()).chain([ARCHIVE_TASK]).map(str::to_owned).collect(),
                )
                .await?,
            ),
            None => None,
        };
        let engine = Arc::new(Engine::new(
            ledger.clone(),
            stores.clone(),
            exports.clone(),
            clock.clone(),
            &settings.file,
            signals.clone(),
            metrics.clone(),
            hasher.clone(),
        ));
        let sweeper = Arc::new(Sweeper::new(
            ledger.clone(),
            stores.clone(),
            clock.clone(),
            hasher.clone(),
            signals.clone(),
            &settings.file.retention,
            metrics.clone(),
        ));
        let dispatcher = match overrides.paused_dispatcher {
            true => None,
            false => Some(Arc::new(
                crate::recipients::Dispatcher::new(
                    ledger.clone(),
                    &settings.file.recipients,
                    clock.clone(),
                    metrics.clone(),
                    signals.clone(),
                )
                .context("setting up the recipients")?,
            )),
        };
        let ctx = Arc::new(ServiceContext {
            ledger,
            stores,
            exports,
            clock,
            hasher,
            signals,
            config: settings.file.clone(),
            watchers: StreamSlots::new(
                "WatchRequest",
                settings.file.server.max_watchers,
                settings.file.server.max_watchers_per_caller,
            ),
            downloads: StreamSlots::new(
                "DownloadExport",
                settings.file.server.max_downloads,
                settings.file.server.max_downloads_per_caller,
            ),
            metrics,
        });
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        Ok(Self {
            listener,
            ctx,
            engine,
            sweeper,
            dispatcher,
            auth,
            tls,
            paused_engine: overrides.paused_engine,
            settings,
            metrics_endpoint,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint.as_ref().map(MetricsEndpoint::local_addr)
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ctx.ledger
    }

    /// The retention sweeper of this server (its stores, clock and lease identity), so tests and
    /// embedders can run a sweep now.
    pub fn sweeper(&self) -> Arc<Sweeper> {
        self.sweeper.clone()
    }

    /// Serves until `shutdown` resolves. Then: health says NOT_SERVING (so Kubernetes stops
    /// routing), the server stops accepting and finishes in-flight RPCs, and the engine lets
    /// running tasks finish within the grace period and releases the rest.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let server_cfg = &self.settings.file.server;
        let grace = Duration::from_secs(server_cfg.shutdown_grace_secs);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<pb::data_subject_rights_server::DataSubjectRightsServer<RightsService>>().await;
        health.set_serving::<pb::audit_server::AuditServer<AuditService>>().await;
        health.set_serving::<pb::holds_server::HoldsServer<HoldsService>>().await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let max = server_cfg.max_message_bytes;
        let interceptor = AuthInterceptor(self.auth.clone());
        let rights = tonic::service::interceptor::InterceptedService::new(
            pb::data_subject_rights_server::DataSubjectRightsServer::new(RightsService::new(
                self.ctx.clone(),
            ))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
            interceptor.clone(),
        );
        let audit = tonic::service::interceptor::InterceptedService::new(
            pb::audit_server::AuditServer::new(AuditService::new(self.ctx.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            interceptor.clone(),
        );
        let holds = tonic::service::interceptor::InterceptedService::new(
            pb::holds_server::HoldsServer::new(HoldsService::new(self.ctx.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            interceptor,
        );

        let stop = CancellationToken::new();
        let engine_task = match self.paused_engine {
            true => tokio::spawn(async {}),
            false => tokio::spawn(self.engine.clone().run_until_stopped(stop.clone(), grace)),
        };
        let janitor = tokio::spawn(crate::export::run_janitor(
            self.ctx.exports.clone(),
            self.ctx.ledger.clone(),
            self.ctx.clock.clone(),
            Duration::from_secs(self.settings.file.export.janitor_interval_secs),
            stop.clone(),
        ));
        let sweep_task = tokio::spawn(self.sweeper.clone().run_until_stopped(stop.clone()));
        // Stopped last, after everything that records events has drained, so its final seal
        // links what they wrote.
        let sealer_stop = CancellationToken::new();
        let sealer = tokio::spawn(self.ctx.ledger.clone().run_sealer(sealer_stop.clone()));
        let dispatch_task = self.dispatcher.clone().map(|d| tokio::spawn(d.run_until_stopped(stop.clone())));
        let store_watch = tokio::spawn(crate::stores::watch::watch_until_stopped(
            self.ctx.stores.clone(),
            health.clone(),
            self.ctx.metrics.clone(),
            Duration::from_secs(self.settings.file.stores.check_interval_secs.unwrap_or(30)),
            stop.clone(),
        ));
        let addr = self.local_addr();
        let metrics_addr = self.metrics_addr();
        // Scrapes go on while the server drains; the endpoint stops last.
        let metrics_stop = CancellationToken::new();
        let metrics_task =
            self.metrics_endpoint.take().map(|m| tokio::spawn(m.serve_until_stopped(metrics_stop.clone())));
        info!(
            %addr,
            metrics = metrics_addr.map(|a| a.to_string()),
            database = self.ctx.ledger.db().backend().name(),
            tls = self.tls.is_some(),
            auth = %self.auth.describe(),
            "dsr listening"
        );
        match transport_notice(addr, self.auth.is_dev_mode(), self.tls.is_some(), server_cfg.mesh_tls) {
            TransportNotice::Encrypted => {}
            TransportNotice::Mesh(m) => info!(%addr, "{m}"),
            TransportNotice::Plaintext(m) => warn!(%addr, "{m}"),
        }

        let server_stop = CancellationToken::new();
        let drain = {
            let (stop, server_stop, health) = (stop.clone(), server_stop.clone(), health.clone());
            async move {
                shutdown.await;
                info!("shutdown requested: health NOT_SERVING, draining");
                health.set_not_serving::<pb::data_subject_rights_server::DataSubjectRightsServer<RightsService>>().await;
                health.set_not_serving::<pb::audit_server::AuditServer<AuditService>>().await;
                health.set_not_serving::<pb::holds_server::HoldsServer<HoldsService>>().await;
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                stop.cancel();
                server_stop.cancel();
            }
        };
        tokio::spawn(drain);

        let mut builder = Server::builder();
        if let Some(tls) = self.tls.clone() {
            builder = builder.tls_config(tls)?;
        }
        let serve = builder
            .timeout(Duration::from_secs(server_cfg.request_timeout_secs))
            // Outermost: the span and metrics see every call, including one that waits for a
            // concurrency slot, and the status codes as `normalise` rewrites them.
            .layer(crate::telemetry::grpc::RpcLayer::new(self.ctx.metrics.clone()))
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(server_cfg.max_concurrent_requests))
            .layer(tower::util::MapResponseLayer::new(crate::api::status_codes::normalise))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(rights)
            .add_service(audit)
            .add_service(holds)
            .serve_with_incoming_shutdown(accepted_connections(self.listener), server_stop.cancelled_owned());
        let served = serve.await;
        stop.cancel();
        if let Err(e) = engine_task.await {
            warn!(error = %e, "engine task ended abnormally");
        }
        let _ = janitor.await;
        let _ = store_watch.await;
        if let Some(task) = dispatch_task {
            let _ = task.await;
        }
        if let Err(e) = sweep_task.await {
            warn!(error = %e, "retention sweep task ended abnormally");
        }
        sealer_stop.cancel();
        let _ = sealer.await;
        metrics_stop.cancel();
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        self.ctx.ledger.db().close().await;
        info!("dsr stopped");
        served.context("gRPC server")
    }
}

/// What start-up says about the transport of credentials and archives.
#[derive(Debug, PartialEq, Eq)]
enum TransportNotice {
    /// TLS in process, or plaintext on loopback behind credentials (a sidecar's hop).
    Encrypted,
    /// No TLS here by design: the operator said a service mesh encrypts this pod's traffic.
    Mesh(&'static str),
    /// Bearer tokens, or development mode's open door, in clear: said at WARN.
    Plaintext(&'static str),
}

fn transport_notice(addr: SocketAddr, dev_mode: bool, tls: bool, mesh_tls: bool) -> TransportNotice {
    if tls {
        TransportNotice::Encrypted
    } else if dev_mode {
        TransportNotice::Plaintext(
            "development mode: no credentials and no TLS; every local caller has every scope; \
             configure [[auth.tokens]] and [tls] before serving real data",
        )
    } else if addr.ip().is_loopback() {
        TransportNotice::Encrypted
    } else if mesh_tls {
        TransportNotice::Mesh(
            "serving without [tls]: server.mesh_tls says a service mesh encrypts this pod's traffic",
        )
    } else {
        TransportNotice::Plaintext(
            "serving plaintext beyond loopback: bearer tokens and export archives cross the network in clear; \
             configure [tls], or set server.mesh_tls = true when a service mesh encrypts this pod's traffic \
             (docs/deploy.md)",
        )
    }
}

/// Picks rustls' crypto provider (ring) for tonic's TLS and the S3 client, which is built
/// without a provider of its own. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The server's TLS: its certificate and key, and with a client CA, verified client
/// certificates (optional when bearer tokens may be used instead).
fn tls_config(cfg: &TlsConfig, client_cert_optional: bool) -> anyhow::Result<ServerTlsConfig> {
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut tls =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&cfg.cert_file)?, read(&cfg.key_file)?));
    if let Some(ca) = &cfg.client_ca_file {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?)).client_auth_optional(client_cert_optional);
    }
    Ok(tls)
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled: call it before the listener binds, so a SIGTERM that arrives as
/// soon as the port answers (an orchestrator's quick stop) drains instead of killing the
/// process with the signal's default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                }
                // No handler could be installed: the default actions stop the process.
                _ => std::future::pending::<()>().await,
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The listener's connections as the server takes them: `TCP_NODELAY`, so a response goes out
/// at once instead of waiting on Nagle's algorithm and the peer's delayed ACK (about 40 ms per
/// unary call on loopback without it), and TCP keepalive, so a vanished client's connection is
/// noticed. (`serve_with_incoming_*` sets no socket options of its own.)
pub fn accepted_connections(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_a_warning_unless_tls_a_mesh_or_loopback_behind_credentials_covers_it() {
        let public: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let plaintext = |n| matches!(n, TransportNotice::Plaintext(_));
        assert!(plaintext(transport_notice(public, false, false, false)));
        assert!(plaintext(transport_notice(local, true, false, false)), "development mode");
        assert!(matches!(transport_notice(public, false, false, true), TransportNotice::Mesh(_)));
        assert_eq!(transport_notice(public, false, true, false), TransportNotice::Encrypted);
        assert_eq!(transport_notice(local, false, false, false), TransportNotice::Encrypted);
    }

    /// Without TCP_NODELAY every unary answer on loopback waited about 40 ms for a delayed ACK.
    #[tokio::test]
    async fn accepted_connections_have_tcp_nodelay() {
        use futures::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = accepted_connections(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap(), "the server's side of the connection has TCP_NODELAY");
    }
}
