//! The client's end of `DownloadExport`: chunks handed over as they arrive, written to the file
//! on a blocking thread and hashed on a thread of their own, so the task receiving from the
//! network never waits on the disk or the hash (measured: that wait was most of a download's
//! time), and the two do not wait for each other (SHA-256 runs at about 1.7 GB/s here, a copy
//! into the page cache at about 2 GB/s: done one after the other, they took twice as long). The
//! file is written back to disk as it grows (`files::Writeback`), so the closing `fsync` is short.
use std::io::Write;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};

/// Chunks queued for the writer, and for the hasher (each at most a `DownloadExport` chunk: a
/// few MiB in all).
const QUEUE: usize = 32;

pub struct DownloadFile {
    tx: Option<mpsc::Sender<Bytes>>,
    writer: JoinHandle<std::io::Result<(u64, Sha256)>>,
}

impl DownloadFile {
    /// Writes to `file` from its current position, adding to `hasher` (which may hold a
    /// resumed download's first bytes).
    pub fn start(file: std::fs::File, hasher: Sha256) -> Self {
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            let (to_hash, chunks) = std::sync::mpsc::sync_channel::<Bytes>(QUEUE);
            let hashing = std::thread::Builder::new().name("dsr-download-hash".into()).spawn(move || {
                let mut hasher = hasher;
                for chunk in chunks {
                    hasher.update(&chunk);
                }
                hasher
            })?;
            let written = write_all(file, rx, &to_hash);
            // Closing the channel ends the hashing thread once it has hashed what was queued.
            drop(to_hash);
            let hasher = hashing.join().map_err(|_| std::io::Error::other("the hashing thread panicked"))?;
            Ok((written?, hasher))
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

/// The writer's loop: each chunk handed to the hasher, then written (no buffer in between: a
/// chunk is 64 KiB already), the file written back as it grows and synced at the end; returns
/// the bytes written.
fn write_all(
    mut file: std::fs::File,
    mut chunks: mpsc::Receiver<Bytes>,
    to_hash: &std::sync::mpsc::SyncSender<Bytes>,
) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut writeback = crate::files::Writeback::default();
    while let Some(data) = chunks.blocking_recv() {
        to_hash.send(data.clone()).map_err(|_| std::io::Error::other("the hashing thread stopped"))?;
        file.write_all(&data)?;
        written += data.len() as u64;
        writeback.wrote(&file, data.len() as u64);
    }
    file.sync_all()?;
    Ok(written)
}
