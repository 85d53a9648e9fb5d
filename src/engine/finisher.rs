//! Ends tasks together: group commit for task outcomes. Every task's end is a transaction
//! (its row, its `outcome` event, its request's status under the request's row lock); one by
//! one, they queue for that lock when a request's stores end at once, and each pays a commit
//! (an fsync on SQLite). Here one writer per process ends tasks: a task that ends while
//! nothing is being written is written at once, alone; the tasks that end while a write runs
//! wait and are then written together, in one transaction (`Ledger::finish_all`), up to
//! `MOST_AT_ONCE`. No timer: nothing waits for company.
//!
//! Each task is still fenced on its own attempt, and each request's new status (which the
//! engine reports once when terminal: metrics, export clean-up) goes to one of its tasks only.
use std::{collections::HashMap, sync::Arc};

use tokio::sync::{mpsc, oneshot};

use crate::{
    clock::SharedClock,
    ledger::{ClaimedTask, Fenced, Ledger, LedgerError, TaskResult},
};

/// The most task ends written in one transaction (a bound on how long it holds its locks).
const MOST_AT_ONCE: usize = 64;

/// How a task's end was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub fenced: Fenced,
    /// This task reports its request's new status: one task per request and status, however
    /// many of its tasks ended in the same transaction.
    pub reports_status: bool,
}

pub type Recorded = Result<Ended, Arc<LedgerError>>;

struct Waiting {
    task: ClaimedTask,
    result: TaskResult,
    reply: oneshot::Sender<Recorded>,
}

/// The handle workers end tasks through; the writer runs until every handle is gone.
pub struct Finisher {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl Finisher {
    /// Starts the writer (on the current Tokio runtime).
    pub fn new(ledger: Ledger, clock: SharedClock) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(ledger, clock, waiting));
        Self { queue }
    }

    /// Records the task's end, with whatever other ends are waiting by then.
    pub async fn finish(&self, task: &ClaimedTask, result: &TaskResult) -> Recorded {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting { task: task.clone(), result: result.clone(), reply };
        if self.queue.send(waiting).is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> Arc<LedgerError> {
    Arc::new(LedgerError::FailedPrecondition("the engine's outcome writer has stopped".into()))
}

async fn write_batches(ledger: Ledger, clock: SharedClock, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    let mut batch = Vec::with_capacity(MOST_AT_ONCE);
    // Blocks for the first end, then takes every end already waiting, up to the bound.
    while waiting.recv_many(&mut batch, MOST_AT_ONCE).await > 0 {
        let tasks: Vec<(&ClaimedTask, &TaskResult)> = batch.iter().map(|w| (&w.task, &w.result)).collect();
        let answers = answers(ledger.finish_all(&tasks, clock.now()).await, &tasks);
        for (w, answer) in batch.drain(..).zip(answers) {
            let _ = w.reply.send(answer);
        }
    }
}

/// One answer per task, the request's status reported by the last of its tasks that ended.
fn answers(
    ended: crate::ledger::Result<crate::ledger::FinishedTogether>,
    tasks: &[(&ClaimedTask, &TaskResult)],
) -> Vec<Recorded> {
    let ended = match ended {
        Ok(ended) => ended,
        Err(e) => {
            let e = Arc::new(e);
            return tasks.iter().map(|_| Err(e.clone())).collect();
        }
    };
    let mut reporter: HashMap<&str, usize> = HashMap::new();
    for (i, (task, _)) in tasks.iter().enumerate() {
        if ended.applied[i] {
            reporter.insert(&task.request_id, i);
        }
    }
    tasks
        .iter()
        .enumerate()
        .map(|(i, (task, _))| {
            Ok(match ended.status.get(&task.request_id) {
                Some(status) if ended.applied[i] => Ended {
                    fenced: Fenced::Applied(*status),
                    reports_status: reporter.get(task.request_id.as_str()) == Some(&i),
                },
                _ => Ended { fenced: Fenced::Stale, reports_status: false },
            })
        })
        .collect()
}
