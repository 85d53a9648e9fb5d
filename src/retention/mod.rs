//! The retention sweep (issue 9): data leaves when its time is up, and not before.
//!
//! One sweep, under the `retention_sweep` lease so that one replica sweeps at a time:
//! 1. **Legal obligations that have ended** (a deletion's billing records, 7 years): the records
//!    the hold lists are erased, the hold ends and the deletion's outcome moves from RETAINED to
//!    DONE with a `hold_ended` event. One whose subject is under a litigation hold waits.
//! 2. **Every store, every tenant**, in stage order (transcripts and recordings before the call
//!    logs that link them): the records older than the tenant's period are erased in bounded
//!    batches, one short transaction each, recordings' objects before their index rows. In a
//!    tenant with litigation holds the expired records are listed instead, each record's
//!    identifiers are tagged (keyed hashes) and those a hold covers are kept. The tenant's holds
//!    are read again before every batch, so a hold placed while a sweep runs protects its
//!    subject from the next batch on.
//!
//! Each (store, tenant) with expired records gets a `retention_swept` event (counts, the
//! cutoff; never an identifier) and the sweep a closing `retention_sweep` event; the metrics
//! count erased and held records per store and time each sweep by result. A store that
//! fails is reported and the sweep goes on with the next; what it left is still expired, so the
//! next sweep erases it. A sweeper that dies stops renewing its lease, and another replica takes
//! over when the lease expires. Batches are idempotent: erasing a record twice is harmless.
mod report;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use report::{SweepReport, SweepUnit};

use crate::{
    clock::SharedClock,
    config::RetentionConfig,
    domain::{AccountId, Email, Phone, RetentionSchedule, TenantId},
    engine::Signals,
    ledger::{LeaseClaim, Ledger, NewEvent, SWEEP_LEASE},
    metrics::Metrics,
    privacy::{IdentifierKind, KeyedHasher},
    stores::{ExpiredRecord, Expiry, Retention, StoreAdapter, StoreRegistry},
};

/// The actor of the sweep's events.
pub const SWEEP_ACTOR: &str = "retention-sweep";

/// Tenants asked of a store per round trip.
const TENANT_PAGE: usize = 100;
/// Ended legal obligations read per round trip.
const HOLD_PAGE: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepMode {
    /// The background schedule: only when the fleet's next sweep is due, under the lease.
    Scheduled,
    /// At once (`dsr sweep`, tests), under the lease.
    Now,
    /// What a sweep now would erase: counts only. No lease, no writes, no events.
    DryRun,
}

#[derive(Debug)]
pub enum SweepOutcome {
    Swept(SweepReport),
    /// Another sweeper holds the lease until then.
    Busy {
        until: DateTime<Utc>,
    },
    /// The scheduled sweep is not due until then.
    NotDue {
        next: DateTime<Utc>,
    },
}

pub struct Sweeper {
    ledger: Ledger,
    stores: StoreRegistry,
    clock: SharedClock,
    hasher: KeyedHasher,
    signals: Signals,
    schedule: RetentionSchedule,
    config: RetentionConfig,
    /// Who holds the lease: host, process and a random part.
    owner: String,
    metrics: Arc<Metrics>,
}

/// Why a sweep stopped before its end.
enum Halt {
    LeaseLost,
    Stopped,
}

impl Halt {
    fn describe(&self) -> &'static str {
        match self {
            Halt::LeaseLost => "the lease was lost to another sweeper",
            Halt::Stopped => "the process is shutting down",
        }
    }
}

