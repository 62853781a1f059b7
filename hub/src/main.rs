//! `lula-hub`: the cloud side of lula. See the crate docs of `lula_hub`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lula_hub::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "lula-hub",
    version,
    about = "Moves device Redis stream entries into the cloud Redis exactly once, and back"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept device WebSockets.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LULA_HUB_LISTEN", default_value = "0.0.0.0:3002")]
    listen: SocketAddr,
    /// Cloud Redis (streams, cursors, and lula-auth's sessions and keys).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis_url: String,
    /// Treat --redis-url as a seed node of a Redis Cluster.
    #[arg(long, env = "LULA_REDIS_CLUSTER")]
    redis_cluster: bool,
    /// Split devices' entries over this many in streams, `<prefix>:in:{p}:x`
    /// for p in 0..N (1: one `<prefix>:in:x`). Every hub must use the same
    /// number; changing it needs the cursors moved (README, "Redis Cluster").
    #[arg(long, env = "LULA_INGEST_PARTITIONS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    ingest_partitions: u32,
    /// Prefix of the hub's Redis keys.
    #[arg(long, env = "LULA_HUB_PREFIX", default_value = lula_protocol::keys::DEFAULT_HUB_PREFIX)]
    prefix: String,
    /// Prefix of lula-auth's Redis keys (sessions, verification keys).
    #[arg(long, env = "LULA_AUTH_PREFIX", default_value = lula_protocol::keys::DEFAULT_AUTH_PREFIX)]
    auth_prefix: String,
    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, env = "LULA_MAX_FRAME_BYTES", default_value_t = lula_protocol::limits::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Timeout of one Redis command.
    #[arg(long, env = "LULA_REDIS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    redis_timeout: Duration,
    /// How often out streams are re-read when the hub's Redis refuses to send
    /// keyspace notifications (set `notify-keyspace-events` to include `Kt`).
    #[arg(long, env = "LULA_DOWNSTREAM_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    downstream_poll: Duration,
    /// Let a device hold several connections at once (by default the newest
    /// closes the older ones, on every replica, with close code 4002).
    #[arg(long, env = "LULA_ALLOW_CONCURRENT_CONNECTIONS")]
    allow_concurrent_connections: bool,
    #[command(flatten)]
    tls: lula_runtime::tls::ServeTlsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lula_runtime::init_tracing();
    let Command::Serve(args) = Cli::parse().command;
    let config = Config {
        redis_cluster: args.redis_cluster,
        ingest_partitions: args.ingest_partitions,
        prefix: args.prefix,
        auth_prefix: args.auth_prefix,
        max_frame_bytes: args.max_frame_bytes,
        redis_timeout: args.redis_timeout,
        downstream_poll: args.downstream_poll,
        one_connection_per_device: !args.allow_concurrent_connections,
        serve: lula_runtime::ServeOptions {
            tls: args.tls.server_config().context("--tls-cert / --tls-key")?,
            ..Default::default()
        },
        ..Config::new(args.redis_url)
    };
    tracing::info!(?config, "starting");
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(lula_runtime::shutdown_on_signal(shutdown.clone()));
    lula_hub::run(listener, config, shutdown).await
}
