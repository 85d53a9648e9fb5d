//! `dsr bench export`: one subject with `--total-mib` of recordings (default 1 GiB) is exported
//! through a real `dsr serve` child process — store parts, the archive streamed into the export
//! storage, then the archive downloaded over gRPC — next to `cat` of the same recording files
//! into one file on the same disk, the floor. The server's peak resident memory (VmHWM) is read
//! from /proc at the end: the archive must never be held in memory.
//!
//! `--many-files N` then does the same for a second subject with N recordings of 1 KiB (one
//! run, a fresh server): memory must stay flat in the number of files too, so its peak is
//! reported on its own.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::{
    api::pb::{self, data_subject_rights_client::DataSubjectRightsClient},
    clock::{Clock, SystemClock},
    config::Settings,
    domain::TenantId,
    seed::{seed, SeedSpec, SeededSubject},
    startup::open_ledger,
    stores::{open_object_store, reference},
};

const MIB: f64 = 1024.0 * 1024.0;

pub async fn export(
    settings: Settings,
    config_file: Option<PathBuf>,
    total_mib: usize,
    calls: usize,
    runs: usize,
    many_files: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        calls >= 1 && total_mib >= 1 && runs >= 1,
        "--calls, --total-mib and --runs must be at least 1"
    );
    let recordings_dir = local_dir(&settings.recordings_url).context(
        "the export benchmark compares with `cat`, so recordings must be a local directory (file://)",
    )?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let tenant = format!("bench-export-{run}");
    let started = Instant::now();
    let (subject, files, bytes, backend) =
        seed_subject(&settings, &recordings_dir, &tenant, 0, calls, total_mib * 1024 * 1024 / calls).await?;
    println!(
        "dsr bench export: 1 subject, {calls} recordings, {:.0} MiB in all (seeded in {:.1} s), database {backend}",
        bytes as f64 / MIB,
        started.elapsed().as_secs_f64(),
    );
    // No retention sweep in the server (the many-files subject's calls go back years).
    let config_file = match config_file {
        Some(f) => Some(f),
        None => {
            let f = settings.data_dir.join("bench-server.toml");
            std::fs::write(&f, "[retention]\nsweep_interval_secs = 0\n")?;
            Some(f)
        }
    };

    // The service, as it runs in production: its own process.
    let mut server = Server::start(&settings, config_file.as_deref())?;
    let mut client = server.connect().await?;
    let wanted =
        pb::Subject { tenant_id: tenant.clone(), phone: subject.phone.clone(), ..Default::default() };
    let (mut cat, mut export, mut download) = (Vec::new(), Vec::new(), Vec::new());
    let mut archive_info = None;
    for run in 1..=runs {
        cat.push(cat_floor(&files, &settings.data_dir.join("bench-cat.out"))?);
        let (secs, info) = export_once(&mut client, &wanted).await?;
        export.push(secs);
        download.push(download_once(&mut client, &info, &settings.data_dir.join("bench-export.zip")).await?);
        println!(
            "run {run}: cat {:.2} s, export {:.2} s, download {:.2} s",
            cat[run - 1],
            export[run - 1],
            download[run - 1]
        );
        archive_info = Some(info);
    }
    let peak_kib = server.peak_rss_kib()?;
    server.stop();
    let info = archive_info.context("no run")?;

    let (cat_secs, export_secs, download_secs) =
        (median(&mut cat), median(&mut export), median(&mut download));
    println!("median of {runs} runs:");
    report(bytes, cat_secs, export_secs, download_secs, &info, peak_kib);

    if many_files > 0 {
        const SMALL: usize = 1024;
        let started = Instant::now();
        let (subject, files, bytes, _) =
            seed_subject(&settings, &recordings_dir, &tenant, 1, many_files, SMALL).await?;
        println!(
            "\nmany files: 1 subject, {many_files} recordings of {SMALL} bytes (seeded in {:.1} s), a fresh server, one run",
            started.elapsed().as_secs_f64()
        );
        let mut server = Server::start(&settings, config_file.as_deref())?;
        let mut client = server.connect().await?;
        let wanted =
            pb::Subject { tenant_id: tenant.clone(), phone: subject.phone.clone(), ..Default::default() };
        let cat = cat_floor(&files, &settings.data_dir.join("bench-cat.out"))?;
        let (export, info) = export_once(&mut client, &wanted).await?;
        let download = download_once(&mut client, &info, &settings.data_dir.join("bench-export.zip")).await?;
        let peak_kib = server.peak_rss_kib()?;
        server.stop();
        report(bytes, cat, export, download, &info, peak_kib);
    }
    Ok(())
}

