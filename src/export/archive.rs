//! The archive step of an export: once every store has written its part, stream the parts and
//! the recordings' audio into one ZIP in the export storage — hashing each file for the manifest
//! and the whole archive for `ExportInfo.sha256` on the way — and write `manifest.json` last.
//! Memory stays flat: bytes pass through in chunks of at most a few hundred KiB, and the upload
//! buffers at most `UPLOAD_BUFFER` × 2.
//!
//! Entries are stored, not compressed (audio does not compress; JSON stays readable by anything
//! that opens a ZIP), with data descriptors, so nothing needs to seek; ZIP64 takes over past
//! 4 GiB. Re-running the step after a crash rewrites the same archive from the same parts.
use std::{
    collections::HashSet,
    io::Write,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use object_store::{buffered::BufWriter, ObjectStoreExt};
use rawzip::{time::UtcDateTime, ZipArchiveWriter};
use sha2::{Digest, Sha256};
use tokio::{io::AsyncWriteExt, sync::mpsc, task::JoinHandle};

use super::{
    manifest::{Manifest, ManifestFile},
    part::io_error,
    ExportStorage, PartSummary, ARCHIVE_FORMAT,
};
use crate::{
    domain::OutcomeState,
    ledger::{ExportRecord, Ledger, ARCHIVE_TASK},
    stores::{ByteStream, StoreError, StoreRegistry, StoreResult},
};

/// Bytes buffered before the archive goes out as a multipart upload (S3's smallest part: 5 MiB).
const UPLOAD_BUFFER: usize = 5 * 1024 * 1024;

/// What the archive step needs to know about the request.
pub struct ArchiveJob<'a> {
    pub request_id: &'a str,
    pub tenant_id: &'a str,
    pub now: DateTime<Utc>,
}

