//! `lula-client`: the device daemon. See the crate docs of `lula_client`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use lula_client::Config;
use lula_protocol::{ClientId, Redacted};
use lula_runtime::secret::{Readers, secret_value};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "lula-client",
    version,
    about = "Syncs this device's Redis streams with lula-hub, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sync daemon.
    Run(Box<RunArgs>),
    /// Show registration, connection, backlogs and cursors.
    Status(StatusArgs),
    /// Ask the cloud: append a request to out:x and wait for its response
    /// (the daemon must be running to carry both).
    Request(RequestArgs),
}

#[derive(Args)]
struct RequestArgs {
    #[command(flatten)]
    common: Common,
    /// The method, e.g. `config.get`.
    method: String,
    /// Arguments as `key=value`.
    #[arg(value_parser = lula_protocol::rpc::parse_arg)]
    args: Vec<(Vec<u8>, Vec<u8>)>,
    /// How long to wait for the response.
    #[arg(long, env = "LULA_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the response as JSON.
    #[arg(long, env = "LULA_JSON")]
    json: bool,
}

#[derive(Args)]
struct Common {
    /// The device Redis.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis_url: String,
    /// Read --redis-url from this file instead (a URL with a password is a
    /// secret); it must be readable by its owner only.
    #[arg(long, env = "REDIS_URL_FILE", conflicts_with = "redis_url")]
    redis_url_file: Option<PathBuf>,
    /// Where the daemon keeps its identity (secret, registration state).
    #[arg(long, env = "LULA_STATE_DIR", default_value = "/var/lib/lula-client")]
    state_dir: PathBuf,
    /// Prefix of the device Redis keys.
    #[arg(long, env = "LULA_CLIENT_PREFIX", default_value = lula_protocol::keys::DEFAULT_DEVICE_PREFIX)]
    prefix: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// This device's client id, as provisioned in lula-auth. Optional on a
    /// device a Node lula-client ran on: its `client` is taken over.
    #[arg(long, env = "LULA_CLIENT_ID")]
    client_id: Option<ClientId>,
    /// The provisioned base32 TOTP secret, inline (visible in `ps`: prefer
    /// --otp-secret-file). Only needed until registered. Optional on a device
    /// a Node lula-client ran on: its `otpSecret` is taken over.
    #[arg(long, env = "LULA_OTP_SECRET", hide_env_values = true)]
    otp_secret: Option<String>,
    /// A file holding the provisioned base32 TOTP secret, readable by its
    /// owner only (chmod 600). Only read until registered; may be gone after.
    #[arg(long, env = "LULA_OTP_SECRET_FILE", conflicts_with = "otp_secret")]
    otp_secret_file: Option<PathBuf>,
    /// File holding the secret a Node lula-client registered this device
    /// with, kept when its state is taken over (docs/MIGRATING.md). The
    /// Node client's own LULA_SECRET environment variable is read too.
    #[arg(long, env = "LULA_NODE_SECRET_FILE")]
    node_secret_file: Option<PathBuf>,
    /// lula-auth base URL.
    #[arg(long, env = "LULA_AUTH_URL", default_value = "http://localhost:3001")]
    auth_url: String,
    /// lula-hub WebSocket URL.
    #[arg(long, env = "LULA_HUB_URL", default_value = "ws://localhost:3002")]
    hub_url: String,
    /// PEM file of CA certificates trusted for https:// and wss:// besides the
    /// system roots (a private CA).
    #[arg(long, env = "LULA_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Most entries per upstream batch.
    #[arg(long, env = "LULA_BATCH_ENTRIES", default_value_t = lula_protocol::limits::DEFAULT_BATCH_ENTRIES)]
    batch_entries: usize,
    /// Upstream batches in flight (sent, not yet acknowledged).
    #[arg(long, env = "LULA_INFLIGHT_BATCHES", default_value_t = lula_protocol::limits::DEFAULT_INFLIGHT_BATCHES)]
    inflight_batches: usize,
    /// Largest frame sent, in bytes (the hub's limit wins if smaller).
    #[arg(long, env = "LULA_MAX_FRAME_BYTES", default_value_t = lula_protocol::limits::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Most field pairs of an entry carried, each way: one wider than a
    /// batch (1,024 pairs) travels in parts; one past this is set aside
    /// (the hub's limit wins upstream if smaller).
    #[arg(long, env = "LULA_MAX_ENTRY_PAIRS", default_value_t = lula_protocol::limits::DEFAULT_MAX_PART_VALUES / 2)]
    max_entry_pairs: usize,
    /// Most bytes (keys plus values) of an entry carried, each way; the
    /// daemon holds one such entry per direction while it travels in parts.
    #[arg(long, env = "LULA_MAX_ENTRY_BYTES", default_value_t = lula_protocol::limits::DEFAULT_MAX_ENTRY_BYTES)]
    max_entry_bytes: usize,
    /// Compressed frames on the link to the hub: the history window asked for
    /// (9 to 15 bits; 10 = 1 KiB per direction), or `off` for JSON text
    /// frames. A hub that does not answer the offer gets text frames anyway.
    #[arg(long, env = "LULA_COMPRESSION_WINDOW_BITS", default_value = "10", value_parser = lula_protocol::compress::parse_window_setting)]
    compression_window_bits: u8,
    /// Pause between refused registration attempts.
    #[arg(long, env = "LULA_REGISTER_RETRY", default_value = "60s", value_parser = humantime::parse_duration)]
    register_retry: Duration,
    #[command(flatten)]
    log: lula_runtime::LogArgs,
    /// Serve Prometheus metrics at GET /metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "LULA_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Cap of the reconnect backoff.
    #[arg(long, env = "LULA_MAX_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
    /// Acknowledged history kept in out:x: `all` (never trim), `none` (trim
    /// as soon as the hub has it), a count (the last N acknowledged entries)
    /// or an age (e.g. `2h`). Unacknowledged entries are never removed.
    #[arg(long, env = "LULA_KEEP_ACKED", default_value = "10000")]
    keep_acked: lula_client::retention::KeepAcked,
    /// Trim in:x below what every consumer group on it acknowledged (never
    /// when it has no group), this often; off unless given (e.g. `10s`).
    #[arg(long, env = "LULA_TRIM_IN_CONSUMED", value_parser = humantime::parse_duration)]
    trim_in_consumed: Option<Duration>,
    /// Refuse to start when the device Redis evicts keys or does not persist
    /// (maxmemory-policy other than noeviction, appendonly off), instead of
    /// warning.
    #[arg(long, env = "LULA_REQUIRE_SAFE_REDIS")]
    require_safe_redis: bool,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    common: Common,
    /// Print JSON instead of text.
    #[arg(long, env = "LULA_JSON")]
    json: bool,
    /// Then keep watching: one progress line a second (backlog, drain rate,
    /// time left) until the backlog is empty or Ctrl-C.
    #[arg(long, env = "LULA_WATCH")]
    watch: bool,
    /// Exit non-zero when unhealthy, for health checks: 2 stopped, 3
    /// disconnected longer than --max-disconnected, 4 upstream backlog not
    /// draining for --max-stall (1: status unreadable). Prints one line.
    #[arg(long, env = "LULA_CHECK", conflicts_with = "watch")]
    check: bool,
    /// With --check: longest tolerated disconnection.
    #[arg(long, env = "LULA_MAX_DISCONNECTED", default_value = "2m", value_parser = humantime::parse_duration)]
    max_disconnected: Duration,
    /// With --check: longest tolerated stall of a waiting upstream backlog.
    #[arg(long, env = "LULA_MAX_STALL", default_value = "5m", value_parser = humantime::parse_duration)]
    max_stall: Duration,
}

