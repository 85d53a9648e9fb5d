//! One handle over either SQL backend (SQLite or Postgres), chosen from the URL. Queries are
//! written once in the subset both dialects share (`$n` parameters, BIGINT epoch-millisecond
//! times, TEXT ids); the few that differ ask `backend()`.
pub mod held;
pub mod liveness;
mod lock_wait;
pub mod rows;

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
    /// Tells this database's pool from others' (clones share it): `held` keys connections by it.
    id: u64,
    backend: Backend,
    /// Postgres, the ledger's pool: the schema that holds dsr's own tables, first on every
    /// connection's search path.
    schema: Option<String>,
}

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// How long a SQLite writer waits for the write lock before its statement fails (`lock_wait`).
const SQLITE_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Limits a Postgres server enforces on a session (zero: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// A session idle inside a transaction this long is ended, releasing its locks.
    pub idle_in_transaction: Duration,
    /// One statement may run at most this long.
    pub statement: Duration,
}

impl Db {
    /// Connects to `postgres://…` or `sqlite://…` (the SQLite file is created if missing and put
    /// in WAL mode, so readers never wait for the writer), SQLite commits synced in full.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        Self::connect_in(url, max_connections, None, SqliteSync::Full, SessionTimeouts::default()).await
    }

    /// Connects the ledger's pool. On Postgres dsr's tables (and its own `_sqlx_migrations`)
    /// live in `schema`, so a database shared with the platform keeps the two apart: every
    /// connection's search path is `schema` first, then the connection's default path. Unqualified
    /// names then find dsr's tables in `schema`, and the platform's tables (the stores' queries
    /// share this pool when a store has no database of its own) where they always were. SQLite
    /// has no schemas: the ledger is its own file, synced as `sync` says.
    /// On Postgres each session also gets `timeouts`: a paused or partitioned replica inside a
    /// ledger transaction (holding the audit chain's lock) is cut off after
    /// `idle_in_transaction`, and the others go on.
    pub async fn connect_ledger(
        url: &str,
        max_connections: u32,
        schema: &str,
        sync: SqliteSync,
        timeouts: SessionTimeouts,
    ) -> anyhow::Result<Self> {
        Self::connect_in(url, max_connections, Some(schema.to_owned()), sync, timeouts).await
    }

    async fn connect_in(
        url: &str,
        max_connections: u32,
        schema: Option<String>,
        sync: SqliteSync,
        timeouts: SessionTimeouts,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            anyhow::bail!("unsupported database URL scheme: expected postgres:// or sqlite://");
        };
        let options = AnyConnectOptions::from_str(url).context("parsing the database URL")?;
        if backend == Backend::Sqlite {
            lock_wait::register()?;
        }
        // SQLite has one writer at a time; a few connections let reads (previews, watchers)
        // proceed beside it in WAL mode. Measured with `dsr bench deletions`: 1 connection was
        // 25% slower than 4, more did not help.
        let max_connections = match backend {
            Backend::Sqlite => max_connections.min(4),
            Backend::Postgres => max_connections,
        };
        let schema = schema.filter(|_| backend == Backend::Postgres);
        let search_path = schema.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            // A ping before each use only when it can find something (`liveness`); sqlx's own
            // would cost every statement on the pool a round trip more.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    use sqlx::Connection;
                    Ok(!liveness::needs_ping(meta.idle_for) || conn.ping().await.is_ok())
                })
            })
            .after_connect(move |conn, _meta| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    if let Some(schema) = search_path {
                        // Prepended to whatever the role or database set as the default path.
                        sqlx::query(
                            "SELECT set_config('search_path', quote_ident($1) || ', ' || current_setting('search_path'), false)",
                        )
                        .bind(schema)
                        .execute(&mut *conn)
                        .await?;
                    }
                    if backend == Backend::Postgres && timeouts != SessionTimeouts::default() {
                        sqlx::query(
                            "SELECT set_config('idle_in_transaction_session_timeout', $1, false), \
                             set_config('statement_timeout', $2, false)",
                        )
                        .bind(timeouts.idle_in_transaction.as_millis().to_string())
                        .bind(timeouts.statement.as_millis().to_string())
                        .execute(&mut *conn)
                        .await?;
                    }
                    if backend == Backend::Sqlite {
                        let sync = match sync {
                            SqliteSync::Full => "FULL",
                            SqliteSync::Normal => "NORMAL",
                        };
                        conn.execute(
                            format!("PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;")
                                .as_str(),
                        )
                        .await?;
                        // Writers queue for the lock instead of failing, in short naps.
                        conn.execute(lock_wait::install_statement(SQLITE_LOCK_TIMEOUT).as_str()).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the database ({}): {e}", backend.name()))?;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Self { pool, id, backend, schema })
    }

    /// The schema of dsr's own tables (the ledger's pool on Postgres).
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// A connection for one statement: the one the current `held::holding` stretch holds for
    /// this database, or one from the pool.
    pub async fn conn(&self) -> sqlx::Result<held::Conn> {
        held::conn(self.id, &self.pool).await
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
