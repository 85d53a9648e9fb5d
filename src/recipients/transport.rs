//! How an event reaches a recipient: a small trait with two implementations, a Standard Webhooks
//! POST (`webhook`) and a JetStream publish (`nats`). A send succeeds only on the recipient's
//! acknowledgement; its error says whether trying again can help.
use std::sync::Arc;

use super::config::{RecipientEntry, TransportKind};

/// Why a send did not succeed. Messages never hold the event's body (personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// A timeout, a connection error, a 5xx, 408 or 429: try again later.
    #[error("{0}")]
    Transient(String),
    /// The recipient refused the event (a 4xx): repeated `permanent_failures` times, the
    /// delivery ends FAILED before the give-up.
    #[error("{0}")]
    Refused(String),
}

#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// Delivers one event (`id` is its CloudEvents id, `body` its JSON); `Ok` once the recipient
    /// acknowledged it. Sending the same id again must be harmless: receivers deduplicate by it.
    async fn send(&self, id: &str, body: &[u8]) -> Result<(), SendError>;
}

/// The transport a catalog entry names.
pub fn for_entry(entry: &RecipientEntry, timeout: std::time::Duration) -> anyhow::Result<Arc<dyn Transport>> {
    Ok(match entry.transport {
        TransportKind::Webhook => Arc::new(super::webhook::Webhook::new(entry, timeout)?),
        TransportKind::Nats => Arc::new(super::nats::Nats::new(entry, timeout)),
    })
}
