//! Store outages: transient failures are retried with backoff; a store that keeps failing fails
//! the request, and RetryRequest finishes it once the store is back.
use std::sync::{
    atomic::{AtomicBool, AtomicU32, Ordering},
    Arc,
};

use chrono::{DateTime, Utc};
use dsr::{
    api::pb::{self, OutcomeState, RequestStatus},
    startup::Overrides,
    stores::{Erase, Erasure, Export, ExportSink, StoreAdapter, StoreError, StoreResult},
};
use tonic::Code;

use crate::{both, helpers::*};

/// Wraps a real store; its erase fails while `failures_left > 0` or `down` is set.
struct FlakyStore {
    inner: Arc<dyn StoreAdapter>,
    failures_left: Arc<AtomicU32>,
    down: Arc<AtomicBool>,
    erase_calls: Arc<AtomicU32>,
    /// Each erase takes a permit first: a closed gate holds the store's work back.
    gate: Arc<tokio::sync::Semaphore>,
}

crate::store_wrapper!(FlakyStore: Erase, Export);

#[async_trait::async_trait]
impl Erase for FlakyStore {
    async fn erase(&self, tenant: &str, keys: &[String], now: DateTime<Utc>) -> StoreResult<Erasure> {
        self.gate.acquire().await.expect("gate").forget();
        self.erase_calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Transient("connection refused (injected)".into()));
        }
        if self.failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::Transient("timeout (injected)".into()));
        }
        self.inner_erase().erase(tenant, keys, now).await
    }
    async fn objects_present(&self, objects: &[String]) -> StoreResult<u64> {
        self.inner_erase().objects_present(objects).await
    }
}

#[async_trait::async_trait]
impl Export for FlakyStore {
    /// Fails like `erase` does: an export is a store task like any other.
    async fn export(&self, tenant: &str, keys: &[String], sink: &mut dyn ExportSink) -> StoreResult<u64> {
        self.gate.acquire().await.expect("gate").forget();
        self.erase_calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Transient("connection refused (injected)".into()));
        }
        self.inner_export().export(tenant, keys, sink).await
    }
    async fn read_file(&self, key: &str) -> StoreResult<dsr::stores::ByteStream> {
        self.inner_export().read_file(key).await
    }
}

struct Fault {
    failures_left: Arc<AtomicU32>,
    down: Arc<AtomicBool>,
    erase_calls: Arc<AtomicU32>,
}

fn flaky(store: &'static str, failures: u32, down: bool) -> (Fault, Overrides) {
    flaky_gated(
        store,
        failures,
        down,
        Arc::new(tokio::sync::Semaphore::new(tokio::sync::Semaphore::MAX_PERMITS)),
    )
}

fn flaky_gated(
    store: &'static str,
    failures: u32,
    down: bool,
    gate: Arc<tokio::sync::Semaphore>,
) -> (Fault, Overrides) {
    let fault = Fault {
        failures_left: Arc::new(AtomicU32::new(failures)),
        down: Arc::new(AtomicBool::new(down)),
        erase_calls: Arc::new(AtomicU32::new(0)),
    };
    let (f, d, c) = (fault.failures_left.clone(), fault.down.clone(), fault.erase_calls.clone());
    let overrides = Overrides {
        wrap_store: Some(Box::new(move |inner: Arc<dyn StoreAdapter>| -> Arc<dyn StoreAdapter> {
            if inner.name() == store {
                Arc::new(FlakyStore {
                    inner,
                    failures_left: f.clone(),
                    down: d.clone(),
                    erase_calls: c.clone(),
                    gate: gate.clone(),
                })
            } else {
                inner
            }
        })),
        ..Default::default()
    };
    (fault, overrides)
}

async fn a_store_that_fails_twice_then_succeeds_is_done_after_three_attempts(backend: Backend) {
    let (fault, overrides) = flaky("transcripts", 2, false);
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 1, 3).await;
    let r = app.delete(by_phone("acme", &s[0].phone)).await;
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let t = outcome(&done, "transcripts");
    assert_eq!(t.state, OutcomeState::Done as i32);
    assert_eq!(t.attempts, 3);
    assert_eq!(t.records_found, 3);
    assert!(t.verified);
    assert_eq!(fault.erase_calls.load(Ordering::SeqCst), 3);
    app.seal_journal().await;
    let events: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM dsr_events WHERE request_id = $1 AND store = 'transcripts' AND action = 'retry_scheduled'",
    )
    .bind(&r.id)
    .fetch_one(app.db.pool())
    .await
    .unwrap();
    assert_eq!(events, 2);
    app.shutdown().await;
}
both!(a_store_that_fails_twice_then_succeeds_is_done_after_three_attempts);

