//! `spawn_app`: the real server on a random loopback port with a fresh database, and a real
//! gRPC client to it.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use dsr::{
    api::pb::{self, audit_client::AuditClient, data_subject_rights_client::DataSubjectRightsClient},
    config::Settings,
    db::Db,
    retention::{SweepMode, SweepOutcome, SweepReport, Sweeper},
    seed::{SeedSpec, SeededSubject},
    startup::{Application, Overrides},
    stores::{open_object_store, reference::Tables},
};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::support;
pub use crate::support::Backend;

/// A migrated ledger on a fresh database and nothing else (no server): for tests of the
/// ledger's statements and their plans on tables filled by SQL.
pub struct BareLedger {
    pub db: Db,
    pub ledger: dsr::ledger::Ledger,
    _dir: TempDir,
}

impl BareLedger {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = support::fresh_database(backend, dir.path()).await;
        let db = Db::connect_ledger(&url, 1, "dsr", Default::default(), Default::default()).await.unwrap();
        let ledger = dsr::ledger::Ledger::new(db.clone());
        ledger.migrate().await.unwrap();
        Self { db, ledger, _dir: dir }
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql).execute(self.db.pool()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The plan of `sql` (no parameters), one line per step: `EXPLAIN (ANALYZE, BUFFERS)` on
    /// Postgres (run, with its buffers), `EXPLAIN QUERY PLAN` on SQLite.
    pub async fn plan(&self, sql: &str) -> Vec<String> {
        use sqlx::Row;
        let (explain, column) = match self.db.backend() {
            dsr::db::Backend::Postgres => ("EXPLAIN (ANALYZE, BUFFERS)", 0),
            dsr::db::Backend::Sqlite => ("EXPLAIN QUERY PLAN", 3),
        };
        let rows = sqlx::query(&format!("{explain} {sql}")).fetch_all(self.db.pool()).await.unwrap();
        rows.iter().map(|r| r.get::<String, _>(column)).collect()
    }
}

/// Fast retries and short leases, so tests of failure paths do not wait on production timings.
/// No background retention sweep: tests that sweep run one themselves (`TestApp::sweep`).
/// `[engine]` stays the last table: tests append engine keys to it.
pub const TEST_CONFIG: &str = "
[retention]
sweep_interval_secs = 0

[engine]
backoff_base_ms = 10
backoff_max_ms = 50
poll_interval_ms = 50
max_attempts = 3
";

pub struct TestApp {
    pub addr: SocketAddr,
    /// `/metrics`, when the test's configuration has `[metrics] listen`.
    pub metrics: Option<SocketAddr>,
    pub client: DataSubjectRightsClient<Channel>,
    pub settings: Settings,
    pub db: Db,
    pub dir: TempDir,
    /// This server's retention sweeper (its stores, clock and lease identity).
    pub sweeper: Arc<Sweeper>,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, TEST_CONFIG, Overrides::default()).await
}

pub async fn spawn_app_with(backend: Backend, toml: &str, overrides: Overrides) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = support::fresh_platform_database(backend, dir.path()).await;
    let settings = support::settings(dir.path(), url, None, toml);
    spawn_on(settings, dir, overrides).await
}

pub async fn spawn_on(settings: Settings, dir: TempDir, overrides: Overrides) -> TestApp {
    let overrides = Overrides { listen: Some("127.0.0.1:0".parse().unwrap()), ..overrides };
    let app = Application::build_with(settings.clone(), overrides).await.expect("build app");
    let addr = app.local_addr();
    let metrics = app.metrics_addr();
    let db = app.ledger().db().clone();
    let sweeper = app.sweeper();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
    let client = DataSubjectRightsClient::new(channel(addr).await);
    TestApp { addr, metrics, client, settings, db, dir, sweeper, stop, handle: Some(handle) }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect to test server")
}

impl TestApp {
    /// Seeds `subjects` subjects with `calls` calls each into `tenant`.
    pub async fn seed(&self, tenant: &str, subjects: usize, calls: usize) -> Vec<SeededSubject> {
        self.seed_with(tenant, 0, subjects, calls, chrono::Utc::now()).await
    }

    /// Like `seed`, numbering subjects from `first` (distinct identifiers across tenants).
    pub async fn seed_from(
        &self,
        tenant: &str,
        first: usize,
        subjects: usize,
        calls: usize,
    ) -> Vec<SeededSubject> {
        self.seed_with(tenant, first, subjects, calls, chrono::Utc::now()).await
    }