/// Seeds subject number `first` of `tenant` with `calls` recordings of `each` bytes; returns
/// the subject, the recording files, their bytes in all, and the database's name.
async fn seed_subject(
    settings: &Settings,
    recordings_dir: &Path,
    tenant: &str,
    first: usize,
    calls: usize,
    each: usize,
) -> anyhow::Result<(SeededSubject, Vec<PathBuf>, u64, &'static str)> {
    let ledger = open_ledger(settings).await?;
    let db = ledger.db().clone();
    let tables = reference::Tables::default();
    reference::ensure_schema(&db, &tables).await?;
    let spec = SeedSpec {
        tenant: TenantId::parse("tenant", tenant)?,
        subjects: 1,
        calls,
        recording_bytes: each,
        first,
    };
    let mut subject: Option<SeededSubject> = None;
    seed(&db, &tables, open_object_store(&settings.recordings_url)?, &spec, SystemClock.now(), |s| {
        subject = Some(s)
    })
    .await?;
    let subject = subject.context("seeding made no subject")?;
    // Seeded call ids carry the subject's number: <tenant>-call-<subject>-<call>.
    let mine = format!("{tenant}-call-{first:06}-");
    let mut files = Vec::with_capacity(calls);
    for entry in std::fs::read_dir(recordings_dir.join(tenant))? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&mine)) {
            files.push(path);
        }
    }
    files.sort();
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len())).sum::<Result<_, _>>()?;
    Ok((subject, files, bytes, db.backend().name()))
}

