//! `dsr export` and `dsr download`: submit an export, and fetch its archive to a file with a
//! progress bar — resuming a partial download, and checking the sha256 at the end.
use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::client::{self, connect, follow, regime, render, status_error, subject, Client, Connection};
use crate::api::pb;

pub async fn export(
    conn: &Connection,
    s: &client::SubjectArgs,
    submit: &client::SubmitArgs,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let req = pb::SubmitExportRequest {
        subject: Some(subject(s)),
        regime: regime(&submit.regime)?,
        idempotency_key: submit.idempotency_key.clone(),
        requested_by: submit.requested_by.clone(),
    };
    let r = client.submit_export(req).await.map_err(status_error)?.into_inner();
    print!("{}", render(&r));
    if submit.watch || output.is_some() {
        follow(&mut client, &r.id).await?;
    }
    if let Some(path) = output {
        download_to(&mut client, &r.id, path).await?;
    }
    Ok(())
}

pub async fn download(conn: &Connection, id: &str, output: &Path) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    download_to(&mut client, id, output).await
}

/// Downloads into `<output>.part` (resuming it if present), checks size and sha256 against
/// `ExportInfo`, then renames it to `output`.
async fn download_to(client: &mut Client, id: &str, output: &Path) -> anyhow::Result<()> {
    let r = client
        .get_request(pb::GetRequestRequest { id: id.to_owned() })
        .await
        .map_err(status_error)?
        .into_inner();
    let info = r.export.clone().ok_or_else(|| {
        anyhow::anyhow!("request {id} has no archive (yet): `dsr status {id}` says where it stands")
    })?;
    let partial = part_path(output);
    let mut hasher = Sha256::new();
    let mut offset = match tokio::fs::metadata(&partial).await {
        Ok(m) if m.len() <= info.size_bytes => {
            // Resume: hash what is already there, then ask for the rest.
            let mut f = tokio::fs::File::open(&partial).await?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            m.len()
        }
        _ => 0,
    };
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(offset > 0)
        .write(true)
        .truncate(offset == 0)
        .mode(0o600)
        .open(&partial)
        .await
        .with_context(|| format!("opening {}", partial.display()))?;
    // The archive is the subject's data: private, also when a partial file was left wider.
    crate::files::make_private(&partial)?;
    if offset > 0 {
        eprintln!("resuming at byte {offset} of {}", info.size_bytes);
    }
    let mut stream = client
        .download_export(pb::DownloadExportRequest { id: id.to_owned(), offset })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut progress = Progress::new(info.size_bytes);
    progress.show(offset);
    let mut out = crate::export::DownloadFile::start(file.into_std().await, hasher);
    while let Some(chunk) = stream.message().await.map_err(|e| {
        anyhow::anyhow!(
            "{:?}: {} — run the same command again to resume from byte {offset}",
            e.code(),
            e.message()
        )
    })? {
        anyhow::ensure!(
            chunk.offset == offset,
            "the server sent byte {} where {offset} was expected",
            chunk.offset
        );
        offset += chunk.data.len() as u64;
        out.write(chunk.data).await?;
        progress.show(offset);
    }
    let (_, hasher) = out.finish().await?;
    progress.done();
    let sha256 = hex::encode(hasher.finalize());
    anyhow::ensure!(offset == info.size_bytes, "got {offset} bytes, expected {}", info.size_bytes);
    if sha256 != info.sha256 {
        tokio::fs::remove_file(&partial).await.ok();
        anyhow::bail!(
            "sha256 mismatch: got {sha256}, expected {}; the partial file was removed, download again",
            info.sha256
        );
    }
    tokio::fs::rename(&partial, output).await.with_context(|| format!("writing {}", output.display()))?;
    println!("{}  {} bytes  sha256 {sha256} (verified)", output.display(), offset);
    Ok(())
}

fn part_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".part");
    output.with_file_name(name)
}

/// A one-line progress bar on stderr (only on a terminal; a log gets the final line).
struct Progress {
    total: u64,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        Self { total, started: Instant::now(), last: None, tty: std::io::stderr().is_terminal() }
    }

    fn show(&mut self, done: u64) {
        if !self.tty || self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.last = Some(Instant::now());
        let frac = if self.total == 0 { 1.0 } else { done as f64 / self.total as f64 };
        let width = 30;
        let filled = (frac * width as f64).round() as usize;
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3) / 1_048_576.0;
        eprint!(
            "\r[{}{}] {:>5.1}%  {:.1}/{:.1} MiB  {:.1} MiB/s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            frac * 100.0,
            done as f64 / 1_048_576.0,
            self.total as f64 / 1_048_576.0,
            rate
        );
        let _ = std::io::stderr().flush();
    }

    fn done(&mut self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_partial_file_sits_next_to_the_output() {
        assert_eq!(
            super::part_path(std::path::Path::new("/tmp/x.zip")),
            std::path::Path::new("/tmp/x.zip.part")
        );
        assert_eq!(super::part_path(std::path::Path::new("x.zip")), std::path::Path::new("x.zip.part"));
    }
}
