//! The hub as a process of its own, so its CPU time and resident memory are
//! its own and can be read from `/proc`.
//!
//! The benchmark starts its own executable as `lula-bench serve-hub`, which
//! binds, prints `listening <addr>` on stdout and runs [`lula_hub::run`]. The
//! child stops when its stdin closes, so it cannot outlive the benchmark even
//! when the benchmark is killed; dropping [`HubProcess`] also kills it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncBufReadExt as _;
use tokio_util::sync::CancellationToken;

use crate::procstat;

/// How long the child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `lula-bench serve-hub` child.
pub struct HubProcess {
    addr: SocketAddr,
    pid: u32,
    log: PathBuf,
    // Closing it tells the child to stop; `kill_on_drop` makes sure it does.
    _stdin: tokio::process::ChildStdin,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl HubProcess {
    /// Starts `exe serve-hub` against the cloud Redis at `redis_url` and waits
    /// until it listens. Its log (level from `LULA_BENCH_HUB_LOG`, default
    /// `warn`) goes to a file; see [`HubProcess::log_summary`].
    pub async fn spawn(exe: &Path, redis_url: &str) -> anyhow::Result<Self> {
        Self::spawn_with(exe, redis_url, None).await
    }

    /// Like [`HubProcess::spawn`], with the hub's `--max-frame-bytes` when given.
    pub async fn spawn_with(
        exe: &Path,
        redis_url: &str,
        max_frame_bytes: Option<usize>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir for the hub log")?;
        let log = dir.path().join("hub.log");
        let stderr = std::fs::File::create(&log).context("create hub log")?;
        let level = std::env::var("LULA_BENCH_HUB_LOG").unwrap_or_else(|_| "warn".into());
        let mut command = tokio::process::Command::new(exe);
        command.args([
            "serve-hub",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            redis_url,
        ]);
        if let Some(max) = max_frame_bytes {
            command.arg("--max-frame-bytes").arg(max.to_string());
        }
        let mut child = command
            .env("RUST_LOG", level)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} serve-hub", exe.display()))?;
        let pid = child.id().context("hub exited at once")?;
        let stdin = child.stdin.take().context("hub stdin")?;
        let stdout = child.stdout.take().context("hub stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .context("hub did not print its address in time")?
            .context("read hub stdout")?
            .with_context(|| {
                format!(
                    "hub exited before listening: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })?;
        let addr = line
            .strip_prefix("listening ")
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("unexpected first line from the hub: {line:?}"))?;
        Ok(HubProcess {
            addr,
            pid,
            log,
            _stdin: stdin,
            _child: child,
            _dir: dir,
        })
    }

    /// `ws://<addr>`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The hub's resident memory in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        procstat::rss_bytes(self.pid).context("read hub VmRSS")
    }

    /// The hub's open file descriptors.
    pub fn open_fds(&self) -> anyhow::Result<usize> {
        procstat::open_fds(self.pid).context("count hub fds")
    }

    /// How many warnings and errors the hub logged, and the first of them.
    pub fn log_summary(&self) -> Option<(usize, String)> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let mut bad = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "));
        let first = bad.next()?.to_owned();
        Some((1 + bad.count(), first))
    }
}

/// The `serve-hub` subcommand: binds `listen`, prints `listening <addr>`, and
/// serves until stdin closes (the benchmark is gone) or the process is killed.
pub async fn serve(
    listen: SocketAddr,
    redis_url: String,
    max_frame_bytes: Option<usize>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    println!("listening {}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let on_eof = shutdown.clone();
    // A plain thread: reading stdin blocks, and it must not hold a runtime worker.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        on_eof.cancel();
    });
    let mut config = lula_hub::Config::new(redis_url);
    if let Some(max) = max_frame_bytes {
        config.max_frame_bytes = max;
    }
    lula_hub::run(listener, config, shutdown).await
}
