//! Private files: everything dsr writes holds personal data (the SQLite ledger, recordings,
//! export archives, downloaded archives), so it is readable by the service's own user only —
//! directories 0700 and files 0600, whatever umask the process was started with — and spools,
//! temporary files nobody else can open.
use std::path::Path;

use anyhow::Context;

/// A spool: an unlinked temporary file (in `$TMPDIR`), gone with its handle or the process,
/// for what is written once and read back once (an export's candidate keys, a ZIP's central
/// directory) rather than held in memory.
pub async fn spool_file() -> std::io::Result<tokio::fs::File> {
    let file = tokio::task::spawn_blocking(tempfile::tempfile).await.map_err(std::io::Error::other)??;
    Ok(tokio::fs::File::from_std(file))
}

/// The mode bits no file or directory dsr creates may have: group and others get nothing.
const PRIVATE_UMASK: u32 = 0o077;

/// Narrows the process umask so that every file created from now on — by SQLite, by
/// object_store's local backend, by this crate — is 0600 and every directory 0700, even when the
/// process was started with a permissive umask (0000, 0022). Affects the whole process.
#[cfg(unix)]
pub fn restrict_umask() {
    // SAFETY: umask(2) cannot fail and touches no memory; it only sets the process's mask.
    unsafe {
        let old = libc::umask(PRIVATE_UMASK as libc::mode_t);
        libc::umask(old | PRIVATE_UMASK as libc::mode_t);
    }
}

/// Creates `dir` (and missing parents) readable by this user only, and narrows an existing one
/// to 0700, so data left by an older version under a 0755 directory is closed as well.
#[cfg(unix)]
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & PRIVATE_UMASK != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !PRIVATE_UMASK))
            .with_context(|| format!("making the data directory {} private (0700)", dir.display()))?;
    }
    Ok(())
}

/// Makes a file this process writes (a downloaded archive) readable by this user only, also
/// when it already existed with a wider mode.
#[cfg(unix)]
pub fn make_private(file: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private (0600)", file.display()))
}

/// Bytes written to a file between two requests to start writing them to disk (`Writeback`).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Starts the disk writes of a large file while it is being written, a few MiB at a time,
/// instead of leaving every byte to the `fsync` at its end: the writes then overlap the rest of
/// the work (receiving, hashing), and the final `fsync` waits only for the last few MiB.
/// Measured on a 1 GiB archive, that wait was most of the gap to `cat` + `fsync`, because the
/// kernel starts writing dirty pages on its own only past `dirty_background_ratio` (10% of the
/// machine's memory). Only a hint: errors surface at the `fsync`, which still decides.
#[derive(Debug, Default)]
pub struct Writeback {
    unsent: u64,
}

impl Writeback {
    /// Counts `bytes` just written to `file`; every `WRITEBACK_EVERY` bytes, starts writing
    /// what is dirty back to disk, without waiting for it.
    pub fn wrote(&mut self, file: &std::fs::File, bytes: u64) {
        self.unsent += bytes;
        if self.unsent >= WRITEBACK_EVERY {
            self.unsent = 0;
            start_writeback(file);
        }
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range(2) touches no memory of ours; on a bad descriptor it returns an
    // error, which is ignored: this is a hint, and the fsync that follows reports failures.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File) {}

// dsr runs on Linux; elsewhere these keep it building, with the platform's own defaults.
#[cfg(not(unix))]
pub fn restrict_umask() {}

#[cfg(not(unix))]
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))
}

#[cfg(not(unix))]
pub fn make_private(_file: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_data_directory_is_created_private_and_an_open_one_is_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b/data");
        create_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        let file = open.join("x.zip");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        make_private(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
    }
}
