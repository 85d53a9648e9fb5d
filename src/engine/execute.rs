//! What a task does, by request kind: the steps of an erasure (count, checkpoint, erase,
//! verify) and the result they add up to.
use crate::{
    domain::{OutcomeState, RequestKind, Subject},
    ledger::{ClaimedTask, Fenced, TaskResult},
    stores::{Erasure, StoreAdapter, StoreError, StoreResult},
};

use super::Engine;

impl Engine {
    pub(super) async fn execute(&self, task: &ClaimedTask) -> StoreResult<TaskResult> {
        let adapter = self.stores.get(&task.store).ok_or_else(|| {
            StoreError::Fatal(format!("no adapter for store {:?} in this process", task.store))
        })?;
        let subject: Subject = task
            .subject_json
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| StoreError::Fatal(format!("the ledger's subject record does not parse: {e}")))?
            .ok_or_else(|| StoreError::Fatal("the request no longer holds its subject".into()))?;
        if !adapter.applies_to(&subject) {
            return Ok(skipped("the subject has no identifier this store is keyed on"));
        }
        match task.kind {
            RequestKind::Deletion => self.erase(adapter.as_ref(), task, &subject).await,
            RequestKind::Export | RequestKind::Rectification => {
                Err(StoreError::Fatal(format!("{} is not supported by this version", task.kind)))
            }
        }
    }

    /// Count, remember the count, erase, re-query. A crash between any two steps is harmless:
    /// the next attempt erases what is left (maybe nothing) and still reports the first count.
    async fn erase(
        &self,
        adapter: &dyn StoreAdapter,
        task: &ClaimedTask,
        subject: &Subject,
    ) -> StoreResult<TaskResult> {
        let before = adapter.preview(subject).await?.records;
        let first_count = match task.found_checkpoint {
            Some(n) => n,
            None => {
                match self.ledger.checkpoint_found(task, before).await {
                    Ok(Fenced::Applied(_)) => {}
                    Ok(Fenced::Stale) => {
                        return Err(StoreError::Transient("lease lost before erasing".into()))
                    }
                    Err(e) => return Err(StoreError::Transient(format!("ledger unavailable: {e}"))),
                }
                before
            }
        };
        let erasure = adapter.erase(subject, self.clock.now()).await?;
        let verified = adapter.verify_erased(subject).await?;
        Ok(match erasure {
            Erasure::Erased { found, affected } => {
                if !verified {
                    return Err(StoreError::Transient(
                        "the store still holds data of the subject after the erase".into(),
                    ));
                }
                let found = found.max(first_count);
                TaskResult {
                    state: OutcomeState::Done,
                    found,
                    // Verified empty: everything found is gone, whichever attempt removed it.
                    affected: affected.max(found),
                    retention_basis: None,
                    retained_until: None,
                    verified,
                    detail: None,
                }
            }
            Erasure::Retained { found, affected, basis, until } => TaskResult {
                state: OutcomeState::Retained,
                found: found.max(first_count),
                affected,
                retention_basis: Some(basis),
                retained_until: Some(until),
                verified,
                detail: None,
            },
        })
    }
}

fn skipped(why: &str) -> TaskResult {
    TaskResult {
        state: OutcomeState::Skipped,
        found: 0,
        affected: 0,
        retention_basis: None,
        retained_until: None,
        verified: false,
        detail: Some(why.to_owned()),
    }
}
