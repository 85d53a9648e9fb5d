//! Typed configuration: command-line flags and `DSR_*` environment variables for where things
//! live, a TOML file (`--config`) for everything else. Validated once at start; a bad value stops
//! the process with a message naming the key.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use serde::Deserialize;

use crate::domain::{Period, RetentionSchedule};

/// Where things live: the flags shared by `serve`, `seed`, `migrate` and `sweep`.
#[derive(Debug, Clone, clap::Args)]
pub struct Locations {
    /// Home of the embedded default (SQLite file, recordings, exports, HMAC key).
    #[arg(long, env = "DSR_DATA_DIR", default_value = "./dsr-data")]
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite://…`; overrides the embedded database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// `file:///dir` or `s3://bucket/prefix` (S3 endpoint and keys from the `AWS_*` variables).
    #[arg(long, env = "DSR_RECORDINGS_URL")]
    pub recordings_url: Option<String>,
    /// A TOML file with everything else (server, engine, stores, limits).
    #[arg(long = "config", env = "DSR_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// Where export archives are written: `file:///dir` or `s3://bucket/prefix` (default
    /// `<data-dir>/exports`; `[export] storage_url` in the config file also sets it).
    #[arg(long, env = "DSR_EXPORTS_URL")]
    pub exports_url: Option<String>,
}

/// Everything the service needs to run, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub recordings_url: String,
    /// The export storage (object_store URL).
    pub exports_url: String,
    /// No database URL was given: the embedded default (a SQLite file in the data directory),
    /// where dsr creates the reference schema itself so it can be tried at once.
    pub embedded: bool,
    pub file: FileConfig,
}

/// The TOML file. Every key has a default; unknown keys are an error (a typo must not be
/// silently ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    pub stores: StoresConfig,
    pub privacy: PrivacyConfig,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    pub metrics: MetricsConfig,
    pub export: ExportConfig,
    pub retention: RetentionConfig,
    pub subjects: SubjectsConfig,
    pub database: DatabaseConfig,
    /// Stores described, not coded (`[[catalog]]`). Once read (`from_toml`), the whole catalog
    /// the service runs: the default entries (the reference stores, `config/catalog.toml`), each
    /// replaced by the file's entry of the same name, then the file's others.
    pub catalog: Vec<crate::catalog::CatalogEntry>,
    /// Recipients told of erasures and corrections (`[recipients]`; the entries themselves are
    /// `[[catalog]] kind = "recipient"`).
    pub recipients: crate::recipients::RecipientsConfig,
    /// The catalog's remote stores (`[[catalog]] kind = "grpc"`), after the SQL ones.
    #[serde(skip)]
    pub remote: Vec<crate::catalog::remote::RemoteEntry>,
}

/// dsr's own database (the ledger).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Postgres: the schema that holds dsr's tables and its own `_sqlx_migrations`, so a
    /// database shared with the platform never mixes the two (default `dsr`). SQLite: unused.
    pub schema: String,
    /// SQLite: `full` (default) syncs every commit, so an acknowledged request survives a
    /// power loss; `normal` survives a crash of the process only, and is faster.
    pub sqlite_synchronous: crate::db::SqliteSync,
    /// Postgres: a ledger session idle inside a transaction this long is ended by the server,
    /// and its locks with it (the audit chain's among them), so one paused or partitioned
    /// replica cannot stall the others for longer (default 10; 0: never).
    pub idle_in_transaction_timeout_secs: u64,
    /// Postgres: the longest one ledger statement may run (default 120; 0: no limit).
    pub statement_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            schema: "dsr".into(),
            sqlite_synchronous: crate::db::SqliteSync::Full,
            idle_in_transaction_timeout_secs: 10,
            statement_timeout_secs: 120,
        }
    }
}

impl DatabaseConfig {
    /// The session timeouts of the ledger's Postgres connections.
    pub fn timeouts(&self) -> crate::db::SessionTimeouts {
        crate::db::SessionTimeouts {
            idle_in_transaction: Duration::from_secs(self.idle_in_transaction_timeout_secs),
            statement: Duration::from_secs(self.statement_timeout_secs),
        }
    }
}

impl DatabaseConfig {
    fn validate(&self) -> anyhow::Result<()> {
        let s = &self.schema;
        anyhow::ensure!(
            !s.is_empty()
                && s.len() <= 63
                && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database.schema: {s:?} is not a plain Postgres name (a-z, 0-9, _; at most 63)"
        );
        Ok(())
    }
}

/// How subjects' identifiers are read. Phones stored in a national format (`(555) 000-0003`)
/// are read in the tenant's region.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubjectsConfig {
    /// ISO 3166 region for national phone formats (default `US`).
    pub default_region: String,
    /// Per tenant: `[subjects.regions] acme-uk = "GB"`.
    pub regions: BTreeMap<String, String>,
}

impl Default for SubjectsConfig {
    fn default() -> Self {
        Self { default_region: "US".into(), regions: BTreeMap::new() }
    }
}

