//! The engine: workers that claim due store tasks from the ledger under a lease, run them
//! through the store's adapter, and record the outcome — retrying transient failures with
//! backoff, renewing the lease while they work, and giving leases back on shutdown.

mod backoff;
mod execute;
pub mod finisher;
mod signals;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{field::Empty, info, warn, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use backoff::Backoff;
pub use finisher::{Ended, Finisher, Recorded};
pub use signals::Signals;

use crate::{
    clock::SharedClock,
    config::{EngineConfig, FileConfig, SubjectsConfig},
    export::ExportStorage,
    ledger::{ClaimedTask, Fenced, Ledger, ARCHIVE_TASK},
    metrics::{Metrics, TaskEnd},
    privacy::KeyedHasher,
    stores::{CallContext, StoreError, StoreRegistry},
    telemetry::propagation::{context_from_traceparent, current_traceparent},
};

/// How often the engine ends the tasks whose lease expired at their attempt limit.
const EXHAUSTED_CHECK: Duration = Duration::from_secs(1);

/// How often a claim also looks for tasks whose lease expired (their worker died).
const EXPIRED_CHECK: Duration = Duration::from_secs(1);

/// Export archives assembled at once by one process (each streams every recording of a subject).
const ARCHIVE_CONCURRENCY: usize = 2;

pub struct Engine {
    ledger: Ledger,
    stores: StoreRegistry,
    exports: Arc<ExportStorage>,
    clock: SharedClock,
    config: EngineConfig,
    /// How identifiers are read (the tenant's region), for requests resolved late.
    subjects: SubjectsConfig,
    signals: Signals,
    /// Tags the subject's identifiers, to find litigation holds and to record legal ones.
    hasher: KeyedHasher,
    /// Who holds a lease: host, process and a random part, so a restarted process on the same
    /// host is a different owner.
    owner: String,
    workers: Arc<Semaphore>,
    /// One queue per store, plus `archive` (exports' last step), each with its own limit.
    per_store: HashMap<&'static str, Arc<Semaphore>>,
    /// The longest one call into each store may take (`[stores.<name>] timeout_secs`).
    timeouts: HashMap<&'static str, Duration>,
    /// Tasks running now, so shutdown can hand back the ones that do not finish in time.
    running: Mutex<HashMap<String, ClaimedTask>>,
    /// Ends tasks, those of one request that end at once together.
    finisher: Finisher,
    metrics: Arc<Metrics>,
}

impl Engine {
    #[allow(clippy::too_many_arguments)] // each is a separate collaborator, wired once at start
    pub fn new(
        ledger: Ledger,
        stores: StoreRegistry,
        exports: Arc<ExportStorage>,
        clock: SharedClock,
        file: &FileConfig,
        signals: Signals,
        metrics: Arc<Metrics>,
        hasher: KeyedHasher,
    ) -> Self {
        let mut per_store: HashMap<&'static str, Arc<Semaphore>> = stores
            .all()
            .iter()
            .map(|a| (a.name(), Arc::new(Semaphore::new(file.store(a.name()).concurrency))))
            .collect();
        per_store.insert(ARCHIVE_TASK, Arc::new(Semaphore::new(ARCHIVE_CONCURRENCY)));
        let timeouts = stores
            .all()
            .iter()
            .map(|a| (a.name(), Duration::from_secs(file.store(a.name()).timeout_secs)))
            .collect();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        let finisher = Finisher::new(ledger.clone(), clock.clone());
        Self {
            ledger,
            stores,
            exports,
            clock,
            config: file.engine.clone(),
            subjects: file.subjects.clone(),
            signals,
            hasher,
            owner: format!(
                "{host}/{}/{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            workers: Arc::new(Semaphore::new(file.engine.workers)),
            per_store,
            timeouts,
            running: Mutex::new(HashMap::new()),
            finisher,
            metrics,
        }
    }

    /// Claims and runs tasks until `shutdown`; then lets running tasks finish for up to `grace`
    /// and releases the leases of those that did not, so another process picks them up at once.
    pub async fn run_until_stopped(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        info!(owner = %self.owner, workers = self.config.workers, "engine started");
        let mut inflight = JoinSet::new();
        let mut db_trouble = 0u32;
        let mut exhausted_checked: Option<Instant> = None;
        let mut expired_checked: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            let mut claimed = 0;
            // Tasks whose lease ran out at their attempt limit are never claimed again; ending
            // them FAILED is a query of its own, not needed on every round (they wait for no one:
            // a request with one is not done anyway).
            if exhausted_checked.is_none_or(|at| at.elapsed() >= EXHAUSTED_CHECK) {
                exhausted_checked = Some(Instant::now());
                let stores: Vec<&str> =
                    self.stores.all().iter().map(|a| a.name()).chain([ARCHIVE_TASK]).collect();
                if let Err(e) = self.ledger.fail_exhausted(&stores, self.clock.now()).await {
                    warn!(error = %e, "ending tasks at their attempt limit failed; will try again");
                }
            }
            // Every queue with room, in one claim (one transaction, one statement per queue).
            let queues: Vec<(&str, usize)> = self
                .stores
                .all()
                .iter()
                .map(|a| a.name())
                .chain([ARCHIVE_TASK])
                .map(|q| (q, self.per_store[q].available_permits()))
                .collect();
            let room = self.workers.available_permits();
            // Signals from before this claim are answered by it (see the wait below).
            let (mark, room_mark) = (self.signals.work_mark(), self.signals.room_mark());
            // Tasks whose worker died (lease expired) are looked for once a second; the claims in
            // between look at pending tasks only (`Ledger::claim_pending`).
            let claim = if expired_checked.is_none_or(|at| at.elapsed() >= EXPIRED_CHECK) {
                expired_checked = Some(Instant::now());
                self.ledger.claim_due(&queues, room, &self.owner, self.config.lease(), self.clock.now()).await
            } else {
                self.ledger
                    .claim_pending(&queues, room, &self.owner, self.config.lease(), self.clock.now())
                    .await
            };
            let tasks = match claim {
                Ok(tasks) => {
                    db_trouble = 0;
                    tasks
                }
                Err(e) => {
                    db_trouble += 1;
                    warn!(error = %e, "claiming tasks failed");
                    Vec::new()
                }
            };
            // Due tasks may have been left behind for want of room: in all, or in a store's
            // queue (one with none free was not even asked).
            let limited = tasks.len() >= room
                || queues.iter().any(|(q, free)| tasks.iter().filter(|t| t.store == *q).count() >= *free);
            for task in tasks {
                let store_sem = &self.per_store[task.store.as_str()];
                // Only this loop takes permits, and it counted them above: these succeed.
                let permits = (
                    self.workers.clone().try_acquire_owned().expect("worker permit counted"),
                    store_sem.clone().try_acquire_owned().expect("store permit counted"),
                );
                claimed += 1;
                self.running.lock().expect("running lock").insert(task.task_id.clone(), task.clone());
                let engine = self.clone();
                inflight.spawn(async move {
                    let made_due = engine.clone().run_task(task).await;
                    // Room first, then the wake-ups: woken before the permits were back, the
                    // loop found no room, claimed nothing and slept until the next task ended
                    // or the poll interval passed, while due tasks waited (`dsr bench deletions`
                    // ran with workers idle).
                    drop(permits);
                    engine.signals.room_freed();
                    if made_due {
                        engine.signals.work_available();
                    }
                });
            }
            while inflight.try_join_next().is_some() {}
            // A claim that filled the room claims again at once (no statement when there is no
            // room left). One that found fewer due tasks than it had room for took all there
            // were: claiming again before new work is signalled (a submit, a stage's end, a
            // released hold) would find nothing — that empty claim after every claim, and
            // another for signals the claim had already seen, cost about a millisecond of a
            // two-core machine each on the path of one deletion (`dsr bench latency`). A task's
            // end frees room, which matters only when the claim was short of it (`limited`).
            if claimed == 0 || claimed < room {
                let idle = Duration::from_millis(self.config.poll_interval_ms) * (1 + db_trouble.min(10));
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = self.signals.wait_for_work_since(mark) => {}
                    _ = self.signals.wait_for_room_since(room_mark), if limited => {}
                    _ = tokio::time::sleep(idle) => {}
                }
            }
        }
        info!(running = inflight.len(), "engine stopping: draining running tasks");
        if tokio::time::timeout(grace, async { while inflight.join_next().await.is_some() {} }).await.is_err()
        {
            inflight.abort_all();
            while inflight.join_next().await.is_some() {}
        }
        let left: Vec<ClaimedTask> =
            self.running.lock().expect("running lock").drain().map(|(_, t)| t).collect();
        for task in left {
            match self.ledger.release(&task, self.clock.now()).await {
                Ok(_) => {
                    info!(request_id = %task.request_id, store = %task.store, "lease released at shutdown")
                }
                Err(e) => {
                    warn!(request_id = %task.request_id, store = %task.store, error = %e, "could not release lease; it will expire")
                }
            }
        }
        info!("engine stopped");
    }

