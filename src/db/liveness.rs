//! When a pooled connection is worth a ping before use. sqlx pings every connection it hands
//! out (`test_before_acquire`) and again when it takes it back; the second ping stays (it also
//! flushes what a dropped call left), the first is done here only when it can find something:
//! the connection sat idle for a while, or it went back to its pool before the last connection
//! failure this process saw (a database restart or a failover ends every open session, and the
//! first call that meets one notes it here, so the others are pinged and replaced).
//!
//! The cost this saves is one round trip on every statement run on a pool: about a third of the
//! round trips of a store task (`dsr bench latency`, README "Benchmarks").
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

/// A connection idle this long is pinged before use: a server's idle timeouts, a NAT or a
/// restart while nothing ran may have ended it without anyone noticing.
pub const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// Nanoseconds after `epoch()` of the last connection failure seen, plus one (0: none yet).
static LAST_FAILURE: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// Whether an error means the connection (or the server behind it) is gone, rather than that
/// one statement failed: cut or refused connections, TLS or protocol trouble, Postgres'
/// connection exceptions (class 08) and shutdowns (57P01–57P03).
pub fn is_connection_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => {
            true
        }
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57P"))
        }
        _ => false,
    }
}

/// Notes `e` if it is a connection failure: connections put back before now get pinged.
pub fn note(e: &sqlx::Error) {
    if is_connection_failure(e) {
        note_failure_at(Instant::now());
    }
}

fn note_failure_at(at: Instant) {
    LAST_FAILURE.fetch_max(since_epoch(at).saturating_add(1), Ordering::Relaxed);
}

/// Whether a connection idle for `idle_for` should be pinged before it is handed out.
pub fn needs_ping(idle_for: Duration) -> bool {
    needs_ping_at(idle_for, Instant::now())
}

fn needs_ping_at(idle_for: Duration, now: Instant) -> bool {
    if idle_for >= IDLE_BEFORE_PING {
        return true;
    }
    let failure = LAST_FAILURE.load(Ordering::Relaxed);
    // Put back at or before the failure: it may be one of the sessions that failure ended.
    failure != 0 && since_epoch(now.checked_sub(idle_for).unwrap_or_else(epoch)) < failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_pinged_when_idle_long_or_put_back_before_a_failure() {
        let now = Instant::now() + Duration::from_secs(10);
        assert!(needs_ping_at(IDLE_BEFORE_PING, now), "idle long enough");
        note_failure_at(now - Duration::from_millis(100));
        assert!(needs_ping_at(Duration::from_millis(200), now), "put back before the failure");
        assert!(!needs_ping_at(Duration::from_millis(50), now), "put back after it: checked on release");
    }

    #[test]
    fn only_lost_connections_count_as_failures() {
        assert!(is_connection_failure(&sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into())));
        assert!(is_connection_failure(&sqlx::Error::Protocol("unexpected message".into())));
        assert!(!is_connection_failure(&sqlx::Error::RowNotFound));
        assert!(!is_connection_failure(&sqlx::Error::PoolTimedOut));
    }
}
