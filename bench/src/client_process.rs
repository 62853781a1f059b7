//! A lula-client daemon as a process of its own, so its resident memory is
//! its own and can be read from `/proc` (the daemons of [`crate::devices`]
//! share lula-bench's process).
//!
//! The benchmark starts its own executable as `lula-bench serve-client`,
//! configured like [`crate::devices::Daemons`] does. Like the hub child, it
//! stops when its stdin closes, so it cannot outlive the benchmark; dropping
//! [`ClientProcess`] also kills it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeClientArgs;
use crate::procstat;

/// A running `lula-bench serve-client` child.
pub struct ClientProcess {
    pid: u32,
    // Closing it tells the child to stop; `kill_on_drop` makes sure it does.
    _stdin: tokio::process::ChildStdin,
    _child: tokio::process::Child,
}

/// What the child daemon is started with.
pub struct ClientSpec<'a> {
    /// The device's client id.
    pub client: &'a str,
    /// Its OTP secret.
    pub otp_secret: &'a str,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// lula-auth's base URL.
    pub auth_url: &'a str,
    /// The hub (or a proxy).
    pub hub_url: &'a str,
    /// The device Redis.
    pub redis_url: &'a str,
    /// The device's key prefix.
    pub prefix: &'a str,
    /// `--max-frame-bytes`, when not the default.
    pub max_frame_bytes: Option<usize>,
}

impl ClientProcess {
    /// Starts `exe serve-client`; its log (level from
    /// `LULA_BENCH_CLIENT_LOG`, default `warn`) goes to `log`.
    pub fn spawn(exe: &Path, spec: ClientSpec<'_>, log: &Path) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(log).context("create client log")?;
        let level = std::env::var("LULA_BENCH_CLIENT_LOG").unwrap_or_else(|_| "warn".into());
        let mut command = tokio::process::Command::new(exe);
        command
            .arg("serve-client")
            .args(["--client", spec.client])
            .arg("--state-dir")
            .arg(&spec.state_dir)
            .args(["--auth-url", spec.auth_url])
            .args(["--hub-url", spec.hub_url])
            .args(["--redis-url", spec.redis_url])
            .args(["--prefix", spec.prefix])
            .env("LULA_BENCH_CLIENT_OTP_SECRET", spec.otp_secret);
        if let Some(max) = spec.max_frame_bytes {
            command.arg("--max-frame-bytes").arg(max.to_string());
        }
        let mut child = command
            .env("RUST_LOG", level)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} serve-client", exe.display()))?;
        let pid = child.id().context("client exited at once")?;
        let stdin = child.stdin.take().context("client stdin")?;
        Ok(ClientProcess {
            pid,
            _stdin: stdin,
            _child: child,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its resident memory in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        procstat::rss_bytes(self.pid).context("read client VmRSS")
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) the process, so a backlog can
    /// pile up under a daemon that has already connected.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .await
            .context("run kill")?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.pid);
        Ok(())
    }
}

/// The `serve-client` subcommand: runs one daemon until stdin closes (the
/// benchmark is gone) or the process is killed. Retries are quick, and
/// acknowledged entries are kept, as in [`crate::devices::Daemons`].
pub async fn serve(args: ServeClientArgs) -> anyhow::Result<()> {
    let client = args.client.parse().context("client id")?;
    let mut config = lula_client::Config::new(client, args.otp_secret, args.state_dir);
    config.auth_url = args.auth_url;
    config.hub_url = args.hub_url;
    config.redis_url = args.redis_url;
    config.prefix = args.prefix;
    if let Some(max) = args.max_frame_bytes {
        config.max_frame_bytes = max;
    }
    config.register_retry = Duration::from_millis(500);
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_secs(1);
    config.keep_acked = lula_client::retention::KeepAcked::All;
    let shutdown = CancellationToken::new();
    let on_eof = shutdown.clone();
    // A plain thread: reading stdin blocks, and it must not hold a runtime worker.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        on_eof.cancel();
    });
    lula_client::run(config, shutdown).await
}
