//! In-process wake-ups: "there is work" for the engine, "request X changed" for watchers.
//! They only make things prompt; correctness never depends on them (the engine polls and
//! watchers re-read, so changes made by other replicas are seen too).
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::sync::{broadcast, Notify};

#[derive(Clone)]
pub struct Signals {
    work: Arc<Notify>,
    /// Counts "there is work" signals, so that a waiter can tell those its last claim already
    /// saw (sent before it) from newer ones: a wake-up for work already claimed would cost an
    /// empty claim.
    work_signalled: Arc<AtomicU64>,
    changes: broadcast::Sender<String>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            work: Arc::new(Notify::new()),
            work_signalled: Arc::new(AtomicU64::new(0)),
            changes: broadcast::channel(1024).0,
        }
    }
}

impl Signals {
    pub fn work_available(&self) {
        self.work_signalled.fetch_add(1, Ordering::SeqCst);
        self.work.notify_waiters();
    }

    /// Where the "there is work" signals stand: read before a claim, then handed to
    /// `wait_for_work_since`.
    pub fn work_mark(&self) -> u64 {
        self.work_signalled.load(Ordering::SeqCst)
    }

    /// Returns once work was signalled after `mark` was read (at once if it already was).
    pub async fn wait_for_work_since(&self, mark: u64) {
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            // Registered before the check: a signal between the check and the await still wakes.
            notified.as_mut().enable();
            if self.work_mark() != mark {
                return;
            }
            notified.await;
        }
    }

    pub fn request_changed(&self, request_id: &str) {
        let _ = self.changes.send(request_id.to_owned());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_wait_ends_on_work_signalled_after_the_mark_and_not_on_older_signals() {
        let s = Signals::default();
        s.work_available();
        let mark = s.work_mark();
        // The signal before the mark does not wake.
        let waited = tokio::time::timeout(Duration::from_millis(50), s.wait_for_work_since(mark)).await;
        assert!(waited.is_err(), "woken by a signal its claim had already seen");
        // One after it does, also when it came before the wait started.
        s.work_available();
        tokio::time::timeout(Duration::from_secs(1), s.wait_for_work_since(mark)).await.unwrap();
        // And one sent while waiting.
        let mark = s.work_mark();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_for_work_since(mark).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.work_available();
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
    }
}
