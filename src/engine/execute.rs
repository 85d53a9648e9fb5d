//! What a task does, by request kind: the steps of an erasure (find, checkpoint, erase, check),
//! of a rectification (find, checkpoint, rectify, read back), of an export (the store's part,
//! then the archive), and the result they add up to.
//!
//! Every step acts on the request's resolution (`crate::resolve`): the one person it names and
//! the keys of their records, found at submit. A store finds its candidate rows again (new
//! records of the person count too), the resolution decides whose each is, and the store acts on
//! the keys of the person's only. After an erase the store is checked by other queries than the
//! erase's (`resolve::leftovers`): anything of the person left, and the outcome is not DONE.
//!
//! Before an erasure touches a store it asks the ledger whether a litigation hold covers any of
//! the person's identifiers: then the store's records stay and the outcome is RETAINED with
//! basis `litigation_hold`, until the hold is released and the task runs again. A store that
//! keeps records under a legal obligation (billing) reports which, and they are recorded as a
//! hold that the retention sweep ends.
use crate::{
    domain::{Corrections, OutcomeState, RequestKind},
    export::{assemble, ArchiveJob, PartWriter},
    ledger::{
        ClaimedTask, Fenced, NewLegalHold, SubjectRecord, TaskHold, TaskResult, ARCHIVE_TASK,
        LITIGATION_HOLD_BASIS,
    },
    resolve::{
        self,
        walk::{self, KeyBatches},
        Resolution, ResolveError,
    },
    stores::{
        CallContext, CandidateRow, Erase, Erasure, Export, Probe, Rectification, Rectify, StoreAdapter,
        StoreError, StoreResult,
    },
};

use super::Engine;

