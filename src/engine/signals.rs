//! In-process wake-ups: "there is work" and "a task ended" for the engine, "request X changed"
//! for watchers.
//! They only make things prompt; correctness never depends on them (the engine polls and
//! watchers re-read, so changes made by other replicas are seen too).
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::sync::{broadcast, Notify};

/// A wake-up that counts its signals, so that a waiter can tell those it already acted on
/// (sent before its mark) from newer ones.
#[derive(Default)]
struct Pulse {
    notify: Notify,
    count: AtomicU64,
}

impl Pulse {
    fn signal(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn mark(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    async fn wait_since(&self, mark: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check: a signal between the check and the await still wakes.
            notified.as_mut().enable();
            if self.mark() != mark {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Clone)]
pub struct Signals {
    /// "There is work": a submit, a stage that ended (the next is due), a released hold. A
    /// wake-up for work a claim already saw would cost an empty claim.
    work: Arc<Pulse>,
    /// "A task ended": its worker and store permits are free again. Only a claim that left due
    /// tasks behind for want of them needs it; after any other, claiming again on every task's
    /// end found nothing (the next stage waits for the whole stage) — 4.5 claims per deletion in
    /// `dsr bench latency`, where 2 claim something.
    room: Arc<Pulse>,
    changes: broadcast::Sender<String>,
}

impl Default for Signals {
    fn default() -> Self {
        Self { work: Arc::default(), room: Arc::default(), changes: broadcast::channel(1024).0 }
    }
}

impl Signals {
    pub fn work_available(&self) {
        self.work.signal();
    }

    /// Where the "there is work" signals stand: read before a claim, then handed to
    /// `wait_for_work_since`.
    pub fn work_mark(&self) -> u64 {
        self.work.mark()
    }

    /// Returns once work was signalled after `mark` was read (at once if it already was).
    pub async fn wait_for_work_since(&self, mark: u64) {
        self.work.wait_since(mark).await
    }

    pub fn room_freed(&self) {
        self.room.signal();
    }

    /// Where the "a task ended" signals stand (read before a claim, like `work_mark`).
    pub fn room_mark(&self) -> u64 {
        self.room.mark()
    }

    /// Returns once a task ended after `mark` was read.
    pub async fn wait_for_room_since(&self, mark: u64) {
        self.room.wait_since(mark).await
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

    #[tokio::test]
    async fn a_task_end_wakes_a_wait_for_room_and_not_one_for_work() {
        let s = Signals::default();
        let (work, room) = (s.work_mark(), s.room_mark());
        s.room_freed();
        tokio::time::timeout(Duration::from_secs(1), s.wait_for_room_since(room)).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), s.wait_for_work_since(work)).await;
        assert!(waited.is_err(), "a task's end is not new work");
    }
}
