//! What a task does, by request kind: the steps of an erasure (count, checkpoint, erase,
//! verify), of a rectification (count, checkpoint, rectify, read back), of an export (the store's
//! part, then the archive), and the result they add up to.
//!
//! Before an erasure touches a store it asks the ledger whether a litigation hold covers any of
//! the subject's identifiers (issue 9): then the store's records stay and the outcome is
//! RETAINED with basis `litigation_hold`, until the hold is released and the task runs again. A
//! store that keeps records under a legal obligation (billing) reports which, and they are
//! recorded as a hold that the retention sweep ends.
use crate::{
    domain::{Corrections, OutcomeState, RequestKind, Subject},
    export::{assemble, ArchiveJob, PartWriter},
    ledger::{
        ClaimedTask, Fenced, NewLegalHold, SubjectRecord, TaskHold, TaskResult, ARCHIVE_TASK,
        LITIGATION_HOLD_BASIS,
    },
    stores::{Erasure, Rectification, StoreAdapter, StoreError, StoreResult},
};

use super::Engine;

impl Engine {
    pub(super) async fn execute(&self, task: &ClaimedTask) -> StoreResult<TaskResult> {
        if task.store == ARCHIVE_TASK {
            return self.archive(task).await;
        }
        let adapter = self.stores.get(&task.store).ok_or_else(|| {
            StoreError::Fatal(format!("no adapter for store {:?} in this process", task.store))
        })?;
        // serde_json's messages name positions and types, never the values.
        let SubjectRecord { subject, corrections } = task
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
            RequestKind::Rectification => {
                let corrections = corrections
                    .ok_or_else(|| StoreError::Fatal("the rectification holds no corrections".into()))?;
                if !adapter.holds_any_of(&corrections) {
                    return Ok(skipped("the store holds none of the corrected fields"));
                }
                self.rectify(adapter.as_ref(), task, &subject, &corrections).await
            }
            RequestKind::Export => self.export_part(adapter.as_ref(), task, &subject).await,
        }
    }

    /// Writes the store's part of an export. Changes nothing in the store, so a retry simply
    /// writes the part again.
    async fn export_part(
        &self,
        adapter: &dyn StoreAdapter,
        task: &ClaimedTask,
        subject: &Subject,
    ) -> StoreResult<TaskResult> {
        let mut part = PartWriter::new(&self.exports, &task.request_id, adapter.name());
        if let Err(e) = adapter.export(subject, &mut part).await {
            part.abort().await;
            return Err(e);
        }
        let summary = part.finish().await?;
        let exported = summary.records + summary.files.len() as u64;
        Ok(TaskResult {
            state: OutcomeState::Done,
            found: exported,
            affected: exported,
            retention_basis: None,
            retained_until: None,
            verified: false,
            detail: None,
            export: None,
            hold: None,
        })
    }

    /// The last step of an export: the archive, from every store's part. Its result carries the
    /// archive's record, written with the task's end; the parts go once that is committed
    /// (`run_task`), or with the archive when it expires.
    async fn archive(&self, task: &ClaimedTask) -> StoreResult<TaskResult> {
        let job =
            ArchiveJob { request_id: &task.request_id, tenant_id: &task.tenant_id, now: self.clock.now() };
        let archive = assemble(&self.exports, &self.stores, &self.ledger, job).await?;
        Ok(TaskResult {
            state: OutcomeState::Done,
            found: 1,
            affected: 1,
            retention_basis: None,
            retained_until: None,
            verified: false,
            detail: Some(format!("archive: {} bytes", archive.size_bytes)),
            export: Some(archive),
            hold: None,
        })
    }

    /// Records of the subject the store held before this attempt (or the first one) changed
    /// anything, remembered in the ledger so that an attempt after a crash reports them too.
    async fn first_count(
        &self,
        adapter: &dyn StoreAdapter,
        task: &ClaimedTask,
        subject: &Subject,
    ) -> StoreResult<u64> {
        let before = adapter.preview(subject).await?.records;
        Ok(match task.found_checkpoint {
            Some(n) => n,
            None => {
                match self.ledger.checkpoint_found(task, before).await {
                    Ok(Fenced::Applied(_)) => {}
                    Ok(Fenced::Stale) => {
                        return Err(StoreError::Transient("lease lost before changing the store".into()))
                    }
                    Err(e) => return Err(StoreError::Transient(format!("ledger unavailable: {e}"))),
                }
                before
            }
        })
    }

    /// Count, remember the count, rectify, read back. `found` means what it means for an
    /// erasure (the records the store held on the subject); `affected` the records rewritten.
    /// A retry after a crash reports only what it rewrote itself (the first attempt's rewrites
    /// are no longer under the old identifier), while `found` still comes from the checkpoint.
    /// The read-back failing is transient, like an erase that left data: the next attempt
    /// finishes the move.
    async fn rectify(
        &self,
        adapter: &dyn StoreAdapter,
        task: &ClaimedTask,
        subject: &Subject,
        corrections: &Corrections,
    ) -> StoreResult<TaskResult> {
        let first_count = self.first_count(adapter, task, subject).await?;
        let Rectification { found, affected, hold } =
            adapter.rectify(subject, corrections, self.clock.now()).await?;
        if !adapter.verify_rectified(subject, corrections).await? {
            return Err(StoreError::Transient(
                "the store does not hold the corrected values, or still holds the old ones, after the correction"
                    .into(),
            ));
        }
        // The outcome event says so when the records stay under a hold (never which values).
        let detail =
            hold.as_ref().map(|_| "done: corrected under legal hold; the records stay retained".to_owned());
        Ok(TaskResult {
            state: OutcomeState::Done,
            found: found.max(first_count),
            affected,
            retention_basis: hold.as_ref().map(|h| h.basis.clone()),
            retained_until: hold.map(|h| h.until),
            verified: true,
            detail,
            export: None,
            hold: None,
        })
    }

    /// Count, remember the count, erase, re-query. A crash between any two steps is harmless:
    /// the next attempt erases what is left (maybe nothing) and still reports the first count.
    async fn erase(
        &self,
        adapter: &dyn StoreAdapter,
        task: &ClaimedTask,
        subject: &Subject,
    ) -> StoreResult<TaskResult> {
        let tags = self.hasher.subject_tags(subject);
        let held = self
            .ledger
            .litigation_hold_for(&task.tenant_id, &tags)
            .await
            .map_err(|e| StoreError::Transient(format!("ledger unavailable: {e}")))?;
        if let Some(hold) = held {
            let found = adapter.preview(subject).await?.records;
            return Ok(TaskResult {
                state: OutcomeState::Retained,
                found,
                affected: 0,
                retention_basis: Some(format!(
                    "{LITIGATION_HOLD_BASIS}: a litigation hold on the subject forbids erasure until it is released (hold {hold})"
                )),
                retained_until: None,
                verified: false,
                detail: Some("retained: litigation hold".into()),
                export: None,
                hold: Some(TaskHold::Litigation(hold)),
            });
        }
        let first_count = self.first_count(adapter, task, subject).await?;
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
                    export: None,
                    hold: None,
                }
            }
            Erasure::Retained { found, affected, basis, until } => {
                let records = adapter.retained_records(subject).await?;
                // The outcome event records the hold (the hold's own id is the task's).
                let detail = (!records.is_empty()).then(|| {
                    format!(
                        "retained: legal_obligation hold on {} record(s) until {}",
                        records.len(),
                        until.to_rfc3339()
                    )
                });
                let hold = (!records.is_empty()).then(|| {
                    TaskHold::LegalObligation(NewLegalHold {
                        basis: basis.clone(),
                        until,
                        records,
                        subject_tags: tags,
                    })
                });
                TaskResult {
                    state: OutcomeState::Retained,
                    found: found.max(first_count),
                    affected,
                    retention_basis: Some(basis),
                    retained_until: Some(until),
                    verified,
                    detail,
                    hold,
                    export: None,
                }
            }
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
        export: None,
        hold: None,
    }
}
