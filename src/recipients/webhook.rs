//! Webhooks after the Standard Webhooks convention: the CloudEvent as the body
//! (`application/cloudevents+json`), `webhook-id` = the event id, `webhook-timestamp` = now, and
//! `webhook-signature` over both and the body. A 2xx is the acknowledgement.
use std::time::Duration;

use super::{
    config::RecipientEntry,
    signature::{secret_key, sign},
    transport::{SendError, Transport},
};

pub struct Webhook {
    name: String,
    url: String,
    entry: RecipientEntry,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(entry: &RecipientEntry, timeout: Duration) -> anyhow::Result<Self> {
        crate::startup::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // A redirect would send the signed event somewhere the catalog does not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        // The secret is read now so a missing one stops the start, and again at every send so a
        // rotated Secret is used without a restart.
        secret_key(&entry.secret()?)
            .map_err(|e| anyhow::anyhow!("catalog.{}: the webhook secret: {e}", entry.name))?;
        Ok(Self { name: entry.name.clone(), url: entry.url.clone(), entry: entry.clone(), client })
    }
}

#[async_trait::async_trait]
impl Transport for Webhook {
    async fn send(&self, id: &str, body: &[u8]) -> Result<(), SendError> {
        let secret = self.entry.secret().map_err(|e| SendError::Transient(format!("{e:#}")))?;
        let key = secret_key(&secret)
            .map_err(|e| SendError::Transient(format!("catalog.{}: the webhook secret: {e}", self.name)))?;
        let timestamp = chrono::Utc::now().timestamp();
        let res = self
            .client
            .post(&self.url)
            .header("content-type", "application/cloudevents+json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sign(&key, id, timestamp, body))
            .body(body.to_vec())
            .send()
            .await
            // Without the URL: it may carry a token.
            .map_err(|e| SendError::Transient(format!("webhook: {}", e.without_url())))?;
        let status = res.status();
        match status.as_u16() {
            200..=299 => Ok(()),
            408 | 425 | 429 => Err(SendError::Transient(format!("webhook answered {status}"))),
            400..=499 => Err(SendError::Refused(format!("webhook answered {status}"))),
            _ => Err(SendError::Transient(format!("webhook answered {status}"))),
        }
    }
}
