//! Exports (GDPR Art. 15 access, Art. 20 portability): each store's task writes a *part* into
//! the export storage (`part`), then the request's `archive` task streams the parts and the
//! recordings into one ZIP with a `manifest.json` (`archive`), which `DownloadExport` serves and
//! the janitor deletes when it expires (`janitor`).
//!
//! Layout of the export storage (an object_store location: `<data-dir>/exports` by default):
//!
//! ```text
//! <request id>/parts/<store>.json          the store's records, a JSON array
//! <request id>/parts/<store>.files.jsonl   the files to copy in, one JSON object a line
//! <request id>/parts/<store>.summary.json  record and file counts
//! <request id>/parts/manifest.json         the manifest, spooled while the archive is written
//! <request id>/export.zip                  the archive
//! ```
mod archive;
mod download_file;
mod janitor;
mod manifest;
mod part;
mod zip;

use std::sync::Arc;

use chrono::Duration;
use futures::TryStreamExt;
use object_store::{path::Path, ObjectStore, ObjectStoreExt};

pub use archive::{assemble, ArchiveJob};
pub use download_file::DownloadFile;
pub use janitor::{delete_leftovers, erase, expire, expire_due, request_ended, run_janitor};
pub use manifest::{Manifest, ManifestFile, ManifestStore, MANIFEST_FORMAT};
pub use part::{PartSummary, PartWriter};

use crate::{
    config::{ExportNotice, Settings},
    stores::{open_durable_object_store, StoreError, StoreResult},
};

/// What an upload gathers before it sends a part: S3's smallest part (5 MiB) there; on a local
/// disk, where a part is a write, 1 MiB — an export writes up to a dozen uploads at once (every
/// store's records and file list, the archive, the manifest), each with two parts in flight.
fn upload_buffer(url: &str) -> usize {
    const MIB: usize = 1024 * 1024;
    if url.starts_with("file:") {
        MIB
    } else {
        5 * MIB
    }
}

/// The archive format `ExportInfo.format` names.
pub const ARCHIVE_FORMAT: &str = "zip";

/// Where exports are written, for how long they are kept, and what their manifest says.
pub struct ExportStorage {
    objects: Arc<dyn ObjectStore>,
    pub expiry: Duration,
    pub notice: ExportNotice,
    /// Bytes an upload gathers before it sends a part (`upload_buffer`).
    pub(crate) upload_buffer: usize,
    /// Wakes the janitor before its interval: a deletion completed, so archives of its subject
    /// go now rather than at the next pass.
    janitor: tokio::sync::Notify,
}

impl ExportStorage {
    pub fn open(settings: &Settings) -> anyhow::Result<Self> {
        let x = &settings.file.export;
        Ok(Self {
            objects: open_durable_object_store(&settings.exports_url)?,
            expiry: Duration::days(x.expiry_days.into()),
            notice: x.notice.clone(),
            upload_buffer: upload_buffer(&settings.exports_url),
            janitor: tokio::sync::Notify::new(),
        })
    }

    /// Asks the janitor for a pass now (one pending wake-up is kept if it is busy).
    pub fn wake_janitor(&self) {
        self.janitor.notify_one();
    }

    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// An upload of `path` that sends a part every `upload_buffer` bytes, two at a time.
    pub(crate) fn upload(&self, path: Path) -> object_store::buffered::BufWriter {
        part::upload(&self.objects, path, self.upload_buffer)
    }

    pub fn part_path(request_id: &str, store: &str) -> Path {
        Path::from(format!("{request_id}/parts/{store}.json"))
    }

    pub fn files_path(request_id: &str, store: &str) -> Path {
        Path::from(format!("{request_id}/parts/{store}.files.jsonl"))
    }

    /// The manifest as the archive step writes it, before it is copied into the archive.
    pub fn manifest_spool_path(request_id: &str) -> Path {
        Path::from(format!("{request_id}/parts/manifest.json"))
    }

    pub fn summary_path(request_id: &str, store: &str) -> Path {
        Path::from(format!("{request_id}/parts/{store}.summary.json"))
    }

    pub fn archive_path(request_id: &str) -> Path {
        Path::from(format!("{request_id}/export.zip"))
    }

    /// Deletes everything under `<request id>/` (a missing object is fine).
    pub async fn delete_all(&self, request_id: &str) -> StoreResult<()> {
        self.delete_under(&Path::from(request_id.to_owned())).await
    }

    /// Deletes the parts once the archive holds them.
    pub async fn delete_parts(&self, request_id: &str) -> StoreResult<()> {
        self.delete_under(&Path::from(format!("{request_id}/parts"))).await
    }

    /// Every object in the export storage, as (request id, path, last modified).
    pub(crate) fn list_everything(
        &self,
    ) -> impl futures::Stream<Item = StoreResult<(String, Path, chrono::DateTime<chrono::Utc>)>> + '_ {
        self.objects.list(None).map_err(StoreError::from).map_ok(|meta| {
            let id = meta.location.parts().next().map(|p| p.as_ref().to_owned()).unwrap_or_default();
            (id, meta.location, meta.last_modified)
        })
    }

    /// Deletes one object (a missing one is fine).
    pub(crate) async fn delete_object(&self, path: &Path) -> StoreResult<()> {
        match self.objects.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::from(e)),
        }
    }

    async fn delete_under(&self, prefix: &Path) -> StoreResult<()> {
        let found: Vec<_> = self.objects.list(Some(prefix)).map_ok(|m| m.location).try_collect().await?;
        for path in found {
            match self.objects.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(StoreError::from(e)),
            }
        }
        Ok(())
    }
}
