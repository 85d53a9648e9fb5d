//! The dispatcher: claims due deliveries from the outbox under a lease (so two replicas never
//! send one event at once), sends each as a CloudEvent over its recipient's transport, and
//! records the result fenced on the attempt — acknowledged, retry later (exponential backoff
//! with jitter), or given up. A dispatcher that dies mid-send simply lets its lease expire: the
//! next one sends the event again under the same id, so receivers see it at least once and can
//! drop the repeat.
use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    config::RecipientsConfig,
    event::{cloud_event, EventContext},
    transport::{self, SendError, Transport},
};
use crate::{
    clock::SharedClock,
    engine::{Backoff, Signals},
    ledger::{ClaimedDelivery, DeliveryEnd, DeliveryFenced, Ledger},
    metrics::Metrics,
};

pub struct Dispatcher {
    ledger: Ledger,
    transports: HashMap<String, Arc<dyn Transport>>,
    config: RecipientsConfig,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Wakes this process's watchers when a delivery changed a request.
    signals: Signals,
    /// Who holds a lease: host, process and a random part (a restarted process is another owner).
    owner: String,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub claimed: usize,
    pub acknowledged: usize,
}

impl Dispatcher {
    pub fn new(
        ledger: Ledger,
        config: &RecipientsConfig,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        signals: Signals,
    ) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let transports = config
            .entries
            .iter()
            .map(|e| Ok((e.name.clone(), transport::for_entry(e, timeout)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self::with_transports(ledger, config, clock, metrics, signals, transports))
    }

    /// With transports given (tests substitute their own).
    pub fn with_transports(
        ledger: Ledger,
        config: &RecipientsConfig,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        signals: Signals,
        transports: HashMap<String, Arc<dyn Transport>>,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        let owner =
            format!("{host}/{}/{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Self { ledger, transports, config: config.clone(), clock, metrics, signals, owner }
    }

    /// Delivers until `shutdown`. A round that found work is followed at once by the next; an
    /// idle one waits `poll_interval_ms`. A round in flight at shutdown finishes (each send is
    /// bounded by `timeout_secs`), so its results are recorded rather than resent.
    pub async fn run_until_stopped(self: Arc<Self>, shutdown: CancellationToken) {
        info!(owner = %self.owner, recipients = self.transports.len(), "recipient dispatcher started");
        let idle = Duration::from_millis(self.config.poll_interval_ms);
        while !shutdown.is_cancelled() {
            let wait = match self.round().await {
                Ok(r) if r.claimed > 0 => continue,
                Ok(_) => idle,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "recipient dispatcher: the ledger failed; trying again");
                    idle.max(Duration::from_secs(1))
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims one batch of due deliveries and sends them concurrently.
    pub async fn round(&self) -> anyhow::Result<Round> {
        let now = self.clock.now();
        let claimed =
            self.ledger.claim_deliveries(&self.owner, self.config.lease(), self.config.batch, now).await?;
        let results = join_all(claimed.iter().map(|d| self.deliver(d))).await;
        let mut round = Round { claimed: claimed.len(), acknowledged: 0 };
        for r in results {
            round.acknowledged += usize::from(r?);
        }
        Ok(round)
    }

    /// Sends one event and records how it went; `true` when acknowledged.
    async fn deliver(&self, d: &ClaimedDelivery) -> anyhow::Result<bool> {
        let ctx = EventContext {
            id: &d.id,
            request_id: &d.request_id,
            tenant_id: &d.tenant_id,
            kind: d.kind,
            recipient: &d.recipient,
            time: d.armed_at,
            restricted: &d.restricted,
            restriction_only: d.restriction_only,
            data_json: &d.data_json,
        };
        let sent = match self.transports.get(&d.recipient) {
            None => Err(SendError::Transient(format!(
                "the recipient {:?} is no longer in the catalog: add it back, then `dsr recipients retry`",
                d.recipient
            ))),
            Some(t) => match cloud_event(&ctx) {
                Ok(body) => {
                    let limit = Duration::from_secs(self.config.timeout_secs);
                    tokio::time::timeout(limit, t.send(&d.id, &body))
                        .await
                        .unwrap_or_else(|_| Err(SendError::Transient("no acknowledgement in time".into())))
                }
                Err(e) => Err(SendError::Refused(format!("the event could not be built: {e}"))),
            },
        };
        let now = self.clock.now();
        let (end, result) = match sent {
            Ok(()) => (DeliveryEnd::Acknowledged, "done"),
            Err(e) => {
                let refused = matches!(e, SendError::Refused(_));
                let refusals = if refused { d.failures + 1 } else { 0 };
                if refused && refusals >= self.config.permanent_failures {
                    let error = format!("refused {refusals} times in a row; last: {e}");
                    (DeliveryEnd::GiveUp { error }, "failed")
                } else if now >= d.give_up_at {
                    let waited = (d.give_up_at - d.armed_at).num_seconds();
                    let error =
                        format!("not acknowledged within {waited} s ({} attempts); last: {e}", d.attempt);
                    (DeliveryEnd::GiveUp { error }, "failed")
                } else {
                    let backoff = Backoff {
                        base: Duration::from_millis(self.config.backoff_base_ms),
                        max: Duration::from_millis(self.config.backoff_max_ms),
                    };
                    let delay = backoff.delay(d.attempt, &mut rand::rng());
                    let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
                    (
                        DeliveryEnd::Retry { error: e.to_string(), at, refused },
                        if refused { "refused" } else { "retry" },
                    )
                }
            }
        };
        let fenced = self.ledger.end_delivery(d, &end, now).await?;
        let result = if fenced == DeliveryFenced::Stale { "stale" } else { result };
        if let DeliveryFenced::Applied(Some(status)) = fenced {
            self.signals.request_changed(&d.request_id);
            if status.is_terminal() {
                self.metrics.request_ended(d.kind, status);
            }
        }
        self.metrics.recipient_delivery(&d.recipient, result);
        match &end {
            DeliveryEnd::GiveUp { error } => warn!(
                event_id = %d.id, request_id = %d.request_id, recipient = %d.recipient, attempt = d.attempt,
                error = %error, "recipient delivery given up"
            ),
            DeliveryEnd::Retry { error, .. } => info!(
                event_id = %d.id, request_id = %d.request_id, recipient = %d.recipient, attempt = d.attempt,
                error = %error, "recipient delivery failed; will retry"
            ),
            DeliveryEnd::Acknowledged => info!(
                event_id = %d.id, request_id = %d.request_id, recipient = %d.recipient, attempt = d.attempt,
                result, "recipient acknowledged"
            ),
        }
        Ok(result == "done")
    }
}
