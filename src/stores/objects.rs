//! Opens an object store (recordings, export archives) from a URL:
//! `file:///dir` for a local directory, `s3://bucket/prefix` for S3 or any S3-compatible API
//! (endpoint, region and keys from the usual `AWS_*` variables).
use std::sync::Arc;

use anyhow::Context;
use object_store::{
    aws::AmazonS3Builder, chunked::ChunkedStore, local::LocalFileSystem, prefix::PrefixStore, ObjectStore,
};
use url::Url;

/// Bytes per chunk when streaming a local file.
const LOCAL_READ_CHUNK: usize = 512 * 1024;

pub fn open_object_store(url: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    open(url, false)
}

/// Like `open_object_store`, but a local directory syncs every file it writes to disk before the
/// write returns (S3 acknowledges only durable writes anyway): for what the ledger records as
/// done, such as export archives.
pub fn open_durable_object_store(url: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    open(url, true)
}

fn open(url: &str, fsync: bool) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let parsed = Url::parse(url)
        .with_context(|| format!("{url:?} is not an object store URL (file:///dir or s3://bucket/prefix)"))?;
    match parsed.scheme() {
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|_| anyhow::anyhow!("an object store URL must be file:///absolute/dir"))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // Reads stream in large chunks (the default is 8 KiB): fewer, bigger copies.
            Ok(Arc::new(ChunkedStore::new(
                Arc::new(LocalFileSystem::new_with_prefix(&dir)?.with_fsync(fsync)),
                LOCAL_READ_CHUNK,
            )))
        }
        "s3" => {
            // The S3 client's TLS uses the process-wide rustls provider (ring).
            crate::startup::install_crypto_provider();
            let bucket = parsed.host_str().context("the s3:// URL names no bucket")?;
            let s3 = AmazonS3Builder::from_env().with_bucket_name(bucket).build()?;
            let prefix = parsed.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(Arc::new(s3))
            } else {
                Ok(Arc::new(PrefixStore::new(s3, prefix)))
            }
        }
        other => anyhow::bail!("unsupported object store URL scheme {other:?}: use file:// or s3://"),
    }
}
