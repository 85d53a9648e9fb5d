//! Expiry of export archives: a finished archive may be downloaded until `expires_at`; then it is
//! deleted from the export storage and the deletion is recorded (`export_expired`). An archive
//! whose subject asks for erasure afterwards goes at once (`export_erased`): it is a copy of what
//! the deletion erases. The janitor does both on an interval; a download of such an archive does
//! it on the spot.
use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ExportStorage;
use crate::{
    clock::SharedClock,
    ledger::{ExportRecord, Ledger},
};

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
    let mut n = 0;
    loop {
        let superseded = ledger.superseded_exports(BATCH).await?;
        for export in &superseded {
            erase(storage, ledger, export, now).await?;
            n += 1;
        }
        if superseded.len() < BATCH {
            break;
        }
    }
    loop {
        let due = ledger.expired_exports(now, BATCH).await?;
        for export in &due {
            expire(storage, ledger, export, now).await?;
            n += 1;
        }
        if due.len() < BATCH {
            return Ok(n);
        }
    }
}

/// Runs `expire_due` every `interval` until `shutdown`.
pub async fn run_janitor(
    storage: Arc<ExportStorage>,
    ledger: Ledger,
    clock: SharedClock,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        if let Err(e) = expire_due(&storage, &ledger, clock.now()).await {
            warn!(error = %e, "deleting expired export archives failed; will try again");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
