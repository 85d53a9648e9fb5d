//! A throwaway PostgreSQL cluster the campaign owns, so it can restart it (fast and immediate).
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;

/// How `pg_ctl` stops the server: `fast` rolls back sessions and checkpoints; `immediate` is a
/// crash (recovery replays the WAL at the next start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl StopMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Running as root: PostgreSQL refuses to, so its commands run as `postgres`.
    as_postgres: bool,
    running: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install the `postgresql` package")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().split('.').next()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context("no initdb under /usr/lib/postgresql/*/bin")
}

impl PgCluster {
    /// `initdb` into `dir` (created) and start on `port`.
    pub fn create(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        std::fs::create_dir_all(dir)?;
        // dsr runs under a private umask; the cluster's owner must be able to reach its directory.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if as_postgres {
            let ok = Command::new("chown").arg("postgres").arg(dir).status()?.success();
            anyhow::ensure!(ok, "chown postgres {}", dir.display());
        }
        let cluster = Self { bin, dir: dir.to_owned(), port, as_postgres, running: false };
        let out = cluster
            .command("initdb")
            .arg("-D")
            .arg(dir)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .context("running initdb")?;
        anyhow::ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut cluster = cluster;
        cluster.pg_ctl(&["start"])?;
        cluster.running = true;
        Ok(cluster)
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        // fsync off: a restart (fast or immediate) loses no write the OS was handed, and only
        // an OS crash, which the campaign does not cause, would. synchronous_commit stays on: off,
        // an immediate restart loses commits already acknowledged, and so acknowledged requests.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-o", &options])
            .args(args)
            .output()
            .context("running pg_ctl")?;
        anyhow::ensure!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server in `mode` and starts it again; returns how long it was gone.
    pub fn restart(&mut self, mode: StopMode) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.pg_ctl(&["-m", mode.as_str(), "restart"])?;
        Ok(started.elapsed())
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
            self.running = false;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
