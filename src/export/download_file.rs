//! The client's end of `DownloadExport`: chunks handed over as they arrive and written to the
//! file, and hashed, on a blocking thread of their own, so the task receiving from the network
//! never waits on the disk or the hash (measured: that wait was most of a download's time). The
//! file is written back to disk as it grows (`files::Writeback`), so the closing `fsync` is short.
use std::io::Write;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};

/// Chunks queued for the writer (each at most a `DownloadExport` chunk: a few MiB in all).
const QUEUE: usize = 32;

pub struct DownloadFile {
    tx: Option<mpsc::Sender<Bytes>>,
    writer: JoinHandle<std::io::Result<(u64, Sha256)>>,
}

impl DownloadFile {
    /// Writes to `file` from its current position, adding to `hasher` (which may hold a
    /// resumed download's first bytes).
    pub fn start(file: std::fs::File, mut hasher: Sha256) -> Self {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let mut written = 0u64;
            let mut writeback = crate::files::Writeback::default();
            while let Some(data) = rx.blocking_recv() {
                hasher.update(&data);
                out.write_all(&data)?;
                written += data.len() as u64;
                writeback.wrote(out.get_ref(), data.len() as u64);
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok((written, hasher))
        });
        Self { tx: Some(tx), writer }
    }

    /// Queues one chunk; waits only when the writer is `QUEUE` chunks behind.
    pub async fn write(&mut self, data: Bytes) -> std::io::Result<()> {
        let tx = self.tx.as_ref().expect("open");
        if tx.send(data).await.is_err() {
            // The writer stopped on an error: `finish` reports it.
            self.tx = None;
            return Err(self
                .finish_inner()
                .await
                .err()
                .unwrap_or_else(|| std::io::Error::other("writer stopped")));
        }
        Ok(())
    }

    /// Writes what is queued, syncs the file to disk; returns the bytes written here and the
    /// hash of everything.
    pub async fn finish(mut self) -> std::io::Result<(u64, Sha256)> {
        self.tx = None;
        self.finish_inner().await
    }

    async fn finish_inner(&mut self) -> std::io::Result<(u64, Sha256)> {
        self.tx = None;
        (&mut self.writer).await.map_err(std::io::Error::other)?
    }
}