impl Engine {
    /// One call into a store, bounded by the store's timeout: past it, a transient failure (the
    /// task is retried with backoff), so a hung store does not keep its task's lease forever.
    async fn within<T>(
        &self,
        adapter: &dyn StoreAdapter,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let limit = self.timeouts.get(adapter.name()).copied().unwrap_or(std::time::Duration::from_secs(300));
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(StoreError::Transient(format!(
                "the {} store did not answer within {} s (stores.{}.timeout_secs)",
                adapter.name(),
                limit.as_secs(),
                adapter.name()
            )))
        })
    }

    pub(super) async fn execute(&self, task: &ClaimedTask) -> StoreResult<TaskResult> {
        if task.store == ARCHIVE_TASK {
            return self.archive(task).await;
        }
        let adapter = self.stores.get(&task.store).ok_or_else(|| {
            StoreError::Fatal(format!("no adapter for store {:?} in this process", task.store))
        })?;
        // serde_json's messages name positions and types, never the values.
        let SubjectRecord { subject, corrections, resolution, person } = task
            .subject_json
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| StoreError::Fatal(format!("the ledger's subject record does not parse: {e}")))?
            .ok_or_else(|| StoreError::Fatal("the request no longer holds its subject".into()))?;
        let resolve_err = |e| match e {
            ResolveError::Refused(r) => StoreError::Fatal(format!("{}: {}", r.field, r.reason)),
            ResolveError::Store(store, e) => StoreError::Transient(format!("resolving in {store}: {e}")),
        };
        // An export that recorded the person only walks the store for their records, batch by
        // batch, when the store and those it links to can stream (`resolve::walk`).
        let walk = person.is_some()
            && task.kind == RequestKind::Export
            && walk::walkable(&self.stores, adapter.as_ref());
        let resolution = match (resolution, person) {
            (Some(r), _) => r,
            (None, Some(person)) if walk => Resolution { person, stores: Default::default() },
            // A store that answers only whole: every store resolved now, as at submit.
            (None, Some(person)) => resolve::scan_stores(&self.stores, person).await.map_err(resolve_err)?,
            // A request submitted before resolution existed: resolved now, by the same rules.
            (None, None) => {
                resolve::resolve(&self.stores, &subject, self.subjects.region_for(subject.tenant.as_str()))
                    .await
                    .map_err(resolve_err)?
            }
        };
        // A remote store is told the resolution with every call (`stores::remote`).
        CallContext::with_resolution(
            &resolution,
            self.run_kind(adapter.as_ref(), task, &resolution, corrections, walk),
        )
        .await
    }

    async fn run_kind(
        &self,
        adapter: &dyn StoreAdapter,
        task: &ClaimedTask,
        resolution: &Resolution,
        corrections: Option<Corrections>,
        walk: bool,
    ) -> StoreResult<TaskResult> {
        // A store takes part in a kind of request when it offers that concern, and says it does.
        let not_taking_part = || Ok(skipped("the store does not take part in requests of this kind"));
        if !adapter.takes_part_in(task.kind) {
            return not_taking_part();
        }
        match task.kind {
            RequestKind::Deletion => match adapter.as_erase() {
                Some(eraser) => self.erase(adapter, eraser, task, resolution).await,
                None => not_taking_part(),
            },
            RequestKind::Rectification => {
                let corrections = corrections
                    .ok_or_else(|| StoreError::Fatal("the rectification holds no corrections".into()))?;
                let Some(rectifier) = adapter.as_rectify() else { return not_taking_part() };
                if !rectifier.holds_any_of(&corrections) {
                    return Ok(skipped("the store holds none of the corrected fields"));
                }
                self.rectify(adapter, rectifier, task, resolution, &corrections).await
            }
            RequestKind::Export => match adapter.as_export() {
                Some(exporter) => self.export_part(adapter, exporter, task, resolution, walk).await,
                None => not_taking_part(),
            },
        }
    }

    /// Writes the store's part of an export: the person's records, as resolved — or, when `walk`
    /// (the request recorded the person only), found a batch at a time (`resolve::walk`).
    /// Changes nothing in the store, so a retry simply writes the part again.
    async fn export_part(
        &self,
        adapter: &dyn StoreAdapter,
        exporter: &dyn Export,
        task: &ClaimedTask,
        resolution: &Resolution,
        walk: bool,
    ) -> StoreResult<TaskResult> {
        let tenant = &resolution.person.tenant;
        let mut part = PartWriter::new(&self.exports, &task.request_id, adapter.name());
        let written = if walk {
            let mut into_part = IntoPart { exporter, tenant, part: &mut part };
            let walking = walk::mine_in_batches(&self.stores, adapter, &resolution.person, &mut into_part);
            self.within(adapter, walking).await.map(|w| w.unattributed)
        } else {
            async {
                let scan = self.within(adapter, resolve::scan(adapter, resolution)).await?;
                let keys: Vec<String> = scan.mine.iter().cloned().collect();
                self.within(adapter, exporter.export(tenant, &keys, &mut part)).await?;
                Ok(scan.unattributed.len() as u64)
            }
            .await
        };
        let unattributed = match written {
            Ok(n) => n,
            Err(e) => {
                part.abort().await;
                return Err(e);
            }
        };
        let summary = part.finish().await?;
        let exported = summary.records + summary.file_count();
        Ok(TaskResult { found: exported, affected: exported, unattributed, ..done() })
    }

    /// The last step of an export: the archive, from every store's part. Its result carries the
    /// archive's record, written with the task's end; the parts go once that is committed
    /// (`run_task`), or with the archive when it expires.
    async fn archive(&self, task: &ClaimedTask) -> StoreResult<TaskResult> {
        let job =
            ArchiveJob { request_id: &task.request_id, tenant_id: &task.tenant_id, now: self.clock.now() };
        let archive = assemble(&self.exports, &self.stores, &self.ledger, job).await?;
        Ok(TaskResult {
            found: 1,
            affected: 1,
            detail: Some(format!("archive: {} bytes", archive.size_bytes)),
            export: Some(archive),
            ..done()
        })
    }

    /// Records of the person the store held before this attempt (or the first one) changed
    /// anything, remembered in the ledger so that an attempt after a crash reports them too.
    async fn first_count(&self, task: &ClaimedTask, before: u64) -> StoreResult<u64> {
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

    /// Find, remember the count, rectify, read back. `found` means what it means for an
    /// erasure (the person's records in the store); `affected` the records rewritten. The
    /// read-back failing is transient, like an erase that left data: the next attempt finishes.
    async fn rectify(
        &self,
        adapter: &dyn StoreAdapter,
        rectifier: &dyn Rectify,
        task: &ClaimedTask,
        resolution: &Resolution,
        corrections: &Corrections,
    ) -> StoreResult<TaskResult> {
        let scan = self.within(adapter, resolve::scan(adapter, resolution)).await?;
        let keys: Vec<String> = scan.mine.iter().cloned().collect();
        let first_count = self.first_count(task, keys.len() as u64).await?;
        let probe = Probe { tenant: &resolution.person.tenant, keys: keys.clone(), ..Default::default() };
        let mine: Vec<CandidateRow> = self.within(adapter, adapter.candidates(&probe)).await?;
        let Rectification { found, affected, hold } = self
            .within(adapter, rectifier.rectify(&resolution.person, &mine, corrections, self.clock.now()))
            .await?;
        if !self.within(adapter, rectifier.verify_rectified(&resolution.person, &keys, corrections)).await? {
            return Err(StoreError::Transient(
                "the store does not hold the corrected values, or still holds the old ones, after the correction"
                    .into(),
            ));
        }
        // The outcome event says so when the records stay under a hold (never which values).
        let detail =
            hold.as_ref().map(|_| "done: corrected under legal hold; the records stay retained".to_owned());
        Ok(TaskResult {
            found: found.max(first_count),
            affected,
            unattributed: scan.unattributed.len() as u64,
            retention_basis: hold.as_ref().map(|h| h.basis.clone()),
            retained_until: hold.map(|h| h.until),
            verified: true,
            detail,
            ..done()
        })
    }

    /// Find, remember the count, erase, check. A crash between any two steps is harmless: the
    /// next attempt erases what is left (maybe nothing) and still reports the first count.
    async fn erase(
        &self,
        adapter: &dyn StoreAdapter,
        eraser: &dyn Erase,
        task: &ClaimedTask,
        resolution: &Resolution,
    ) -> StoreResult<TaskResult> {
        let tags = self.hasher.person_tags(&resolution.person);
        let scan = self.within(adapter, resolve::scan(adapter, resolution)).await?;
        let unattributed = scan.unattributed.len() as u64;
        let held = scan.held(adapter.keeps_under_legal_obligation());
        // Asked right before the erase, after finding the records (which may take long): a hold
        // placed meanwhile still keeps them. The same statement remembers the count (and
        // fences on the attempt). And once more after the erase (below).
        let ready = match self.ledger.ready_to_erase(task, held, &tags).await {
            Ok(Some(ready)) => ready,
            Ok(None) => return Err(StoreError::Transient("lease lost before changing the store".into())),
            Err(e) => return Err(StoreError::Transient(format!("ledger unavailable: {e}"))),
        };
        if let Some(hold) = ready.litigation_hold {
            return Ok(TaskResult {
                state: OutcomeState::Retained,
                found: held,
                affected: 0,
                unattributed,
                retention_basis: Some(format!(
                    "{LITIGATION_HOLD_BASIS}: a litigation hold on the subject forbids erasure until it is released (hold {hold})"
                )),
                verified: false,
                detail: Some("retained: litigation hold".into()),
                hold: Some(TaskHold::Litigation(hold)),
                ..done()
            });
        }
        let keys: Vec<String> = scan.mine.iter().cloned().collect();
        let erasure =
            self.within(adapter, eraser.erase(&resolution.person.tenant, &keys, self.clock.now())).await?;
        let left = self.within(adapter, resolve::leftovers(adapter, resolution, &scan)).await?;
        if left > 0 {
            return Err(StoreError::Transient(format!(
                "{left} record(s) of the subject are left after the erase"
            )));
        }
        let found = held.max(ready.first_count);
        Ok(match erasure {
            Erasure::Erased { affected } => TaskResult {
                found,
                // Checked empty: everything found is gone, whichever attempt removed it.
                affected: affected.max(found),
                unattributed,
                verified: true,
                detail: (unattributed > 0)
                    .then(|| format!("{unattributed} record(s) name the subject but not them alone: left")),
                // A hold placed while the store erased came too late for what it erased: asked
                // again as the end is recorded, and the outcome says so (the hold keeps whatever
                // the other stores still hold).
                late_hold_tags: Some(tags),
                ..done()
            },
            Erasure::Retained { affected, basis, until } => {
                // The outcome event records the hold (the hold's own id is the task's).
                let detail = (!keys.is_empty()).then(|| {
                    format!(
                        "retained: legal_obligation hold on {} record(s) until {}",
                        keys.len(),
                        until.to_rfc3339()
                    )
                });
                let hold = (!keys.is_empty()).then(|| {
                    TaskHold::LegalObligation(NewLegalHold {
                        basis: basis.clone(),
                        until,
                        records: keys.clone(),
                        subject_tags: tags,
                    })
                });
                TaskResult {
                    state: OutcomeState::Retained,
                    found,
                    affected,
                    unattributed,
                    retention_basis: Some(basis),
                    retained_until: Some(until),
                    verified: true,
                    detail,
                    hold,
                    ..done()
                }
            }
        })
    }
}

/// A DONE result with nothing in it, for the steps to fill in.
fn done() -> TaskResult {
    TaskResult {
        state: OutcomeState::Done,
        found: 0,
        affected: 0,
        retention_basis: None,
        retained_until: None,
        verified: false,
        unattributed: 0,
        detail: None,
        export: None,
        hold: None,
        late_hold_tags: None,
    }
}

fn skipped(why: &str) -> TaskResult {
    TaskResult { state: OutcomeState::Skipped, detail: Some(why.to_owned()), ..done() }
}

/// A walk's keys, exported into the store's part as they come.
struct IntoPart<'a> {
    exporter: &'a dyn Export,
    tenant: &'a str,
    part: &'a mut PartWriter,
}

#[async_trait::async_trait]
impl KeyBatches for IntoPart<'_> {
    async fn keys(&mut self, keys: Vec<String>) -> StoreResult<()> {
        self.exporter.export(self.tenant, &keys, self.part).await.map(|_| ())
    }
}