impl Sweeper {
    pub fn new(
        ledger: Ledger,
        stores: StoreRegistry,
        clock: SharedClock,
        hasher: KeyedHasher,
        signals: Signals,
        config: &RetentionConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        Self {
            ledger,
            stores,
            clock,
            hasher,
            signals,
            schedule: config.schedule(),
            config: config.clone(),
            owner: format!(
                "{host}/{}/sweep-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            metrics,
        }
    }

    /// Sweeps whenever the fleet's next sweep is due (whichever replica gets the lease), until
    /// `stop`. Does nothing when `sweep_interval_secs` is 0.
    pub async fn run_until_stopped(self: Arc<Self>, stop: CancellationToken) {
        let interval = self.config.sweep_interval_secs;
        if interval == 0 {
            info!("retention sweep off (retention.sweep_interval_secs = 0)");
            return;
        }
        // Look often enough that a sweep is not late by much, rarely enough to cost nothing.
        let poll = Duration::from_secs(interval.clamp(1, 60));
        info!(interval_secs = interval, "retention sweep scheduled");
        while !stop.is_cancelled() {
            match self.sweep(SweepMode::Scheduled, &stop).await {
                Ok(_) => {}
                Err(e) => warn!(error = %e, "retention sweep failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// One sweep (see the module docs). Errors are the ledger's; a store's failure is in the
    /// report and the sweep goes on.
    pub async fn sweep(&self, mode: SweepMode, stop: &CancellationToken) -> anyhow::Result<SweepOutcome> {
        let started = self.clock.now();
        let dry_run = mode == SweepMode::DryRun;
        if !dry_run {
            let claim = self
                .ledger
                .claim_lease(
                    SWEEP_LEASE,
                    &self.owner,
                    self.config.lease(),
                    started,
                    mode == SweepMode::Scheduled,
                )
                .await?;
            match claim {
                LeaseClaim::Claimed => {}
                LeaseClaim::Busy { until } => return Ok(SweepOutcome::Busy { until }),
                LeaseClaim::NotDue { next } => return Ok(SweepOutcome::NotDue { next }),
            }
        }
        let clock_started = Instant::now();
        let mut run = Run {
            sweeper: self,
            stop,
            report: SweepReport::new(started, dry_run),
            last_renewal: Instant::now(),
        };
        let halted = match run.legal_holds().await {
            Ok(()) => run.stores().await.err(),
            Err(h) => Some(h),
        };
        let mut report = run.report;
        report.interrupted = halted.as_ref().map(|h| h.describe().to_owned());
        report.finished_at = self.clock.now();
        if dry_run {
            return Ok(SweepOutcome::Swept(report));
        }
        let closing = self.record_summary(&report).await;
        if !matches!(halted, Some(Halt::LeaseLost)) {
            // A sweep cut short leaves the schedule as it was: the next one is due at once.
            let next = (halted.is_none() && self.config.sweep_interval_secs > 0)
                .then(|| started + chrono::Duration::seconds(self.config.sweep_interval_secs as i64));
            if let Err(e) = self.ledger.release_named_lease(SWEEP_LEASE, &self.owner, next).await {
                warn!(error = %e, "could not give the sweep lease back; it will expire");
            }
        }
        self.count(&report, clock_started.elapsed());
        info!(
            erased = report.erased(),
            kept_on_hold = report.held(),
            legal_holds_ended = report.holds_ended,
            errors = report.errors.len() + report.units.iter().filter(|u| u.error.is_some()).count(),
            interrupted = report.interrupted.is_some(),
            duration_ms = clock_started.elapsed().as_millis() as u64,
            "retention sweep done"
        );
        closing?;
        Ok(SweepOutcome::Swept(report))
    }

    /// The sweep's metrics: per store (summed over tenants), and the sweep's result and time.
    fn count(&self, r: &SweepReport, took: Duration) {
        let mut per_store: Vec<(&str, u64, u64)> = Vec::new();
        for u in &r.units {
            match per_store.iter_mut().find(|(s, _, _)| *s == u.store) {
                Some(entry) => {
                    entry.1 += u.erased;
                    entry.2 += u.held;
                }
                None => per_store.push((&u.store, u.erased, u.held)),
            }
        }
        for (store, erased, held) in per_store {
            self.metrics.retention_swept(store, erased, held);
        }
        let result = match () {
            _ if r.interrupted.is_some() => "interrupted",
            _ if !r.is_clean() => "failed",
            _ => "clean",
        };
        self.metrics.retention_sweep(result, took, r.holds_ended);
    }

    async fn record_summary(&self, r: &SweepReport) -> anyhow::Result<()> {
        let errors = r.errors.len() + r.units.iter().filter(|u| u.error.is_some()).count();
        let detail = format!(
            "{} store/tenant pair(s) with expired records; {} kept under litigation hold; {} legal hold(s) ended, \
             {} waiting on a litigation hold; {errors} error(s); batch size {}{}",
            r.units.iter().filter(|u| u.expired > 0 || u.error.is_some()).count(),
            r.held(),
            r.holds_ended,
            r.holds_waiting,
            self.config.batch_size,
            r.interrupted.as_ref().map(|i| format!("; interrupted: {i}")).unwrap_or_default(),
        );
        self.ledger
            .record_event(
                NewEvent::global("retention_sweep")
                    .actor(SWEEP_ACTOR)
                    .counts(r.expired(), r.erased())
                    .detail(&detail),
                self.clock.now(),
            )
            .await?;
        Ok(())
    }

    /// The keyed hashes of the identifiers an expired record carries, as a subject's would be.
    fn record_tags(&self, tenant: &TenantId, r: &ExpiredRecord) -> Vec<String> {
        let mut tags = Vec::with_capacity(3);
        if let Some(a) = r.account_id.as_deref().and_then(|v| AccountId::parse("account_id", v).ok()) {
            tags.push(self.hasher.identifier_tag(tenant, IdentifierKind::Account, a.as_str()));
        }
        if let Some(e) = r.email.as_deref().and_then(|v| Email::parse("email", v).ok()) {
            tags.push(self.hasher.identifier_tag(tenant, IdentifierKind::Email, e.as_str()));
        }
        if let Some(p) = r.phone.as_deref().and_then(|v| Phone::parse("phone", v).ok()) {
            tags.push(self.hasher.identifier_tag(tenant, IdentifierKind::Phone, p.as_str()));
        }
        tags
    }
}

/// The state of one sweep.
struct Run<'a> {
    sweeper: &'a Sweeper,
    stop: &'a CancellationToken,
    report: SweepReport,
    last_renewal: Instant,
}

/// How erasing one store in one tenant ended.
enum Flow {
    Done,
    /// A litigation hold appeared in the tenant: go on record by record.
    HoldPlaced,
}

impl Run<'_> {
    fn batch(&self) -> usize {
        self.sweeper.config.batch_size
    }

    /// Between batches: stop if asked to, and keep the lease (renewed every third of it).
    async fn checkpoint(&mut self) -> Result<(), Halt> {
        if self.stop.is_cancelled() {
            return Err(Halt::Stopped);
        }
        if self.report.dry_run {
            return Ok(());
        }
        let lease = self.sweeper.config.lease();
        if self.last_renewal.elapsed() >= lease / 3 {
            let s = self.sweeper;
            match s.ledger.renew_named_lease(SWEEP_LEASE, &s.owner, lease, s.clock.now()).await {
                Ok(true) => self.last_renewal = Instant::now(),
                Ok(false) => return Err(Halt::LeaseLost),
                // Keep going: if the ledger stays away the lease expires and the next renewal
                // says so.
                Err(e) => warn!(error = %e, "renewing the sweep lease failed; will try again"),
            }
        }
        Ok(())
    }

    /// Step 1: legal obligations whose end has come.
    async fn legal_holds(&mut self) -> Result<(), Halt> {
        let s = self.sweeper;
        let now = self.report.started_at;
        let mut after = None;
        loop {
            let due = match s.ledger.due_legal_holds(now, after.as_ref(), HOLD_PAGE).await {
                Ok(due) => due,
                Err(e) => {
                    self.report.errors.push(format!("legal holds: {e}"));
                    return Ok(());
                }
            };
            let Some(last) = due.last() else { break };
            after = Some((last.until, last.id.clone()));
            for hold in &due {
                match s.ledger.litigation_hold_for(&hold.tenant_id, &hold.subject_tags).await {
                    Ok(Some(_)) => {
                        self.report.holds_waiting += 1;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.report.errors.push(format!("legal hold {}: {e}", hold.id));
                        continue;
                    }
                }
                if self.report.dry_run {
                    self.report.holds_ended += 1;
                    continue;
                }
                let Some(adapter) = s.stores.get(&hold.store).cloned() else {
                    self.report
                        .errors
                        .push(format!("legal hold {}: no adapter for store {}", hold.id, hold.store));
                    continue;
                };
                let Some(retention) = adapter.as_retention() else {
                    self.report.errors.push(format!(
                        "legal hold {}: the store {} erases nothing by key",
                        hold.id, hold.store
                    ));
                    continue;
                };
                let (mut erased, mut key) = (0, None::<String>);
                let failed = loop {
                    let keys = match s.ledger.hold_record_keys(&hold.id, key.as_deref(), self.batch()).await {
                        Ok(keys) => keys,
                        Err(e) => break Some(e.to_string()),
                    };
                    if keys.is_empty() {
                        break None;
                    }
                    match retention.erase_records(&hold.tenant_id, &keys).await {
                        Ok(n) => erased += n,
                        Err(e) => break Some(e.to_string()),
                    }
                    self.report.batches += 1;
                    key = keys.last().cloned();
                    self.checkpoint().await?;
                    if keys.len() < self.batch() {
                        break None;
                    }
                };
                if let Some(e) = failed {
                    warn!(hold = %hold.id, request_id = %hold.request_id, store = %hold.store, error = %e, "ending a legal hold failed; the next sweep tries again");
                    self.report.errors.push(format!("legal hold {} ({}): {e}", hold.id, hold.store));
                    continue;
                }
                match s.ledger.end_legal_hold(hold, erased, SWEEP_ACTOR, s.clock.now()).await {
                    Ok(true) => {
                        info!(request_id = %hold.request_id, tenant = %hold.tenant_id, store = %hold.store, erased, "legal hold ended; outcome done");
                        self.report.holds_ended += 1;
                        self.report.legal_erased += erased;
                        s.signals.request_changed(&hold.request_id);
                    }
                    Ok(false) => {}
                    Err(e) => self.report.errors.push(format!("legal hold {}: {e}", hold.id)),
                }
            }
            if due.len() < HOLD_PAGE {
                break;
            }
        }
        Ok(())
    }

    /// Step 2: every store with a period, every tenant it holds. A store that cannot list its
    /// tenants (a remote one) is visited in every tenant the others hold; a store without
    /// retention has nothing that expires.
    async fn stores(&mut self) -> Result<(), Halt> {
        let mut adapters: Vec<Arc<dyn StoreAdapter>> = self.sweeper.stores.all().to_vec();
        adapters.retain(|a| a.as_retention().is_some());
        adapters.sort_by_key(|a| a.stage());
        let mut seen: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let (listing, blind): (Vec<_>, Vec<_>) =
            adapters.into_iter().partition(|a| a.as_retention().is_some_and(|r| r.lists_tenants()));
        for adapter in listing {
            let Some(retention) = adapter.as_retention() else { continue };
            let mut after: Option<String> = None;
            loop {
                let tenants = match retention.tenants(after.as_deref(), TENANT_PAGE).await {
                    Ok(t) => t,
                    Err(e) => {
                        self.report.errors.push(format!("{}: listing tenants: {e}", adapter.name()));
                        break;
                    }
                };
                for tenant in &tenants {
                    self.unit(adapter.as_ref(), tenant).await?;
                }
                seen.extend(tenants.iter().cloned());
                if tenants.len() < TENANT_PAGE {
                    break;
                }
                after = tenants.last().cloned();
            }
        }
        for adapter in blind {
            for tenant in &seen {
                self.unit(adapter.as_ref(), tenant).await?;
            }
        }
        Ok(())
    }

    /// One store in one tenant.
    async fn unit(&mut self, adapter: &dyn StoreAdapter, tenant: &str) -> Result<(), Halt> {
        let Some(retention) = adapter.as_retention() else { return Ok(()) };
        let s = self.sweeper;
        let now = self.report.started_at;
        let (Some(period), Some(cutoff)) =
            (s.schedule.period(tenant, adapter.name()), s.schedule.cutoff(tenant, adapter.name(), now))
        else {
            return Ok(());
        };
        let expiry = Expiry { tenant, now, cutoff };
        let mut unit = SweepUnit::new(adapter.name(), tenant, cutoff, period);
        let outcome = match s.ledger.has_litigation_hold(tenant).await {
            Err(e) => Ok(Err(format!("reading litigation holds: {e}"))),
            Ok(false) => self.erase_all(retention, &expiry, &mut unit).await,
            Ok(true) => Ok(Ok(Flow::HoldPlaced)),
        };
        let outcome = match outcome {
            Ok(Ok(Flow::HoldPlaced)) => self.erase_unheld(retention, &expiry, &mut unit).await,
            other => other,
        };
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(store_error)) => unit.error = Some(store_error),
            Err(halt) => {
                let _ = self.close(unit).await;
                return Err(halt);
            }
        }
        self.close(unit).await
    }

    /// No litigation hold in the tenant: one statement per batch until none is left, or until
    /// a hold is placed.
    async fn erase_all(
        &mut self,
        adapter: &dyn Retention,
        expiry: &Expiry<'_>,
        unit: &mut SweepUnit,
    ) -> Result<Result<Flow, String>, Halt> {
        if self.report.dry_run {
            return Ok(adapter
                .count_expired(expiry)
                .await
                .map(|n| {
                    unit.expired = n;
                    Flow::Done
                })
                .map_err(|e| e.to_string()));
        }
        let s = self.sweeper;
        loop {
            let n = match adapter.erase_expired(expiry, self.batch()).await {
                Ok(n) => n,
                Err(e) => return Ok(Err(e.to_string())),
            };
            unit.expired += n;
            unit.erased += n;
            self.report.batches += 1;
            self.checkpoint().await?;
            if (n as usize) < self.batch() {
                return Ok(Ok(Flow::Done));
            }
            match s.ledger.has_litigation_hold(expiry.tenant).await {
                Ok(false) => {}
                Ok(true) => return Ok(Ok(Flow::HoldPlaced)),
                Err(e) => return Ok(Err(format!("reading litigation holds: {e}"))),
            }
        }
    }

    /// Litigation holds in the tenant: list the expired records in key order, keep those whose
    /// identifiers a hold covers (the holds read again for every batch), erase the rest by key.
    async fn erase_unheld(
        &mut self,
        adapter: &dyn Retention,
        expiry: &Expiry<'_>,
        unit: &mut SweepUnit,
    ) -> Result<Result<Flow, String>, Halt> {
        let Ok(tenant) = TenantId::parse("tenant", expiry.tenant) else {
            return Ok(Err("the tenant id does not parse; nothing erased while holds stand".into()));
        };
        let mut after: Option<String> = None;
        loop {
            let held = match self.sweeper.ledger.litigation_tags(expiry.tenant).await {
                Ok(tags) => tags,
                Err(e) => return Ok(Err(format!("reading litigation holds: {e}"))),
            };
            let batch = match adapter.list_expired(expiry, after.as_deref(), self.batch()).await {
                Ok(b) => b,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let Some(last) = batch.last() else { return Ok(Ok(Flow::Done)) };
            after = Some(last.key.clone());
            let (keep, go): (Vec<&ExpiredRecord>, Vec<&ExpiredRecord>) = batch
                .iter()
                .partition(|r| self.sweeper.record_tags(&tenant, r).iter().any(|t| held.contains(t)));
            unit.expired += batch.len() as u64;
            unit.held += keep.len() as u64;
            if !self.report.dry_run && !go.is_empty() {
                let keys: Vec<String> = go.iter().map(|r| r.key.clone()).collect();
                match adapter.erase_records(expiry.tenant, &keys).await {
                    Ok(n) => unit.erased += n,
                    Err(e) => return Ok(Err(e.to_string())),
                }
                self.report.batches += 1;
            }
            self.checkpoint().await?;
            if batch.len() < self.batch() {
                return Ok(Ok(Flow::Done));
            }
        }
    }

    /// Adds the unit to the report, with its event when it found anything or failed.
    async fn close(&mut self, unit: SweepUnit) -> Result<(), Halt> {
        if unit.expired > 0 || unit.error.is_some() {
            if let Some(e) = &unit.error {
                warn!(store = %unit.store, tenant = %unit.tenant, erased = unit.erased, error = %e, "retention sweep: store failed; the next sweep goes on");
            } else {
                info!(store = %unit.store, tenant = %unit.tenant, erased = unit.erased, kept_on_hold = unit.held, "retention sweep: expired records");
            }
            if !self.report.dry_run {
                let detail = unit.detail();
                let event = NewEvent::global("retention_swept")
                    .tenant(&unit.tenant)
                    .store(&unit.store, 0)
                    .actor(SWEEP_ACTOR)
                    .counts(unit.expired, unit.erased)
                    .detail(&detail);
                let s = self.sweeper;
                if let Err(e) = s.ledger.record_event(event, s.clock.now()).await {
                    self.report
                        .errors
                        .push(format!("recording the event of {} in {}: {e}", unit.store, unit.tenant));
                }
            }
        }
        self.report.units.push(unit);
        Ok(())
    }
}
