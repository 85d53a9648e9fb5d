//! The archive step of an export: once every store has written its part, stream the parts and
//! the recordings' audio into one ZIP in the export storage — hashing each file for the manifest
//! and the whole archive for `ExportInfo.sha256` on the way — and write `manifest.json` last.
//! Memory stays flat: bytes pass through in chunks of at most a few hundred KiB, and the upload
//! buffers at most three parts (`ExportStorage::upload`).
//!
//! Entries are stored, not compressed (audio does not compress; JSON stays readable by anything
//! that opens a ZIP), with data descriptors, so nothing needs to seek; ZIP64 takes over past
//! 4 GiB. Re-running the step after a crash rewrites the same archive from the same parts.
use std::collections::HashSet;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use object_store::{buffered::BufWriter, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
    task::JoinHandle,
};

use super::{
    manifest::{Manifest, ManifestFile, ManifestWriter},
    part::io_error,
    zip::ZipStream,
    ExportStorage, PartSummary, ARCHIVE_FORMAT,
};
use crate::{
    domain::OutcomeState,
    ledger::{ExportRecord, Ledger, ARCHIVE_TASK},
    stores::{ByteStream, ExportFile, StoreError, StoreRegistry, StoreResult},
};

/// What the archive step needs to know about the request.
pub struct ArchiveJob<'a> {
    pub request_id: &'a str,
    pub tenant_id: &'a str,
    pub now: DateTime<Utc>,
}