async fn a_store_that_keeps_failing_fails_the_request_and_retry_finishes_it(backend: Backend) {
    let (fault, overrides) = flaky("recordings", 0, true);
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 1, 2).await;
    let r = app.delete(by_phone("acme", &s[0].phone)).await;
    let failed = app.wait_terminal(&r.id).await;
    assert_eq!(failed.status, RequestStatus::Failed as i32, "{failed:#?}");
    let rec = outcome(&failed, "recordings");
    assert_eq!(rec.state, OutcomeState::Failed as i32);
    assert_eq!(rec.attempts, 3, "max_attempts in the test config");
    assert!(rec.last_error.contains("connection refused"), "{}", rec.last_error);
    // The others finished; their outcomes stand.
    assert_eq!(outcome(&failed, "transcripts").state, OutcomeState::Done as i32);
    assert_eq!(outcome(&failed, "billing").state, OutcomeState::Retained as i32);

    // Retrying only makes sense for a FAILED request; the store is still down, so not yet.
    fault.down.store(false, Ordering::SeqCst);
    let mut c = app.client.clone();
    let retried = c.retry_request(pb::RetryRequestRequest { id: r.id.clone() }).await.unwrap().into_inner();
    assert_ne!(retried.status, RequestStatus::Failed as i32);
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let rec = outcome(&done, "recordings");
    assert_eq!(rec.state, OutcomeState::Done as i32);
    assert_eq!(rec.attempts, 4);
    assert_eq!(rec.records_found, 2);
    assert!(rec.verified);
    // Only the failed store ran again.
    assert_eq!(outcome(&done, "transcripts").attempts, 1);
    let err = c.retry_request(pb::RetryRequestRequest { id: r.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    app.shutdown().await;
}
both!(a_store_that_keeps_failing_fails_the_request_and_retry_finishes_it);

async fn watching_sends_the_state_then_each_change_and_ends_after_the_terminal_one(backend: Backend) {
    // The recordings store waits at a closed gate, so the request is surely open when the
    // watch starts.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (_fault, overrides) = flaky_gated("recordings", 0, false, gate.clone());
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 1, 2).await;
    let r = app.delete(by_phone("acme", &s[0].phone)).await;
    let mut stream = app
        .client
        .clone()
        .watch_request(pb::WatchRequestRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("the current state first");
    assert!(
        first.status == RequestStatus::Pending as i32 || first.status == RequestStatus::InProgress as i32
    );
    gate.add_permits(1);
    let mut seen = vec![first];
    while let Some(m) = stream.message().await.unwrap() {
        seen.push(m);
    }
    assert!(seen.len() >= 2, "{} messages", seen.len());
    assert_eq!(seen.last().unwrap().status, RequestStatus::Completed as i32);
    assert!(seen[..seen.len() - 1].iter().all(|m| m.status != RequestStatus::Completed as i32));
    // Already terminal: one message, then the stream ends.
    let again = app.watch_to_end(&r.id).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].status, RequestStatus::Completed as i32);
    app.shutdown().await;
}
both!(watching_sends_the_state_then_each_change_and_ends_after_the_terminal_one);

/// Transcripts are down while a deletion runs: the request ends FAILED with call logs (the later
/// stage) still PENDING — they were never erased, so nothing the transcripts hang from is gone.
/// After RetryRequest the transcripts, which carry no phone (found by their call only), are
/// erased, then the call logs; every count is the seed's, read back from the tables.
async fn a_failed_store_holds_back_the_later_stage_until_a_retry_erases_everything(backend: Backend) {
    let (fault, overrides) = flaky("transcripts", 0, true);
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 2, 3).await;
    sqlx::query("UPDATE transcripts SET caller_phone = NULL WHERE tenant_id = 'acme'")
        .execute(app.db.pool())
        .await
        .unwrap();
    let rows = |table: &'static str, account: String| {
        let db = app.db.clone();
        async move {
            let sql = format!(
                "SELECT COUNT(*) FROM {table} WHERE tenant_id = 'acme' AND call_id IN \
                 (SELECT id FROM call_logs WHERE account_id = $1)"
            );
            let n: i64 = sqlx::query_scalar(&sql).bind(account).fetch_one(db.pool()).await.unwrap();
            n
        }
    };
    let r = app.delete(by_email("acme", &s[0].email)).await;
    let failed = app.wait_terminal(&r.id).await;
    assert_eq!(failed.status, RequestStatus::Failed as i32, "{failed:#?}");
    assert_eq!(outcome(&failed, "transcripts").state, OutcomeState::Failed as i32);
    let calls = outcome(&failed, "call_logs");
    assert_eq!((calls.state, calls.attempts), (OutcomeState::Pending as i32, 0), "the later stage never ran");
    assert_eq!(
        rows("transcripts", s[0].account_id.clone()).await,
        3,
        "transcripts still linked to their calls"
    );

    fault.down.store(false, Ordering::SeqCst);
    let mut c = app.client.clone();
    c.retry_request(pb::RetryRequestRequest { id: r.id.clone() }).await.unwrap();
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    for store in ["transcripts", "call_logs"] {
        let o = outcome(&done, store);
        assert_eq!((o.state, o.records_found, o.verified), (OutcomeState::Done as i32, 3, true), "{store}");
    }
    let left: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM transcripts WHERE tenant_id = 'acme' AND call_id LIKE $1")
            .bind(format!("acme-call-{:06}-%", 0))
            .fetch_one(app.db.pool())
            .await
            .unwrap();
    assert_eq!(left, 0, "the subject's transcripts are gone, read directly");
    assert_eq!(rows("transcripts", s[1].account_id.clone()).await, 3, "the neighbour's stay");
    app.shutdown().await;
}
both!(a_failed_store_holds_back_the_later_stage_until_a_retry_erases_everything);