impl SubjectsConfig {
    pub fn region_for(&self, tenant: &str) -> crate::resolve::Region {
        let code = self.regions.get(tenant).unwrap_or(&self.default_region);
        crate::resolve::Region::parse(code).unwrap_or_default()
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            crate::resolve::Region::parse(&self.default_region).is_some(),
            "subjects.default_region: {:?} is not an ISO 3166 region code (US, GB, DE, …)",
            self.default_region
        );
        for (tenant, code) in &self.regions {
            anyhow::ensure!(
                crate::resolve::Region::parse(code).is_some(),
                "subjects.regions.{tenant}: {code:?} is not an ISO 3166 region code (US, GB, DE, …)"
            );
        }
        Ok(())
    }
}

/// The retention schedule and its sweep (issue 9). Read at start: a change takes effect when the
/// process restarts. Periods are validated: none under its legal minimum (billing: 7 years),
/// none over `max_days`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often the fleet sweeps (whichever replica holds the lease runs it); 0 turns the
    /// background sweep off (`dsr sweep` still runs one).
    pub sweep_interval_secs: u64,
    /// Records erased per statement and per transaction: no lock grows with the backlog.
    pub batch_size: usize,
    /// How long a sweeper's lease lasts without renewal: a replica that dies mid-sweep is taken
    /// over after this long.
    pub lease_secs: u64,
    /// No period, default or tenant's, may be longer than this (default: 10 years with their
    /// leap days, 3653).
    pub max_days: u32,
    pub recordings_days: u32,
    pub transcripts_days: u32,
    pub call_logs_days: u32,
    /// Days after the account's termination.
    pub accounts_days: u32,
    /// At least 7 (tax and accounting law).
    pub billing_years: u32,
    /// Per tenant: `[retention.tenants.acme] recordings_days = 30`.
    pub tenants: BTreeMap<String, TenantRetention>,
    /// The periods of catalog stores (`[[catalog]] retention_days`, or `retain.years` for a
    /// store kept under a legal obligation), filled in from the catalog.
    #[serde(skip)]
    pub catalog_days: Vec<(String, Period)>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            sweep_interval_secs: 3600,
            batch_size: 1000,
            lease_secs: 300,
            max_days: 3653,
            recordings_days: 90,
            transcripts_days: 90,
            call_logs_days: 365,
            accounts_days: 30,
            billing_years: crate::domain::RETENTION_MONTHS_BILLING / 12,
            tenants: BTreeMap::new(),
            catalog_days: Vec::new(),
        }
    }
}

/// One tenant's own periods; what it leaves out follows the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantRetention {
    pub recordings_days: Option<u32>,
    pub transcripts_days: Option<u32>,
    pub call_logs_days: Option<u32>,
    pub accounts_days: Option<u32>,
    pub billing_years: Option<u32>,
}

impl TenantRetention {
    /// (config key, store, period) of each period set.
    fn periods(&self) -> Vec<(&'static str, &'static str, Period)> {
        periods([
            ("recordings_days", "recordings", self.recordings_days.map(Period::Days)),
            ("transcripts_days", "transcripts", self.transcripts_days.map(Period::Days)),
            ("call_logs_days", "call_logs", self.call_logs_days.map(Period::Days)),
            ("accounts_days", "accounts", self.accounts_days.map(Period::Days)),
            ("billing_years", "billing", self.billing_years.map(|y| Period::Months(y.saturating_mul(12)))),
        ])
    }
}

fn periods<const N: usize>(
    all: [(&'static str, &'static str, Option<Period>); N],
) -> Vec<(&'static str, &'static str, Period)> {
    all.into_iter().filter_map(|(key, store, p)| p.map(|p| (key, store, p))).collect()
}

impl RetentionConfig {
    fn defaults(&self) -> Vec<(&'static str, &'static str, Period)> {
        TenantRetention {
            recordings_days: Some(self.recordings_days),
            transcripts_days: Some(self.transcripts_days),
            call_logs_days: Some(self.call_logs_days),
            accounts_days: Some(self.accounts_days),
            billing_years: Some(self.billing_years),
        }
        .periods()
    }

    /// The schedule these settings make.
    pub fn schedule(&self) -> RetentionSchedule {
        let mut s = RetentionSchedule::default();
        for (_, store, p) in self.defaults() {
            s = s.with_default(store, p);
        }
        for (store, period) in &self.catalog_days {
            s = s.with_default(store, *period);
        }
        for (tenant, own) in &self.tenants {
            for (_, store, p) in own.periods() {
                s = s.with_tenant(tenant, store, p);
            }
        }
        s
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.batch_size >= 1, "retention.batch_size must be at least 1");
        anyhow::ensure!(self.batch_size <= 10_000, "retention.batch_size must be at most 10000");
        anyhow::ensure!(self.lease_secs >= 1, "retention.lease_secs must be at least 1");
        anyhow::ensure!(self.max_days >= 1, "retention.max_days must be at least 1");
        let check = |prefix: &str, key: &str, store: &str, p: Period| -> anyhow::Result<()> {
            let name = format!("{prefix}{key}");
            anyhow::ensure!(p != Period::Days(0) && p != Period::Months(0), "{name} must be at least 1");
            if let Some(min) = crate::domain::legal_minimum(store) {
                let now = chrono::Utc::now();
                anyhow::ensure!(
                    p.after(now) >= min.after(now),
                    "{name}: {p} is below the legal minimum of {min} for {store} (tax and accounting law)"
                );
            }
            anyhow::ensure!(
                p.max_days() <= u64::from(self.max_days),
                "{name}: {p} is longer than retention.max_days ({} days)",
                self.max_days
            );
            Ok(())
        };
        for (key, store, p) in self.defaults() {
            check("retention.", key, store, p)?;
        }
        for (tenant, own) in &self.tenants {
            crate::domain::TenantId::parse("tenant", tenant)
                .map_err(|e| anyhow::anyhow!("retention.tenants.{tenant}: not a tenant id ({e})"))?;
            for (key, store, p) in own.periods() {
                check(&format!("retention.tenants.{tenant}."), key, store, p)?;
            }
        }
        Ok(())
    }
}

