//! A store's part of an export: its records streamed as a JSON array into the export storage,
//! the files to copy in streamed as JSON lines beside it, and a summary (counts) written last —
//! the archive reads a part only through its summary, so a part cut short by a crash is never
//! used. Neither list is held in memory: a subject with 100,000 recordings costs what one does.
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::{buffered::BufWriter, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncWriteExt;

use super::ExportStorage;
use crate::stores::{ExportFile, ExportSink, Record, StoreError, StoreResult};

/// Bytes buffered before a part goes out as a multipart upload (S3's smallest part is 5 MiB).
const UPLOAD_BUFFER: usize = 5 * 1024 * 1024;

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
    request_id: String,
    store: String,
    records_out: Option<BufWriter>,
    records: u64,
    files_out: Option<BufWriter>,
    files: u64,
}

impl PartWriter {
    pub fn new(storage: &ExportStorage, request_id: &str, store: &str) -> Self {
        Self {
            objects: storage.objects().clone(),
            request_id: request_id.to_owned(),
            store: store.to_owned(),
            records_out: None,
            records: 0,
            files_out: None,
            files: 0,
        }
    }

    /// Closes the records file and writes the summary. A store with neither records nor files
    /// still gets its (empty) JSON file, so the archive shows the store was asked.
    pub async fn finish(mut self) -> StoreResult<PartSummary> {
        let has_records_file = match self.records_out.take() {
            Some(mut out) => {
                out.put(Bytes::from_static(b"\n]\n")).await?;
                out.shutdown().await.map_err(io_error)?;
                true
            }
            None if self.files == 0 => {
                let path = ExportStorage::part_path(&self.request_id, &self.store);
                self.objects.put(&path, PutPayload::from_static(b"[]\n")).await?;
                true
            }
            None => false,
        };
        if let Some(mut out) = self.files_out.take() {
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
        let mut line = Vec::with_capacity(256);
        line.extend_from_slice(if self.records == 0 { b"[\n" } else { b",\n" });
        serde_json::to_writer(&mut line, &record).map_err(|e| StoreError::Fatal(format!("a record: {e}")))?;
        let out = self.records_out.get_or_insert_with(|| {
            BufWriter::with_capacity(
                self.objects.clone(),
                ExportStorage::part_path(&self.request_id, &self.store),
                UPLOAD_BUFFER,
            )
            .with_max_concurrency(2)
        });
        out.put(Bytes::from(line)).await?;
        self.records += 1;
        Ok(())
    }

    async fn file(&mut self, file: ExportFile) -> StoreResult<()> {
        let mut line =
            serde_json::to_vec(&file).map_err(|e| StoreError::Fatal(format!("a file entry: {e}")))?;
        line.push(b'\n');
        let out = self.files_out.get_or_insert_with(|| {
            BufWriter::with_capacity(
                self.objects.clone(),
                ExportStorage::files_path(&self.request_id, &self.store),
                UPLOAD_BUFFER,
            )
            .with_max_concurrency(2)
        });
        out.put(Bytes::from(line)).await?;
        self.files += 1;
        Ok(())
    }
}

pub(super) fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Transient(format!("export storage: {e}"))
}