fn report(
    bytes: u64,
    cat_secs: f64,
    export_secs: f64,
    download_secs: f64,
    info: &pb::ExportInfo,
    peak_kib: u64,
) {
    let mibs = |secs: f64| bytes as f64 / MIB / secs;
    println!("cat (floor)     {cat_secs:>7.2} s   {:>7.0} MiB/s   (cat of the recordings into one file, then fsync)", mibs(cat_secs));
    println!(
        "export          {export_secs:>7.2} s   {:>7.0} MiB/s   {:>5.0}% of cat   (submit to COMPLETED: parts, archive written, hashed, fsynced)",
        mibs(export_secs),
        100.0 * cat_secs / export_secs
    );
    println!(
        "download        {download_secs:>7.2} s   {:>7.0} MiB/s   {:>5.0}% of cat   (gRPC stream to a file, sha256 checked, fsynced)",
        mibs(download_secs),
        100.0 * cat_secs / download_secs
    );
    println!("archive         {:.0} MiB, sha256 {}", info.size_bytes as f64 / MIB, info.sha256);
    println!(
        "server peak RSS {:>7.1} MiB (VmHWM of the dsr serve process)   goal: export and download >= 50% of cat, peak RSS <= 64 MiB",
        peak_kib as f64 / 1024.0
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The floor: the same bytes read and written once, by `cat`, and synced to disk.
fn cat_floor(files: &[PathBuf], out: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let target = std::fs::File::create(out)?;
    // In batches: 100,000 names do not fit one command line.
    for batch in files.chunks(1000) {
        let status =
            Command::new("cat").args(batch).stdout(target.try_clone()?).status().context("running cat")?;
        anyhow::ensure!(status.success(), "cat failed");
    }
    target.sync_all()?;
    let secs = started.elapsed().as_secs_f64();
    std::fs::remove_file(out).ok();
    Ok(secs)
}

type Client = DataSubjectRightsClient<tonic::transport::Channel>;

/// Submit to COMPLETED.
async fn export_once(client: &mut Client, subject: &pb::Subject) -> anyhow::Result<(f64, pb::ExportInfo)> {
    let started = Instant::now();
    let submitted = client
        .submit_export(pb::SubmitExportRequest {
            subject: Some(subject.clone()),
            regime: pb::Regime::Gdpr as i32,
            requested_by: "dsr bench".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut watch =
        client.watch_request(pb::WatchRequestRequest { id: submitted.id.clone() }).await?.into_inner();
    let mut last = None;
    while let Some(r) = super::next_change(&mut watch).await? {
        last = Some(r);
    }
    let secs = started.elapsed().as_secs_f64();
    let done = last.context("the watch ended without a message")?;
    anyhow::ensure!(
        done.status == pb::RequestStatus::Completed as i32,
        "the export did not complete: {done:?}"
    );
    let mut info = done.export.context("a completed export without ExportInfo")?;
    // Carry the id along for the download.
    info.format = submitted.id;
    Ok((secs, info))
}

/// The whole archive over gRPC into a file, checked against ExportInfo and synced.
async fn download_once(client: &mut Client, info: &pb::ExportInfo, out: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut stream = client
        .download_export(pb::DownloadExportRequest { id: info.format.clone(), offset: 0 })
        .await?
        .into_inner();
    let mut file = crate::export::DownloadFile::start(std::fs::File::create(out)?, Sha256::new());
    while let Some(chunk) = stream.message().await? {
        file.write(chunk.data).await?;
    }
    let (got, sha) = file.finish().await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        got == info.size_bytes && hex::encode(sha.finalize()) == info.sha256,
        "the download does not match ExportInfo"
    );
    tokio::fs::remove_file(out).await.ok();
    Ok(secs)
}

fn local_dir(url: &str) -> Option<PathBuf> {
    url::Url::parse(url).ok().filter(|u| u.scheme() == "file").and_then(|u| u.to_file_path().ok())
}

/// A `dsr serve` child process on a free loopback port.
struct Server {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Server {
    fn start(settings: &Settings, config_file: Option<&Path>) -> anyhow::Result<Self> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(settings.data_dir.join("bench-server.log"))?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&settings.data_dir)
            .args(["--database-url", &settings.database_url])
            .args(["--recordings-url", &settings.recordings_url])
            .args(["--exports-url", &settings.exports_url])
            .args(["--listen", &addr.to_string()])
            .args(["--metrics-listen", "off"])
            .env("DSR_DATABASE_SCHEMA", &settings.file.database.schema)
            .env_remove("DSR_CONFIG")
            .env("DSR_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(cfg) = config_file {
            cmd.arg("--config").arg(cfg);
        }
        if std::env::var_os("DSR_AUDIT_KEY").is_none() && settings.file.privacy.hmac_key.is_none() {
            // The bench's data is throwaway, and so may its audit key be (Postgres requires one).
            cmd.env("DSR_AUDIT_KEY", uuid::Uuid::new_v4().simple().to_string());
        }
        Ok(Self { child: cmd.spawn().context("starting dsr serve")?, addr })
    }

    async fn connect(&mut self) -> anyhow::Result<DataSubjectRightsClient<tonic::transport::Channel>> {
        for _ in 0..200 {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))?
                .initial_stream_window_size(crate::cli::DOWNLOAD_WINDOW)
                .initial_connection_window_size(crate::cli::DOWNLOAD_WINDOW)
                .max_frame_size(crate::cli::DOWNLOAD_FRAME);
            if let Ok(channel) = endpoint.connect().await {
                return Ok(DataSubjectRightsClient::new(channel));
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("dsr serve exited ({status}); see bench-server.log in the data directory");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("dsr serve did not start listening on {}", self.addr)
    }

    fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}
