//! In-process wake-ups: "there is work" for the engine, "request X changed" for watchers.
//! They only make things prompt; correctness never depends on them (the engine polls and
//! watchers re-read, so changes made by other replicas are seen too).
use std::sync::Arc;

use tokio::sync::{broadcast, Notify};

#[derive(Clone)]
pub struct Signals {
    work: Arc<Notify>,
    changes: broadcast::Sender<String>,
}

impl Default for Signals {
    fn default() -> Self {
        Self { work: Arc::new(Notify::new()), changes: broadcast::channel(1024).0 }
    }
}

impl Signals {
    pub fn work_available(&self) {
        self.work.notify_one();
    }

    pub async fn wait_for_work(&self) {
        self.work.notified().await
    }

    pub fn request_changed(&self, request_id: &str) {
        let _ = self.changes.send(request_id.to_owned());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }
}