/// Export archives: where they go, how long they stay, and the Art. 15 text of their manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// `file:///dir` or `s3://bucket/prefix`; `--exports-url` / `DSR_EXPORTS_URL` win over it.
    pub storage_url: Option<String>,
    /// Days a finished archive may be downloaded; then it is deleted and downloads answer
    /// NOT_FOUND saying it expired.
    pub expiry_days: u32,
    /// How often the server deletes archives that expired without being asked for.
    pub janitor_interval_secs: u64,
    /// What GDPR Art. 15(1) says the subject is owed alongside the copy (written into
    /// `manifest.json`). Default: `config/export-notice.toml` of the source tree, built in.
    pub notice: ExportNotice,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            storage_url: None,
            expiry_days: 7,
            janitor_interval_secs: 300,
            notice: ExportNotice::default(),
        }
    }
}

/// The Art. 15(1) information of an export's manifest: purposes (a), categories (b), recipients
/// (c), retention per store (d), rights (e, f), source (g), automated decisions (h), and the
/// legal basis of each store's processing (why anything is retained).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportNotice {
    pub controller: String,
    pub purposes: Vec<String>,
    pub categories: Vec<String>,
    pub recipients: Vec<Recipient>,
    pub source: String,
    pub rights: String,
    pub automated_decision_making: String,
    /// Store name → how long it keeps data.
    pub retention: BTreeMap<String, String>,
    /// Store name → the legal basis of its processing (and of any retention).
    pub legal_basis: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub name: String,
    pub purpose: String,
}

/// The notice shipped in the source tree (text in configuration, not in code).
const DEFAULT_EXPORT_NOTICE: &str = include_str!("../config/export-notice.toml");

impl Default for ExportNotice {
    fn default() -> Self {
        toml::from_str(DEFAULT_EXPORT_NOTICE).expect("config/export-notice.toml is a valid notice")
    }
}

/// The Prometheus endpoint (`GET /metrics`; Prometheus text or OpenMetrics, as the scraper
/// asks). `listen` is an address or `"off"`. Unset, it is on at `127.0.0.1:9090` in the embedded
/// default (so the tour has metrics) and off when a database URL is given (a deployment says
/// where: the helm chart sets `0.0.0.0:9090`). `serve --metrics-listen` / `DSR_METRICS_LISTEN`
/// win over the file. It serves counts only (no request ids, no tenants), so it needs no
/// credentials.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: Option<MetricsListen>,
}

/// Where `/metrics` is served in the embedded default.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9090";

/// `[metrics] listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "" => Ok(Self::Off),
            a => a
                .parse()
                .map(Self::At)
                .map_err(|_| format!("{a:?} is neither an address (host:port) nor \"off\"")),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl MetricsConfig {
    /// The address to serve on, if any.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.listen {
            Some(MetricsListen::At(a)) => Some(a),
            _ => None,
        }
    }
}

/// Who may call: bearer tokens and client-certificate identities. With neither, the server runs
/// in development mode (loopback only, every caller is `anonymous` with every scope).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
    pub certificates: Vec<CertificateConfig>,
}

impl AuthConfig {
    /// Two entries with the same token hash, name or certificate name would leave one of them
    /// silently in charge (a token configured as a tenant-bound reader and as an unbound admin
    /// acted as the admin), so each must be unique. The message names the entries, never the hash.
    fn refuse_duplicates(&self) -> anyhow::Result<()> {
        let mut names = std::collections::BTreeSet::new();
        let mut hashes: BTreeMap<String, &str> = BTreeMap::new();
        for t in &self.tokens {
            anyhow::ensure!(
                names.insert(t.name.as_str()),
                "auth.tokens: the name {:?} is used by more than one token; each token needs its own name",
                t.name
            );
            if let Some(first) = hashes.insert(t.token_sha256.to_ascii_lowercase(), &t.name) {
                anyhow::bail!(
                    "auth.tokens {first:?} and {:?} have the same token_sha256: one token cannot be two \
                     identities; remove one of them",
                    t.name
                );
            }
        }
        let mut cert_names = std::collections::BTreeSet::new();
        let mut cns = std::collections::BTreeSet::new();
        for c in &self.certificates {
            anyhow::ensure!(
                cert_names.insert(c.name.as_str()),
                "auth.certificates: the name {:?} is used by more than one certificate identity",
                c.name
            );
            anyhow::ensure!(
                cns.insert(c.subject_cn.as_str()),
                "auth.certificates: subject_cn {:?} is mapped more than once (entry {:?})",
                c.subject_cn,
                c.name
            );
        }
        Ok(())
    }
}

