//! A store's part of an export: its records streamed as a JSON array into the export storage,
//! the files to copy in streamed as JSON lines beside it, and a summary (counts) written last —
//! the archive reads a part only through its summary, so a part cut short by a crash is never
//! used. Neither list is held in memory: a subject with 100,000 recordings costs what one does.
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use object_store::{buffered::BufWriter, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncWriteExt;

use super::ExportStorage;
use crate::stores::{ExportFile, ExportSink, Record, StoreError, StoreResult};

/// What a store's part holds; read by the archive.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartSummary {
    pub store: String,
    /// Rows written to `<store>.json`.
    pub records: u64,
    /// Whether `<store>.json` exists: a store that lists files and has no rows of its own
    /// (recordings) has none.
    pub has_records_file: bool,
    /// Files listed in `<store>.files.jsonl`, one JSON `ExportFile` a line.
    #[serde(default)]
    pub listed_files: u64,
    /// The files, inline: only in a summary written by an earlier version (read, never written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ExportFile>,
}

impl PartSummary {
    /// Files to copy in, however the summary lists them.
    pub fn file_count(&self) -> u64 {
        self.listed_files + self.files.len() as u64
    }
}

/// An `ExportSink` writing one store's part.
pub struct PartWriter {
    objects: Arc<dyn ObjectStore>,
    upload_buffer: usize,
    request_id: String,
    store: String,
    records_out: Option<BufWriter>,
    records: u64,
    files_out: Option<BufWriter>,
    files: u64,
    /// Lines gathered before they go to their upload together (`LINES_BYTES`): one small
    /// allocation a record would cost more than the record.
    records_lines: BytesMut,
    files_lines: BytesMut,
}

/// Bytes of lines gathered before they are handed to the upload.
const LINES_BYTES: usize = 64 * 1024;

impl PartWriter {
    pub fn new(storage: &ExportStorage, request_id: &str, store: &str) -> Self {
        Self {
            objects: storage.objects().clone(),
            upload_buffer: storage.upload_buffer,
            request_id: request_id.to_owned(),
            store: store.to_owned(),
            records_out: None,
            records: 0,
            files_out: None,
            files: 0,
            records_lines: BytesMut::new(),
            files_lines: BytesMut::new(),
        }
    }

    /// Closes the records file and writes the summary. A store with neither records nor files
    /// still gets its (empty) JSON file, so the archive shows the store was asked.
    pub async fn finish(mut self) -> StoreResult<PartSummary> {
        let has_records_file = if self.records > 0 {
            self.records_lines.extend_from_slice(b"\n]\n");
            let lines = self.records_lines.split().freeze();
            let out = self.records_out();
            out.put(lines).await?;
            out.shutdown().await.map_err(io_error)?;
            true
        } else if self.files == 0 {
            let path = ExportStorage::part_path(&self.request_id, &self.store);
            self.objects.put(&path, PutPayload::from_static(b"[]\n")).await?;
            true
        } else {
            false
        };
        if self.files > 0 {
            let lines = self.files_lines.split().freeze();
            let out = self.files_out();
            out.put(lines).await?;
            out.shutdown().await.map_err(io_error)?;
        }
        let summary = PartSummary {
            store: self.store.clone(),
            records: self.records,
            has_records_file,
            listed_files: self.files,
            files: Vec::new(),
        };
        let json =
            serde_json::to_vec(&summary).map_err(|e| StoreError::Fatal(format!("part summary: {e}")))?;
        let path = ExportStorage::summary_path(&self.request_id, &self.store);
        self.objects.put(&path, PutPayload::from(json)).await?;
        Ok(summary)
    }

    /// The upload of `<store>.json`, started by the first lines that go out.
    fn records_out(&mut self) -> &mut BufWriter {
        let path = ExportStorage::part_path(&self.request_id, &self.store);
        let (objects, n) = (&self.objects, self.upload_buffer);
        self.records_out.get_or_insert_with(|| upload(objects, path, n))
    }

    /// The upload of `<store>.files.jsonl`.
    fn files_out(&mut self) -> &mut BufWriter {
        let path = ExportStorage::files_path(&self.request_id, &self.store);
        let (objects, n) = (&self.objects, self.upload_buffer);
        self.files_out.get_or_insert_with(|| upload(objects, path, n))
    }

    /// Gives up the records upload (an error in the store): nothing is left half-written.
    pub async fn abort(mut self) {
        for mut out in [self.records_out.take(), self.files_out.take()].into_iter().flatten() {
            let _ = out.abort().await;
        }
    }
}

#[async_trait]
impl ExportSink for PartWriter {
    async fn record(&mut self, record: Record) -> StoreResult<()> {
        let lines = &mut self.records_lines;
        lines.extend_from_slice(if self.records == 0 { b"[\n" } else { b",\n" });
        serde_json::to_writer(lines.writer(), &record)
            .map_err(|e| StoreError::Fatal(format!("a record: {e}")))?;
        self.records += 1;
        if self.records_lines.len() < LINES_BYTES {
            return Ok(());
        }
        let lines = self.records_lines.split().freeze();
        self.records_out().put(lines).await?;
        Ok(())
    }

    async fn file(&mut self, file: ExportFile) -> StoreResult<()> {
        let lines = &mut self.files_lines;
        serde_json::to_writer(lines.writer(), &file)
            .map_err(|e| StoreError::Fatal(format!("a file entry: {e}")))?;
        lines.extend_from_slice(b"\n");
        self.files += 1;
        if self.files_lines.len() < LINES_BYTES {
            return Ok(());
        }
        let lines = self.files_lines.split().freeze();
        self.files_out().put(lines).await?;
        Ok(())
    }
}

pub(super) fn upload(
    objects: &Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    buffer: usize,
) -> BufWriter {
    BufWriter::with_capacity(objects.clone(), path, buffer).with_max_concurrency(2)
}

pub(super) fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Transient(format!("export storage: {e}"))
}
