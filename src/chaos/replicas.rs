//! `dsr serve` replicas of this very binary, sharing one Postgres ledger, platform database,
//! recordings directory and audit key; started, killed, paused, resumed and stopped on demand.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::process::{Child, Command};

/// What every replica of a run shares.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    pub bin: PathBuf,
    pub run_dir: PathBuf,
    pub database_url: String,
    pub recordings_url: String,
    pub config_file: PathBuf,
    pub audit_key: String,
}

pub struct Replica {
    pub name: String,
    pub addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
    pid: i32,
}

/// Loopback ports: from `base` upwards when given (a range kept for this campaign), else any
/// free one the kernel hands out.
#[derive(Debug)]
pub struct Ports {
    base: u16,
    next: u16,
}

impl Ports {
    pub fn new(base: u16) -> Self {
        Self { base, next: 0 }
    }

    pub fn free(&mut self) -> anyhow::Result<u16> {
        if self.base == 0 {
            return Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
        }
        for _ in 0..100 {
            let port = self.base + self.next % 100;
            self.next += 1;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        anyhow::bail!("no free port in {}..{}", self.base, self.base + 100)
    }
}

impl ReplicaSpec {
    /// Starts `dsr serve` named `name` (its lease owner starts with it: `HOSTNAME`) on `port`;
    /// returns once it accepts connections.
    pub async fn start(&self, name: &str, port: u16) -> anyhow::Result<Replica> {
        let dir = self.run_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("serve-{port}.log"));
        let log_file = std::fs::File::create(&log)?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--log-format", "json", "serve", "--listen", &addr.to_string(), "--metrics-listen", "off"])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--database-url", &self.database_url, "--recordings-url", &self.recordings_url])
            .arg("--config")
            .arg(&self.config_file)
            .env("DSR_AUDIT_KEY", &self.audit_key)
            .env("HOSTNAME", name)
            .env_remove("DSR_CONFIG")
            .env_remove("DSR_DATABASE_SCHEMA")
            .env_remove("DSR_TOKENS_FILE")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        let child = cmd.spawn().context("starting dsr serve")?;
        let pid = child.id().context("dsr serve has no pid")? as i32;
        let mut replica = Replica { name: name.to_owned(), addr, log, child, pid };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(replica);
            }
            if let Some(status) = replica.child.try_wait()? {
                anyhow::bail!("dsr serve {name} exited ({status}); see {}", replica.log.display());
            }
            anyhow::ensure!(Instant::now() < deadline, "dsr serve {name} did not listen on {addr}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Replica {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped before `wait` below.
        unsafe {
            libc::kill(self.pid, signal);
        }
    }

    /// SIGKILL, and reap.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Whether it is still running (a replica must survive a database restart on its own).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to `patience` (then SIGKILL): how long it took to exit, and
    /// `None` when it exited cleanly within `patience`, else what went wrong (its exit status
    /// and the last lines of its log).
    pub async fn terminate(mut self, patience: Duration) -> (Duration, Option<String>) {
        let started = Instant::now();
        self.signal(libc::SIGTERM);
        let problem = match tokio::time::timeout(patience, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => None,
            Ok(Ok(status)) => Some(format!("exited {status}")),
            Ok(Err(e)) => Some(format!("could not be waited for: {e}")),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                Some(format!("still running after {patience:?}"))
            }
        };
        let took = started.elapsed();
        (took, problem.map(|p| format!("{p}; its log ends with:\n{}", self.log_tail(5))))
    }

    /// The last `n` lines of its log.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Every log line the replicas of a run wrote, for the personal-data check.
pub fn logs_under(run_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(run_dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "log")
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("serve-"))
            {
                out.push(p);
            }
        }
    }
    out
}