    /// Like `seed`, with the data dated from `now` (the test's manual clock).
    pub async fn seed_at(
        &self,
        tenant: &str,
        subjects: usize,
        calls: usize,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Vec<SeededSubject> {
        self.seed_with(tenant, 0, subjects, calls, now).await
    }

    pub async fn seed_with(
        &self,
        tenant: &str,
        first: usize,
        subjects: usize,
        calls: usize,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Vec<SeededSubject> {
        let objects = open_object_store(&self.settings.recordings_url).unwrap();
        let spec = SeedSpec {
            tenant: dsr::domain::TenantId::parse("tenant", tenant).unwrap(),
            subjects,
            calls,
            recording_bytes: 512,
            first,
        };
        let mut out = Vec::new();
        dsr::seed::seed(&self.db, &Tables::default(), objects, &spec, now, |s| out.push(s))
            .await
            .expect("seed");
        out
    }

    /// Runs one retention sweep now, on this server's sweeper; panics if another holds the lease.
    pub async fn sweep(&self) -> SweepReport {
        match self.sweeper.sweep(SweepMode::Now, &CancellationToken::new()).await.expect("sweep") {
            SweepOutcome::Swept(r) => r,
            other => panic!("the sweep did not run: {other:?}"),
        }
    }

    /// What a sweep now would erase (changes nothing).
    pub async fn dry_run(&self) -> SweepReport {
        match self.sweeper.sweep(SweepMode::DryRun, &CancellationToken::new()).await.expect("dry run") {
            SweepOutcome::Swept(r) => r,
            other => panic!("the dry run did not run: {other:?}"),
        }
    }

    pub async fn delete(&self, subject: pb::Subject) -> pb::DsrRequest {
        self.client
            .clone()
            .submit_deletion(pb::SubmitDeletionRequest { subject: Some(subject), ..Default::default() })
            .await
            .expect("submit deletion")
            .into_inner()
    }

    /// A client of the `dsr.v1.Audit` service on this server.
    pub async fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(channel(self.addr).await)
    }

    /// Follows the request with WatchRequest until it ends; returns every message seen.
    pub async fn watch_to_end(&self, id: &str) -> Vec<pb::DsrRequest> {
        let mut stream = self
            .client
            .clone()
            .watch_request(pb::WatchRequestRequest { id: id.to_owned() })
            .await
            .expect("watch")
            .into_inner();
        let mut seen = Vec::new();
        // A safety net against a hang, not a timing assertion.
        let follow = async {
            while let Some(r) = stream.message().await.expect("watch stream") {
                seen.push(r);
            }
        };
        tokio::time::timeout(Duration::from_secs(120), follow)
            .await
            .expect("request did not end within 120 s");
        seen
    }

    pub async fn wait_terminal(&self, id: &str) -> pb::DsrRequest {
        self.watch_to_end(id).await.pop().expect("at least one message")
    }

    pub async fn get(&self, id: &str) -> pb::DsrRequest {
        self.client
            .clone()
            .get_request(pb::GetRequestRequest { id: id.to_owned() })
            .await
            .expect("get")
            .into_inner()
    }

    pub async fn preview(&self, subject: pb::Subject) -> Vec<pb::StoreHoldings> {
        self.client
            .clone()
            .preview_subject(pb::PreviewSubjectRequest { subject: Some(subject) })
            .await
            .expect("preview")
            .into_inner()
            .stores
    }

    /// Links the event journal into the chain now, before a test reads `dsr_events` directly.
    pub async fn seal_journal(&self) {
        support::seal_journal(&self.db).await;
    }

    /// Rows of the ledger table (to prove nothing was written; `dsr_events` after sealing).
    pub async fn count(&self, table: &str) -> i64 {
        if table == "dsr_events" {
            support::seal_journal(&self.db).await;
        }
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(self.db.pool()).await.unwrap()
    }

    /// Stops the server the way SIGTERM would and waits for it; hands back what a second server
    /// on the same data needs.
    pub async fn shutdown(mut self) -> (Settings, TempDir) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server ran cleanly");
        }
        (self.settings, self.dir)
    }
}

pub fn by_phone(tenant: &str, phone: &str) -> pb::Subject {
    pb::Subject { tenant_id: tenant.into(), phone: phone.into(), ..Default::default() }
}

pub fn by_account(tenant: &str, account_id: &str) -> pb::Subject {
    pb::Subject { tenant_id: tenant.into(), account_id: account_id.into(), ..Default::default() }
}

pub fn by_email(tenant: &str, email: &str) -> pb::Subject {
    pb::Subject { tenant_id: tenant.into(), email: email.into(), ..Default::default() }
}

pub fn outcome<'a>(r: &'a pb::DsrRequest, store: &str) -> &'a pb::StoreOutcome {
    r.outcomes.iter().find(|o| o.store == store).unwrap_or_else(|| panic!("no outcome for {store}"))
}

