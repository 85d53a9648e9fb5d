//! The retention schedule and legal holds (issue 9), with a manual clock: records just inside a
//! period stay and just outside go, per tenant; backlogs go in bounded batches; a sweep that
//! fails or dies half-way is finished by the next; two sweepers never run at once; a billing
//! hold that ends completes its deletion; a litigation hold keeps everything until released;
//! deadlines are extended once, by the law's amount.
use std::sync::{
    atomic::{AtomicBool, AtomicU32, Ordering},
    Arc, Mutex,
};

use chrono::{DateTime, Duration, Months, Utc};
use dsr::{
    api::pb::{self, holds_client::HoldsClient, OutcomeState, RequestStatus},
    clock::{to_millis, ManualClock, SharedClock},
    db::Db,
    ledger::Ledger,
    retention::{SweepMode, SweepOutcome},
    startup::Overrides,
    stores::{
        open_object_store, Erase, Erasure, ExpiredRecord, Expiry, Export, Retention, StoreAdapter,
        StoreError, StoreResult,
    },
};
use object_store::{path::Path, ObjectStoreExt, PutPayload};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{both, helpers::*};

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z").unwrap().with_timezone(&Utc)
}

const MS: Duration = Duration::milliseconds(1);

/// The test engine settings with a `[retention]` table of our own.
fn config(retention: &str) -> String {
    format!(
        "[retention]\nsweep_interval_secs = 0\n{retention}\n\n\
         [engine]\nbackoff_base_ms = 10\nbackoff_max_ms = 50\npoll_interval_ms = 50\nmax_attempts = 3\n"
    )
}

async fn manual_app(backend: Backend, toml: &str, wrap: Option<Probe>) -> (TestApp, Arc<ManualClock>) {
    let clock = ManualClock::new(t0());
    let shared: SharedClock = clock.clone();
    let overrides =
        Overrides { clock: Some(shared), wrap_store: wrap.map(Probe::wrapper), ..Default::default() };
    (spawn_app_with(backend, toml, overrides).await, clock)
}

// ---------------------------------------------------------------------------------------------
// Rows written straight into the reference schema, dated by the test.