    /// What a remote store is told about the call: the task, its attempt, and the trace to
    /// continue (this task's span; without OpenTelemetry, the submitting call's, as stored).
    fn call_context(&self, task: &ClaimedTask) -> CallContext {
        CallContext {
            request_id: task.request_id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            traceparent: current_traceparent().or_else(|| task.trace_context.clone()),
            kind: task.kind,
            resolution: None,
        }
    }

    /// Runs one claimed task to a recorded result (or to a retry), renewing its lease meanwhile;
    /// `true` when its end made tasks due (see `Ended::made_due`; a failure always says so:
    /// failures are rare, and the claim it may cost for nothing is cheap).
    ///
    /// Its span is a child of the server span of the call that submitted the request (stored
    /// with it as a `traceparent`), so every store task, every attempt and every replica that
    /// runs one joins that call's trace — hours later for a retry.
    async fn run_task(self: Arc<Self>, task: ClaimedTask) -> bool {
        let span = tracing::info_span!(
            "store_task",
            dsr.request_id = %task.request_id,
            dsr.tenant = %task.tenant_id,
            dsr.kind = %task.kind,
            dsr.store = %task.store,
            // Integers as i64: OpenTelemetry has no unsigned attributes (a u64 becomes a string).
            dsr.attempt = i64::from(task.attempt),
            dsr.outcome = Empty,
            dsr.records_found = Empty,
            dsr.records_affected = Empty,
            dsr.verified = Empty,
            dsr.request_status = Empty,
            otel.status_code = Empty,
        );
        // No stored context (a request from before tracing): the task starts a trace of its own.
        let _ = span.set_parent(context_from_traceparent(task.trace_context.as_deref()));
        async {
            let started = Instant::now();
            let lost_lease = CancellationToken::new();
            let heartbeat = tokio::spawn(self.clone().keep_lease(task.clone(), lost_lease.clone()));
            let outcome = tokio::select! {
                r = self.call_context(&task).scope(self.execute(&task)) => Some(r),
                _ = lost_lease.cancelled() => None,
            };
            heartbeat.abort();
            let (end, recorded) = match outcome {
                None => {
                    warn!("lease lost to another worker; result dropped");
                    (TaskEnd::Abandoned, Ok(Ended { fenced: Fenced::Stale, reports_status: false, made_due: false }))
                }
                Some(Ok(result)) => {
                    info!(outcome = %result.state, found = result.found, affected = result.affected, verified = result.verified, "store task done");
                    let span = Span::current();
                    span.record("dsr.records_found", i64::try_from(result.found).unwrap_or(i64::MAX));
                    span.record("dsr.records_affected", i64::try_from(result.affected).unwrap_or(i64::MAX));
                    span.record("dsr.verified", result.verified);
                    let recorded = self.finisher.finish(&task, &result).await;
                    if result.export.is_some()
                        && matches!(recorded, Ok(Ended { fenced: Fenced::Applied(_), .. }))
                    {
                        // The archive holds the parts now (and is recorded): they can go.
                        if let Err(e) = self.exports.delete_parts(&task.request_id).await {
                            warn!(error = %e, "deleting the export's parts failed; they go when the archive expires");
                        }
                    }
                    (TaskEnd::Outcome(result.state), recorded)
                }
                Some(Err(err)) => self.record_failure(&task, &err).await,
            };
            let span = Span::current();
            span.record("dsr.outcome", end.label());
            if matches!(end, TaskEnd::Failed | TaskEnd::Abandoned) {
                span.record("otel.status_code", "ERROR");
            }
            self.metrics.task_attempt(&task.store, end, started.elapsed());
            let made_due = matches!(recorded, Ok(Ended { made_due: true, .. }));
            match recorded {
                Ok(Ended { fenced: Fenced::Applied(status), reports_status, .. }) => {
                    span.record("dsr.request_status", status.as_str());
                    // The ledger reports a terminal status once: on the transition, to one
                    // of the tasks that ended together.
                    if status.is_terminal() && reports_status {
                        self.metrics.request_ended(task.kind, status);
                        crate::export::request_ended(&self.exports, task.kind, &task.request_id, status).await;
                    }
                    info!(request_status = %status, "outcome recorded")
                }
                Ok(Ended { fenced: Fenced::Stale, .. }) => warn!("a newer attempt owns this task; nothing recorded"),
                // The lease will expire and the task run again; adapters are idempotent.
                Err(e) => warn!(error = %e, "recording the outcome failed"),
            }
            self.running.lock().expect("running lock").remove(&task.task_id);
            self.signals.request_changed(&task.request_id);
            made_due
        }
        .instrument(span)
        .await
    }

