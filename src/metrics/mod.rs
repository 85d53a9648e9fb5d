//! Metrics, in the Prometheus/OpenMetrics text format on `[metrics] listen` (`/metrics`).
//!
//! Two kinds: what this process counts as it works (`Metrics`: submissions, ends, task
//! durations, retries, RPCs), and what the ledger says when Prometheus scrapes (`scrape`:
//! outstanding requests against their deadlines, queue depth and age) — so every replica
//! reports the same deadline numbers and a restart loses nothing.
//!
//! Labels are bounded sets only: kind, status, store, outcome, gRPC method and code. No tenant
//! label: tenants are unbounded (thousands of series per metric on a platform), and the
//! question "which requests" is answered by `dsr list --overdue` / ListRequests, not by a
//! time series. Nothing about a subject is ever a label.

mod format;
mod scrape;
mod server;

use std::time::Duration;

use prometheus_client::{
    encoding::{text::encode_registry, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub use format::{to_prometheus_text, wants_openmetrics};
pub use scrape::{LedgerGauges, DUE_SOON_DAYS};
pub use server::{MetricsEndpoint, CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};

use crate::domain::{RequestKind, RequestStatus};

/// Store calls take milliseconds to minutes (a recording prefix with thousands of objects).
const TASK_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Unary RPCs are milliseconds; WatchRequest streams last as long as the request.
const RPC_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindStatusLabels {
    kind: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    store: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecipientLabels {
    recipient: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecipientNameLabels {
    recipient: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SweepLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// How one store task attempt ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// The store reported an outcome (done, retained, skipped…).
    Outcome(crate::domain::OutcomeState),
    /// A transient failure; another attempt is scheduled.
    Retry,
    /// Failed for good.
    Failed,
    /// The lease went to another worker; this attempt's result was dropped.
    Abandoned,
}

impl TaskEnd {
    pub fn label(self) -> &'static str {
        match self {
            TaskEnd::Outcome(state) => state.as_str(),
            TaskEnd::Retry => "retry",
            TaskEnd::Failed => "failed",
            TaskEnd::Abandoned => "abandoned",
        }
    }
}

/// What this process counts. Cheap to update (atomics behind a read lock per label set).
pub struct Metrics {
    registry: Registry,
    submitted: Family<KindLabels, Counter>,
    ended: Family<KindStatusLabels, Counter>,
    retries: Family<StoreLabels, Counter>,
    task_duration: HistogramFamily<TaskLabels>,
    rpc_duration: HistogramFamily<RpcLabels>,
    retention_erased: Family<StoreLabels, Counter>,
    retention_held: Family<StoreLabels, Counter>,
    sweeps: HistogramFamily<SweepLabels>,
    legal_holds_ended: Counter,
    store_up: Family<StoreLabels, Gauge>,
    deliveries: Family<RecipientLabels, Counter>,
    dead_letters: Family<RecipientNameLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dsr");
        let submitted = Family::<KindLabels, Counter>::default();
        registry.register(
            "requests_submitted",
            "Requests accepted (an idempotent resubmission is not counted again)",
            submitted.clone(),
        );
        let ended = Family::<KindStatusLabels, Counter>::default();
        registry.register(
            "requests_ended",
            "Requests that reached a terminal status (completed, failed, cancelled); a retried FAILED request ends again",
            ended.clone(),
        );
        let retries = Family::<StoreLabels, Counter>::default();
        registry.register(
            "task_retries",
            "Store task attempts that failed transiently and were scheduled again",
            retries.clone(),
        );
        let task_duration: HistogramFamily<TaskLabels> =
            Family::new_with_constructor(|| Histogram::new(TASK_BUCKETS));
        registry.register(
            "task_duration_seconds",
            "Duration of one store task attempt, by store and outcome (done, retained, skipped, retry, failed, abandoned)",
            task_duration.clone(),
        );
        let rpc_duration: HistogramFamily<RpcLabels> =
            Family::new_with_constructor(|| Histogram::new(RPC_BUCKETS));
        registry.register(
            "rpc_duration_seconds",
            "gRPC server calls by method and status code, until the last response message",
            rpc_duration.clone(),
        );
        let retention_erased = Family::<StoreLabels, Counter>::default();
        registry.register(
            "retention_records_erased",
            "Records the retention sweep erased because their period was over (legal holds' included)",
            retention_erased.clone(),
        );
        let retention_held = Family::<StoreLabels, Counter>::default();
        registry.register(
            "retention_records_held",
            "Records past their period that a sweep kept because a litigation hold covers them (counted per sweep)",
            retention_held.clone(),
        );
        let sweeps: HistogramFamily<SweepLabels> =
            Family::new_with_constructor(|| Histogram::new(TASK_BUCKETS));
        registry.register(
            "retention_sweep_duration_seconds",
            "Retention sweeps this process ran, by result (clean, failed: a store or hold failed, interrupted)",
            sweeps.clone(),
        );
        let legal_holds_ended = Counter::default();
        registry.register(
            "retention_legal_holds_ended",
            "Legal obligations (a deletion's billing hold) that ended: records erased, outcome DONE",
            legal_holds_ended.clone(),
        );
        let store_up = Family::<StoreLabels, Gauge>::default();
        registry.register(
            "store_up",
            "Whether each store was reachable and matched its catalog entry at the last check (1) or not (0)",
            store_up.clone(),
        );
        let deliveries = Family::<RecipientLabels, Counter>::default();
        registry.register(
            "recipient_deliveries",
            "Recipient delivery attempts (GDPR Art. 19) by recipient and result (done, retry, refused, failed, stale)",
            deliveries.clone(),
        );
        let dead_letters = Family::<RecipientNameLabels, Counter>::default();
        registry.register(
            "recipient_gave_up",
            "Recipient deliveries this process gave up on (FAILED, a dead letter): alert on any increase",
            dead_letters.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "The running version of dsr (always 1)", build);
        Self {
            registry,
            submitted,
            ended,
            retries,
            task_duration,
            rpc_duration,
            retention_erased,
            retention_held,
            sweeps,
            legal_holds_ended,
            store_up,
            deliveries,
            dead_letters,
        }
    }

    /// One delivery attempt to a recipient ended: `done`, `retry`, `refused`, `failed` (given
    /// up) or `stale` (its lease had gone to another dispatcher).
    pub fn recipient_delivery(&self, recipient: &str, result: &'static str) {
        self.deliveries.get_or_create(&RecipientLabels { recipient: recipient.to_owned(), result }).inc();
        if result == "failed" {
            self.dead_letters.get_or_create(&RecipientNameLabels { recipient: recipient.to_owned() }).inc();
        }
    }

    pub fn store_up(&self, store: &str, up: bool) {
        self.store_up.get_or_create(&StoreLabels { store: store.to_owned() }).set(i64::from(up));
    }

    pub fn request_submitted(&self, kind: RequestKind) {
        self.submitted.get_or_create(&KindLabels { kind: kind.as_str() }).inc();
    }

    /// A request reached `status`; call only on the transition (the ledger reports it once).
    pub fn request_ended(&self, kind: RequestKind, status: RequestStatus) {
        self.ended.get_or_create(&KindStatusLabels { kind: kind.as_str(), status: status.as_str() }).inc();
    }

    pub fn task_attempt(&self, store: &str, end: TaskEnd, took: Duration) {
        self.task_duration
            .get_or_create(&TaskLabels { store: store.to_owned(), outcome: end.label() })
            .observe(took.as_secs_f64());
        if end == TaskEnd::Retry {
            self.retries.get_or_create(&StoreLabels { store: store.to_owned() }).inc();
        }
    }

    /// `method` and `code` come from `crate::telemetry::grpc`'s closed sets.
    pub fn rpc_finished(&self, method: &'static str, code: &'static str, took: Duration) {
        self.rpc_duration.get_or_create(&RpcLabels { method, code }).observe(took.as_secs_f64());
    }

    /// What a retention sweep did in one store (summed over tenants: no tenant label).
    pub fn retention_swept(&self, store: &str, erased: u64, held: u64) {
        let labels = StoreLabels { store: store.to_owned() };
        self.retention_erased.get_or_create(&labels).inc_by(erased);
        self.retention_held.get_or_create(&labels).inc_by(held);
    }

    /// A retention sweep ended: `result` is `clean`, `failed` or `interrupted`.
    pub fn retention_sweep(&self, result: &'static str, took: Duration, legal_holds_ended: u64) {
        self.sweeps.get_or_create(&SweepLabels { result }).observe(took.as_secs_f64());
        self.legal_holds_ended.inc_by(legal_holds_ended);
    }

    /// Appends this process's metrics to an exposition (without the closing `# EOF`).
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        encode_registry(out, &self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OutcomeState;

    #[test]
    fn labels_are_closed_sets_of_plain_words() {
        let m = Metrics::new();
        m.request_submitted(RequestKind::Deletion);
        m.request_ended(RequestKind::Deletion, RequestStatus::Completed);
        m.task_attempt("recordings", TaskEnd::Outcome(OutcomeState::Retained), Duration::from_millis(30));
        m.task_attempt("recordings", TaskEnd::Retry, Duration::from_millis(3));
        m.rpc_finished("dsr.v1.DataSubjectRights/SubmitDeletion", "OK", Duration::from_millis(2));
        m.retention_swept("call_logs", 7, 2);
        m.retention_sweep("clean", Duration::from_millis(40), 1);
        let mut out = String::new();
        m.encode(&mut out).unwrap();
        for line in [
            "dsr_retention_records_erased_total{store=\"call_logs\"} 7",
            "dsr_retention_records_held_total{store=\"call_logs\"} 2",
            "dsr_retention_sweep_duration_seconds_count{result=\"clean\"} 1",
            "dsr_retention_legal_holds_ended_total 1",
            "dsr_requests_submitted_total{kind=\"deletion\"} 1",
            "dsr_requests_ended_total{kind=\"deletion\",status=\"completed\"} 1",
            "dsr_task_retries_total{store=\"recordings\"} 1",
            "dsr_task_duration_seconds_count{store=\"recordings\",outcome=\"retained\"} 1",
            "dsr_task_duration_seconds_count{store=\"recordings\",outcome=\"retry\"} 1",
            "dsr_rpc_duration_seconds_count{method=\"dsr.v1.DataSubjectRights/SubmitDeletion\",code=\"OK\"} 1",
            &format!("dsr_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }

    /// Every series name a scrape can show (samples, not just families).
    fn exposed_names() -> std::collections::BTreeSet<String> {
        let m = Metrics::new();
        m.request_submitted(RequestKind::Deletion);
        m.request_ended(RequestKind::Deletion, RequestStatus::Completed);
        m.task_attempt("accounts", TaskEnd::Retry, Duration::from_millis(1));
        m.rpc_finished("dsr.v1.DataSubjectRights/GetRequest", "OK", Duration::from_millis(1));
        let gauges = LedgerGauges {
            queues: vec![("accounts".into(), crate::ledger::QueueCounts::default())],
            ..Default::default()
        };
        let mut out = String::new();
        m.encode(&mut out).unwrap();
        LedgerGauges::encode(Some(&gauges), &mut out).unwrap();
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_dashboard_names_only_metrics_the_service_exposes() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../helm/dsr/dashboards/dsr.json")).unwrap();
        let exprs: Vec<&str> = dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .filter_map(|t| t["expr"].as_str())
            .collect();
        assert!(exprs.len() > 10);
        let exposed = exposed_names();
        let mut used = std::collections::BTreeSet::new();
        for expr in exprs {
            for (at, _) in expr.match_indices("dsr_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                assert!(
                    exposed.contains(&name),
                    "the dashboard queries {name}, which dsr does not expose: {exposed:?}"
                );
                used.insert(name);
            }
        }
        for needed in
            ["dsr_requests_past_deadline", "dsr_requests_due_soon", "dsr_task_duration_seconds_bucket"]
        {
            assert!(used.contains(needed), "the dashboard shows {needed}");
        }
    }

    #[test]
    fn every_task_end_has_its_own_outcome_label() {
        let mut labels: Vec<_> = OutcomeState::ALL.iter().map(|s| TaskEnd::Outcome(*s).label()).collect();
        labels.extend([TaskEnd::Retry, TaskEnd::Failed, TaskEnd::Abandoned].map(TaskEnd::label));
        // `failed` is both an outcome state and the give-up end: the same meaning, one label.
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), OutcomeState::ALL.len() + 2);
    }
}