/// A bearer token, stored only as the SHA-256 of the token (lowercase hex).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub token_sha256: String,
    pub scopes: Vec<crate::api::Scope>,
    /// Bound to one tenant: it can neither act on nor see another tenant's requests.
    pub tenant: Option<String>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// A client certificate (mTLS) whose subject common name maps to a named identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub name: String,
    pub subject_cn: String,
    pub scopes: Vec<crate::api::Scope>,
    pub tenant: Option<String>,
}

/// TLS for the gRPC port; with `client_ca_file`, client certificates signed by that CA are
/// verified (and required when no bearer tokens are configured).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Also `--listen` / `DSR_LISTEN`, which win over this.
    pub listen: SocketAddr,
    /// An RPC that has not produced its response by then is cancelled (streams are not cut).
    pub request_timeout_secs: u64,
    /// RPCs served at once across all connections; more wait their turn.
    pub max_concurrent_requests: usize,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// On SIGTERM: how long running store tasks may take to finish before their leases are
    /// released for another replica.
    pub shutdown_grace_secs: u64,
    /// Most concurrent WatchRequest streams, all callers together.
    pub max_watchers: usize,
    /// Most WatchRequest streams one caller (token or certificate identity) may hold open: its
    /// share of `max_watchers`, so that one tenant cannot take every slot.
    pub max_watchers_per_caller: usize,
    /// Most concurrent DownloadExport streams, all callers together. A stream whose client stops
    /// reading holds at most a few chunks (64 KiB each) until it is cancelled, so this bounds the
    /// memory stalled downloads can take.
    pub max_downloads: usize,
    /// Most DownloadExport streams one caller may hold open.
    pub max_downloads_per_caller: usize,
    /// This pod's traffic is encrypted by a service mesh (an mTLS sidecar such as Istio's or
    /// Linkerd's), so serving without `[tls]` is deliberate: start-up says so at INFO instead of
    /// warning that bearer tokens and archives travel in clear.
    pub mesh_tls: bool,
    /// Per caller (token or certificate identity): sustained RPCs per second, and the burst
    /// allowed above it. Over it: RESOURCE_EXHAUSTED with a retry hint. 0 turns it off.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".parse().expect("valid default"),
            request_timeout_secs: 30,
            max_concurrent_requests: 256,
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_grace_secs: 20,
            max_watchers: 1024,
            max_watchers_per_caller: 64,
            max_downloads: 64,
            max_downloads_per_caller: 4,
            mesh_tls: false,
            rate_limit_per_second: 100,
            rate_limit_burst: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Store tasks run at once by this process.
    pub workers: usize,
    /// How long a claimed task is ours. A worker renews it while it works; if the process dies
    /// another one takes the task over after this long.
    pub lease_secs: u64,
    /// Attempts per store before the outcome is FAILED (RetryRequest grants as many again).
    pub max_attempts: u32,
    /// Retry delay: base × 2^(attempt-1), capped, with full jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// How often an idle engine looks for due tasks (a submit in this process wakes it at once).
    pub poll_interval_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 8,
            lease_secs: 30,
            max_attempts: 5,
            backoff_base_ms: 500,
            backoff_max_ms: 60_000,
            poll_interval_ms: 500,
        }
    }
}

impl EngineConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}

/// Per-store settings, keyed by store name (`accounts`, `call_logs`, `transcripts`,
/// `recordings`, `billing`). (No `deny_unknown_fields` here: serde cannot combine it with the
/// flattened map; `validate` refuses unknown store names instead.)
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StoresConfig {
    /// No longer supported: dsr never creates tables in a database it was pointed at (empty
    /// reference tables made every deletion "succeed" while the platform's data stayed). The
    /// reference schema comes from `dsr seed` and the embedded default. `false` is accepted.
    pub create_reference_schema: Option<bool>,
    /// Whether the default catalog's entries (the reference stores) run besides the file's own
    /// `[[catalog]]` entries; default true. A file entry of a default store's name replaces it.
    pub default_catalog: Option<bool>,
    /// How often each store is checked while serving (health `dsr.store.<name>`, metric
    /// `dsr_store_up`); default 30 s.
    pub check_interval_secs: Option<u64>,
    #[serde(flatten)]
    pub each: BTreeMap<String, StoreConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The database holding this store's table (default: the service's own database).
    pub database_url: Option<String>,
    /// Table name (default: the reference schema's).
    pub table: Option<String>,
    /// Tasks of this store run at once, per process: protects the store from a backlog.
    pub concurrency: usize,
    /// Longest one call into the store may take (a look-up, an erase, a check, an export's
    /// read). Past it the call counts as a transient failure and the task is retried: a hung
    /// store does not hold its task's lease forever.
    pub timeout_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { database_url: None, table: None, concurrency: 4, timeout_secs: 300 }
    }
}