impl Common {
    /// Replaces `redis_url` with the content of `--redis-url-file`, if given.
    fn load_secrets(&mut self) -> anyhow::Result<()> {
        if let Some(url) = secret_value(None, self.redis_url_file.as_deref(), Readers::Owner)
            .context("--redis-url-file")?
        {
            self.redis_url = url;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    match &mut cli.command {
        Command::Run(args) => args.common.load_secrets()?,
        Command::Request(args) => args.common.load_secrets()?,
        Command::Status(args) => args.common.load_secrets()?,
    }
    match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Request(args) => request(args).await,
        Command::Status(args) => {
            let report = lula_client::status::status(
                &args.common.state_dir,
                &args.common.redis_url,
                &args.common.prefix,
            )
            .await
            .context("read status")?;
            if args.check {
                let verdict = lula_client::status_check::check(
                    &report,
                    lula_client::status_check::Limits {
                        max_disconnected: args.max_disconnected,
                        max_stall: args.max_stall,
                    },
                    lula_runtime::now_ms(),
                );
                println!("{}", verdict.describe());
                std::process::exit(verdict.exit_code());
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            if args.watch {
                watch(&args.common).await?;
            }
            Ok(())
        }
    }
}

async fn request(args: RequestArgs) -> anyhow::Result<()> {
    let keys = lula_protocol::keys::DeviceKeys::new(args.common.prefix.clone());
    let mut conn = lula_client::rpc::connect(&args.common.redis_url)
        .await
        .context("connect to the device redis")?;
    let response =
        lula_client::rpc::request(&mut conn, &keys, &args.method, &args.args, args.timeout).await?;
    print!("{}", lula_protocol::rpc::render(&response, args.json));
    Ok(())
}

/// Prints a progress line a second while the upstream backlog drains.
async fn watch(common: &Common) -> anyhow::Result<()> {
    let mut progress = lula_client::status::Progress::default();
    loop {
        let report =
            lula_client::status::status(&common.state_dir, &common.redis_url, &common.prefix)
                .await
                .context("read status")?;
        let line = progress.line_with_downstream(
            std::time::Instant::now(),
            report.upstream_backlog,
            report.downstream_backlog,
            report.connected,
        );
        println!("{line}");
        if report.upstream_backlog == 0 && report.downstream_backlog.unwrap_or(0) == 0 {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    lula_runtime::init_tracing_as(args.log.log_format);
    let (client_id, otp_secret) = identity_args(&args).await?;
    let node_secret = node_secret(args.node_secret_file.as_deref())?;
    let config = Config {
        node_secret,
        auth_url: args.auth_url,
        hub_url: args.hub_url,
        ca_file: args.ca_file,
        redis_url: args.common.redis_url,
        prefix: args.common.prefix,
        batch_entries: args.batch_entries.max(1),
        inflight_batches: args.inflight_batches.max(1),
        max_frame_bytes: args.max_frame_bytes,
        part_limits: lula_protocol::parts::PartLimits {
            max_values: args.max_entry_pairs.saturating_mul(2),
            max_bytes: args.max_entry_bytes,
        },
        compression_window_bits: lula_protocol::compress::window_setting(
            args.compression_window_bits,
        ),
        register_retry: args.register_retry,
        max_backoff: args.max_backoff,
        metrics_listen: args.metrics_listen,
        keep_acked: args.keep_acked,
        trim_in_consumed: args.trim_in_consumed,
        require_safe_redis: args.require_safe_redis,
        otp_secret: otp_secret.map(Redacted::new),
        otp_secret_file: args.otp_secret_file,
        ..Config::new(client_id, "", args.common.state_dir)
    };
    lula_runtime::log_start("lula-client", env!("CARGO_PKG_VERSION"), &config);
    let shutdown = CancellationToken::new();
    tokio::spawn(lula_runtime::shutdown_on_signal(shutdown.clone()));
    lula_client::run(config, shutdown).await
}

/// `--client-id` and `--otp-secret`, or what a Node lula-client left in the
/// device Redis for those not given (lula_client::takeover). The OTP secret
/// may be missing only for a device that registered already.
async fn identity_args(args: &RunArgs) -> anyhow::Result<(ClientId, Option<String>)> {
    if let Some(id) = &args.client_id
        && (args.otp_secret.is_some() || args.otp_secret_file.is_some())
    {
        return Ok((id.clone(), args.otp_secret.clone()));
    }
    let keys = lula_protocol::keys::DeviceKeys::new(args.common.prefix.clone());
    let node = lula_client::takeover::node_defaults(&args.common.redis_url, &keys)
        .await
        .context("read the Node lula-client's state")?
        .unwrap_or_default();
    let client_id = match (&args.client_id, &node.client) {
        (Some(id), _) => id.clone(),
        (None, Some(id)) => id
            .parse()
            .with_context(|| format!("the Node lula-client's client {id:?}"))?,
        (None, None) => {
            anyhow::bail!("--client-id is required (no Node lula-client state to take it from)")
        }
    };
    // None: --otp-secret-file, or not needed (registered); the daemon says
    // which flag to give when it is needed and missing.
    let otp_secret = args.otp_secret.clone().or(node.otp_secret);
    Ok((client_id, otp_secret))
}

/// The Node lula-client's secret: `--node-secret-file`, else its own
/// `LULA_SECRET` environment variable.
fn node_secret(
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<lula_protocol::Redacted<String>>> {
    let secret = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("read --node-secret-file {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        None => std::env::var("LULA_SECRET").ok(),
    };
    Ok(secret
        .filter(|s| !s.is_empty())
        .map(lula_protocol::Redacted::new))
}
