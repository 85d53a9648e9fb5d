//! Opens an object store (recordings, export archives) from a URL:
//! `file:///dir` for a local directory, `s3://bucket/prefix` for S3 or any S3-compatible API
//! (endpoint, region and keys from the usual `AWS_*` variables); and what an object-backed
//! catalog store does with its objects: delete and make sure they are gone, count those present,
//! read one.
use std::sync::Arc;

use anyhow::Context;
use futures::{future::try_join_all, StreamExt, TryStreamExt};
use object_store::{
    aws::AmazonS3Builder, chunked::ChunkedStore, local::LocalFileSystem, path::Path, prefix::PrefixStore,
    ObjectStore, ObjectStoreExt,
};
use url::Url;

use super::{StoreError, StoreResult};

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
            let local = LocalFileSystem::new_with_prefix(&dir)?.with_fsync(fsync);
            // What must be durable is written back to disk as it is written (`local_upload`).
            let local: Arc<dyn ObjectStore> = if fsync {
                Arc::new(super::local_upload::WritebackLocal::new(local))
            } else {
                Arc::new(local)
            };
            // Reads stream in large chunks (the default is 8 KiB): fewer, bigger copies.
            Ok(Arc::new(ChunkedStore::new(local, LOCAL_READ_CHUNK)))
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

/// The object store path of a key exactly as the platform stored it: no escaping (object_store's
/// `Path::from` would percent-encode `#`, `%`, `?` and more, and so address another object). A
/// leading `/` is relative to the store's URL. A key the object store cannot address at all
/// (a control character, an empty or `.` segment) is an error, never a silent miss.
pub fn object_path(key: &str) -> StoreResult<Path> {
    Path::parse(key).map_err(|_| {
        StoreError::Fatal(
            "an object key cannot be addressed in the object store (control character or empty segment)"
                .into(),
        )
    })
}

/// Object deletions and checks in flight at once.
const OBJECT_CONCURRENCY: usize = 16;

/// Deletes these objects and makes sure each is gone (deleting a missing object is fine).
pub async fn delete_all(objects: &dyn ObjectStore, keys: &[&str]) -> StoreResult<()> {
    for chunk in keys.chunks(OBJECT_CONCURRENCY) {
        try_join_all(chunk.iter().map(|key| async move {
            let path = object_path(key)?;
            match objects.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(StoreError::from(e)),
            }
            match objects.head(&path).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                Ok(_) => Err(StoreError::Transient("an object is still present after delete".into())),
                Err(e) => Err(e.into()),
            }
        }))
        .await?;
    }
    Ok(())
}

/// How many of these exact keys are present: a HEAD of each (the check does not trust the rows
/// that index them).
pub async fn count_present(objects: &dyn ObjectStore, keys: &[String]) -> StoreResult<u64> {
    let mut present = 0;
    for chunk in keys.chunks(OBJECT_CONCURRENCY) {
        let found = try_join_all(chunk.iter().map(|key| async move {
            match objects.head(&object_path(key)?).await {
                Ok(_) => Ok(1u64),
                Err(object_store::Error::NotFound { .. }) => Ok(0),
                Err(e) => Err(StoreError::from(e)),
            }
        }))
        .await?;
        present += found.iter().sum::<u64>();
    }
    Ok(present)
}

/// Opens an object for reading, as a stream of its bytes.
pub async fn read(objects: &dyn ObjectStore, key: &str) -> StoreResult<super::ByteStream> {
    let found = match objects.get(&object_path(key)?).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(StoreError::Gone("an object is no longer in the object store".into()))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(found.into_stream().map_err(StoreError::from).boxed())
}

/// The format of a file, from its object key's extension (`bin` when it has none that is plain).
pub fn extension(key: &str) -> &str {
    let name = key.rsplit('/').next().unwrap_or(key);
    match name.rsplit_once('.') {
        Some((_, ext))
            if !ext.is_empty() && ext.len() <= 8 && ext.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            ext
        }
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_extension_comes_from_the_key() {
        assert_eq!(super::extension("acme/c1.wav"), "wav");
        assert_eq!(super::extension("acme/c1"), "bin");
        assert_eq!(super::extension("a.b/c1"), "bin");
        assert_eq!(super::extension("acme/c1.../x"), "bin");
    }
}