/// An eraser that says it erased and did nothing.
struct LyingStore {
    inner: Arc<dyn StoreAdapter>,
}

crate::store_wrapper!(LyingStore: Erase);

#[async_trait::async_trait]
impl Erase for LyingStore {
    async fn erase(&self, _tenant: &str, keys: &[String], _now: DateTime<Utc>) -> StoreResult<Erasure> {
        Ok(Erasure::Erased { affected: keys.len() as u64 })
    }
    async fn objects_present(&self, objects: &[String]) -> StoreResult<u64> {
        self.inner_erase().objects_present(objects).await
    }
}

/// The check after an erase does not take the eraser's word: a store that reports its records
/// erased while they are all still there is not DONE and not verified; it is retried, and ends
/// FAILED saying how many records are left.
async fn an_erase_that_leaves_data_is_never_verified(backend: Backend) {
    let overrides = Overrides {
        wrap_store: Some(Box::new(|inner: Arc<dyn StoreAdapter>| -> Arc<dyn StoreAdapter> {
            if inner.name() == "call_logs" {
                Arc::new(LyingStore { inner })
            } else {
                inner
            }
        })),
        ..Default::default()
    };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 1, 4).await;
    let r = app.delete(by_phone("acme", &s[0].phone)).await;
    let failed = app.wait_terminal(&r.id).await;
    assert_eq!(failed.status, RequestStatus::Failed as i32, "{failed:#?}");
    let calls = outcome(&failed, "call_logs");
    assert_eq!(calls.state, OutcomeState::Failed as i32);
    assert!(!calls.verified);
    assert_eq!(calls.attempts, 3, "retried up to the limit");
    assert_eq!(calls.last_error, "4 record(s) of the subject are left after the erase");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_logs WHERE account_id = $1")
        .bind(&s[0].account_id)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(left, 4, "read directly: the calls are all there");
    app.shutdown().await;
}
both!(an_erase_that_leaves_data_is_never_verified);

