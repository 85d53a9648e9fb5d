//! Keeps an eye on the stores while serving: every `[stores] check_interval_secs` each store is
//! checked against its live schema (which also proves it reachable). The result shows in gRPC
//! health under the service name `dsr.store.<name>` and in the `dsr_store_up{store}` gauge, and a
//! change is logged at WARN (down) or INFO (back) — not only when a task fails.
use std::{collections::HashMap, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic_health::{server::HealthReporter, ServingStatus};
use tracing::{info, warn};

use super::StoreRegistry;
use crate::metrics::Metrics;

/// The health service name of a store.
pub fn health_name(store: &str) -> String {
    format!("dsr.store.{store}")
}

/// Checks the stores every `interval` until `stop`.
pub async fn watch_until_stopped(
    stores: StoreRegistry,
    health: HealthReporter,
    metrics: std::sync::Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut last: HashMap<&'static str, bool> = HashMap::new();
    loop {
        for a in stores.all() {
            let problems = a.check_schema().await;
            let up = problems.is_empty();
            let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_service_status(health_name(a.name()), status).await;
            metrics.store_up(a.name(), up);
            match (last.insert(a.name(), up), up) {
                (Some(true) | None, false) => {
                    warn!(store = a.name(), problems = %problems.join("; "), "store unreachable or mismatched")
                }
                (Some(false), true) => info!(store = a.name(), "store back"),
                _ => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