#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Secret key for keyed hashes of identifiers, including the audit log's subject tags (also
    /// `DSR_AUDIT_KEY`, or its alias `DSR_HMAC_KEY`). Default: generated once into
    /// `<data-dir>/hmac.key`. Never logged.
    pub hmac_key: Option<String>,
}

/// The key never reaches a log, even through `{:?}` of the whole configuration.
impl std::fmt::Debug for PrivacyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivacyConfig")
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Settings {
    /// Reads the config file (if any) and resolves the defaults of the embedded mode.
    pub fn load(loc: &Locations) -> anyhow::Result<Self> {
        let mut file = match &loc.config_file {
            Some(path) => FileConfig::from_path(path)?,
            None => FileConfig::from_toml("")?,
        };
        // DSR_AUDIT_KEY is the official name (the Helm chart sets it); DSR_HMAC_KEY is kept as an
        // alias for deployments made before issue 7. Both win over the file.
        if let Some(key) = ["DSR_AUDIT_KEY", "DSR_HMAC_KEY"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|k| !k.is_empty()))
        {
            file.privacy.hmac_key = Some(key);
        }
        // The ledger's schema for a child `dsr serve` of `dsr bench export` (and for operators
        // who prefer the environment).
        if let Some(schema) = std::env::var("DSR_DATABASE_SCHEMA").ok().filter(|s| !s.is_empty()) {
            file.database.schema = schema;
        }
        // Tokens may live in a separate file (a Kubernetes Secret) holding only [[auth.tokens]].
        if let Ok(path) = std::env::var("DSR_TOKENS_FILE") {
            let extra = FileConfig::from_path(Path::new(&path))?;
            file.auth.tokens.extend(extra.auth.tokens);
            file.auth.certificates.extend(extra.auth.certificates);
        }
        file.validate()?;
        let data_dir = loc.data_dir.clone();
        let given = loc.database_url.clone().filter(|u| !u.is_empty());
        let embedded = given.is_none();
        let database_url = given.unwrap_or_else(|| crate::db::sqlite_url(&data_dir.join("dsr.db")));
        if embedded && file.metrics.listen.is_none() {
            file.metrics.listen =
                Some(MetricsListen::At(DEFAULT_METRICS_LISTEN.parse().expect("valid default address")));
        }
        let recordings_url = match loc.recordings_url.clone().filter(|u| !u.is_empty()) {
            Some(u) => u,
            None => file_url(&data_dir.join("recordings"))?,
        };
        let exports_url = match loc.exports_url.clone().or_else(|| file.export.storage_url.clone()) {
            Some(u) if !u.is_empty() => u,
            _ => file_url(&data_dir.join("exports"))?,
        };
        Ok(Self { data_dir, database_url, recordings_url, exports_url, embedded, file })
    }

    /// Makes the data directory (the embedded default lives there), readable by this user only.
    pub fn ensure_data_dir(&self) -> anyhow::Result<()> {
        crate::files::create_private_dir(&self.data_dir)
    }
}

impl FileConfig {
    pub fn from_path(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in the config file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let mut doc: toml::Table = toml::from_str(text)?;
        let original = doc.clone();
        // Recipients first, then remote stores, out of `[[catalog]]`; what is left are SQL stores.
        let recipients = crate::recipients::config::split_catalog(&mut doc)?;
        let remote = crate::catalog::remote::take_remote_entries(&mut doc)?;
        // From the text when nothing was taken out (its errors name the line); otherwise from
        // what is left.
        let mut cfg: Self = if doc == original { toml::from_str(text)? } else { Self::deserialize(doc)? };
        cfg.recipients.entries = recipients;
        cfg.remote = remote;
        let keep_defaults = cfg.stores.default_catalog.unwrap_or(true);
        let stores = cfg.stores.each.clone();
        cfg.catalog = crate::catalog::effective(&cfg.catalog, keep_defaults, |name| {
            stores.get(name).and_then(|s| s.table.clone())
        });
        cfg.validate()?;
        // Art. 15(1)(c): the export manifest names every recipient of the catalog, from the
        // same entries the outbox delivers to.
        for r in &cfg.recipients.entries {
            if !cfg.export.notice.recipients.iter().any(|n| n.name == r.name) {
                let purpose = match r.description.is_empty() {
                    true => "told of erasures and corrections of your data (GDPR Art. 19)".to_owned(),
                    false => r.description.clone(),
                };
                cfg.export.notice.recipients.push(Recipient { name: r.name.clone(), purpose });
            }
        }
        // A remote store's calls in flight bound its tasks too, and its per-call timeout bounds
        // each step: an erase is two calls (Erase, then Verify), hence twice the call's timeout
        // and a second to spare (`[stores.<name>]` still wins when given).
        for e in &cfg.remote {
            cfg.stores.each.entry(e.name.clone()).or_insert_with(|| StoreConfig {
                concurrency: e.concurrency,
                timeout_secs: (2 * e.timeout_ms).div_ceil(1000) + 1,
                ..StoreConfig::default()
            });
            if let Some(days) = e.retention_days {
                cfg.retention.catalog_days.push((e.name.clone(), Period::Days(days)));
            }
            let notice = e.retention_notice.clone().unwrap_or_else(|| match e.retention_days {
                Some(d) => format!("{d} days"),
                None => "as the service that holds it states".into(),
            });
            cfg.export.notice.retention.entry(e.name.clone()).or_insert(notice);
        }
        // What a catalog entry says of its retention feeds the schedule and the export notice.
        for e in &cfg.catalog {
            let period = match (e.retention_days, &e.retain) {
                (Some(days), _) => Some(Period::Days(days)),
                (None, Some(r)) => Some(Period::Months(r.years.saturating_mul(12))),
                (None, None) => None,
            };
            // The default entries' periods come from `[retention]` (`recordings_days`, …).
            if let Some(period) =
                period.filter(|_| !crate::catalog::is_default(&e.name) || e.retention_days.is_some())
            {
                cfg.retention.catalog_days.push((e.name.clone(), period));
            }
            let notice = e.retention_notice.clone().unwrap_or_else(|| match (e.retention_days, &e.retain) {
                (Some(d), _) => format!("{d} days"),
                (None, Some(r)) => format!("{} years, under a legal obligation", r.years),
                (None, None) => "until the subject asks for erasure".to_owned(),
            });
            cfg.export.notice.retention.entry(e.name.clone()).or_insert(notice);
        }
        Ok(cfg)
    }

