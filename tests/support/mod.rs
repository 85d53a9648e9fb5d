//! Shared by the test binaries: fresh databases on SQLite and Postgres, an S3 bucket on the
//! test S3 server, and the settings that point a service at them.
#![allow(dead_code)]

use std::path::Path;

pub mod webhook;

use dsr::config::{FileConfig, Locations, Settings};
use sqlx::{Connection, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The Postgres server the test command started. Never skipped: without it the Postgres half of
/// the suite fails, loudly.
/// Links the ledger's event journal into the audit chain now (a server's sealer does it within
/// moments; a test reading `dsr_events` directly must not race it).
pub async fn seal_journal(db: &dsr::db::Db) {
    dsr::ledger::Ledger::new(db.clone()).seal_journal().await.expect("seal the audit journal");
}

pub fn postgres_server_url() -> String {
    std::env::var("DSR_TEST_POSTGRES_URL").expect(
        "DSR_TEST_POSTGRES_URL is not set: run the suite with `scripts/test.sh`, which starts a throwaway \
         Postgres, or point it at a server where databases may be created (postgres://user@host:port)",
    )
}

/// A database URL for one test: a file under `dir` on SQLite, a new database on Postgres.
pub async fn fresh_database(backend: Backend, dir: &Path) -> String {
    match backend {
        Backend::Sqlite => dsr::db::sqlite_url(&dir.join("dsr.db")),
        Backend::Postgres => {
            let server = postgres_server_url();
            let name = format!("dsr_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
                .await
                .expect("connect to test Postgres");
            conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create test database");
            conn.close().await.ok();
            format!("{server}/{name}")
        }
    }
}

/// `fresh_database` with the platform's reference tables in it.
pub async fn fresh_platform_database(backend: Backend, dir: &Path) -> String {
    let url = fresh_database(backend, dir).await;
    platform_schema(&url).await;
    url
}

/// The platform's tables in the reference schema, as a platform would have them before dsr is
/// pointed at its database (dsr itself creates tables only in the embedded default).
pub async fn platform_schema(database_url: &str) {
    let db = dsr::db::Db::connect(database_url, 2).await.expect("connect to the platform database");
    dsr::stores::reference::ensure_schema(&db, &Default::default()).await.expect("reference schema");
    db.close().await;
}

/// A bucket on the test S3 server (`DSR_TEST_S3_ENDPOINT`), with the `AWS_*` variables set so the
/// service's S3 backend reaches it. Returns the `s3://bucket/prefix` URL.
pub async fn fresh_s3_bucket() -> String {
    let endpoint = std::env::var("DSR_TEST_S3_ENDPOINT").expect(
        "DSR_TEST_S3_ENDPOINT is not set: run the suite with `scripts/test.sh`, which starts an S3-compatible server",
    );
    dsr::startup::install_crypto_provider();
    let bucket = format!("dsr-test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let res = reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await.expect("create bucket");
    assert!(res.status().is_success(), "creating bucket: {}", res.status());
    // SAFETY of set_var: every test sets the same values, before any S3 client reads them.
    unsafe {
        std::env::set_var("AWS_ENDPOINT", &endpoint);
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    format!("s3://{bucket}/recordings")
}

/// The audit key tests on Postgres run with (`DSR_AUDIT_KEY` for the binary).
pub const TEST_AUDIT_KEY: &str = "test-audit-key-0123456789abcdef";

/// Settings for a service on `database_url` with its data directory at `dir`.
pub fn settings(dir: &Path, database_url: String, recordings_url: Option<String>, toml: &str) -> Settings {
    let loc = Locations {
        data_dir: dir.to_path_buf(),
        database_url: Some(database_url),
        recordings_url,
        config_file: None,
        exports_url: None,
    };
    let mut s = Settings::load(&loc).expect("settings");
    s.file = FileConfig::from_toml(toml).expect("test config");
    if s.database_url.starts_with("postgres") {
        // A Postgres ledger requires a configured audit key (replicas must share it).
        s.file.privacy.hmac_key.get_or_insert_with(|| TEST_AUDIT_KEY.to_owned());
    }
    s
}

/// What each reference store holds of a tenant now, read from the tables directly (never
/// through the service): accounts that still hold personal data, billing rows not restricted,
/// every row of the others. The tests' ground-truth comparisons read this.
pub async fn live_keys(
    db: &dsr::db::Db,
    tenant: &str,
) -> std::collections::BTreeMap<&'static str, std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeMap::new();
    for (store, sql) in [
        ("accounts", "SELECT id FROM accounts WHERE tenant_id = $1 AND (email IS NOT NULL OR phone IS NOT NULL OR name IS NOT NULL)"),
        ("call_logs", "SELECT id FROM call_logs WHERE tenant_id = $1"),
        ("transcripts", "SELECT id FROM transcripts WHERE tenant_id = $1"),
        ("recordings", "SELECT id FROM recordings WHERE tenant_id = $1"),
        ("billing", "SELECT id FROM billing_records WHERE tenant_id = $1 AND restricted_at IS NULL"),
    ] {
        let keys: Vec<(String,)> = sqlx::query_as(sql).bind(tenant).fetch_all(db.pool()).await.unwrap();
        out.insert(store, keys.into_iter().map(|k| k.0).collect());
    }
    out
}
