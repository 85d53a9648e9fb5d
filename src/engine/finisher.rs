//! Ends the tasks of one request together. A request's stores run at once and often end within
//! a few milliseconds of each other; each end is a transaction that takes the request's row lock
//! (to re-derive its status), so one at a time they queue on that lock and pay a commit each.
//! Here the first task of a request to end writes at once; the tasks of the same request that
//! end while it writes wait and are then ended together, in one transaction (`Ledger::finish_all`),
//! and so on until none is waiting. No timer: a task alone is ended as soon as it is done.
//!
//! Each task is still fenced on its own attempt, and the request's terminal status (which the
//! engine reports once: metrics, export clean-up) goes to one task of the batch only.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use crate::{
    clock::SharedClock,
    ledger::{ClaimedTask, Fenced, Ledger, LedgerError, TaskResult},
};

/// How a task's end was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub fenced: Fenced,
    /// This task is the one that reports the request's new status (each status is reported
    /// by one task, however many ended with it).
    pub reports_status: bool,
    /// Its end made tasks due now (the one that reports the status says so for its batch).
    pub made_due: bool,
}

pub type Recorded = Result<Ended, Arc<LedgerError>>;

struct Waiting {
    task: ClaimedTask,
    result: TaskResult,
    reply: oneshot::Sender<Recorded>,
}

pub struct Finisher {
    ledger: Ledger,
    clock: SharedClock,
    /// Requests a task is being ended for now, with the tasks of each that wait for it.
    writing: Mutex<HashMap<String, Vec<Waiting>>>,
}

impl Finisher {
    pub fn new(ledger: Ledger, clock: SharedClock) -> Self {
        Self { ledger, clock, writing: Mutex::new(HashMap::new()) }
    }

    /// Records the task's end, with the other tasks of its request that end meanwhile.
    pub async fn finish(&self, task: &ClaimedTask, result: &TaskResult) -> Recorded {
        let waiting = {
            let mut writing = self.writing.lock().expect("finisher lock");
            match writing.get_mut(&task.request_id) {
                Some(queue) => {
                    let (reply, answer) = oneshot::channel();
                    queue.push(Waiting { task: task.clone(), result: result.clone(), reply });
                    Some(answer)
                }
                None => {
                    writing.insert(task.request_id.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(answer) = waiting {
            return answer.await.unwrap_or_else(|_| {
                Err(Arc::new(LedgerError::FailedPrecondition(
                    "the task that ended this one's request stopped before answering".into(),
                )))
            });
        }
        // This task writes: first alone, then whatever waited meanwhile, until nothing does.
        let mut leading = Leading { writing: &self.writing, request_id: &task.request_id, done: false };
        let mine = self.write(&[(task, result)]).await.remove(0);
        loop {
            let batch = {
                let mut writing = self.writing.lock().expect("finisher lock");
                let queue = writing.get_mut(&task.request_id).expect("this task's entry");
                if queue.is_empty() {
                    writing.remove(&task.request_id);
                    leading.done = true;
                    break;
                }
                std::mem::take(queue)
            };
            let pairs: Vec<(&ClaimedTask, &TaskResult)> =
                batch.iter().map(|w| (&w.task, &w.result)).collect();
            let answers = self.write(&pairs).await;
            for (w, answer) in batch.into_iter().zip(answers) {
                let _ = w.reply.send(answer);
            }
        }
        mine
    }

    /// One transaction for `tasks` (all of one request): an answer for each.
    async fn write(&self, tasks: &[(&ClaimedTask, &TaskResult)]) -> Vec<Recorded> {
        match self.ledger.finish_all(tasks, self.clock.now()).await {
            Ok(ended) => {
                let reporter = ended.applied.iter().rposition(|a| *a);
                ended
                    .applied
                    .iter()
                    .enumerate()
                    .map(|(i, applied)| {
                        Ok(match (applied, ended.status) {
                            (true, Some(status)) => Ended {
                                fenced: Fenced::Applied(status),
                                reports_status: Some(i) == reporter,
                                made_due: ended.made_due && Some(i) == reporter,
                            },
                            _ => Ended { fenced: Fenced::Stale, reports_status: false, made_due: false },
                        })
                    })
                    .collect()
            }
            Err(e) => {
                let e = Arc::new(e);
                tasks.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }
}

/// The request's entry while a task writes for it. Dropped early (the task's future cancelled at
/// shutdown), it takes the entry along, and with it the waiting tasks' answer channels: they get
/// an error (their leases expire and they run again) instead of waiting for ever.
struct Leading<'a> {
    writing: &'a Mutex<HashMap<String, Vec<Waiting>>>,
    request_id: &'a str,
    done: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Ok(mut writing) = self.writing.lock() {
                writing.remove(self.request_id);
            }
        }
    }
}