    /// Every store's name, in catalog order.
    pub fn store_names(&self) -> Vec<&str> {
        self.catalog
            .iter()
            .map(|e| e.name.as_str())
            .chain(self.remote.iter().map(|e| e.name.as_str()))
            .collect()
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.database.validate()?;
        let e = &self.engine;
        anyhow::ensure!(e.workers >= 1, "engine.workers must be at least 1");
        anyhow::ensure!(e.lease_secs >= 1, "engine.lease_secs must be at least 1");
        anyhow::ensure!(e.max_attempts >= 1, "engine.max_attempts must be at least 1");
        anyhow::ensure!(
            e.backoff_base_ms <= e.backoff_max_ms,
            "engine.backoff_base_ms must not exceed engine.backoff_max_ms"
        );
        let s = &self.server;
        anyhow::ensure!(s.max_concurrent_requests >= 1, "server.max_concurrent_requests must be at least 1");
        anyhow::ensure!(s.max_message_bytes >= 1024, "server.max_message_bytes must be at least 1024");
        anyhow::ensure!(s.request_timeout_secs >= 1, "server.request_timeout_secs must be at least 1");
        anyhow::ensure!(
            s.rate_limit_per_second == 0 || s.rate_limit_burst >= 1,
            "server.rate_limit_burst must be at least 1"
        );
        for (key, n) in [
            ("max_watchers", s.max_watchers),
            ("max_watchers_per_caller", s.max_watchers_per_caller),
            ("max_downloads", s.max_downloads),
            ("max_downloads_per_caller", s.max_downloads_per_caller),
        ] {
            anyhow::ensure!(n >= 1, "server.{key} must be at least 1");
        }
        self.auth.refuse_duplicates()?;
        for t in &self.auth.tokens {
            anyhow::ensure!(!t.name.is_empty(), "auth.tokens: every token needs a name");
            anyhow::ensure!(
                t.token_sha256.len() == 64 && t.token_sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "auth.tokens {:?}: token_sha256 must be 64 hex characters (the SHA-256 of the token, not the token)",
                t.name
            );
            if let Some(tenant) = &t.tenant {
                crate::domain::TenantId::parse("tenant", tenant)
                    .map_err(|e| anyhow::anyhow!("auth.tokens {:?}: {e}", t.name))?;
            }
        }
        for c in &self.auth.certificates {
            anyhow::ensure!(
                !c.name.is_empty() && !c.subject_cn.is_empty(),
                "auth.certificates: name and subject_cn are required"
            );
        }
        if !self.auth.certificates.is_empty() {
            anyhow::ensure!(
                self.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
                "auth.certificates needs [tls] with client_ca_file to verify client certificates"
            );
        }
        let x = &self.export;
        anyhow::ensure!((1..=365).contains(&x.expiry_days), "export.expiry_days must be between 1 and 365");
        anyhow::ensure!(x.janitor_interval_secs >= 1, "export.janitor_interval_secs must be at least 1");
        for e in &self.catalog {
            anyhow::ensure!(
                x.notice.retention.contains_key(&e.name) || !crate::catalog::is_default(&e.name),
                "export.notice.retention.{} is missing: the manifest states every store's retention period",
                e.name
            );
        }
        for name in x.notice.retention.keys().chain(x.notice.legal_basis.keys()) {
            anyhow::ensure!(
                self.store_names().contains(&name.as_str()) || crate::catalog::is_default(name),
                "export.notice: unknown store {name:?} (known: {})",
                self.store_names().join(", ")
            );
        }
        anyhow::ensure!(
            self.stores.check_interval_secs != Some(0),
            "stores.check_interval_secs must be at least 1"
        );
        anyhow::ensure!(
            self.stores.create_reference_schema != Some(true),
            "stores.create_reference_schema = true is no longer supported: dsr does not create tables in a database \
             it is pointed at. Point [stores.<name>] at the platform's tables, or run `dsr seed` to create the \
             reference schema for a trial"
        );
        let mut known: Vec<&str> = Vec::new();
        for e in &self.catalog {
            e.validate(&known)?;
            known.push(&e.name);
        }
        for e in &self.catalog {
            e.validate_references(&known)?;
        }
        let identities: Vec<&str> =
            self.catalog.iter().filter(|e| e.identity).map(|e| e.name.as_str()).collect();
        anyhow::ensure!(
            identities.len() <= 1,
            "catalog: at most one store holds the accounts (identity = true): {}",
            identities.join(", ")
        );
        for e in &self.remote {
            e.validate(&known)?;
            known.push(&e.name);
        }
        for (name, store) in &self.stores.each {
            anyhow::ensure!(
                known.contains(&name.as_str()),
                "stores.{name}: unknown store (known: {})",
                known.join(", ")
            );
            anyhow::ensure!(store.concurrency >= 1, "stores.{name}.concurrency must be at least 1");
            anyhow::ensure!(store.timeout_secs >= 1, "stores.{name}.timeout_secs must be at least 1");
            if let Some(t) = &store.table {
                anyhow::ensure!(
                    !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
                    "stores.{name}.table must be a plain SQL identifier"
                );
            }
        }
        self.retention.validate()?;
        self.subjects.validate()?;
        self.recipients.validate(&known)?;
        Ok(())
    }