    async fn record_failure(&self, task: &ClaimedTask, err: &StoreError) -> (TaskEnd, Recorded) {
        let now = self.clock.now();
        let retry_at = match err {
            StoreError::Transient(_) if task.attempt < task.attempt_limit => {
                let backoff = Backoff {
                    base: Duration::from_millis(self.config.backoff_base_ms),
                    max: Duration::from_millis(self.config.backoff_max_ms),
                };
                let delay = backoff.delay(task.attempt, &mut rand::rng());
                Some(now + chrono::Duration::from_std(delay).unwrap_or_default())
            }
            _ => None,
        };
        let message = err.to_string();
        let end = match retry_at {
            Some(at) => {
                warn!(error = %message, retry_in_ms = (at - now).num_milliseconds(), "store task failed; will retry");
                TaskEnd::Retry
            }
            None => {
                warn!(error = %message, "store task failed for good");
                TaskEnd::Failed
            }
        };
        let recorded = self.ledger.fail_attempt(task, &message, retry_at, now).await;
        (end, recorded.map(|fenced| Ended { fenced, reports_status: true, made_due: true }).map_err(Arc::new))
    }

    /// Renews the lease every third of its length; cancels `lost` if the task stops being ours.
    async fn keep_lease(self: Arc<Self>, task: ClaimedTask, lost: CancellationToken) {
        let lease = self.config.lease();
        loop {
            tokio::time::sleep(lease / 3).await;
            match self.ledger.renew_lease(&task, lease, self.clock.now()).await {
                Ok(true) => {}
                Ok(false) => return lost.cancel(),
                Err(e) => warn!(error = %e, "renewing the lease failed; will try again"),
            }
        }
    }
}
