//! How a SQLite connection waits for the database's write lock: in short naps that grow from
//! 50 µs to 1 ms, up to the same 30 s as before.
//!
//! SQLite has one writer at a time; a connection that finds the lock taken calls its busy
//! handler and tries again. The handler `PRAGMA busy_timeout` installs naps 1, 2, 5, 10, 15,
//! 20, 25 … ms, however short the holder's hold: the tasks of one deletion (`dsr bench
//! latency`) each write a few times at once, and their statements waited 8.6, 19 and 35 ms —
//! the sums of those naps — for locks held a fraction of a millisecond. Each connection runs on
//! a thread of its own (sqlx), so a nap blocks no one else.
//!
//! sqlx installs its own handler on every connection it opens and gives no handle to replace it
//! through its `Any` driver. So every SQLite connection the process opens gets the SQL function
//! `dsr_lock_wait(ms)` (an auto extension, registered once), and the pool's `after_connect`
//! calls it: it installs this handler on the connection it runs on.
use std::{
    ffi::{c_char, c_int, c_void},
    sync::OnceLock,
    time::Duration,
};

use libsqlite3_sys as ffi;

/// Registers `dsr_lock_wait` on every SQLite connection opened from now on (once per process).
pub fn register() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    // SAFETY: `add_function` has the signature SQLite calls auto extensions with, and stays valid
    // for the life of the process.
    let rc = *REGISTERED.get_or_init(|| unsafe { ffi::sqlite3_auto_extension(Some(add_function)) });
    anyhow::ensure!(rc == ffi::SQLITE_OK, "registering SQLite's lock wait failed (code {rc})");
    Ok(())
}

/// The statement `after_connect` runs: this connection waits up to `timeout` for the lock.
pub fn install_statement(timeout: Duration) -> String {
    format!("SELECT dsr_lock_wait({})", timeout.as_millis())
}

/// The auto extension: adds the function to a connection being opened.
unsafe extern "C" fn add_function(
    db: *mut ffi::sqlite3,
    _error: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: SQLite hands a valid, open connection; the name is a NUL-terminated literal.
    unsafe {
        ffi::sqlite3_create_function_v2(
            db,
            c"dsr_lock_wait".as_ptr(),
            1,
            ffi::SQLITE_UTF8,
            std::ptr::null_mut(),
            Some(install),
            None,
            None,
            None,
        )
    }
}

/// `dsr_lock_wait(ms)`: installs `wait` as the busy handler of the calling connection, with the
/// timeout (milliseconds) as its argument.
unsafe extern "C" fn install(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite passes `argc` (1, as registered) valid values and the context of this call,
    // whose connection is open while the function runs.
    unsafe {
        let ms = if argc == 1 { ffi::sqlite3_value_int64(*argv) } else { 0 };
        let db = ffi::sqlite3_context_db_handle(ctx);
        // The timeout rides in the argument pointer: no allocation to free with the connection.
        let arg = usize::try_from(ms.max(0)).unwrap_or(usize::MAX) as *mut c_void;
        let rc = ffi::sqlite3_busy_handler(db, Some(wait), arg);
        if rc == ffi::SQLITE_OK {
            ffi::sqlite3_result_int64(ctx, ms);
        } else {
            ffi::sqlite3_result_error_code(ctx, rc);
        }
    }
}

/// The busy handler: naps before the `tries`th retry (from 0), or gives up (0) past the timeout.
unsafe extern "C" fn wait(timeout_ms: *mut c_void, tries: c_int) -> c_int {
    let timeout = Duration::from_millis(timeout_ms as usize as u64);
    match nap(u32::try_from(tries).unwrap_or(0), timeout) {
        Some(d) => {
            std::thread::sleep(d);
            1
        }
        None => 0,
    }
}

/// 50 µs, doubling to 1 ms, then 1 ms each; `None` once the naps so far add up to `timeout`.
fn nap(tries: u32, timeout: Duration) -> Option<Duration> {
    const FIRST: Duration = Duration::from_micros(50);
    const LONGEST: Duration = Duration::from_millis(1);
    let this = |n: u32| (FIRST * 2u32.saturating_pow(n.min(16))).min(LONGEST);
    // Naps before `tries`: the doubling ones (at most 5 below 1 ms), then 1 ms each.
    let doubling = (0..tries.min(5)).map(this).sum::<Duration>();
    let waited = doubling + LONGEST * tries.saturating_sub(5);
    (waited < timeout).then(|| this(tries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    /// Every connection of a SQLite pool waits through this handler: a writer that finds the
    /// lock taken waits until it is given back, and one whose wait (here set to 100 ms) runs out
    /// fails as SQLite's own would (`database is locked`), not after the default 30 s.
    #[tokio::test]
    async fn a_writer_waits_for_the_lock_through_this_handler_up_to_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&crate::db::sqlite_url(&dir.path().join("t.db")), 2).await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER)").execute(db.pool()).await.unwrap();
        let mut holder = db.begin_write().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *holder).await.unwrap();

        let mut waiter = db.pool().acquire().await.unwrap();
        let set: i64 = sqlx::query_scalar(&install_statement(Duration::from_millis(100)))
            .fetch_one(&mut *waiter)
            .await
            .unwrap();
        assert_eq!(set, 100);
        let err = sqlx::query("INSERT INTO t VALUES (2)").execute(&mut *waiter).await.unwrap_err();
        assert!(err.to_string().contains("database is locked"), "{err}");

        // Given back while the other waits: the wait ends in the write.
        let released = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            holder.commit().await.unwrap();
        });
        sqlx::query_scalar::<_, i64>(&install_statement(Duration::from_secs(30)))
            .fetch_one(&mut *waiter)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (3)").execute(&mut *waiter).await.unwrap();
        released.await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t").fetch_one(&mut *waiter).await.unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn naps_start_at_50_microseconds_double_to_a_millisecond_and_stop_at_the_timeout() {
        let us = |n| nap(n, Duration::from_secs(30)).map(|d| d.as_micros());
        assert_eq!((0..7).map(us).collect::<Vec<_>>(), [50, 100, 200, 400, 800, 1000, 1000].map(Some));
        // 1.55 ms of doubling naps, then 1 ms each: 30 s are up after 29,998 more.
        assert_eq!(us(5 + 29_998), Some(1000));
        assert_eq!(us(5 + 29_999), None);
        assert_eq!(nap(0, Duration::ZERO), None);
    }
}