/// A store's place in the archive: its part, or skipped.
enum Planned {
    Done(PartSummary),
    Skipped,
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
    let manifest = Manifest::new(
        &storage.notice,
        job.request_id,
        job.tenant_id,
        request.regime.as_str(),
        request.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        job.now.to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    // Every store's part (a summary: counts, not lists), in the service's store order.
    let mut plan: Vec<(&str, Planned)> = Vec::new();
    let names: Vec<&str> = stores.all().iter().map(|a| a.name()).collect();
    for name in &names {
        let Some((_, state, _)) = states.iter().find(|(s, _, _)| s == name) else {
            continue;
        };
        match state {
            OutcomeState::Done => {
                plan.push((name, Planned::Done(read_summary(storage, job.request_id, name).await?)))
            }
            OutcomeState::Skipped => plan.push((name, Planned::Skipped)),
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
    let upload = storage.upload(path.clone());
    let mut zip = ZipOut::new(upload).await?;
    // The manifest goes last in the archive but is written as the files go in: into the export
    // storage beside the parts, then copied into the archive.
    let spool_path = ExportStorage::manifest_spool_path(job.request_id);
    let mut spool = storage.upload(spool_path.clone());
    let modified = job.now;
    let result = async {
        let (mut entries, head) = ManifestWriter::start(&manifest);
        spool.put(Bytes::from(head)).await?;
        for (name, planned) in &plan {
            let Planned::Done(part) = planned else {
                spool.put(Bytes::from(entries.open_store(name, OutcomeState::Skipped.as_str()))).await?;
                spool.put(Bytes::from(entries.close_store(&storage.notice, name, 0, 0))).await?;
                continue;
            };
            spool.put(Bytes::from(entries.open_store(name, OutcomeState::Done.as_str()))).await?;
            if part.has_records_file {
                let file_name = format!("{}.json", part.store);
                let src = open(storage, &ExportStorage::part_path(job.request_id, &part.store)).await?;
                let (bytes, sha256) = zip.add(&file_name, modified, src).await?;
                let entry = ManifestFile { path: file_name, bytes, sha256, record: None };
                spool.put(Bytes::from(entries.file(&entry))).await?;
            }
            let adapter = stores.get(&part.store).ok_or_else(|| {
                StoreError::Fatal(format!("no adapter for store {:?} in this process", part.store))
            })?;
            let exporter = adapter.as_export();
            let mut taken = NameSet::default();
            let mut erased = 0;
            // Files are opened a few ahead of the one being written, in order: a small file's
            // open and reads are each a hop to a blocking thread, which one after the other
            // left the archive waiting most of the time (100,000 files of 1 KiB: 16.8 s).
            let mut listed = part_files(storage, job.request_id, part)
                .await?
                .map_ok(|file| async move {
                    let exporter = exporter.ok_or_else(|| {
                        StoreError::Fatal(format!("the {} store lists no files to read", part.store))
                    })?;
                    let src = match exporter.read_file(&file.key).await {
                        Ok(src) => Some(read_ahead(src).await?),
                        // Erased since it was listed: a deletion of the subject ran meanwhile.
                        // The archive cannot hold it, and the platform no longer does; the
                        // manifest says so.
                        Err(StoreError::Gone(_)) => None,
                        Err(e) => return Err(e),
                    };
                    Ok((file, src))
                })
                .try_buffered(READ_AHEAD_FILES);
            while let Some((file, src)) = listed.try_next().await? {
                let Some(src) = src else {
                    erased += 1;
                    continue;
                };
                let file_name = format!("{}/{}", part.store, taken.unique(&file.name));
                let (bytes, sha256) = zip.add(&file_name, modified, src).await?;
                let entry = ManifestFile { path: file_name, bytes, sha256, record: Some(file.record) };
                spool.put(Bytes::from(entries.file(&entry))).await?;
            }
            let records = part.records + part.file_count() - erased;
            spool.put(Bytes::from(entries.close_store(&storage.notice, name, records, erased))).await?;
        }
        spool.put(Bytes::from(entries.finish())).await?;
        spool.shutdown().await.map_err(io_error)?;
        zip.add("manifest.json", modified, open(storage, &spool_path).await?).await?;
        zip.finish().await
    }
    .await;
    let (size_bytes, sha256) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = spool.abort().await;
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

/// The files a part lists, one at a time: from its `.files.jsonl`, read line by line (or from
/// the summary itself, as an earlier version wrote it).
async fn part_files<'a>(
    storage: &'a ExportStorage,
    request_id: &str,
    part: &'a PartSummary,
) -> StoreResult<BoxStream<'a, StoreResult<ExportFile>>> {
    if part.listed_files == 0 {
        return Ok(futures::stream::iter(part.files.iter().cloned().map(Ok)).boxed());
    }
    let src = open(storage, &ExportStorage::files_path(request_id, &part.store)).await?;
    let lines = futures::stream::try_unfold(
        (src, BytesMut::new(), false),
        |(mut src, mut buf, mut ended)| async move {
            loop {
                if let Some(at) = buf.iter().position(|b| *b == b'\n') {
                    let line = buf.split_to(at + 1);
                    let file: ExportFile = serde_json::from_slice(&line[..at])
                        .map_err(|e| StoreError::Fatal(format!("a part's file list: {e}")))?;
                    return Ok(Some((file, (src, buf, ended))));
                }
                if ended {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Err(StoreError::Fatal("a part's file list ends mid-line".into()));
                }
                match src.try_next().await? {
                    Some(chunk) => buf.extend_from_slice(&chunk),
                    None => ended = true,
                }
            }
        },
    );
    Ok(lines.boxed())
}

/// Files opened ahead of the one going into the archive.
const READ_AHEAD_FILES: usize = 8;

/// Bytes of a file read ahead: all of a small one. Each file read ahead holds at most this
/// plus one read (`stores::objects`: 512 KiB on a local disk), so a few MiB in all.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// Reads the first `READ_AHEAD_BYTES` of `src` (or all of it) now; returns a stream of the same
/// bytes, the rest read when asked for.
async fn read_ahead(mut src: ByteStream) -> StoreResult<ByteStream> {
    let (mut head, mut len) = (Vec::new(), 0);
    while len < READ_AHEAD_BYTES {
        match src.try_next().await? {
            Some(chunk) => {
                len += chunk.len();
                head.push(Ok(chunk));
            }
            None => return Ok(futures::stream::iter(head).boxed()),
        }
    }
    Ok(futures::stream::iter(head).chain(src).boxed())
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

/// The names taken in one folder of the archive, as 64-bit hashes: 100,000 recordings cost
/// under 2 MB, not their names. Two different names that hash alike only make the second take
/// a counter, so names stay unique either way.
#[derive(Default)]
struct NameSet(HashSet<u64>);

impl NameSet {
    fn insert(&mut self, name: &str) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        self.0.insert(h.finish())
    }

    /// A file name safe inside a ZIP and unique within its folder: only `[A-Za-z0-9._-]`, no
    /// leading dot (so no `..`), and a counter when two recordings would share a name.
    fn unique(&mut self, wanted: &str) -> String {
        let mut clean: String = wanted
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
            .collect();
        if clean.is_empty() || clean.starts_with('.') {
            clean.insert(0, '_');
        }
        if self.insert(&clean) {
            return clean;
        }
        let (stem, ext) = match clean.rsplit_once('.') {
            Some((s, e)) => (s.to_owned(), format!(".{e}")),
            None => (clean.clone(), String::new()),
        };
        (2..)
            .map(|n| format!("{stem}-{n}{ext}"))
            .find(|candidate| self.insert(candidate))
            .expect("some counter is free")
    }
}

/// The archive being written: its ZIP framing (`super::zip`) and the upload its bytes go to.
/// A file's bytes go on as the `Bytes` they were read in; small pieces (headers, small files)
/// travel together, up to `PIECES_BYTES` at a time.
struct ZipOut {
    zip: Option<ZipStream>,
    upload: Upload,
    pieces: Vec<Bytes>,
    pieces_len: usize,
}

/// Bytes gathered before they go to the upload task together.
const PIECES_BYTES: usize = 256 * 1024;

/// The archive's bytes on their way out: a task of its own hashes and uploads them, so hashing
/// the archive runs beside reading and hashing its files (two cores, twice the throughput).
struct Upload {
    tx: Option<mpsc::Sender<Piece>>,
    task: Option<JoinHandle<StoreResult<(u64, String)>>>,
}

enum Piece {
    Data(Vec<Bytes>),
    /// Complete the upload. Closing the channel without it aborts the upload.
    Finish,
}

/// Batches in flight between the ZIP writer and the upload (each `PIECES_BYTES` or a little more).
const UPLOAD_QUEUE: usize = 4;

impl Upload {
    fn start(mut out: BufWriter) -> Self {
        let (tx, mut rx) = mpsc::channel(UPLOAD_QUEUE);
        let task = tokio::spawn(async move {
            let (mut sha256, mut size) = (Sha256::new(), 0u64);
            while let Some(piece) = rx.recv().await {
                match piece {
                    Piece::Data(pieces) => {
                        for bytes in pieces {
                            sha256.update(&bytes);
                            size += bytes.len() as u64;
                            if let Err(e) = out.put(bytes).await {
                                let _ = out.abort().await;
                                return Err(StoreError::from(e));
                            }
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

impl ZipOut {
    async fn new(out: BufWriter) -> StoreResult<Self> {
        Ok(Self {
            zip: Some(ZipStream::new().await.map_err(io_error)?),
            upload: Upload::start(out),
            pieces: Vec::new(),
            pieces_len: 0,
        })
    }

    /// Passes `bytes` on, with the pieces gathered before it once they are `PIECES_BYTES`.
    async fn put(&mut self, bytes: Bytes) -> StoreResult<()> {
        self.pieces_len += bytes.len();
        self.pieces.push(bytes);
        if self.pieces_len >= PIECES_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> StoreResult<()> {
        if self.pieces.is_empty() {
            return Ok(());
        }
        self.pieces_len = 0;
        let pieces = std::mem::take(&mut self.pieces);
        self.upload.send(Piece::Data(pieces)).await
    }

    /// Adds one stored entry with `src`'s bytes; returns its size and sha256.
    async fn add(
        &mut self,
        name: &str,
        modified: DateTime<Utc>,
        mut src: ByteStream,
    ) -> StoreResult<(u64, String)> {
        let zip = self.zip.as_mut().expect("archive open");
        let header = zip.start(name, modified).map_err(io_error)?;
        self.put(header).await?;
        let mut sha256 = Sha256::new();
        // PCLMULQDQ where the CPU has it: a table-driven CRC costs about a fifth of a second per
        // GiB more.
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc);
        let mut bytes = 0u64;
        while let Some(chunk) = src.try_next().await? {
            sha256.update(&chunk);
            crc.update(&chunk);
            bytes += chunk.len() as u64;
            self.put(chunk).await?;
        }
        let zip = self.zip.as_mut().expect("archive open");
        let descriptor = zip.end(crc.finalize() as u32, bytes).await.map_err(io_error)?;
        self.put(descriptor).await?;
        Ok((bytes, hex::encode(sha256.finalize())))
    }

    /// Copies out the central directory and the end records, and completes the upload; returns
    /// the archive's size and sha256.
    async fn finish(&mut self) -> StoreResult<(u64, String)> {
        let zip = self.zip.take().expect("archive open");
        let (mut central, end) = zip.finish().await.map_err(io_error)?;
        loop {
            let mut buf = BytesMut::with_capacity(PIECES_BYTES);
            while buf.len() < PIECES_BYTES {
                if central.read_buf(&mut buf).await.map_err(io_error)? == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            self.put(buf.freeze()).await?;
        }
        self.put(end).await?;
        self.flush().await?;
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
        let mut taken = NameSet::default();
        assert_eq!(taken.unique("c1.wav"), "c1.wav");
        assert_eq!(taken.unique("c1.wav"), "c1-2.wav");
        assert_eq!(taken.unique("c1.wav"), "c1-3.wav");
        assert_eq!(taken.unique("../../etc/passwd"), "_.._.._etc_passwd");
        assert_eq!(taken.unique(".hidden"), "_.hidden");
        assert_eq!(taken.unique(""), "_");
    }
}
