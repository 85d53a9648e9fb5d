//! NATS JetStream: the event is published with `Nats-Msg-Id` = its id, so the stream drops a
//! resend within its duplicate window, and the send succeeds only on the stream's publish
//! acknowledgement. The connection is made on first use and kept; the stream is the
//! recipient's (dsr does not create it).
use std::time::Duration;

use tokio::sync::Mutex;

use super::{
    config::RecipientEntry,
    transport::{SendError, Transport},
};

pub struct Nats {
    url: String,
    subject: String,
    timeout: Duration,
    context: Mutex<Option<async_nats::jetstream::Context>>,
}

impl Nats {
    pub fn new(entry: &RecipientEntry, timeout: Duration) -> Self {
        Self {
            url: entry.url.clone(),
            subject: entry.subject.clone().unwrap_or_default(),
            timeout,
            context: Mutex::new(None),
        }
    }

    async fn context(&self) -> Result<async_nats::jetstream::Context, SendError> {
        let mut slot = self.context.lock().await;
        if let Some(ctx) = slot.as_ref() {
            return Ok(ctx.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(self.timeout)
            .connect(self.url.as_str())
            .await
            .map_err(|e| SendError::Transient(format!("nats: connect: {e}")))?;
        let mut ctx = async_nats::jetstream::new(client);
        ctx.set_timeout(self.timeout);
        *slot = Some(ctx.clone());
        Ok(ctx)
    }
}

#[async_trait::async_trait]
impl Transport for Nats {
    async fn send(&self, id: &str, body: &[u8]) -> Result<(), SendError> {
        let ctx = self.context().await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        headers.insert("Content-Type", "application/cloudevents+json");
        let ack = ctx
            .publish_with_headers(self.subject.clone(), headers, bytes::Bytes::copy_from_slice(body))
            .await
            .map_err(|e| SendError::Transient(format!("nats: publish: {e}")))?;
        // No stream on the subject answers "no responders": transient, an operator may add it.
        tokio::time::timeout(self.timeout, ack)
            .await
            .map_err(|_| SendError::Transient("nats: no publish acknowledgement in time".into()))?
            .map_err(|e| SendError::Transient(format!("nats: publish acknowledgement: {e}")))?;
        Ok(())
    }
}
