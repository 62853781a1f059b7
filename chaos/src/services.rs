//! The hidden subcommands the suite starts as child processes:
//! `lula-chaos serve-hub`, `serve-auth` and `run-client`, which call
//! [`lula_hub::run`], [`lula_auth::run`] and [`lula_client::run`] with the
//! configuration given by flags.
//!
//! Each argument struct is both what the child parses and what the parent
//! turns into a command line ([`ServeHubArgs::to_args`], ...), so the two
//! cannot disagree. Every child stops (gracefully) when its stdin closes.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use lula_protocol::ClientId;
use tokio_util::sync::CancellationToken;

/// How long a restarted server keeps trying to bind its port.
const BIND_TIMEOUT: Duration = Duration::from_secs(15);

/// `lula-chaos serve-hub`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeHubArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The cloud Redis.
    #[arg(long)]
    pub redis_url: String,
}

impl ServeHubArgs {
    /// The child's command line.
    pub fn to_args(&self) -> Vec<OsString> {
        args([
            "serve-hub",
            "--listen",
            &self.listen.to_string(),
            "--redis-url",
            &self.redis_url,
        ])
    }
}

/// `lula-chaos serve-auth`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeAuthArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The cloud Redis.
    #[arg(long)]
    pub redis_url: String,
    /// Lifetime of session tokens.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
    /// bcrypt cost of device secrets.
    #[arg(long)]
    pub bcrypt_cost: u32,
}

impl ServeAuthArgs {
    /// The child's command line.
    pub fn to_args(&self) -> Vec<OsString> {
        args([
            "serve-auth",
            "--listen",
            &self.listen.to_string(),
            "--redis-url",
            &self.redis_url,
            "--token-ttl",
            &humantime::format_duration(self.token_ttl).to_string(),
            "--bcrypt-cost",
            &self.bcrypt_cost.to_string(),
        ])
    }
}

/// `lula-chaos run-client`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunClientArgs {
    /// The device's client id.
    #[arg(long)]
    pub client_id: ClientId,
    /// Its provisioned OTP secret.
    #[arg(long)]
    pub otp_secret: String,
    /// lula-auth.
    #[arg(long)]
    pub auth_url: String,
    /// lula-hub, here the device's fault proxy.
    #[arg(long)]
    pub hub_url: String,
    /// The device Redis.
    #[arg(long)]
    pub redis_url: String,
    /// The daemon's state dir.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Prefix of the device's keys in its Redis.
    #[arg(long)]
    pub prefix: String,
    /// First reconnect delay.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_backoff: Duration,
    /// Cap of the reconnect delay.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,
}

impl RunClientArgs {
    /// The child's command line.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v = args([
            "run-client",
            "--client-id",
            self.client_id.as_str(),
            "--otp-secret",
            &self.otp_secret,
            "--auth-url",
            &self.auth_url,
            "--hub-url",
            &self.hub_url,
            "--redis-url",
            &self.redis_url,
            "--prefix",
            &self.prefix,
            "--min-backoff",
            &humantime::format_duration(self.min_backoff).to_string(),
            "--max-backoff",
            &humantime::format_duration(self.max_backoff).to_string(),
        ]);
        v.push("--state-dir".into());
        v.push(self.state_dir.clone().into_os_string());
        v
    }

    /// The same daemon with another state dir (a twin).
    pub fn with_state_dir(&self, state_dir: PathBuf) -> Self {
        RunClientArgs {
            state_dir,
            ..self.clone()
        }
    }
}

fn args<const N: usize>(a: [&str; N]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

/// Runs lula-hub until stdin closes.
pub async fn serve_hub(a: ServeHubArgs) -> anyhow::Result<()> {
    let listener = bind(a.listen).await?;
    tracing_log_listening(&listener);
    lula_hub::run(
        listener,
        lula_hub::Config::new(a.redis_url),
        stop_on_stdin_eof(),
    )
    .await
}

/// Runs lula-auth until stdin closes.
pub async fn serve_auth(a: ServeAuthArgs) -> anyhow::Result<()> {
    let listener = bind(a.listen).await?;
    tracing_log_listening(&listener);
    let mut config = lula_auth::Config::new(a.redis_url);
    config.token_ttl = a.token_ttl;
    config.bcrypt_cost = a.bcrypt_cost;
    lula_auth::run(listener, config, stop_on_stdin_eof()).await
}

/// Runs the lula-client daemon until stdin closes.
pub async fn run_client(a: RunClientArgs) -> anyhow::Result<()> {
    let mut config = lula_client::Config::new(a.client_id, a.otp_secret, a.state_dir);
    config.auth_url = a.auth_url;
    config.hub_url = a.hub_url;
    config.redis_url = a.redis_url;
    config.prefix = a.prefix;
    config.min_backoff = a.min_backoff;
    config.max_backoff = a.max_backoff;
    config.register_retry = Duration::from_secs(2);
    // The checker compares the cloud with out:x: the device keeps all of it.
    config.keep_acked = lula_client::retention::KeepAcked::All;
    eprintln!("lula-chaos run-client: pid {}", std::process::id());
    lula_client::run(config, stop_on_stdin_eof()).await
}

fn tracing_log_listening(listener: &tokio::net::TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        eprintln!("lula-chaos: pid {} listening on {addr}", std::process::id());
    }
}

/// Binds `addr`, retrying while a killed predecessor's port is not free yet.
async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_TIMEOUT;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e).with_context(|| format!("bind {addr}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A token cancelled when stdin reaches its end: the suite closed it, or died.
fn stop_on_stdin_eof() -> CancellationToken {
    let token = CancellationToken::new();
    let on_eof = token.clone();
    // A plain thread: reading stdin blocks, and it must not hold a runtime worker.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        on_eof.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn command_lines_parse_back_to_the_same_arguments() {
        let client = RunClientArgs {
            client_id: "dev-01".parse().unwrap(),
            otp_secret: "JBSWY3DPEHPK3PXP".into(),
            auth_url: "http://127.0.0.1:1".into(),
            hub_url: "ws://127.0.0.1:2".into(),
            redis_url: "redis://127.0.0.1:3".into(),
            state_dir: "/tmp/x y".into(),
            prefix: "dev-01".into(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        };
        let mut line = vec![OsString::from("lula-chaos")];
        line.extend(client.to_args());
        let Command::RunClient(parsed) = Cli::try_parse_from(line).unwrap().command else {
            panic!("run-client");
        };
        assert_eq!(parsed.state_dir, client.state_dir);
        assert_eq!(parsed.max_backoff, client.max_backoff);
        assert_eq!(parsed.min_backoff, client.min_backoff);
        assert_eq!(parsed.client_id, client.client_id);

        let auth = ServeAuthArgs {
            listen: "127.0.0.1:9".parse().unwrap(),
            redis_url: "redis://127.0.0.1:3".into(),
            token_ttl: Duration::from_secs(8),
            bcrypt_cost: 4,
        };
        let mut line = vec![OsString::from("lula-chaos")];
        line.extend(auth.to_args());
        let Command::ServeAuth(parsed) = Cli::try_parse_from(line).unwrap().command else {
            panic!("serve-auth");
        };
        assert_eq!(parsed.token_ttl, auth.token_ttl);
        assert_eq!(parsed.listen, auth.listen);
    }
}