async fn exec(db: &Db, sql: &str, texts: &[&str], times: &[Option<i64>]) {
    let mut q = sqlx::query(sql);
    for t in texts {
        q = q.bind(*t);
    }
    for t in times {
        q = q.bind(*t);
    }
    q.execute(db.pool()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn call_log(db: &Db, tenant: &str, id: &str, account: &str, phone: &str, at: DateTime<Utc>) {
    exec(
        db,
        "INSERT INTO call_logs (id, tenant_id, account_id, caller_phone, agent_id, started_at, duration_s, outcome) \
         VALUES ($1, $2, $3, $4, 'agent-0', $5, 60, 'completed')",
        &[id, tenant, account, phone],
        &[Some(to_millis(at))],
    )
    .await;
}

async fn transcript(db: &Db, tenant: &str, id: &str, phone: &str, at: DateTime<Utc>) {
    exec(
        db,
        "INSERT INTO transcripts (id, call_id, tenant_id, caller_phone, text, created_at) \
         VALUES ($1, $2, $3, $4, 'Agent: hello', $5)",
        &[id, &format!("{id}-call"), tenant, phone],
        &[Some(to_millis(at))],
    )
    .await;
}

/// An index row and its audio object.
async fn recording(app: &TestApp, tenant: &str, id: &str, phone: &str, at: DateTime<Utc>) -> Path {
    let key = format!("{tenant}/{id}.wav");
    let objects = open_object_store(&app.settings.recordings_url).unwrap();
    objects.put(&Path::from(key.as_str()), PutPayload::from(vec![1u8; 64])).await.unwrap();
    exec(
        &app.db,
        "INSERT INTO recordings (id, call_id, tenant_id, caller_phone, object_key, bytes, created_at) \
         VALUES ($1, $2, $3, $4, $5, 64, $6)",
        &[id, &format!("{id}-call"), tenant, phone, &key],
        &[Some(to_millis(at))],
    )
    .await;
    Path::from(key)
}

async fn object_exists(app: &TestApp, key: &Path) -> bool {
    let objects = open_object_store(&app.settings.recordings_url).unwrap();
    match objects.head(key).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("{key}: {e}"),
    }
}

async fn billing(db: &Db, tenant: &str, id: &str, account: &str, at: DateTime<Utc>, restricted: bool) {
    exec(
        db,
        "INSERT INTO billing_records (id, tenant_id, account_id, caller_phone, amount_cents, currency, created_at, restricted_at) \
         VALUES ($1, $2, $3, '+15550001111', 1999, 'USD', $4, $5)",
        &[id, tenant, account],
        &[Some(to_millis(at)), restricted.then(|| to_millis(at))],
    )
    .await;
}

async fn account(db: &Db, tenant: &str, id: &str, terminated: Option<DateTime<Utc>>) {
    exec(
        db,
        "INSERT INTO accounts (id, tenant_id, email, phone, name, created_at, terminated_at) \
         VALUES ($1, $2, $3, '+15550002222', 'Somebody', $4, $5)",
        &[id, tenant, &format!("{id}@example.com")],
        &[Some(to_millis(t0() - Duration::days(2000))), terminated.map(to_millis)],
    )
    .await;
}

async fn exists(db: &Db, table: &str, id: &str) -> bool {
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE id = $1"))
        .bind(id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    n == 1
}

async fn count_where(db: &Db, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db.pool()).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every event's action, tenant, store, counts and detail, oldest first.
async fn events(
    db: &Db,
    action: &str,
) -> Vec<(Option<String>, Option<String>, Option<i64>, Option<i64>, Option<String>)> {
    crate::support::seal_journal(db).await;
    sqlx::query_as(
        "SELECT tenant_id, store, records_found, records_affected, detail FROM dsr_events WHERE action = $1 ORDER BY seq",
    )
    .bind(action)
    .fetch_all(db.pool())
    .await
    .unwrap()
}

async fn verify_chain(app: &TestApp) {
    let v = app.audit().await.verify_audit_log(pb::VerifyAuditLogRequest {}).await.unwrap().into_inner();
    assert!(v.ok, "{v:?}");
}

// ---------------------------------------------------------------------------------------------
// A store wrapper that watches (and can disturb) the sweep.

type Hook =
    Arc<dyn Fn(&'static str, u32) -> futures::future::BoxFuture<'static, StoreResult<()>> + Send + Sync>;

/// (store, limit, erased) of one `erase_expired`.
type EraseCall = (&'static str, usize, u64);

/// Wraps every store: records each `erase_expired` (store, limit, erased) and runs `hook` before
/// it with the store's call number (1-based), which may fail or wait. Probes of several servers
/// share a call counter: `spans` holds, per probe id, the first and last sweep call it saw.
#[derive(Clone)]
struct Probe {
    id: u32,
    calls: Arc<Mutex<Vec<EraseCall>>>,
    hook: Hook,
    seq: Arc<std::sync::atomic::AtomicU64>,
    spans: Arc<Mutex<std::collections::HashMap<u32, (u64, u64)>>>,
}

impl Probe {
    fn new(hook: Hook) -> Self {
        Self {
            id: 1,
            calls: Arc::new(Mutex::new(Vec::new())),
            hook,
            seq: Default::default(),
            spans: Default::default(),
        }
    }

    fn quiet() -> Self {
        Self::new(Arc::new(|_, _| Box::pin(async { Ok(()) })))
    }

    /// A quiet probe for another server, on the same counter.
    fn sibling(&self, id: u32) -> Self {
        Self { id, seq: self.seq.clone(), spans: self.spans.clone(), ..Self::quiet() }
    }

    async fn touch(&self) {
        let n = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.spans.lock().unwrap().entry(self.id).and_modify(|s| s.1 = n).or_insert((n, n));
        // Give another sweeper every chance to run in between, were it allowed to.
        tokio::task::yield_now().await;
    }

    fn calls_of(&self, store: &str) -> Vec<(usize, u64)> {
        self.calls.lock().unwrap().iter().filter(|c| c.0 == store).map(|c| (c.1, c.2)).collect()
    }

    fn wrapper(self) -> dsr::startup::StoreWrapper {
        Box::new(move |inner: Arc<dyn StoreAdapter>| -> Arc<dyn StoreAdapter> {
            Arc::new(Probed { inner, probe: self.clone(), n: AtomicU32::new(0) })
        })
    }
}

struct Probed {
    inner: Arc<dyn StoreAdapter>,
    probe: Probe,
    n: AtomicU32,
}

crate::store_wrapper!(Probed: Retention);

#[async_trait::async_trait]
impl Retention for Probed {
    fn lists_tenants(&self) -> bool {
        self.inner_retention().lists_tenants()
    }
    async fn tenants(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        self.probe.touch().await;
        self.inner_retention().tenants(after, limit).await
    }
    async fn count_expired(&self, e: &Expiry<'_>) -> StoreResult<u64> {
        self.inner_retention().count_expired(e).await
    }
    async fn list_expired(
        &self,
        e: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        self.inner_retention().list_expired(e, after, limit).await
    }
    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        self.inner_retention().erase_records(tenant, keys).await
    }
    async fn erase_expired(&self, e: &Expiry<'_>, limit: usize) -> StoreResult<u64> {
        self.probe.touch().await;
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        (self.probe.hook)(self.inner.name(), n).await?;
        let erased = self.inner_retention().erase_expired(e, limit).await?;
        self.probe.calls.lock().unwrap().push((self.inner.name(), limit, erased));
        Ok(erased)
    }
}

// ---------------------------------------------------------------------------------------------

async fn records_just_inside_each_period_stay_and_just_outside_go(backend: Backend) {
    let (app, _clock) = manual_app(backend, &config(""), None).await;
    let db = &app.db;
    let now = t0();
    let (call_cut, media_cut) = (now - Duration::days(365), now - Duration::days(90));
    let (bill_cut, acct_cut) = (now - Months::new(84), now - Duration::days(30));
    call_log(db, "acme", "call-in", "acct-live", "+15550000001", call_cut).await;
    call_log(db, "acme", "call-out", "acct-live", "+15550000001", call_cut - MS).await;
    transcript(db, "acme", "tr-in", "+15550000001", media_cut).await;
    transcript(db, "acme", "tr-out", "+15550000001", media_cut - MS).await;
    let rec_in = recording(&app, "acme", "rec-in", "+15550000001", media_cut).await;
    let rec_out = recording(&app, "acme", "rec-out", "+15550000001", media_cut - MS).await;
    billing(db, "acme", "bill-in", "acct-billed", bill_cut, false).await;
    billing(db, "acme", "bill-out", "acct-live", bill_cut - MS, false).await;
    account(db, "acme", "acct-in", Some(acct_cut)).await;
    account(db, "acme", "acct-out", Some(acct_cut - MS)).await;
    account(db, "acme", "acct-live", None).await;
    // Terminated long ago but still billed: its personal data goes, its bare row stays for the
    // billing record.
    account(db, "acme", "acct-billed", Some(acct_cut - Duration::days(10))).await;

    // A dry run says what would go, and changes nothing.
    let dry = app.dry_run().await;
    for store in ["call_logs", "transcripts", "recordings", "billing", "accounts"] {
        let expected = if store == "accounts" { 2 } else { 1 };
        assert_eq!(dry.unit(store, "acme").unwrap().expired, expected, "{store}: {dry:#?}");
    }
    assert!(dry.render().contains("dry run"), "{}", dry.render());
    assert!(exists(db, "call_logs", "call-out").await && object_exists(&app, &rec_out).await);
    assert!(events(db, "retention_swept").await.is_empty(), "a dry run records nothing");

    let report = app.sweep().await;
    assert!(report.is_clean(), "{report:#?}");
    for (table, inside, outside) in [
        ("call_logs", "call-in", "call-out"),
        ("transcripts", "tr-in", "tr-out"),
        ("recordings", "rec-in", "rec-out"),
        ("billing_records", "bill-in", "bill-out"),
        ("accounts", "acct-in", "acct-out"),
    ] {
        assert!(exists(db, table, inside).await, "{table}: {inside} is exactly as old as allowed and stays");
        assert!(!exists(db, table, outside).await, "{table}: {outside} is 1 ms too old and goes");
    }
    assert!(object_exists(&app, &rec_in).await, "the recording inside keeps its audio");
    assert!(!object_exists(&app, &rec_out).await, "the recording outside lost its audio");
    assert!(exists(db, "accounts", "acct-live").await, "a live account has no retention");
    let bare = count_where(
        db,
        "SELECT COUNT(*) FROM accounts WHERE id = 'acct-billed' AND email IS NULL AND phone IS NULL AND name IS NULL",
    )
    .await;
    assert_eq!(bare, 1, "a billed terminated account keeps its bare row");

    // Counts per store and tenant in the events; no identifier anywhere in them.
    let swept = events(db, "retention_swept").await;
    assert_eq!(swept.len(), 5, "{swept:?}");
    for (tenant, store, found, affected, detail) in &swept {
        assert_eq!(tenant.as_deref(), Some("acme"));
        let expected = if store.as_deref() == Some("accounts") { 2 } else { 1 };
        assert_eq!((*found, *affected), (Some(expected), Some(expected)), "{store:?}");
        assert!(detail.as_deref().unwrap().starts_with("cutoff "), "{detail:?}");
    }
    let summary = events(db, "retention_sweep").await;
    assert_eq!(summary.len(), 1);
    assert_eq!((summary[0].2, summary[0].3), (Some(6), Some(6)));
    crate::support::seal_journal(db).await;
    let all: Vec<String> =
        sqlx::query_scalar("SELECT COALESCE(detail, '') FROM dsr_events").fetch_all(db.pool()).await.unwrap();
    for text in all {
        for secret in ["+1555", "@example.com", "acct-"] {
            assert!(!text.contains(secret), "an event holds an identifier: {text}");
        }
    }

    // A second sweep finds nothing: the bare billed account is not erased again.
    let again = app.sweep().await;
    assert_eq!(again.expired(), 0, "{again:#?}");
    assert!(again.render().contains("nothing is past its retention"));
    verify_chain(&app).await;
    app.shutdown().await;
}
both!(records_just_inside_each_period_stay_and_just_outside_go);

async fn a_tenant_period_changes_that_tenant_only(backend: Backend) {
    let toml = config(
        "[retention.tenants.acme]\nrecordings_days = 30\nbilling_years = 10\n\
         [retention.tenants.globex]\ntranscripts_days = 120\n",
    );
    let (app, _clock) = manual_app(backend, &toml, None).await;
    let db = &app.db;
    let now = t0();
    for tenant in ["acme", "globex"] {
        recording(&app, tenant, &format!("{tenant}-rec-31d"), "+15550000001", now - Duration::days(31)).await;
        transcript(db, tenant, &format!("{tenant}-tr-100d"), "+15550000001", now - Duration::days(100)).await;
        billing(db, tenant, &format!("{tenant}-bill-8y"), "acct-1", now - Months::new(96), false).await;
    }
    // A restricted record of an erased subject goes at the legal minimum even where the tenant
    // keeps billing longer.
    billing(db, "acme", "acme-bill-8y-restricted", "acct-2", now - Months::new(96), true).await;
    let report = app.sweep().await;
    assert!(report.is_clean(), "{report:#?}");
    assert!(!exists(db, "recordings", "acme-rec-31d").await, "acme keeps recordings 30 days");
    assert!(exists(db, "recordings", "globex-rec-31d").await, "globex keeps them 90");
    assert!(!exists(db, "transcripts", "acme-tr-100d").await, "acme keeps transcripts 90 days");
    assert!(exists(db, "transcripts", "globex-tr-100d").await, "globex keeps them 120");
    assert!(exists(db, "billing_records", "acme-bill-8y").await, "acme keeps billing 10 years");
    assert!(!exists(db, "billing_records", "globex-bill-8y").await, "globex keeps it 7");
    assert!(!exists(db, "billing_records", "acme-bill-8y-restricted").await, "restricted: the legal minimum");
    let acme_rec = report.unit("recordings", "acme").unwrap();
    assert_eq!(acme_rec.cutoff, now - Duration::days(30));
    assert_eq!(report.unit("recordings", "globex").unwrap().cutoff, now - Duration::days(90));
    assert_eq!(report.unit("billing", "acme").unwrap().cutoff, now - Months::new(120));
    app.shutdown().await;
}
both!(a_tenant_period_changes_that_tenant_only);

async fn a_backlog_larger_than_one_batch_goes_in_bounded_batches(backend: Backend) {
    let probe = Probe::quiet();
    let toml = format!("{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n", config("batch_size = 7"));
    let (app, _clock) = manual_app(backend, &toml, Some(probe.clone())).await;
    let db = &app.db;
    let old = t0() - Duration::days(400);
    for i in 0..50 {
        call_log(db, "acme", &format!("call-{i:03}"), "acct-1", "+15550000001", old).await;
    }
    for i in 0..23 {
        recording(&app, "acme", &format!("rec-{i:03}"), "+15550000001", old).await;
    }
    for i in 0..5 {
        call_log(db, "acme", &format!("recent-{i}"), "acct-1", "+15550000001", t0() - Duration::days(1))
            .await;
    }
    let report = app.sweep().await;
    assert!(report.is_clean(), "{report:#?}");
    let calls = probe.calls_of("call_logs");
    assert_eq!(calls, vec![(7, 7), (7, 7), (7, 7), (7, 7), (7, 7), (7, 7), (7, 7), (7, 1)]);
    assert_eq!(probe.calls_of("recordings"), vec![(7, 7), (7, 7), (7, 7), (7, 2)]);
    assert_eq!(report.unit("call_logs", "acme").unwrap().erased, 50);
    assert_eq!(report.unit("recordings", "acme").unwrap().erased, 23);
    assert_eq!(count_where(db, "SELECT COUNT(*) FROM call_logs").await, 5, "the recent calls stay");
    assert_eq!(count_where(db, "SELECT COUNT(*) FROM recordings").await, 0);
    let left = std::fs::read_dir(app.dir.path().join("recordings/acme")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "every expired audio object is gone");
    // The metrics count per store (never per tenant) and time the sweep.
    let m = crate::metrics::scrape(app.metrics.expect("metrics endpoint")).await;
    let value = |series: &str| crate::metrics::value(&m, series);
    assert_eq!(value("dsr_retention_records_erased_total{store=\"call_logs\"}"), 50.0);
    assert_eq!(value("dsr_retention_records_erased_total{store=\"recordings\"}"), 23.0);
    assert_eq!(value("dsr_retention_sweep_duration_seconds_count{result=\"clean\"}"), 1.0);
    assert!(!m.contains("acme"), "no tenant in the metrics");
    app.shutdown().await;
}
both!(a_backlog_larger_than_one_batch_goes_in_bounded_batches);

async fn a_sweep_that_fails_half_way_is_finished_by_the_next(backend: Backend) {
    let failing = Arc::new(AtomicBool::new(true));
    let hook: Hook = {
        let failing = failing.clone();
        Arc::new(move |store, n| {
            let fail = store == "call_logs" && n >= 2 && failing.load(Ordering::SeqCst);
            Box::pin(async move {
                if fail {
                    Err(StoreError::Transient("connection reset (injected)".into()))
                } else {
                    Ok(())
                }
            })
        })
    };
    let probe = Probe::new(hook);
    let (app, _clock) = manual_app(backend, &config("batch_size = 10"), Some(probe.clone())).await;
    let db = &app.db;
    let old = t0() - Duration::days(400);
    for i in 0..35 {
        call_log(db, "acme", &format!("call-{i:03}"), "acct-1", "+15550000001", old).await;
    }
    for i in 0..4 {
        transcript(db, "acme", &format!("tr-{i}"), "+15550000001", old).await;
    }
    call_log(db, "acme", "recent", "acct-1", "+15550000001", t0()).await;

    let first = app.sweep().await;
    assert!(!first.is_clean());
    let unit = first.unit("call_logs", "acme").unwrap();
    assert_eq!(unit.erased, 10, "one batch went before the failure");
    assert!(unit.error.as_deref().unwrap().contains("injected"), "{unit:?}");
    assert_eq!(first.unit("transcripts", "acme").unwrap().erased, 4, "the other stores were swept");
    let swept = events(db, "retention_swept").await;
    let call_event = swept.iter().find(|e| e.1.as_deref() == Some("call_logs")).unwrap();
    assert_eq!((call_event.2, call_event.3), (Some(10), Some(10)));
    assert!(call_event.4.as_deref().unwrap().contains("interrupted"), "{call_event:?}");
    assert_eq!(count_where(db, "SELECT COUNT(*) FROM call_logs").await, 26);

    // The store is back: the next sweep (the lease was given back) erases the rest, once.
    failing.store(false, Ordering::SeqCst);
    let second = app.sweep().await;
    assert!(second.is_clean(), "{second:#?}");
    assert_eq!(second.unit("call_logs", "acme").unwrap().erased, 25);
    assert!(second.unit("transcripts", "acme").is_none_or(|u| u.expired == 0));
    assert_eq!(count_where(db, "SELECT COUNT(*) FROM call_logs").await, 1, "only the recent call is left");
    verify_chain(&app).await;
    app.shutdown().await;
}
both!(a_sweep_that_fails_half_way_is_finished_by_the_next);

/// Lets the first `erase_expired` of call logs through, then parks the sweep at a gate and
/// says so.
fn gate_after_first_batch() -> (Probe, Arc<Semaphore>, Arc<Notify>) {
    let gate = Arc::new(Semaphore::new(0));
    let parked = Arc::new(Notify::new());
    let hook: Hook = {
        let (gate, parked) = (gate.clone(), parked.clone());
        Arc::new(move |store, n| {
            let (gate, parked) = (gate.clone(), parked.clone());
            Box::pin(async move {
                if store == "call_logs" && n == 2 {
                    parked.notify_one();
                    gate.acquire().await.expect("gate").forget();
                }
                Ok(())
            })
        })
    };
    (Probe::new(hook), gate, parked)
}

async fn a_sweeper_that_dies_half_way_is_taken_over_when_its_lease_expires(backend: Backend) {
    let (probe, _gate, parked) = gate_after_first_batch();
    let toml = config("batch_size = 10\nlease_secs = 60");
    let (app, clock) = manual_app(backend, &toml, Some(probe)).await;
    let shared: SharedClock = clock.clone();
    let other = spawn_on(
        app.settings.clone(),
        tempfile::tempdir().unwrap(),
        Overrides { clock: Some(shared), ..Default::default() },
    )
    .await;
    let old = t0() - Duration::days(400);
    for i in 0..30 {
        call_log(&app.db, "acme", &format!("call-{i:03}"), "acct-1", "+15550000001", old).await;
    }
    let sweeper = app.sweeper.clone();
    let dying = tokio::spawn(async move { sweeper.sweep(SweepMode::Now, &CancellationToken::new()).await });
    parked.notified().await;
    dying.abort(); // the process dies: no lease given back, no closing event
    assert!(dying.await.unwrap_err().is_cancelled());
    assert_eq!(count_where(&app.db, "SELECT COUNT(*) FROM call_logs").await, 20, "one batch went");

    let busy = other.sweeper.sweep(SweepMode::Now, &CancellationToken::new()).await.unwrap();
    assert!(matches!(busy, SweepOutcome::Busy { .. }), "{busy:?}");
    clock.advance(Duration::seconds(61));
    let report = other.sweep().await;
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.unit("call_logs", "acme").unwrap().erased, 20);
    assert_eq!(count_where(&app.db, "SELECT COUNT(*) FROM call_logs").await, 0);
    other.shutdown().await;
    app.shutdown().await;
}
both!(a_sweeper_that_dies_half_way_is_taken_over_when_its_lease_expires);

async fn two_sweepers_never_run_at_once(backend: Backend) {
    let (probe, gate, parked) = gate_after_first_batch();
    let second = probe.sibling(2);
    let (app, clock) = manual_app(backend, &config("batch_size = 5"), Some(probe.clone())).await;
    let shared: SharedClock = clock.clone();
    let other = spawn_on(
        app.settings.clone(),
        tempfile::tempdir().unwrap(),
        Overrides { clock: Some(shared), wrap_store: Some(second.wrapper()), ..Default::default() },
    )
    .await;
    let old = t0() - Duration::days(400);
    for i in 0..12 {
        call_log(&app.db, "acme", &format!("call-{i:03}"), "acct-1", "+15550000001", old).await;
    }
    // The first holds the lease, parked mid-sweep: the second is refused, however often it asks.
    let first = {
        let s = app.sweeper.clone();
        tokio::spawn(async move { s.sweep(SweepMode::Now, &CancellationToken::new()).await })
    };
    parked.notified().await;
    for _ in 0..3 {
        let r = other.sweeper.sweep(SweepMode::Now, &CancellationToken::new()).await.unwrap();
        assert!(matches!(r, SweepOutcome::Busy { .. }), "{r:?}");
    }
    gate.add_permits(1);
    let SweepOutcome::Swept(done) = first.await.unwrap().unwrap() else { panic!("the first sweep ran") };
    assert_eq!(done.unit("call_logs", "acme").unwrap().erased, 12);
    // Now free: the second runs.
    assert!(matches!(
        other.sweeper.sweep(SweepMode::Now, &CancellationToken::new()).await.unwrap(),
        SweepOutcome::Swept(_)
    ));

    // Many rounds of both at once. Every store call of a sweep happens while it holds the lease,
    // so when both ran in a round, the spans of their calls must not overlap.
    let mut both_ran = 0;
    for round in 0..20 {
        for i in 0..6 {
            call_log(&app.db, "acme", &format!("r{round}-{i}"), "acct-1", "+15550000001", old).await;
        }
        probe.spans.lock().unwrap().clear();
        let never = CancellationToken::new();
        let (a, b) = tokio::join!(
            app.sweeper.sweep(SweepMode::Now, &never),
            other.sweeper.sweep(SweepMode::Now, &never)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let erased = |r: &SweepOutcome| match r {
            SweepOutcome::Swept(r) => Some(r.erased()),
            _ => None,
        };
        let spans = probe.spans.lock().unwrap().clone();
        match (erased(&a), erased(&b)) {
            (Some(x), Some(y)) => {
                both_ran += 1;
                assert_eq!(x + y, 6, "round {round}: nothing erased twice");
                let (s1, s2) = (spans[&1], spans[&2]);
                assert!(s1.1 < s2.0 || s2.1 < s1.0, "round {round}: the sweeps overlapped: {s1:?} {s2:?}");
            }
            (Some(n), None) | (None, Some(n)) => {
                assert_eq!(n, 6, "round {round}");
                assert_eq!(spans.len(), 1, "round {round}: the refused sweeper touched no store: {spans:?}");
            }
            (None, None) => panic!("round {round}: neither ran: {a:?} {b:?}"),
        }
        assert_eq!(count_where(&app.db, "SELECT COUNT(*) FROM call_logs").await, 0, "round {round}");
    }
    eprintln!("{backend:?}: both sweepers ran one after the other in {both_ran} of 20 rounds");
    other.shutdown().await;
    app.shutdown().await;
}
both!(two_sweepers_never_run_at_once);

/// Watches a request until every store has answered (a held deletion never ends by itself).
async fn every_store_answered(app: &TestApp, id: &str) -> pb::DsrRequest {
    let mut stream = app
        .client
        .clone()
        .watch_request(pb::WatchRequestRequest { id: id.to_owned() })
        .await
        .unwrap()
        .into_inner();
    let answered = |r: &pb::DsrRequest| {
        r.outcomes
            .iter()
            .all(|o| o.state != OutcomeState::Pending as i32 && o.state != OutcomeState::Running as i32)
    };
    let follow = async {
        while let Some(r) = stream.message().await.unwrap() {
            if answered(&r) {
                return r;
            }
        }
        panic!("the watch ended before every store answered");
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), follow).await.expect("every store answered")
}

pub(crate) async fn holds(app: &TestApp) -> HoldsClient<tonic::transport::Channel> {
    HoldsClient::new(channel(app.addr).await)
}

async fn list_holds(app: &TestApp, tenant: &str, active_only: bool) -> Vec<pb::Hold> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = holds(app)
            .await
            .list_holds(pb::ListHoldsRequest {
                tenant_id: tenant.into(),
                active_only,
                page_size: 1,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.holds);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

async fn subject_json(app: &TestApp, id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT subject_json FROM dsr_requests WHERE id = $1")
        .bind(id)
        .fetch_one(app.db.pool())
        .await
        .unwrap()
}

async fn request_events(
    app: &TestApp,
    id: &str,
) -> Vec<(String, Option<String>, Option<i64>, Option<i64>, Option<String>)> {
    app.seal_journal().await;
    sqlx::query_as("SELECT action, store, records_found, records_affected, detail FROM dsr_events WHERE request_id = $1 ORDER BY seq")
        .bind(id)
        .fetch_all(app.db.pool())
        .await
        .unwrap()
}

async fn a_billing_hold_that_ends_completes_the_original_request(backend: Backend) {
    let (app, clock) = manual_app(backend, &config(""), None).await;
    let seeded = app.seed_at("acme", 2, 3, t0()).await;
    let target = &seeded[0];
    let r = app.delete(by_email("acme", &target.email)).await;
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let bill = outcome(&done, "billing");
    assert_eq!(bill.state, OutcomeState::Retained as i32);
    let until = DateTime::from_timestamp(bill.retained_until.as_ref().unwrap().seconds, 0).unwrap();
    assert_eq!(until, t0() - Duration::days(1) + Months::new(84), "7 years from the newest record");
    assert_eq!(subject_json(&app, &r.id).await, None, "the request dropped the identifiers");

    // The hold is a record: basis, end date, the request, the records it keeps.
    let all = list_holds(&app, "acme", true).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    let hold = &all[0];
    assert_eq!(hold.kind, pb::HoldKind::LegalObligation as i32);
    assert_eq!((hold.request_id.as_str(), hold.store.as_str()), (r.id.as_str(), "billing"));
    assert_eq!(hold.records, target.counts["billing"]);
    assert!(hold.basis.starts_with("legal_obligation"), "{}", hold.basis);
    assert_eq!(hold.until.as_ref().unwrap().seconds, until.timestamp());
    assert!(hold.active && hold.reason.is_empty());
    let outcome_event = request_events(&app, &r.id)
        .await
        .into_iter()
        .find(|e| e.0 == "outcome" && e.1.as_deref() == Some("billing"))
        .unwrap();
    assert!(outcome_event.4.as_deref().unwrap().contains("legal_obligation hold"), "{outcome_event:?}");

    // A minute before the end: nothing moves.
    clock.set(until - Duration::minutes(1));
    let early = app.sweep().await;
    assert_eq!(early.holds_ended, 0);
    assert_eq!(outcome(&app.get(&r.id).await, "billing").state, OutcomeState::Retained as i32);
    let billed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM billing_records WHERE account_id = $1")
        .bind(&target.account_id)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(billed as u64, target.counts["billing"]);

    // A minute after, but a litigation hold now stands on the subject (named by phone: the
    // account row no longer knows it): the obligation's end waits, and its records stay.
    clock.set(until + Duration::minutes(1));
    let mut h = holds(&app).await;
    let lit = h
        .place_hold(pb::PlaceHoldRequest {
            subject: Some(by_phone("acme", &target.phone)),
            reason: "audit".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let waiting = app.sweep().await;
    assert_eq!((waiting.holds_ended, waiting.holds_waiting), (0, 1), "{waiting:#?}");
    assert_eq!(
        waiting.unit("billing", "acme").unwrap().held,
        target.counts["billing"],
        "the sweep keeps them too"
    );
    assert_eq!(outcome(&app.get(&r.id).await, "billing").state, OutcomeState::Retained as i32);

    // Released: the records go and the request tells the whole story.
    h.release_hold(pb::ReleaseHoldRequest { id: lit.id, reason: "closed".into() }).await.unwrap();
    let report = app.sweep().await;
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.holds_ended, 1);
    let after = app.get(&r.id).await;
    assert_eq!(after.status, RequestStatus::Completed as i32);
    let bill = outcome(&after, "billing");
    assert_eq!(bill.state, OutcomeState::Done as i32, "{bill:?}");
    assert_eq!(bill.records_affected, target.counts["billing"]);
    assert_eq!(bill.retained_until.as_ref().unwrap().seconds, until.timestamp(), "when the hold ended");
    let billed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM billing_records WHERE account_id = $1")
        .bind(&target.account_id)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(billed, 0);
    assert!(
        !exists(&app.db, "accounts", &target.account_id).await,
        "the bare account row went with its billing"
    );
    let story: Vec<String> = request_events(&app, &r.id).await.into_iter().map(|e| e.0).collect();
    assert_eq!(story.first().map(String::as_str), Some("submitted"));
    assert_eq!(story.last().map(String::as_str), Some("hold_ended"), "{story:?}");
    let ended = request_events(&app, &r.id).await.pop().unwrap();
    assert_eq!(ended.1.as_deref(), Some("billing"));
    assert_eq!(
        (ended.2, ended.3),
        (Some(target.counts["billing"] as i64), Some(target.counts["billing"] as i64))
    );
    assert!(list_holds(&app, "acme", true).await.is_empty());
    let closed = list_holds(&app, "acme", false).await;
    assert_eq!(closed.len(), 2, "the legal obligation and the litigation hold, both ended");
    let legal = closed.iter().find(|x| x.kind == pb::HoldKind::LegalObligation as i32).unwrap();
    assert!(!legal.active && legal.ended_by == "retention-sweep", "{closed:#?}");
    // Ending is once: the next sweep has nothing to end.
    assert_eq!(app.sweep().await.holds_ended, 0);
    verify_chain(&app).await;
    app.shutdown().await;
}
both!(a_billing_hold_that_ends_completes_the_original_request);

async fn a_litigation_hold_keeps_everything_until_its_release_lets_the_erasure_through(backend: Backend) {
    let toml = format!("{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n", config("batch_size = 2"));
    let (app, clock) = manual_app(backend, &toml, None).await;
    let seeded = app.seed_at("acme", 2, 3, t0()).await;
    let (target, neighbour) = (&seeded[0], &seeded[1]);
    let mut h = holds(&app).await;
    const REASON: &str = "Case 2026-CV-0042 Zyxwvut v. Acme";

    // Refused before anything is written.
    let bad = h
        .place_hold(pb::PlaceHoldRequest {
            subject: Some(by_phone("acme", &target.phone)),
            reason: "  ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("reason"), "{}", bad.message());
    let bad = h
        .place_hold(pb::PlaceHoldRequest { subject: Some(by_phone("acme", "12345")), reason: REASON.into() })
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("subject.phone"), "{}", bad.message());
    assert_eq!(count_where(&app.db, "SELECT COUNT(*) FROM dsr_holds").await, 0);

    // Placed by phone; the account row adds the email and account id.
    let hold = h
        .place_hold(pb::PlaceHoldRequest {
            subject: Some(by_phone("acme", &target.phone)),
            reason: REASON.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hold.kind, pb::HoldKind::Litigation as i32);
    assert!(hold.active && hold.reason == REASON && hold.basis == "litigation_hold");
    assert_eq!(count_where(&app.db, "SELECT COUNT(*) FROM dsr_hold_subjects").await, 3);

    // A deletion by email: every store keeps its records and says why, and the request is not
    // done: it stays IN_PROGRESS until the hold is released.
    let r = app.delete(by_email("acme", &target.email)).await;
    let held = every_store_answered(&app, &r.id).await;
    assert_eq!(held.status, RequestStatus::InProgress as i32, "{held:#?}");
    assert_eq!(held.completed_at, None);
    for o in &held.outcomes {
        assert_eq!(o.state, OutcomeState::Retained as i32, "{o:?}");
        assert!(o.retention_basis.starts_with("litigation_hold"), "{o:?}");
        assert!(o.retention_basis.contains(&hold.id));
        assert_eq!(o.records_found, target.counts[o.store.as_str()], "{}", o.store);
        assert_eq!(o.records_affected, 0);
    }
    for s in app.preview(by_phone("acme", &target.phone)).await {
        assert_eq!(s.records, target.counts[s.store.as_str()], "{}: still there", s.store);
    }
    assert!(subject_json(&app, &r.id).await.is_some(), "kept: the erasure resumes on release");
    // The neighbour's deletion is not held.
    let free = app.delete(by_phone("acme", &neighbour.phone)).await;
    let free = app.wait_terminal(&free.id).await;
    assert_eq!(outcome(&free, "call_logs").state, OutcomeState::Done as i32);

    // Two years on, the sweep keeps the subject's expired records (in batches of 2) and erases
    // everyone else's.
    for i in 0..3 {
        call_log(&app.db, "acme", &format!("other-{i}"), "acct-other", "+15559990000", t0()).await;
    }
    clock.advance(Duration::days(730));
    let report = app.sweep().await;
    assert!(report.is_clean(), "{report:#?}");
    let calls = report.unit("call_logs", "acme").unwrap();
    assert_eq!((calls.held, calls.erased), (target.counts["call_logs"], 3), "{calls:?}");
    for store in ["transcripts", "recordings"] {
        assert_eq!(report.unit(store, "acme").unwrap().held, target.counts[store], "{store}");
    }
    for s in app.preview(by_phone("acme", &target.phone)).await {
        assert_eq!(s.records, target.counts[s.store.as_str()], "{}: kept by the sweep", s.store);
    }
    // Two years past its deadline, the held request is paused, not overdue.
    let m = crate::metrics::scrape(app.metrics.expect("metrics endpoint")).await;
    let gauge = |name: &str| {
        crate::metrics::value(&m, &format!("{name}{{kind=\"deletion\",status=\"in_progress\"}}"))
    };
    assert_eq!(gauge("dsr_requests_outstanding"), 1.0, "{m}");
    assert_eq!(gauge("dsr_requests_paused_by_hold"), 1.0, "{m}");
    assert_eq!(gauge("dsr_requests_past_deadline"), 0.0, "{m}");
    let overdue = app
        .client
        .clone()
        .list_requests(pb::ListRequestsRequest {
            tenant_id: "acme".into(),
            overdue: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(overdue.requests.is_empty(), "{overdue:?}");
    // Pruning the audit record of what ended long ago keeps the held request: it is not over.
    let now = t0() + Duration::days(730);
    let pruned = Ledger::new(app.db.clone()).prune_audit(now - Duration::days(1), "test", now).await.unwrap();
    assert_eq!(pruned.events_pruned, 1, "only the hold_placed event before the held request: {pruned:?}");
    assert!(subject_json(&app, &r.id).await.is_some(), "the held request survives pruning");

    // Release: refused without a reason, for an unknown id and for a legal obligation.
    let bad = h
        .release_hold(pb::ReleaseHoldRequest { id: hold.id.clone(), reason: String::new() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let bad =
        h.release_hold(pb::ReleaseHoldRequest { id: "x".into(), reason: "done".into() }).await.unwrap_err();
    assert!(bad.message().starts_with("id"), "{}", bad.message());
    let unknown = uuid::Uuid::now_v7().to_string();
    let missing =
        h.release_hold(pb::ReleaseHoldRequest { id: unknown, reason: "done".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let legal = list_holds(&app, "acme", true)
        .await
        .into_iter()
        .find(|x| x.kind == pb::HoldKind::LegalObligation as i32)
        .unwrap();
    let refused =
        h.release_hold(pb::ReleaseHoldRequest { id: legal.id, reason: "done".into() }).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let released = h
        .release_hold(pb::ReleaseHoldRequest { id: hold.id.clone(), reason: "Settled out of court".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!released.active && released.release_reason == "Settled out of court");
    let again = h
        .release_hold(pb::ReleaseHoldRequest { id: hold.id.clone(), reason: "again".into() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // The held stores ran again: the erasure went through.
    let done = app.wait_terminal(&r.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    for store in ["accounts", "call_logs", "transcripts", "recordings"] {
        let o = outcome(&done, store);
        assert_eq!(o.state, OutcomeState::Done as i32, "{store}: {o:?}");
        assert_eq!(o.records_found, target.counts[store], "{store}");
        assert!(o.verified);
    }
    assert_eq!(outcome(&done, "billing").state, OutcomeState::Retained as i32);
    assert!(outcome(&done, "billing").retention_basis.starts_with("legal_obligation"));
    for s in app.preview(by_account("acme", &target.account_id)).await {
        let left = if s.store == "billing" { target.counts["billing"] } else { 0 };
        assert_eq!(s.records, left, "{}", s.store);
    }
    assert_eq!(subject_json(&app, &r.id).await, None);
    let story: Vec<String> = request_events(&app, &r.id).await.into_iter().map(|e| e.0).collect();
    assert!(story.contains(&"hold_released".to_owned()), "{story:?}");
    assert_eq!(
        story.iter().filter(|a| *a == "completed").count(),
        1,
        "completed once, after the release: {story:?}"
    );

    // Neither reason is in the audit trail.
    app.seal_journal().await;
    let details: Vec<String> = sqlx::query_scalar("SELECT COALESCE(detail, '') FROM dsr_events")
        .fetch_all(app.db.pool())
        .await
        .unwrap();
    assert!(details.iter().all(|d| !d.contains("Zyxwvut") && !d.contains("Settled")));
    assert_eq!(events(&app.db, "hold_released").await.len(), 2, "the hold's and the request's");
    verify_chain(&app).await;
    app.shutdown().await;
}
both!(a_litigation_hold_keeps_everything_until_its_release_lets_the_erasure_through);

async fn a_hold_placed_during_a_sweep_protects_its_subject_from_the_next_batch(backend: Backend) {
    let (probe, gate, parked) = gate_after_first_batch();
    let (app, _clock) = manual_app(backend, &config("batch_size = 10"), Some(probe)).await;
    // Twenty strangers' calls, older, go in the first two batches; the hold is placed while the
    // second is under way (the sweep parks just before it); the subject's five come after.
    for i in 0..20 {
        call_log(&app.db, "acme", &format!("a-{i:02}"), "acct-x", "+15559990000", t0() - Duration::days(500))
            .await;
    }
    for i in 0..5 {
        call_log(
            &app.db,
            "acme",
            &format!("b-{i:02}"),
            "acct-held",
            "+15550000042",
            t0() - Duration::days(400),
        )
        .await;
    }
    let sweep = {
        let s = app.sweeper.clone();
        tokio::spawn(async move { s.sweep(SweepMode::Now, &CancellationToken::new()).await })
    };
    parked.notified().await;
    let hold = holds(&app)
        .await
        .place_hold(pb::PlaceHoldRequest {
            subject: Some(by_phone("acme", "+15550000042")),
            reason: "case".into(),
        })
        .await
        .unwrap()
        .into_inner();
    gate.add_permits(1);
    let SweepOutcome::Swept(report) = sweep.await.unwrap().unwrap() else { panic!("the sweep ran") };
    let unit = report.unit("call_logs", "acme").unwrap();
    assert_eq!((unit.erased, unit.held), (20, 5), "{unit:?}");
    let left: i64 =
        count_where(&app.db, "SELECT COUNT(*) FROM call_logs WHERE caller_phone = '+15550000042'").await;
    assert_eq!(left, 5, "hold {} keeps the subject's calls", hold.id);
    app.shutdown().await;
}
both!(a_hold_placed_during_a_sweep_protects_its_subject_from_the_next_batch);

async fn extend(app: &TestApp, id: &str, reason: &str) -> Result<pb::DsrRequest, tonic::Status> {
    app.client
        .clone()
        .extend_deadline(pb::ExtendDeadlineRequest { id: id.into(), reason: reason.into() })
        .await
        .map(|r| r.into_inner())
}

async fn submit(app: &TestApp, phone: &str, regime: pb::Regime) -> pb::DsrRequest {
    app.client
        .clone()
        .submit_deletion(pb::SubmitDeletionRequest {
            subject: Some(by_phone("acme", phone)),
            regime: regime as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn due(r: &pb::DsrRequest) -> DateTime<Utc> {
    DateTime::from_timestamp(r.due_at.as_ref().unwrap().seconds, 0).unwrap()
}

async fn listed(app: &TestApp, req: pb::ListRequestsRequest) -> Vec<String> {
    let mut ids: Vec<String> = app
        .client
        .clone()
        .list_requests(req)
        .await
        .unwrap()
        .into_inner()
        .requests
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

async fn a_deadline_is_extended_once_by_the_laws_amount(backend: Backend) {
    let clock = ManualClock::new(t0());
    let shared: SharedClock = clock.clone();
    let overrides = Overrides { clock: Some(shared), paused_engine: true, ..Default::default() };
    let app = spawn_app_with(backend, &config(""), overrides).await;
    let gdpr = submit(&app, "+15550000001", pb::Regime::Gdpr).await;
    let ccpa = submit(&app, "+15550000002", pb::Regime::Ccpa).await;
    let plain = submit(&app, "+15550000003", pb::Regime::Unspecified).await;
    let ended = submit(&app, "+15550000004", pb::Regime::Gdpr).await;
    app.client.clone().cancel_request(pb::CancelRequestRequest { id: ended.id.clone() }).await.unwrap();
    assert_eq!(due(&gdpr), t0() + Duration::days(30));
    assert_eq!(due(&ccpa), t0() + Duration::days(45));

    let bad = extend(&app, &gdpr.id, "").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("reason"), "{}", bad.message());
    let bad = extend(&app, &gdpr.id, "line\nbreak").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        extend(&app, &uuid::Uuid::now_v7().to_string(), "x").await.unwrap_err().code(),
        Code::NotFound
    );

    const REASON: &str = "complex request: Qwertzuiop's many accounts";
    let g = extend(&app, &gdpr.id, REASON).await.unwrap();
    assert!(g.deadline_extended);
    assert_eq!(
        due(&g),
        (t0() + Duration::days(30)).checked_add_months(Months::new(2)).unwrap(),
        "GDPR: two more months"
    );
    let c = extend(&app, &ccpa.id, "volume").await.unwrap();
    assert_eq!(due(&c), t0() + Duration::days(90), "CCPA: 45 more days");
    let twice = extend(&app, &gdpr.id, "again").await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition, "once per request");
    assert_eq!(due(&app.get(&gdpr.id).await), due(&g), "the refused extension changed nothing");
    assert_eq!(extend(&app, &ended.id, "late").await.unwrap_err().code(), Code::FailedPrecondition);
    assert!(!app.get(&plain.id).await.deadline_extended);

    let ev = request_events(&app, &gdpr.id).await;
    let ext: Vec<_> = ev.iter().filter(|e| e.0 == "deadline_extended").collect();
    assert_eq!(ext.len(), 1);
    assert!(ext[0].4.as_deref().unwrap().contains("->"), "{:?}", ext[0]);
    app.seal_journal().await;
    let details: Vec<String> = sqlx::query_scalar("SELECT COALESCE(detail, '') FROM dsr_events")
        .fetch_all(app.db.pool())
        .await
        .unwrap();
    assert!(details.iter().all(|d| !d.contains("Qwertzuiop")), "the reason is not in the trail");

    // 31 days on: the unextended request is overdue, the extended ones are not; due within
    // 60 days: the overdue one and CCPA's (day 90), not GDPR's (two months after day 30).
    clock.advance(Duration::days(31));
    let overdue = listed(&app, pb::ListRequestsRequest { overdue: true, ..Default::default() }).await;
    assert_eq!(overdue, vec![plain.id.clone()]);
    let soon = listed(&app, pb::ListRequestsRequest { due_within_days: 60, ..Default::default() }).await;
    let mut expected = vec![plain.id.clone(), ccpa.id.clone()];
    expected.sort();
    assert_eq!(soon, expected);
    let later = listed(&app, pb::ListRequestsRequest { due_within_days: 62, ..Default::default() }).await;
    assert_eq!(later.len(), 3, "GDPR's extended deadline is within 62 days");
    app.shutdown().await;
}
both!(a_deadline_is_extended_once_by_the_laws_amount);

/// Holds the transcripts store's erase at a gate, saying when it got there.
struct HeldUp {
    inner: Arc<dyn StoreAdapter>,
    entered: Arc<Notify>,
    gate: Arc<Semaphore>,
}

crate::store_wrapper!(HeldUp: Erase);

#[async_trait::async_trait]
impl Erase for HeldUp {
    async fn erase(&self, tenant: &str, keys: &[String], now: DateTime<Utc>) -> StoreResult<Erasure> {
        if self.inner.name() == "transcripts" {
            self.entered.notify_one();
            self.gate.acquire().await.expect("gate").forget();
        }
        self.inner_erase().erase(tenant, keys, now).await
    }
    async fn objects_present(&self, objects: &[String]) -> StoreResult<u64> {
        self.inner_erase().objects_present(objects).await
    }
}

/// A litigation hold placed while a store is erasing: that store's outcome says the hold came
/// too late for what it erased; the stores that had not started keep the subject's data.
async fn a_hold_placed_during_an_erase_is_reported_and_keeps_what_is_left(backend: Backend) {
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let (e, g) = (entered.clone(), gate.clone());
    let overrides = Overrides {
        wrap_store: Some(Box::new(move |inner: Arc<dyn StoreAdapter>| -> Arc<dyn StoreAdapter> {
            Arc::new(HeldUp { inner, entered: e.clone(), gate: g.clone() })
        })),
        ..Default::default()
    };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let target = app.seed("acme", 1, 3).await.remove(0);
    let r = app.delete(by_phone("acme", &target.phone)).await;
    entered.notified().await;
    let hold = holds(&app)
        .await
        .place_hold(pb::PlaceHoldRequest {
            subject: Some(by_phone("acme", &target.phone)),
            reason: "litigation".into(),
        })
        .await
        .unwrap()
        .into_inner();
    gate.add_permits(1);
    // A safety net against a hang, not a timing assertion.
    let mut tries = 0;
    let got = loop {
        tries += 1;
        assert!(tries < 1200, "the held request did not settle");
        let got = app.get(&r.id).await;
        if outcome(&got, "transcripts").state != OutcomeState::Running as i32
            && outcome(&got, "call_logs").state == OutcomeState::Retained as i32
        {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let t = outcome(&got, "transcripts");
    assert_eq!((t.state, t.records_found, t.verified), (OutcomeState::Done as i32, 3, true), "{t:?}");
    assert!(
        t.retention_basis.contains(&format!("hold {} was placed while this store erased", hold.id)),
        "{}",
        t.retention_basis
    );
    // Call logs run after the others: the hold keeps them.
    let calls = outcome(&got, "call_logs");
    assert!(calls.retention_basis.starts_with("litigation_hold"), "{calls:?}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_logs WHERE account_id = $1")
        .bind(&target.account_id)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(left, 3, "read directly: the calls are kept");
    app.shutdown().await;
}
both!(a_hold_placed_during_an_erase_is_reported_and_keeps_what_is_left);

struct ErasedMeanwhile {
    inner: Arc<dyn StoreAdapter>,
}

crate::store_wrapper!(ErasedMeanwhile: Export);

#[async_trait::async_trait]
impl Export for ErasedMeanwhile {
    async fn export(
        &self,
        tenant: &str,
        keys: &[String],
        sink: &mut dyn dsr::stores::ExportSink,
    ) -> StoreResult<u64> {
        self.inner_export().export(tenant, keys, sink).await
    }
    async fn read_file(&self, _key: &str) -> StoreResult<dsr::stores::ByteStream> {
        // A deletion of the subject erased the object after the export listed it.
        Err(dsr::stores::StoreError::Gone("an object is no longer in the object store".into()))
    }
}

/// A file the export listed but a deletion erased before the archive copied it: the export
/// completes without it, and the manifest counts it as erased meanwhile.
async fn a_file_erased_while_its_export_runs_is_left_out_and_counted(backend: Backend) {
    let overrides = Overrides {
        wrap_store: Some(Box::new(|inner: Arc<dyn StoreAdapter>| -> Arc<dyn StoreAdapter> {
            Arc::new(ErasedMeanwhile { inner })
        })),
        ..Default::default()
    };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let target = app.seed("acme", 1, 2).await.remove(0);
    let export = app.export(by_phone("acme", &target.phone), pb::Regime::Gdpr).await;
    let done = app.wait_terminal(&export.id).await;
    assert_eq!(done.status, RequestStatus::Completed as i32, "{done:#?}");
    let files = crate::export::unzip(&app.download(&export.id, 0).await.unwrap());
    assert!(!files.keys().any(|f| f.starts_with("recordings/")), "{:?}", files.keys());
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let rec = manifest["stores"].as_array().unwrap().iter().find(|s| s["store"] == "recordings").unwrap();
    assert_eq!(
        (rec["files_erased_meanwhile"].as_u64(), rec["records"].as_u64()),
        (Some(2), Some(0)),
        "{rec}"
    );
    app.shutdown().await;
}
both!(a_file_erased_while_its_export_runs_is_left_out_and_counted);

/// A deletion submitted before an export of the same person, still running when the export was
/// made, supersedes the archive once it completes.
async fn a_deletion_running_when_an_export_was_made_supersedes_its_archive(backend: Backend) {
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let (e, g) = (entered.clone(), gate.clone());
    let overrides = Overrides {
        wrap_store: Some(Box::new(move |inner: Arc<dyn StoreAdapter>| -> Arc<dyn StoreAdapter> {
            Arc::new(HeldUp { inner, entered: e.clone(), gate: g.clone() })
        })),
        ..Default::default()
    };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let target = app.seed("acme", 1, 2).await.remove(0);
    let deletion = app.delete(by_phone("acme", &target.phone)).await;
    entered.notified().await;
    let export = app
        .client
        .clone()
        .submit_export(pb::SubmitExportRequest {
            subject: Some(by_phone("acme", &target.phone)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let exported = app.wait_terminal(&export.id).await;
    assert_eq!(exported.status, RequestStatus::Completed as i32, "{exported:#?}");
    let ledger = Ledger::new(app.db.clone());
    assert!(!ledger.is_export_superseded(&export.id).await.unwrap(), "the deletion has not completed yet");
    gate.add_permits(1);
    assert_eq!(app.wait_terminal(&deletion.id).await.status, RequestStatus::Completed as i32);
    assert!(ledger.is_export_superseded(&export.id).await.unwrap(), "completed after the export began");
    let gone = app.download(&export.id, 0).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(gone.message().contains("erased"), "{}", gone.message());
    app.shutdown().await;
}
both!(a_deletion_running_when_an_export_was_made_supersedes_its_archive);

/// The erase's hold question ("does a standing litigation hold cover this person?", asked twice
/// by every erase) reads only standing litigation holds, even under the generic plan Postgres
/// keeps for a prepared statement: one made while the ledger was empty once read every hold of
/// the tenant — one legal obligation per deletion that kept billing records, so a little more
/// for every deletion ever done. Planned here for an empty ledger, then run over 3,000 legal
/// obligations and one litigation hold.
#[tokio::test]
async fn the_erase_hold_question_reads_only_standing_litigation_holds() {
    use sqlx::{Connection, Executor, Row};
    let dir = tempfile::tempdir().unwrap();
    let url = crate::support::fresh_database(Backend::Postgres, dir.path()).await;
    let db =
        dsr::db::Db::connect_ledger(&url, 1, "dsr", Default::default(), Default::default()).await.unwrap();
    dsr::ledger::Ledger::new(db.clone()).migrate().await.unwrap();
    db.close().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    conn.execute("SET search_path = dsr; SET plan_cache_mode = force_generic_plan").await.unwrap();
    let question = dsr::ledger::Ledger::litigation_hold_question(3);
    conn.execute(format!("PREPARE q(text, text, text, text) AS {question}").as_str()).await.unwrap();
    // The plan is made now, on the empty tables, and kept for the session.
    conn.execute("EXECUTE q('t1', 'a', 'b', 'c')").await.unwrap();
    conn.execute(
        "INSERT INTO dsr_holds (id, kind, tenant_id, basis, placed_by, placed_at) \
         SELECT 'legal-' || i, 'legal_obligation', 't1', 'billing', 'deletion', 0 FROM generate_series(1, 3000) i; \
         INSERT INTO dsr_hold_subjects (hold_id, tag) SELECT 'legal-' || i, 'tag-' || i FROM generate_series(1, 3000) i; \
         INSERT INTO dsr_holds (id, kind, tenant_id, basis, placed_by, placed_at) \
           VALUES ('litigation-1', 'litigation', 't1', 'case 1', 'counsel', 0); \
         INSERT INTO dsr_hold_subjects (hold_id, tag) VALUES ('litigation-1', 'b')",
    )
    .await
    .unwrap();
    let found: Option<String> =
        sqlx::query_scalar("EXECUTE q('t1', 'a', 'b', 'c')").fetch_optional(&mut conn).await.unwrap();
    assert_eq!(found.as_deref(), Some("litigation-1"));
    let plan = conn
        .fetch_one("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE q('t1', 'x', 'y', 'z')")
        .await
        .unwrap();
    let plan: serde_json::Value = plan.try_get(0).unwrap();
    let text = plan.to_string();
    assert!(
        text.contains("dsr_holds_litigation"),
        "the question reads the standing litigation holds: {text}"
    );
    let read = |key: &str| plan[0]["Plan"][key].as_i64().unwrap_or(0);
    let buffers = read("Shared Hit Blocks") + read("Shared Read Blocks");
    // Without the partial index: about 600 buffers here, growing with every legal obligation.
    assert!(buffers < 50, "{buffers} buffers read for one question: {text}");
}
