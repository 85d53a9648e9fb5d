//! Expiry of export archives: a finished archive may be downloaded until `expires_at`; then it is
//! deleted from the export storage and the deletion is recorded (`export_expired`). An archive
//! whose subject asks for erasure afterwards goes at once (`export_erased`): it is a copy of what
//! the deletion erases. The janitor does both on an interval (and at once when a deletion
//! completes); a download of such an archive does it on the spot.
//!
//! An export that ends without an archive (FAILED or CANCELLED) has its parts and any partial
//! archive deleted as it ends (`request_ended`): they are copies of the subject's data that
//! nobody can download. RetryRequest writes every part again. Should that deletion be lost (a
//! crash between the request's end and the delete), the janitor's pass over the export storage
//! (`delete_leftovers`) finds what such requests left, and the parts a crash left behind a
//! finished archive.
use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ExportStorage;
use crate::{
    clock::SharedClock,
    domain::{RequestKind, RequestStatus},
    ledger::{ExportRecord, Ledger},
};

/// What the export storage does when a request ends (called by whoever recorded the end): an
/// export without an archive loses its parts at once; a completed deletion wakes the janitor,
/// which deletes the archives of its subject.
pub async fn request_ended(
    storage: &ExportStorage,
    kind: RequestKind,
    request_id: &str,
    status: RequestStatus,
) {
    match (kind, status) {
        (RequestKind::Export, RequestStatus::Failed | RequestStatus::Cancelled) => {
            match storage.delete_all(request_id).await {
                Ok(()) => {
                    info!(request_id, status = %status, "export ended without an archive: its parts were deleted")
                }
                Err(e) => {
                    warn!(request_id, error = %e, "deleting the parts of an export that ended failed; the janitor will")
                }
            }
        }
        (RequestKind::Deletion, RequestStatus::Completed) => storage.wake_janitor(),
        _ => {}
    }
}

/// Deletes what the export storage holds and no longer should, judged by the ledger: every
/// object of an export that ended FAILED or CANCELLED, and the parts of a COMPLETED one (its
/// archive holds them). Objects of a request the ledger does not know are left alone. Only
/// objects older than the moment the ledger was asked go, so a part RetryRequest writes in the
/// meantime stays. Streams the listing: memory does not grow with the storage.
pub async fn delete_leftovers(storage: &ExportStorage, ledger: &Ledger) -> anyhow::Result<u64> {
    let mut listing = std::pin::pin!(storage.list_everything());
    let mut current: Option<(String, Option<RequestStatus>, DateTime<Utc>)> = None;
    let mut n = 0;
    while let Some((id, path, modified)) = listing.try_next().await? {
        if current.as_ref().is_none_or(|(c, _, _)| *c != id) {
            // Object storage time, not the service's (possibly manual) clock.
            let asked_at = Utc::now();
            let status = match uuid::Uuid::parse_str(&id) {
                Ok(_) => ledger.export_status(&id).await?,
                Err(_) => None,
            };
            current = Some((id.clone(), status, asked_at));
        }
        let (_, status, asked_at) = current.as_ref().expect("set above");
        let goes = match status {
            Some(RequestStatus::Failed | RequestStatus::Cancelled) => true,
            Some(RequestStatus::Completed) => path.as_ref().starts_with(&format!("{id}/parts/")),
            _ => false,
        };
        if goes && modified < *asked_at {
            storage.delete_object(&path).await?;
            n += 1;
        }
    }
    if n > 0 {
        info!(objects = n, "deleted export data left by ended exports");
    }
    Ok(n)
}

/// Archives handled per pass.
const BATCH: usize = 100;

/// Deletes one expired archive and records it (once, whoever gets there first).
pub async fn expire(
    storage: &ExportStorage,
    ledger: &Ledger,
    export: &ExportRecord,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    storage.delete_all(&export.request_id).await?;
    if ledger.mark_export_expired(export, now).await? {
        info!(request_id = %export.request_id, tenant = %export.tenant_id, "export archive expired and deleted");
    }
    Ok(())
}

/// Deletes an archive whose subject has asked for erasure since the export (once).
pub async fn erase(
    storage: &ExportStorage,
    ledger: &Ledger,
    export: &ExportRecord,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    storage.delete_all(&export.request_id).await?;
    if ledger.mark_export_erased(export, now).await? {
        info!(request_id = %export.request_id, tenant = %export.tenant_id, "export archive deleted: its subject's data was erased since");
    }
    Ok(())
}

/// One pass: deletes every archive past its expiry, and every archive of a subject who has
/// asked for erasure since. Returns how many it deleted.
pub async fn expire_due(storage: &ExportStorage, ledger: &Ledger, now: DateTime<Utc>) -> anyhow::Result<u64> {
    let mut n = erase_superseded(storage, ledger, now).await?;
    loop {
        let due = ledger.expired_exports(now, BATCH).await?;
        for export in &due {
            expire(storage, ledger, export, now).await?;
            n += 1;
        }
        if due.len() < BATCH {
            break;
        }
    }
    Ok(n)
}

/// Deletes every archive of a subject who has asked for erasure since. Returns how many.
async fn erase_superseded(
    storage: &ExportStorage,
    ledger: &Ledger,
    now: DateTime<Utc>,
) -> anyhow::Result<u64> {
    let mut n = 0;
    loop {
        let superseded = ledger.superseded_exports(BATCH).await?;
        for export in &superseded {
            erase(storage, ledger, export, now).await?;
            n += 1;
        }
        if superseded.len() < BATCH {
            return Ok(n);
        }
    }
}

/// One pass of `run_janitor`: `expire_due`, then `delete_leftovers`.
async fn janitor_pass(storage: &ExportStorage, ledger: &Ledger, now: DateTime<Utc>) -> anyhow::Result<()> {
    expire_due(storage, ledger, now).await?;
    if let Err(e) = delete_leftovers(storage, ledger).await {
        warn!(error = %e, "deleting export data left by ended exports failed; will try again");
    }
    Ok(())
}

/// Runs `janitor_pass` every `interval` until `shutdown`. Woken in between (a deletion
/// completed), it deletes only the archives of subjects who asked for erasure since: expiry and
/// leftovers wait for the interval, so a busy service does not list its export storage after
/// every deletion.
pub async fn run_janitor(
    storage: Arc<ExportStorage>,
    ledger: Ledger,
    clock: SharedClock,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut next_full = tokio::time::Instant::now();
    loop {
        let passed = if tokio::time::Instant::now() >= next_full {
            next_full = tokio::time::Instant::now() + interval;
            janitor_pass(&storage, &ledger, clock.now()).await
        } else {
            erase_superseded(&storage, &ledger, clock.now()).await.map(|_| ())
        };
        if let Err(e) = passed {
            warn!(error = %e, "deleting expired export archives failed; will try again");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next_full) => {}
            _ = storage.janitor.notified() => {}
        }
    }
}
