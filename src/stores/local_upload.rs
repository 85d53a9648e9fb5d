//! A local directory as durable object storage (export archives): object_store's
//! `LocalFileSystem` in everything but multipart uploads, whose parts are written at their offsets
//! and written back to disk as the file grows (`files::Writeback`). Completing one (fsync of the
//! file, rename into place, fsync of the directory, as `LocalFileSystem` does) then waits only
//! for its last few MiB instead of the whole archive: on a 1 GiB export that wait was a large
//! part of its time.
use std::{
    fmt,
    fs::{File, OpenOptions},
    io::ErrorKind,
    ops::Range,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::{
    local::LocalFileSystem, path::Path, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
    UploadPart,
};

use crate::files::Writeback;

/// `LocalFileSystem` (with fsync) whose multipart uploads write back as they go.
#[derive(Debug)]
pub struct WritebackLocal {
    inner: LocalFileSystem,
}

impl WritebackLocal {
    /// `inner` must sync what it writes (`with_fsync(true)`): this store is for durable data.
    pub fn new(inner: LocalFileSystem) -> Self {
        Self { inner }
    }
}

impl fmt::Display for WritebackLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WritebackLocal({})", self.inner)
    }
}

fn io_error(source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(source) }
}

#[async_trait]
impl ObjectStore for WritebackLocal {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if !opts.attributes.is_empty() {
            // Refused there, with the reason.
            return self.inner.put_multipart_opts(location, opts).await;
        }
        let dest = self.inner.path_to_filesystem(location)?;
        let staged = blocking(move || {
            let (file, staging) = staged(&dest)?;
            Ok(Staged { file, writeback: Writeback::default(), staging, dest })
        })
        .await?;
        Ok(Box::new(Upload { state: Arc::new(Mutex::new(Some(staged))), offset: 0 }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// A new staging file beside `dest`, named `<dest>#<n>` as `LocalFileSystem` names its own, so
/// its listings skip it; missing directories are created (private, by the process umask).
fn staged(dest: &std::path::Path) -> std::io::Result<(File, PathBuf)> {
    let mut n = 1u32;
    loop {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let path = PathBuf::from(name);
        match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => match path.parent() {
                Some(dir) => std::fs::create_dir_all(dir)?,
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// An upload's staging file while parts arrive, and where it goes when complete.
struct Staged {
    file: File,
    writeback: Writeback,
    staging: PathBuf,
    dest: PathBuf,
}

impl fmt::Debug for Staged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staged").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Upload {
    /// `None` once completed or aborted.
    state: Arc<Mutex<Option<Staged>>>,
    /// Where the next part goes.
    offset: u64,
}

impl Upload {
    /// The staging file, taken out: the upload has ended, whatever comes next.
    fn take(state: &Mutex<Option<Staged>>) -> Option<Staged> {
        state.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

fn ended() -> std::io::Error {
    std::io::Error::other("the upload was completed or aborted")
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| io_error(std::io::Error::other(e)))?.map_err(io_error)
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let offset = self.offset;
        self.offset += data.content_length() as u64;
        let state = self.state.clone();
        Box::pin(async move {
            blocking(move || {
                let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
                let staged = guard.as_mut().ok_or_else(ended)?;
                let mut at = offset;
                for piece in data.iter() {
                    staged.file.write_all_at(piece, at)?;
                    at += piece.len() as u64;
                }
                staged.writeback.wrote(&staged.file, at - offset);
                Ok(())
            })
            .await
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let state = self.state.clone();
        blocking(move || {
            let Staged { file, staging, dest, .. } = Upload::take(&state).ok_or_else(ended)?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&staging, &dest)?;
            if let Some(dir) = dest.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await?;
        Ok(PutResult { e_tag: None, version: None, extensions: Default::default() })
    }

    async fn abort(&mut self) -> Result<()> {
        let state = self.state.clone();
        blocking(move || {
            let Some(Staged { staging, .. }) = Upload::take(&state) else {
                return Ok(());
            };
            match std::fs::remove_file(&staging) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    use super::*;

    fn store(dir: &std::path::Path) -> WritebackLocal {
        WritebackLocal::new(LocalFileSystem::new_with_prefix(dir).unwrap().with_fsync(true))
    }

    #[tokio::test]
    async fn parts_land_at_their_offsets_and_the_object_appears_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let path = Path::from("exports/a/archive.zip");
        let mut upload = store.put_multipart(&path).await.unwrap();
        // Parts larger than the writeback step, written out of order.
        let first = vec![1u8; 9 << 20];
        let second = vec![2u8; 3 << 20];
        let (a, b) = (upload.put_part(first.clone().into()), upload.put_part(second.clone().into()));
        b.await.unwrap();
        a.await.unwrap();
        assert!(store.list(None).try_collect::<Vec<_>>().await.unwrap().is_empty(), "staging is not listed");
        upload.complete().await.unwrap();
        let got = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.len(), first.len() + second.len());
        assert_eq!(&got[..first.len()], &first[..]);
        assert_eq!(&got[first.len()..], &second[..]);
        let listed = store.list(None).try_collect::<Vec<_>>().await.unwrap();
        assert_eq!(
            listed.iter().map(|m| m.location.to_string()).collect::<Vec<_>>(),
            ["exports/a/archive.zip"]
        );
    }

    #[tokio::test]
    async fn an_aborted_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let path = Path::from("exports/b/archive.zip");
        let mut upload = store.put_multipart(&path).await.unwrap();
        upload.put_part(vec![7u8; 1024].into()).await.unwrap();
        upload.abort().await.unwrap();
        assert!(upload.complete().await.is_err(), "an aborted upload cannot complete");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("exports/b")).unwrap().collect();
        assert!(left.is_empty(), "the staging file is gone: {left:?}");
        assert!(matches!(store.head(&path).await, Err(object_store::Error::NotFound { .. })));
    }
}