pub fn holdings<'a>(h: &'a [pb::StoreHoldings], store: &str) -> &'a pb::StoreHoldings {
    h.iter().find(|s| s.store == store).unwrap_or_else(|| panic!("no holdings for {store}"))
}

/// Runs an async test body on SQLite and on Postgres: `both!(name)` makes `name::sqlite` and
/// `name::postgres`.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    };
}

/// A test wrapper around a real store, over a field `inner: Arc<dyn StoreAdapter>`:
/// `store_wrapper!(W: Erase, Export)` implements `StoreAdapter` for `W`, forwarding the store's
/// description, its candidates and every concern not named. The concerns named are the ones the
/// wrapper changes: it implements each itself (`impl Erase for W`), reaching the wrapped store's
/// through `inner_erase()` & co. for the methods it passes through, and offers it exactly when
/// the wrapped store does. `store_wrapper!(W)` changes nothing.
#[macro_export]
macro_rules! store_wrapper {
    (@offer as_erase Erase [Erase $($rest:ident)*]) => {
        fn as_erase(&self) -> Option<&dyn dsr::stores::Erase> {
            self.inner.as_erase().map(|_| self as &dyn dsr::stores::Erase)
        }
    };
    (@offer as_export Export [Export $($rest:ident)*]) => {
        fn as_export(&self) -> Option<&dyn dsr::stores::Export> {
            self.inner.as_export().map(|_| self as &dyn dsr::stores::Export)
        }
    };
    (@offer as_rectify Rectify [Rectify $($rest:ident)*]) => {
        fn as_rectify(&self) -> Option<&dyn dsr::stores::Rectify> {
            self.inner.as_rectify().map(|_| self as &dyn dsr::stores::Rectify)
        }
    };
    (@offer as_retention Retention [Retention $($rest:ident)*]) => {
        fn as_retention(&self) -> Option<&dyn dsr::stores::Retention> {
            self.inner.as_retention().map(|_| self as &dyn dsr::stores::Retention)
        }
    };
    (@offer $as:ident $concern:ident [$other:ident $($rest:ident)*]) => {
        $crate::store_wrapper!(@offer $as $concern [$($rest)*]);
    };
    (@offer $as:ident $concern:ident []) => {
        fn $as(&self) -> Option<&dyn dsr::stores::$concern> {
            self.inner.$as()
        }
    };
    ($wrapper:ty $(: $($concern:ident),+)?) => {
        #[async_trait::async_trait]
        impl dsr::stores::StoreAdapter for $wrapper {
            fn name(&self) -> &'static str {
                self.inner.name()
            }
            fn stage(&self) -> u8 {
                self.inner.stage()
            }
            fn is_identity(&self) -> bool {
                self.inner.is_identity()
            }
            fn links_to(&self) -> Option<&'static str> {
                self.inner.links_to()
            }
            fn keeps_under_legal_obligation(&self) -> bool {
                self.inner.keeps_under_legal_obligation()
            }
            fn takes_part_in(&self, kind: dsr::domain::RequestKind) -> bool {
                self.inner.takes_part_in(kind)
            }
            async fn check_schema(&self) -> Vec<String> {
                self.inner.check_schema().await
            }
            async fn candidates(
                &self,
                p: &dsr::stores::Probe<'_>,
            ) -> dsr::stores::StoreResult<Vec<dsr::stores::CandidateRow>> {
                self.inner.candidates(p).await
            }
            $crate::store_wrapper!(@offer as_erase Erase [$($($concern)+)?]);
            $crate::store_wrapper!(@offer as_export Export [$($($concern)+)?]);
            $crate::store_wrapper!(@offer as_rectify Rectify [$($($concern)+)?]);
            $crate::store_wrapper!(@offer as_retention Retention [$($($concern)+)?]);
        }

        /// The wrapped store's concerns, for the methods a wrapper passes through.
        #[allow(dead_code)]
        impl $wrapper {
            fn inner_erase(&self) -> &dyn dsr::stores::Erase {
                self.inner.as_erase().expect("offered only when the wrapped store erases")
            }
            fn inner_export(&self) -> &dyn dsr::stores::Export {
                self.inner.as_export().expect("offered only when the wrapped store exports")
            }
            fn inner_rectify(&self) -> &dyn dsr::stores::Rectify {
                self.inner.as_rectify().expect("offered only when the wrapped store corrects")
            }
            fn inner_retention(&self) -> &dyn dsr::stores::Retention {
                self.inner.as_retention().expect("offered only when the wrapped store has retention")
            }
        }
    };
}
