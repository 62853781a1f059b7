//! Child processes of `lula-chaos` itself (`serve-hub`, `serve-auth`,
//! `run-client`) that can be killed with SIGKILL and started again with the
//! same arguments, so on the same port and state dir.
//!
//! Every start appends to the same log file (stdout and stderr), after a
//! marker line, so one file tells a service's whole story. A child stops by
//! itself when its stdin closes, so it cannot outlive the suite even when the
//! suite is killed; dropping a [`Service`] kills it (`kill_on_drop`).

use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, ChildStdin, Command};

/// How long a server child may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Log level of the children unless `LULA_CHAOS_CHILD_LOG` says otherwise.
const DEFAULT_CHILD_LOG: &str = "info";

/// A restartable child process.
pub struct Service {
    name: String,
    exe: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    listen: Option<SocketAddr>,
    running: Option<Running>,
    starts: u32,
}

struct Running {
    child: Child,
    // Closing it asks the child to stop; `kill_on_drop` makes sure it does.
    stdin: Option<ChildStdin>,
}

impl Service {
    /// A service run as `exe args...`, logging to `log`. With `listen`, a start
    /// waits until something accepts connections there.
    pub fn new(
        name: impl Into<String>,
        exe: &Path,
        args: Vec<OsString>,
        log: PathBuf,
        listen: Option<SocketAddr>,
    ) -> Self {
        Service {
            name: name.into(),
            exe: exe.to_owned(),
            args,
            log,
            listen,
            running: None,
            starts: 0,
        }
    }

    /// The service's name in the timeline.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Whether a process is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().and_then(|r| r.child.id())
    }

    /// Starts the process and, for a server, waits until it accepts connections.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.running.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        writeln!(
            log,
            "==== lula-chaos: start #{} of {} at {} ====",
            self.starts,
            self.name,
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
        )
        .context("write log marker")?;
        let level =
            std::env::var("LULA_CHAOS_CHILD_LOG").unwrap_or_else(|_| DEFAULT_CHILD_LOG.into());
        let mut child = Command::new(&self.exe)
            .args(&self.args)
            .env("RUST_LOG", level)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().context("clone log handle")?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} ({})", self.name, self.exe.display()))?;
        let stdin = child.stdin.take();
        self.running = Some(Running { child, stdin });
        if let Some(addr) = self.listen {
            self.wait_listening(addr).await?;
        }
        Ok(())
    }

    async fn wait_listening(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                anyhow::bail!(
                    "{} exited with {status} before listening on {addr}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} does not listen on {addr} after {READY_TIMEOUT:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kills the process with SIGKILL and reaps it. No-op when not running.
    pub async fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill().await;
        }
    }

    /// Asks the process to stop (closes its stdin) and waits up to `grace`,
    /// then kills it. Returns its exit status when it stopped by itself.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.request_stop();
        self.wait_stopped(tokio::time::Instant::now() + grace).await
    }

    /// Asks the process to stop (closes its stdin) without waiting.
    pub fn request_stop(&mut self) {
        if let Some(running) = self.running.as_mut() {
            running.stdin.take();
        }
    }

    /// Waits until `deadline` for the process to exit, then kills it. Returns
    /// its exit status when it exited by itself.
    pub async fn wait_stopped(&mut self, deadline: tokio::time::Instant) -> Option<ExitStatus> {
        let mut running = self.running.take()?;
        match tokio::time::timeout_at(deadline, running.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = running.child.kill().await;
                None
            }
        }
    }

    /// If the process has exited by itself, forgets it and returns its status.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.running.as_mut()?.child.try_wait().ok()??;
        self.running = None;
        Some(status)
    }
}