/// Builds the archive of `job.request_id` and returns its record (not yet in the ledger).
pub async fn assemble(
    storage: &ExportStorage,
    stores: &StoreRegistry,
    ledger: &Ledger,
    job: ArchiveJob<'_>,
) -> StoreResult<ExportRecord> {
    let ledger_err =
        |e: crate::ledger::LedgerError| StoreError::Transient(format!("ledger unavailable: {e}"));
    let request = ledger.get(job.request_id).await.map_err(ledger_err)?;
    let states = ledger.task_states(job.request_id).await.map_err(ledger_err)?;
    let mut manifest = Manifest::new(
        &storage.notice,
        job.request_id,
        job.tenant_id,
        request.regime.as_str(),
        request.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        job.now.to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    // The parts to copy in, store by store in the service's store order.
    let mut parts: Vec<PartSummary> = Vec::new();
    let names: Vec<&str> = stores.all().iter().map(|a| a.name()).collect();
    for name in &names {
        let Some((_, state, _)) = states.iter().find(|(s, _, _)| s == name) else {
            continue;
        };
        match state {
            OutcomeState::Done => parts.push(read_summary(storage, job.request_id, name).await?),
            OutcomeState::Skipped => {
                manifest.store(&storage.notice, name, state.as_str(), 0);
            }
            OutcomeState::Pending | OutcomeState::Running => {
                return Err(StoreError::Transient(format!("the {name} store has not finished its part yet")))
            }
            other => {
                return Err(StoreError::Fatal(format!(
                    "the {name} store's part did not complete ({other}): no archive without every store"
                )))
            }
        }
    }
    if let Some((_, state, _)) =
        states.iter().find(|(s, _, _)| s != ARCHIVE_TASK && !names.contains(&s.as_str()))
    {
        return Err(StoreError::Fatal(format!(
            "the request has a task this version does not know ({state})"
        )));
    }

    let path = ExportStorage::archive_path(job.request_id);
    let upload = BufWriter::with_capacity(storage.objects().clone(), path.clone(), UPLOAD_BUFFER)
        .with_max_concurrency(2);
    let mut zip = ZipOut::new(upload);
    let modified = UtcDateTime::from_unix(job.now.timestamp());
    let mut written = Vec::with_capacity(parts.len());
    let result = async {
        for part in &parts {
            let mut files = Vec::new();
            if part.has_records_file {
                let name = format!("{}.json", part.store);
                let src = open(storage, &ExportStorage::part_path(job.request_id, &part.store)).await?;
                let (bytes, sha256) = zip.add(&name, modified, src).await?;
                files.push(ManifestFile { path: name, bytes, sha256, record: None });
            }
            let adapter = stores.get(&part.store).ok_or_else(|| {
                StoreError::Fatal(format!("no adapter for store {:?} in this process", part.store))
            })?;
            let exporter = adapter.as_export();
            let mut names = HashSet::new();
            let mut erased = 0;
            for file in &part.files {
                let name = format!("{}/{}", part.store, unique_name(&mut names, &file.name));
                let exporter = exporter.ok_or_else(|| {
                    StoreError::Fatal(format!("the {} store lists no files to read", part.store))
                })?;
                let src = match exporter.read_file(&file.key).await {
                    Ok(src) => src,
                    // Erased since it was listed: a deletion of the subject ran meanwhile. The
                    // archive cannot hold it, and the platform no longer does; the manifest says so.
                    Err(StoreError::Gone(_)) => {
                        erased += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let (bytes, sha256) = zip.add(&name, modified, src).await?;
                files.push(ManifestFile { path: name, bytes, sha256, record: Some(file.record.clone()) });
            }
            written.push((part, files, erased));
        }
        for (part, files, erased) in written.drain(..) {
            let entry = manifest.store(
                &storage.notice,
                &part.store,
                OutcomeState::Done.as_str(),
                part.records + part.files.len() as u64 - erased,
            );
            entry.files = files;
            entry.files_erased_meanwhile = erased;
        }
        // Store order, whatever order the parts and skips were met in.
        manifest.stores.sort_by_key(|s| names.iter().position(|n| *n == s.store));
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Fatal(format!("manifest: {e}")))?;
        let bytes = Bytes::from(json);
        let src: ByteStream = Box::pin(futures::stream::once(async move { Ok(bytes) }));
        zip.add("manifest.json", modified, src).await?;
        zip.finish().await
    }
    .await;
    let (size_bytes, sha256) = match result {
        Ok(done) => done,
        Err(e) => {
            zip.abort().await;
            return Err(e);
        }
    };
    Ok(ExportRecord {
        request_id: job.request_id.to_owned(),
        tenant_id: job.tenant_id.to_owned(),
        object_path: path.to_string(),
        format: ARCHIVE_FORMAT.to_owned(),
        size_bytes,
        sha256,
        created_at: job.now,
        expires_at: job.now + storage.expiry,
        expired_at: None,
    })
}

async fn read_summary(storage: &ExportStorage, request_id: &str, store: &str) -> StoreResult<PartSummary> {
    let path = ExportStorage::summary_path(request_id, store);
    let bytes = match storage.objects().get(&path).await {
        Ok(found) => found.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(StoreError::Fatal(format!(
                "the {store} store's part is missing from the export storage"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Fatal(format!("the {store} store's part summary: {e}")))
}

async fn open(storage: &ExportStorage, path: &object_store::path::Path) -> StoreResult<ByteStream> {
    Ok(Box::pin(storage.objects().get(path).await?.into_stream().map_err(StoreError::from)))
}

/// A file name safe inside a ZIP and unique within its folder: only `[A-Za-z0-9._-]`, no
/// leading dot (so no `..`), and a counter when two recordings would share a name.
fn unique_name(taken: &mut HashSet<String>, wanted: &str) -> String {
    let mut clean: String = wanted
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect();
    if clean.is_empty() || clean.starts_with('.') {
        clean.insert(0, '_');
    }
    if taken.insert(clean.clone()) {
        return clean;
    }
    let (stem, ext) = match clean.rsplit_once('.') {
        Some((s, e)) => (s.to_owned(), format!(".{e}")),
        None => (clean.clone(), String::new()),
    };
    (2..)
        .map(|n| format!("{stem}-{n}{ext}"))
        .find(|candidate| taken.insert(candidate.clone()))
        .expect("some counter is free")
}

/// The ZIP writer's output: rawzip writes synchronously into this buffer, which is drained into
/// the upload (and the archive's hash) after every write.
#[derive(Clone, Default)]
struct Pending(Arc<Mutex<Vec<u8>>>);

impl Write for Pending {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("pending bytes").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct ZipOut {
    zip: Option<ZipArchiveWriter<Pending>>,
    pending: Pending,
    upload: Upload,
}

/// The archive's bytes on their way out: a task of its own hashes and uploads them, so hashing
/// the archive runs beside reading and hashing its files (two cores, twice the throughput).
struct Upload {
    tx: Option<mpsc::Sender<Piece>>,
    task: Option<JoinHandle<StoreResult<(u64, String)>>>,
}

enum Piece {
    Data(Bytes),
    /// Complete the upload. Closing the channel without it aborts the upload.
    Finish,
}

/// Pieces in flight between the ZIP writer and the upload (each at most a read chunk).
const UPLOAD_QUEUE: usize = 4;

impl Upload {
    fn start(mut out: BufWriter) -> Self {
        let (tx, mut rx) = mpsc::channel(UPLOAD_QUEUE);
        let task = tokio::spawn(async move {
            let (mut sha256, mut size) = (Sha256::new(), 0u64);
            while let Some(piece) = rx.recv().await {
                match piece {
                    Piece::Data(bytes) => {
                        sha256.update(&bytes);
                        size += bytes.len() as u64;
                        if let Err(e) = out.put(bytes).await {
                            let _ = out.abort().await;
                            return Err(StoreError::from(e));
                        }
                    }
                    Piece::Finish => {
                        out.shutdown().await.map_err(io_error)?;
                        return Ok((size, hex::encode(sha256.finalize())));
                    }
                }
            }
            let _ = out.abort().await;
            Err(StoreError::Transient("the archive was abandoned before it was finished".into()))
        });
        Self { tx: Some(tx), task: Some(task) }
    }

    async fn drain(&mut self, pending: &Pending) -> StoreResult<()> {
        let bytes = std::mem::take(&mut *pending.0.lock().expect("pending bytes"));
        if bytes.is_empty() {
            return Ok(());
        }
        self.send(Piece::Data(Bytes::from(bytes))).await
    }

    async fn send(&mut self, piece: Piece) -> StoreResult<()> {
        let tx = self.tx.as_ref().expect("upload open");
        if tx.send(piece).await.is_err() {
            // The upload task ended early: its error says why.
            self.tx = None;
            return Err(self
                .join()
                .await
                .err()
                .unwrap_or_else(|| StoreError::Transient("the upload ended early".into())));
        }
        Ok(())
    }

    async fn join(&mut self) -> StoreResult<(u64, String)> {
        let task = self.task.take().expect("upload task");
        task.await.map_err(|e| StoreError::Transient(format!("the archive upload task failed: {e}")))?
    }

    async fn finish(&mut self) -> StoreResult<(u64, String)> {
        self.send(Piece::Finish).await?;
        self.tx = None;
        self.join().await
    }

    async fn abort(&mut self) {
        self.tx = None;
        if self.task.is_some() {
            let _ = self.join().await;
        }
    }
}

fn zip_error(e: rawzip::Error) -> StoreError {
    StoreError::Fatal(format!("writing the archive: {e}"))
}

impl ZipOut {
    fn new(out: BufWriter) -> Self {
        let pending = Pending::default();
        Self { zip: Some(ZipArchiveWriter::new(pending.clone())), pending, upload: Upload::start(out) }
    }

    /// Adds one stored entry with `src`'s bytes; returns its size and sha256.
    async fn add(
        &mut self,
        name: &str,
        modified: UtcDateTime,
        mut src: ByteStream,
    ) -> StoreResult<(u64, String)> {
        let zip = self.zip.as_mut().expect("archive open");
        let (mut entry, config) = zip.new_file(name).last_modified(modified).start().map_err(zip_error)?;
        let mut data = config.wrap(&mut entry);
        let mut sha256 = Sha256::new();
        let mut bytes = 0u64;
        self.upload.drain(&self.pending).await?;
        while let Some(chunk) = src.try_next().await? {
            sha256.update(&chunk);
            bytes += chunk.len() as u64;
            data.write_all(&chunk).map_err(io_error)?;
            self.upload.drain(&self.pending).await?;
        }
        let (_, descriptor) = data.finish().map_err(zip_error)?;
        entry.finish(descriptor).map_err(zip_error)?;
        self.upload.drain(&self.pending).await?;
        Ok((bytes, hex::encode(sha256.finalize())))
    }

    /// Writes the central directory and completes the upload; returns the archive's size and
    /// sha256.
    async fn finish(&mut self) -> StoreResult<(u64, String)> {
        self.zip.take().expect("archive open").finish().map_err(zip_error)?;
        self.upload.drain(&self.pending).await?;
        self.upload.finish().await
    }

    async fn abort(&mut self) {
        self.upload.abort().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_the_archive_are_safe_and_unique() {
        let mut taken = HashSet::new();
        assert_eq!(unique_name(&mut taken, "c1.wav"), "c1.wav");
        assert_eq!(unique_name(&mut taken, "c1.wav"), "c1-2.wav");
        assert_eq!(unique_name(&mut taken, "c1.wav"), "c1-3.wav");
        assert_eq!(unique_name(&mut taken, "../../etc/passwd"), "_.._.._etc_passwd");
        assert_eq!(unique_name(&mut taken, ".hidden"), "_.hidden");
        assert_eq!(unique_name(&mut taken, ""), "_");
    }
}