    pub fn store(&self, name: &str) -> StoreConfig {
        self.stores.each.get(name).cloned().unwrap_or_default()
    }
}

fn file_url(path: &Path) -> anyhow::Result<String> {
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    Ok(format!("file://{}", abs.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = FileConfig::from_toml("[engine]\nworkerz = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("workerz"), "{err:#}");
        let err = FileConfig::from_toml("[stores.calllogs]\nconcurrency = 2\n").unwrap_err();
        assert!(format!("{err:#}").contains("stores.calllogs"), "{err:#}");
    }

    #[test]
    fn store_sections_are_read() {
        let cfg = FileConfig::from_toml("[stores]\ncreate_reference_schema = false\n[stores.recordings]\nconcurrency = 2\ntable = \"recs\"\n").unwrap();
        assert_eq!(cfg.store("recordings").concurrency, 2);
        assert_eq!(cfg.store("recordings").table.as_deref(), Some("recs"));
        assert_eq!(cfg.stores.create_reference_schema, Some(false));
        let err = FileConfig::from_toml("[stores]\ncreate_reference_schema = true\n").unwrap_err();
        assert!(format!("{err:#}").contains("no longer supported"), "{err:#}");
        let err = FileConfig::from_toml("[stores.recordings]\nconcurency = 2\n").unwrap_err();
        assert!(format!("{err:#}").contains("concurency"), "{err:#}");
    }

    #[test]
    fn retention_periods_are_read_per_tenant() {
        let cfg = FileConfig::from_toml(
            "[retention]\nsweep_interval_secs = 0\nrecordings_days = 60\n\
             [retention.tenants.acme]\nrecordings_days = 30\nbilling_years = 10\n",
        )
        .unwrap();
        let s = cfg.retention.schedule();
        assert_eq!(s.period("acme", "recordings"), Some(Period::Days(30)));
        assert_eq!(s.period("globex", "recordings"), Some(Period::Days(60)));
        assert_eq!(s.period("acme", "billing"), Some(Period::Months(120)));
        assert_eq!(s.period("globex", "billing"), Some(Period::Months(84)));
        assert_eq!(s.period("acme", "transcripts"), Some(Period::Days(90)));
        assert_eq!(cfg.retention.sweep_interval_secs, 0);
    }

    #[test]
    fn retention_below_the_legal_minimum_or_above_the_maximum_is_refused_by_key() {
        for (toml, key) in [
            ("[retention.tenants.acme]\nbilling_years = 5\n", "retention.tenants.acme.billing_years"),
            ("[retention]\nbilling_years = 6\n", "retention.billing_years"),
            ("[retention.tenants.acme]\nrecordings_days = 4000\n", "retention.tenants.acme.recordings_days"),
            ("[retention]\nmax_days = 100\n", "retention.call_logs_days"),
            ("[retention.tenants.acme]\nbilling_years = 11\n", "retention.tenants.acme.billing_years"),
            ("[retention.tenants.acme]\ncall_logs_days = 0\n", "retention.tenants.acme.call_logs_days"),
            ("[retention.tenants.acme]\nrecording_days = 10\n", "recording_days"),
            ("[retention]\nsweep_every = 10\n", "sweep_every"),
            ("[retention.tenants.\"a b\"]\nrecordings_days = 10\n", "retention.tenants.a b"),
        ] {
            let err = format!("{:#}", FileConfig::from_toml(toml).unwrap_err());
            assert!(err.contains(key), "{toml}: {err}");
        }
        let err = format!("{:#}", FileConfig::from_toml("[retention]\nbilling_years = 6\n").unwrap_err());
        assert!(err.contains("legal minimum"), "{err}");
        FileConfig::from_toml("[retention.tenants.acme]\nbilling_years = 7\nrecordings_days = 1\n").unwrap();
    }

    fn token(name: &str, hash_byte: char, scopes: &str, tenant: Option<&str>) -> String {
        let tenant = tenant.map(|t| format!("tenant = {t:?}\n")).unwrap_or_default();
        format!(
            "[[auth.tokens]]\nname = {name:?}\ntoken_sha256 = \"{}\"\nscopes = [{scopes}]\n{tenant}",
            hash_byte.to_string().repeat(64)
        )
    }

    #[test]
    fn a_duplicate_token_hash_or_name_is_refused_naming_the_entries_not_the_hash() {
        let reader = token("acme-reader", 'a', "\"dsr.read\"", Some("acme"));
        let admin = token("root", 'a', "\"dsr.admin\"", None);
        let err = format!("{:#}", FileConfig::from_toml(&format!("{reader}{admin}")).unwrap_err());
        assert!(err.contains("\"acme-reader\" and \"root\" have the same token_sha256"), "{err}");
        assert!(!err.contains(&"a".repeat(64)), "{err}");
        // The same hash in upper case is the same token.
        let upper = token("root", 'A', "\"dsr.admin\"", None);
        assert!(FileConfig::from_toml(&format!("{reader}{upper}")).is_err());
        let twice = token("ops", 'b', "\"dsr.read\"", None) + &token("ops", 'c', "\"dsr.delete\"", None);
        let err = format!("{:#}", FileConfig::from_toml(&twice).unwrap_err());
        assert!(err.contains("the name \"ops\" is used by more than one token"), "{err}");
        FileConfig::from_toml(&format!("{reader}{}", token("root", 'b', "\"dsr.admin\"", None))).unwrap();
    }

    #[test]
    fn stream_limits_must_be_positive() {
        let err = FileConfig::from_toml("[server]\nmax_downloads_per_caller = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("server.max_downloads_per_caller"), "{err:#}");
    }

    #[test]
    fn metrics_are_on_by_default_only_in_the_embedded_default_and_off_says_off() {
        let dir = tempfile::tempdir().unwrap();
        let loc = |db: Option<&str>, config: Option<PathBuf>| Locations {
            data_dir: dir.path().to_path_buf(),
            database_url: db.map(str::to_owned),
            recordings_url: None,
            config_file: config,
            exports_url: None,
        };
        let embedded = Settings::load(&loc(None, None)).unwrap();
        assert_eq!(embedded.file.metrics.addr(), Some(DEFAULT_METRICS_LISTEN.parse().unwrap()));
        let deployed = Settings::load(&loc(Some("postgres://h/db"), None)).unwrap();
        assert_eq!(deployed.file.metrics.addr(), None);
        let off = dir.path().join("off.toml");
        std::fs::write(&off, "[metrics]\nlisten = \"off\"\n").unwrap();
        assert_eq!(Settings::load(&loc(None, Some(off))).unwrap().file.metrics.addr(), None);
        let cfg = FileConfig::from_toml("[metrics]\nlisten = \"0.0.0.0:9100\"\n").unwrap();
        assert_eq!(cfg.metrics.addr(), Some("0.0.0.0:9100".parse().unwrap()));
        let bad = FileConfig::from_toml("[metrics]\nlisten = \"nine\"\n").unwrap_err();
        assert!(format!("{bad:#}").contains("off"), "{bad:#}");
    }

    #[test]
    fn defaults_are_sane() {
        let cfg = FileConfig::from_toml("").unwrap();
        assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(cfg.store("billing").concurrency, 4);
        assert_eq!(cfg.stores.create_reference_schema, None);
        assert_eq!(cfg.export.expiry_days, 7);
        assert_eq!(cfg.export.notice.recipients.len(), 5, "the five sub-processors");
    }

    #[test]
    fn the_export_notice_is_configuration() {
        let err = FileConfig::from_toml("[export]\nexpiry_days = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("export.expiry_days"), "{err:#}");
        // The built-in notice, moved under [export.notice] as a deployment would write it.
        let inline = format!(
            "[export.notice]\n{}",
            DEFAULT_EXPORT_NOTICE
                .replace("[[recipients]]", "[[export.notice.recipients]]")
                .replace("[retention]", "[export.notice.retention]")
                .replace("[legal_basis]", "[export.notice.legal_basis]")
        );
        let cfg = FileConfig::from_toml(&inline).unwrap();
        assert_eq!(cfg.export.notice, ExportNotice::default());
        let err = FileConfig::from_toml(&inline.replace("\nbilling = \"7 years", "\nbill = \"7 years"))
            .unwrap_err();
        assert!(format!("{err:#}").contains("export.notice"), "{err:#}");
    }
}
