//! One handle over either SQL backend (SQLite or Postgres), chosen from the URL. Queries are
//! written once in the subset both dialects share (`$n` parameters, BIGINT epoch-millisecond
//! times, TEXT ids); the few that differ ask `backend()`.
use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    any::{AnyConnectOptions, AnyPoolOptions},
    AnyPool, Executor,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// How SQLite makes a commit durable (`PRAGMA synchronous`). In WAL mode, `Full` syncs the log
/// at every commit: an acknowledged request survives power loss. `Normal` syncs at checkpoints
/// only: a crash of the process loses nothing, a power loss may lose the last commits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqliteSync {
    #[default]
    Full,
    Normal,
}

impl Db {
    /// Connects to `postgres://…` or `sqlite://…` (the SQLite file is created if missing and put
    /// in WAL mode, so readers never wait for the writer), SQLite commits synced in full.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        Self::connect_with(url, max_connections, SqliteSync::Full).await
    }

    /// `connect`, with SQLite's durability chosen (the ledger's is configurable).
    pub async fn connect_with(url: &str, max_connections: u32, sync: SqliteSync) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            anyhow::bail!("unsupported database URL scheme: expected postgres:// or sqlite://");
        };
        let options = AnyConnectOptions::from_str(url).context("parsing the database URL")?;
        // SQLite has one writer at a time; a few connections let reads (previews, watchers)
        // proceed beside it in WAL mode. Measured with `dsr bench deletions`: 1 connection was
        // 25% slower than 4, more did not help.
        let max_connections = match backend {
            Backend::Sqlite => max_connections.min(4),
            Backend::Postgres => max_connections,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // busy_timeout: writers queue instead of failing.
                        let sync = match sync {
                            SqliteSync::Full => "FULL",
                            SqliteSync::Normal => "NORMAL",
                        };
                        conn.execute(
                            format!(
                                "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; \
                                 PRAGMA busy_timeout=30000; PRAGMA foreign_keys=ON;"
                            )
                            .as_str(),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the database ({}): {e}", backend.name()))?;
        Ok(Self { pool, backend })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads then writes can deadlock with
    /// another one and fail at once instead of waiting.
    pub async fn begin_write(&self) -> sqlx::Result<Tx> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The default embedded database URL for a data directory.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}