/// A task whose work kills every worker that takes it (its lease expires each time) is claimed
/// at most `max_attempts` times, then ends FAILED saying why — never a crash loop of the fleet.
async fn a_task_whose_workers_keep_dying_fails_at_the_attempt_limit(backend: Backend) {
    let app =
        spawn_app_with(backend, TEST_CONFIG, Overrides { paused_engine: true, ..Default::default() }).await;
    let s = app.seed("acme", 1, 1).await;
    let r = app.delete(by_phone("acme", &s[0].phone)).await;
    let ledger = dsr::ledger::Ledger::new(app.db.clone());
    let lease = std::time::Duration::from_millis(10);
    let mut now = chrono::Utc::now() + chrono::Duration::seconds(1);
    for attempt in 1..=3 {
        let claimed = ledger.claim("accounts", 1, "doomed-worker", lease, now).await.unwrap();
        assert_eq!(claimed.len(), 1, "attempt {attempt} is claimed");
        assert_eq!(claimed[0].attempt, attempt);
        // The worker dies: no result, no renewal; the lease runs out.
        now += chrono::Duration::seconds(1);
    }
    let claimed = ledger.claim("accounts", 1, "next-worker", lease, now).await.unwrap();
    assert!(claimed.is_empty(), "not claimed a fourth time");
    let got = app.get(&r.id).await;
    let accounts = outcome(&got, "accounts");
    assert_eq!((accounts.state, accounts.attempts), (OutcomeState::Failed as i32, 3), "{accounts:?}");
    assert!(accounts.last_error.contains("attempt limit is reached"), "{}", accounts.last_error);
    // A retry gives it a new budget.
    let mut c = app.client.clone();
    let err = c.retry_request(pb::RetryRequestRequest { id: r.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "other stores are still pending: not FAILED yet");
    app.shutdown().await;
}
both!(a_task_whose_workers_keep_dying_fails_at_the_attempt_limit);

/// The ledger's database going away answers UNAVAILABLE (safe to retry), never INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_database_that_goes_away_answers_unavailable() {
    let app = spawn_app(Backend::Postgres).await;
    let s = app.seed("acme", 1, 1).await;
    let r = app.delete(by_phone("acme", &s[0].phone)).await;
    app.wait_terminal(&r.id).await;
    let name: String =
        sqlx::query_scalar("SELECT current_database()::text").fetch_one(app.db.pool()).await.unwrap();
    let admin = dsr::db::Db::connect(&format!("{}/postgres", crate::support::postgres_server_url()), 1)
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(admin.pool())
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&name)
        .execute(admin.pool())
        .await
        .unwrap();
    let mut c = app.client.clone();
    for _ in 0..3 {
        let err = c.get_request(pb::GetRequestRequest { id: r.id.clone() }).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        let err = c
            .submit_deletion(pb::SubmitDeletionRequest {
                subject: Some(by_phone("acme", &s[0].phone)),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(admin.pool())
        .await
        .unwrap();
    admin.close().await;
    let back = c.get_request(pb::GetRequestRequest { id: r.id.clone() }).await;
    assert!(back.is_ok(), "recovered without a restart: {back:?}");
    app.shutdown().await;
}

/// A store call that hangs is cut off at the store's timeout and retried like any transient
/// failure; once the store answers again, a retry finishes the request.
async fn a_hung_store_call_times_out_and_is_retried(backend: Backend) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (fault, overrides) = flaky_gated("transcripts", 0, false, gate.clone());
    let config = format!("{TEST_CONFIG}\n[stores.transcripts]\ntimeout_secs = 1\n");
    let app = spawn_app_with(backend, &config, overrides).await;
    let s = app.seed("acme", 1, 2).await;
    let r = app.delete(by_phone("acme", &s[0].phone)).await;
    let failed = app.wait_terminal(&r.id).await;
    assert_eq!(failed.status, RequestStatus::Failed as i32, "{failed:#?}");
    let t = outcome(&failed, "transcripts");
    assert_eq!((t.state, t.attempts), (OutcomeState::Failed as i32, 3));
    assert_eq!(
        t.last_error,
        "the transcripts store did not answer within 1 s (stores.transcripts.timeout_secs)"
    );
    assert_eq!(fault.erase_calls.load(Ordering::SeqCst), 0, "every call hung before doing anything");
    gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    let mut c = app.client.clone();
    c.retry_request(pb::RetryRequestRequest { id: r.id.clone() }).await.unwrap();
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    assert!(outcome(&done, "transcripts").verified);
    app.shutdown().await;
}
both!(a_hung_store_call_times_out_and_is_retried);

/// A replica paused inside a ledger transaction (a GC pause, a hung host, a partition) stalls no
/// one (issue 16, item 9): no global lock is held across a round trip. The paused session here
/// holds more than any replica can: an event of its own in the journal, the prune lock, and even
/// the audit head's row (which a sealer only locks inside one statement). Idle sessions are not
/// cut off during the test (60 s), yet a deletion submitted meanwhile completes at once; the
/// events it recorded wait in the journal and are linked, in order, once the head is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_inside_a_ledger_transaction_stalls_no_one() {
    let toml = format!("[database]\nidle_in_transaction_timeout_secs = 60\n{TEST_CONFIG}");
    let app = spawn_app_with(Backend::Postgres, &toml, Overrides::default()).await;
    let target = app.seed("acme", 1, 2).await.remove(0);
    let paused = dsr::db::Db::connect_ledger(
        &app.settings.database_url,
        1,
        &app.settings.file.database.schema,
        Default::default(),
        app.settings.file.database.timeouts(),
    )
    .await
    .unwrap();
    let mut tx = paused.pool().begin().await.unwrap();
    let lock = format!("SELECT 1 FROM pg_advisory_xact_lock({})", dsr::ledger::audit::CHAIN_LOCK);
    for sql in [
        "INSERT INTO dsr_event_journal (at, action) VALUES (0, 'paused_replica')",
        &lock,
        "SELECT seq FROM dsr_audit_head WHERE id = 1 FOR UPDATE",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let r = app.delete(by_phone("acme", &target.phone)).await;
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    sqlx::query("SELECT 1")
        .execute(&mut *tx)
        .await
        .expect("the paused session is still there, holding it all");
    tx.rollback().await.unwrap();
    let v = app.audit().await.verify_audit_log(pb::VerifyAuditLogRequest {}).await.unwrap().into_inner();
    assert!(v.ok && v.events_checked == 12, "the deletion's 12 events, linked once the head was free: {v:?}");
    app.shutdown().await;
}
