//! The gauges read from the ledger at scrape time: outstanding requests against their
//! deadlines (the numbers a privacy team pages on) and each store's queue. Every combination
//! of kind × status and every store is written, zeros included, so an alert on
//! `dsr_requests_past_deadline > 0` never confuses "none" with "not reported".
use std::{sync::atomic::AtomicU64, time::Duration};

use chrono::{DateTime, Utc};
use prometheus_client::{
    encoding::{text::encode_registry, EncodeLabelSet},
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    domain::RequestKind,
    ledger::{DeadlineCounts, Ledger, OutboxStats, QueueCounts, OUTSTANDING},
};

/// The "due soon" windows, in days: tomorrow's deadlines, and next week's.
pub const DUE_SOON_DAYS: [u32; 2] = [1, 7];

/// A scrape waits at most this long for the ledger; Prometheus' default timeout is 10 s.
const LEDGER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindStatusLabels {
    kind: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DueSoonLabels {
    kind: &'static str,
    status: &'static str,
    within_days: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreStateLabels {
    store: String,
    state: &'static str,
}

/// What the ledger said at one scrape.
#[derive(Debug, Clone, Default)]
pub struct LedgerGauges {
    pub at: DateTime<Utc>,
    pub deadlines: Vec<DeadlineCounts>,
    pub queues: Vec<(String, QueueCounts)>,
    /// The recipients' outbox (GDPR Art. 19).
    pub outbox: OutboxStats,
}

impl LedgerGauges {
    /// Reads the ledger, or `None` when it fails or is slower than `LEDGER_TIMEOUT` (the
    /// scrape then reports `dsr_ledger_up 0` instead of stale or partial numbers).
    pub async fn read(ledger: &Ledger, stores: &[String], now: DateTime<Utc>) -> Option<Self> {
        let windows: Vec<_> = DUE_SOON_DAYS.iter().map(|d| chrono::Duration::days((*d).into())).collect();
        let read = async {
            let deadlines = ledger.deadline_counts(now, &windows).await?;
            let mut queues = Vec::with_capacity(stores.len());
            for store in stores {
                queues.push((store.clone(), ledger.queue_counts(store, now).await?));
            }
            let outbox = ledger.outbox_stats(now).await?;
            Ok::<_, crate::ledger::LedgerError>(Self { at: now, deadlines, queues, outbox })
        };
        match tokio::time::timeout(LEDGER_TIMEOUT, read).await {
            Ok(Ok(gauges)) => Some(gauges),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: reading the ledger failed");
                None
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = LEDGER_TIMEOUT.as_millis() as u64,
                    "metrics: the ledger did not answer in time"
                );
                None
            }
        }
    }

    /// Appends the gauges to an exposition; `gauges` is `None` when the ledger could not be read.
    pub fn encode(gauges: Option<&Self>, out: &mut String) -> std::fmt::Result {
        let mut registry = Registry::with_prefix("dsr");
        let up = Gauge::<i64>::default();
        up.set(gauges.is_some() as i64);
        registry.register(
            "ledger_up",
            "1 when this scrape could read the ledger; the gauges below are missing otherwise",
            up,
        );
        if let Some(g) = gauges {
            g.register(&mut registry);
        }
        encode_registry(out, &registry)
    }

    fn register(&self, registry: &mut Registry) {
        let outstanding = Family::<KindStatusLabels, Gauge>::default();
        let past = Family::<KindStatusLabels, Gauge>::default();
        let paused = Family::<KindStatusLabels, Gauge>::default();
        let soon = Family::<DueSoonLabels, Gauge>::default();
        // Kinds × outstanding statuses, zeros included.
        for kind in RequestKind::ALL {
            for status in OUTSTANDING {
                let labels = KindStatusLabels { kind: kind.as_str(), status: status.as_str() };
                let found = self.deadlines.iter().find(|d| d.kind == *kind && d.status == status);
                outstanding.get_or_create(&labels).set(found.map_or(0, |d| d.outstanding as i64));
                past.get_or_create(&labels).set(found.map_or(0, |d| d.past_deadline as i64));
                paused.get_or_create(&labels).set(found.map_or(0, |d| d.paused_by_hold as i64));
                for (i, days) in DUE_SOON_DAYS.iter().enumerate() {
                    let n = found.and_then(|d| d.due_within.get(i)).copied().unwrap_or(0);
                    soon.get_or_create(&DueSoonLabels {
                        kind: labels.kind,
                        status: labels.status,
                        within_days: days.to_string(),
                    })
                    .set(n as i64);
                }
            }
        }
        registry.register(
            "requests_outstanding",
            "Requests still owed an answer (pending, in progress, or failed and not retried), from the ledger",
            outstanding,
        );
        registry.register(
            "requests_past_deadline",
            "Outstanding requests whose legal deadline has passed, from the ledger: page on this (a request kept by a litigation hold is paused, not counted)",
            past,
        );
        registry.register(
            "requests_paused_by_hold",
            "Outstanding requests whose erasure waits for a litigation hold's release, from the ledger (not counted as past deadline or due soon)",
            paused,
        );
        registry.register(
            "requests_due_soon",
            "Outstanding requests not yet past their deadline that fall due within `within_days` days, from the ledger",
            soon,
        );

        let depth = Family::<StoreLabels, Gauge>::default();
        let age = Family::<StoreLabels, Gauge<f64, AtomicU64>>::default();
        let open = Family::<StoreStateLabels, Gauge>::default();
        for (store, q) in &self.queues {
            let labels = StoreLabels { store: store.clone() };
            depth.get_or_create(&labels).set(q.due as i64);
            let waited =
                q.oldest_due_at.map_or(0.0, |t| (self.at - t).num_milliseconds().max(0) as f64 / 1000.0);
            age.get_or_create(&labels).set(waited);
            for (state, n) in [("pending", q.pending), ("running", q.running)] {
                open.get_or_create(&StoreStateLabels { store: store.clone(), state }).set(n as i64);
            }
        }
        registry.register(
            "queue_depth",
            "Store tasks due now that no worker has claimed yet, from the ledger",
            depth,
        );
        registry.register(
            "queue_oldest_age_seconds",
            "How long the longest-waiting due task of the store has waited for a worker (0 when none), from the ledger",
            age,
        );
        registry.register(
            "tasks_open",
            "Store tasks not ended: pending (due, in backoff, or behind an earlier stage) and running, from the ledger",
            open,
        );
        let gauge = |v: i64| {
            let g = Gauge::<i64>::default();
            g.set(v);
            g
        };
        registry.register(
            "outbox_pending",
            "Recipient events (GDPR Art. 19) due or being delivered, from the ledger",
            gauge(self.outbox.pending as i64),
        );
        let oldest = Gauge::<f64, AtomicU64>::default();
        oldest.set(self.outbox.oldest_age);
        registry.register(
            "outbox_oldest_age_seconds",
            "How long the oldest undelivered recipient event has waited since its request's work ended (0 when none), from the ledger",
            oldest,
        );
        registry.register(
            "recipient_dead_letters",
            "Recipient deliveries given up (FAILED) and not retried, from the ledger: alert on this; `dsr recipients retry` re-drives them",
            gauge(self.outbox.dead_letters as i64),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RequestStatus;

    fn sample() -> LedgerGauges {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        LedgerGauges {
            at,
            deadlines: vec![DeadlineCounts {
                kind: RequestKind::Deletion,
                status: RequestStatus::Pending,
                outstanding: 4,
                past_deadline: 1,
                due_within: vec![2, 3],
                paused_by_hold: 0,
            }],
            queues: vec![(
                "recordings".into(),
                QueueCounts {
                    pending: 5,
                    running: 1,
                    due: 2,
                    oldest_due_at: Some(at - chrono::Duration::seconds(90)),
                },
            )],
            outbox: OutboxStats { pending: 1, oldest_age: 12.5, dead_letters: 0 },
        }
    }

    #[test]
    fn every_kind_and_status_is_reported_with_zeros_where_the_ledger_has_none() {
        let mut out = String::new();
        LedgerGauges::encode(Some(&sample()), &mut out).unwrap();
        let has = |l: &str| out.lines().any(|x| x == l);
        assert!(has("dsr_ledger_up 1"), "{out}");
        assert!(has("dsr_requests_outstanding{kind=\"deletion\",status=\"pending\"} 4"), "{out}");
        assert!(has("dsr_requests_past_deadline{kind=\"deletion\",status=\"pending\"} 1"), "{out}");
        assert!(has("dsr_requests_past_deadline{kind=\"rectification\",status=\"failed\"} 0"), "{out}");
        assert!(
            has("dsr_requests_due_soon{kind=\"deletion\",status=\"pending\",within_days=\"1\"} 2"),
            "{out}"
        );
        assert!(
            has("dsr_requests_due_soon{kind=\"deletion\",status=\"pending\",within_days=\"7\"} 3"),
            "{out}"
        );
        assert!(has("dsr_queue_depth{store=\"recordings\"} 2"), "{out}");
        assert!(has("dsr_queue_oldest_age_seconds{store=\"recordings\"} 90.0"), "{out}");
        assert!(has("dsr_tasks_open{store=\"recordings\",state=\"running\"} 1"), "{out}");
        let series = out.lines().filter(|l| l.starts_with("dsr_requests_past_deadline{")).count();
        assert_eq!(series, RequestKind::ALL.len() * OUTSTANDING.len());
    }

    #[test]
    fn a_ledger_that_cannot_be_read_is_reported_not_guessed() {
        let mut out = String::new();
        LedgerGauges::encode(None, &mut out).unwrap();
        assert!(out.lines().any(|l| l == "dsr_ledger_up 0"), "{out}");
        assert!(!out.contains("dsr_requests_past_deadline{"), "{out}");
    }
}
