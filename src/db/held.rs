//! One pooled connection per database for a stretch of work (`holding`), instead of one taken
//! from the pool for each statement. sqlx pings every connection it takes back (a round trip,
//! and a wake-up on both sides of it), so a submit's resolution — six or seven look-ups of the
//! stores, one after another or a few at once — paid a ping each; holding, it pays one.
//!
//! Statements take their connection with `Db::conn`: inside `holding`, the stretch's connection
//! for that database (taken on first use, one statement at a time: look-ups that run at once
//! queue for it), otherwise one from the pool as before. A statement that fails gives the held
//! connection back, so the next one starts on a fresh connection.
//!
//! Use it only for work that takes no other connection of the same database while it runs (a
//! transaction, a ledger call): a stretch that holds one connection and waits for a second from
//! the same pool could wait for ever once every connection is held that way. Resolution touches
//! the stores only, so it qualifies.
use std::{
    collections::HashMap,
    future::Future,
    ops::{Deref, DerefMut},
    sync::{Arc, Mutex},
};

use sqlx::{pool::PoolConnection, Any, AnyConnection, AnyPool};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

type Slot = Arc<AsyncMutex<Option<PoolConnection<Any>>>>;

/// The connections the current stretch holds, by database (`Db::id`).
#[derive(Default)]
struct Held {
    slots: Mutex<HashMap<u64, Slot>>,
}

tokio::task_local! {
    static HELD: Held;
}

/// Runs `work` with the statements it runs through `Db::conn` on one connection per database.
/// The connections go back to their pools when `work` ends. Nested calls share the outer
/// stretch's connections.
pub async fn holding<F: Future>(work: F) -> F::Output {
    if HELD.try_with(|_| ()).is_ok() {
        return work.await;
    }
    HELD.scope(Held::default(), work).await
}

/// A connection to run statements on: the stretch's own (see `holding`) or one from the pool.
pub enum Conn {
    Pooled(PoolConnection<Any>),
    Held(OwnedMutexGuard<Option<PoolConnection<Any>>>),
}

impl Conn {
    /// Lets go of the connection after a statement, passing its result on: after a failure a
    /// held connection is given back to its pool (where sqlx's ping decides whether it is
    /// kept), so the next statement takes a fresh one.
    pub fn settle<T>(self, result: sqlx::Result<T>) -> sqlx::Result<T> {
        if let (Err(_), Conn::Held(mut guard)) = (&result, self) {
            guard.take();
        }
        result
    }
}

impl Deref for Conn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Conn::Pooled(c) => c,
            Conn::Held(g) => g.as_ref().expect("a held slot is filled before it is handed out"),
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Conn::Pooled(c) => c,
            Conn::Held(g) => g.as_mut().expect("a held slot is filled before it is handed out"),
        }
    }
}

/// The connection for a statement on `pool` (database `id`).
pub(super) async fn conn(id: u64, pool: &AnyPool) -> sqlx::Result<Conn> {
    let slot = HELD
        .try_with(|held| held.slots.lock().expect("held connections lock").entry(id).or_default().clone());
    let Ok(slot) = slot else {
        return Ok(Conn::Pooled(pool.acquire().await?));
    };
    let mut guard = slot.lock_owned().await;
    if guard.is_none() {
        *guard = Some(pool.acquire().await?);
    }
    Ok(Conn::Held(guard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{sqlite_url, Db};

    async fn db(dir: &tempfile::TempDir, max_connections: u32) -> Db {
        Db::connect(&sqlite_url(&dir.path().join("held.db")), max_connections).await.unwrap()
    }

    /// A TEMP table lives in its connection only: the second statement finds it only on the
    /// first one's connection.
    async fn temp_table_seen_twice(db: &Db) -> sqlx::Result<i64> {
        let mut c = db.conn().await?;
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS here (x INTEGER)").execute(&mut *c).await?;
        drop(c);
        let mut c = db.conn().await?;
        sqlx::query_scalar("SELECT COUNT(*) FROM temp.here").fetch_one(&mut *c).await
    }

    #[tokio::test]
    async fn a_stretch_runs_its_statements_on_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir, 4).await;
        // Four connections open and idle: the pool hands them out in turn.
        let open: Vec<_> = futures::future::join_all((0..4).map(|_| db.pool().acquire())).await;
        drop(open);
        // Without a stretch, the second statement lands on another connection at least once.
        let mut apart = 0;
        for _ in 0..8 {
            apart += usize::from(temp_table_seen_twice(&db).await.is_err());
        }
        assert!(apart > 0, "the pool handed out one connection only: the test below proves nothing");
        for _ in 0..8 {
            assert_eq!(holding(temp_table_seen_twice(&db)).await.unwrap(), 0);
        }
        // Outside a stretch every statement takes a connection from the pool.
        assert!(matches!(db.conn().await.unwrap(), Conn::Pooled(_)));
        assert!(matches!(holding(db.conn()).await.unwrap(), Conn::Held(_)));
    }

    #[tokio::test]
    async fn statements_run_at_once_queue_for_the_held_connection_without_waiting_for_a_second() {
        let dir = tempfile::tempdir().unwrap();
        // One connection in all: a stretch that took a second one would wait for ever.
        let db = db(&dir, 1).await;
        let one = |n: i64| {
            let db = db.clone();
            async move {
                let mut c = db.conn().await?;
                sqlx::query_scalar::<_, i64>("SELECT $1").bind(n).fetch_one(&mut *c).await
            }
        };
        let work = holding(async {
            let (a, b, c) = tokio::join!(one(1), one(2), holding(one(3)));
            (a.unwrap(), b.unwrap(), c.unwrap())
        });
        let sums = tokio::time::timeout(std::time::Duration::from_secs(10), work).await.expect("no deadlock");
        assert_eq!(sums, (1, 2, 3));
    }

    #[tokio::test]
    async fn after_a_failed_statement_the_next_one_takes_a_fresh_connection() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir, 2).await;
        holding(async {
            let mut c = db.conn().await.unwrap();
            let err = sqlx::query("SELECT * FROM no_such_table").execute(&mut *c).await;
            assert!(c.settle(err).is_err());
            let mut c = db.conn().await.unwrap();
            let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *c).await.unwrap();
            assert_eq!(one, 1);
        })
        .await;
    }
}
