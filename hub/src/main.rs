//! `lula-hub`: the cloud side of lula. See the crate docs of `lula_hub`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lula_hub::Config;
use lula_runtime::secret::{Readers, secret_value};
use tokio_util::sync::CancellationToken;

/// Secret files may be group-readable: Kubernetes mounts them for the pod's
/// `fsGroup` (lula_runtime::secret).
const CLOUD_READERS: Readers = Readers::OwnerAndGroup;

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
    Serve(Box<ServeArgs>),
    /// Ask one device: append a request (`rpc <method> ...`) to its out stream
    /// and wait for its answer.
    Call(CallArgs),
    /// List devices: connected replica, last seen, upstream cursor,
    /// upstream backlog (as the device last reported it; `-`: never),
    /// downstream backlog, last close and error. Reads Redis, so it shows
    /// every replica's devices.
    Fleet(FleetArgs),
    /// Carry the Node lula-hub's upstream cursors (`lula:id:h`) and the
    /// messages it held for devices (`lula:out:<client>:x`, ids kept) over to
    /// ours, once, before devices connect (docs/MIGRATING.md). Only moves
    /// cursors forward; the Node keys are only read.
    ImportNode(ImportNodeArgs),
    /// Trim the in streams (every partition) below what every consumer group
    /// on each has acknowledged; a stream with no group is left as it is.
    /// Safe to run at any time, e.g. from a CronJob.
    TrimIngest(TrimIngestArgs),
}

#[derive(clap::Args)]
struct ImportNodeArgs {
    #[command(flatten)]
    store: Store,
    /// Key prefix of the Node lula-hub (its `redis.keyPrefix` without the
    /// trailing colon).
    #[arg(long, env = "LULA_NODE_PREFIX", default_value = "lula")]
    node_prefix: String,
    /// Show what would change without writing.
    #[arg(long, env = "LULA_DRY_RUN")]
    dry_run: bool,
}

#[derive(clap::Args)]
struct TrimIngestArgs {
    #[command(flatten)]
    store: Store,
    /// Print JSON (`{"streams": [{"stream", "floor", "trimmed"}]}`).
    #[arg(long, env = "LULA_JSON")]
    json: bool,
}

/// Where the hub's data is: every subcommand that reads or writes it.
#[derive(clap::Args)]
struct Store {
    /// Cloud Redis (streams, cursors, and lula-auth's sessions and keys).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis_url: String,
    /// Read --redis-url from this file instead (a URL with a password is a
    /// secret); others must not be able to read it.
    #[arg(long, env = "REDIS_URL_FILE", conflicts_with = "redis_url")]
    redis_url_file: Option<PathBuf>,
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
    /// Timeout of one Redis command.
    #[arg(long, env = "LULA_REDIS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    redis_timeout: Duration,
}

impl Store {
    /// Replaces `redis_url` with the content of `--redis-url-file`, if given.
    fn load_secrets(&mut self) -> anyhow::Result<()> {
        if let Some(url) = secret_value(None, self.redis_url_file.as_deref(), CLOUD_READERS)
            .context("--redis-url-file")?
        {
            self.redis_url = url;
        }
        Ok(())
    }

    fn config(&self) -> Config {
        Config {
            redis_cluster: self.redis_cluster,
            ingest_partitions: self.ingest_partitions,
            prefix: self.prefix.clone(),
            redis_timeout: self.redis_timeout,
            ..Config::new(self.redis_url.clone())
        }
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    store: Store,
    /// Address to listen on.
    #[arg(long, env = "LULA_HUB_LISTEN", default_value = "0.0.0.0:3002")]
    listen: SocketAddr,
    /// Address of the admin listener: /healthz, /readyz, /metrics, /fleet
    /// and the fleet page, off the device port. Unset: they are served on
    /// --listen as before (deprecated; that layout goes in the next release).
    #[arg(long, env = "LULA_HUB_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// lula-auth's Redis (sessions, verification keys, revocations), when it
    /// is not the hub's own --redis-url.
    #[arg(long, env = "LULA_AUTH_REDIS_URL", hide_env_values = true)]
    auth_redis_url: Option<String>,
    /// Read --auth-redis-url from this file instead.
    #[arg(
        long,
        env = "LULA_AUTH_REDIS_URL_FILE",
        conflicts_with = "auth_redis_url"
    )]
    auth_redis_url_file: Option<PathBuf>,
    /// Treat --auth-redis-url as a seed node of a Redis Cluster.
    #[arg(long, env = "LULA_AUTH_REDIS_CLUSTER")]
    auth_redis_cluster: bool,
    /// Prefix of lula-auth's Redis keys (sessions, verification keys).
    #[arg(long, env = "LULA_AUTH_PREFIX", default_value = lula_protocol::keys::DEFAULT_AUTH_PREFIX)]
    auth_prefix: String,
    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, env = "LULA_MAX_FRAME_BYTES", default_value_t = lula_protocol::limits::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Most field pairs of an upstream entry; a device entry wider than a
    /// batch may hold (1,024 pairs) travels in parts, one past this is set
    /// aside by the device.
    #[arg(long, env = "LULA_MAX_ENTRY_PAIRS", default_value_t = lula_protocol::limits::DEFAULT_MAX_PART_VALUES / 2)]
    max_entry_pairs: usize,
    /// Most bytes (keys plus values) of an upstream entry; one larger than a
    /// frame travels in parts, one past this is set aside by the device.
    #[arg(long, env = "LULA_MAX_ENTRY_BYTES", default_value_t = lula_protocol::limits::DEFAULT_MAX_ENTRY_BYTES)]
    max_entry_bytes: usize,
    /// Bytes of entries being put together from parts at once, over all
    /// devices; past it a device waits (its part is refused with 503 and
    /// retried). At least --max-entry-bytes.
    #[arg(long, env = "LULA_ASSEMBLY_BYTES", default_value_t = lula_protocol::limits::DEFAULT_ASSEMBLY_BYTES)]
    assembly_bytes: usize,
    /// Largest compression window agreed to when a device asks for compressed
    /// frames (9 to 15 bits; 10 = 1 KiB per direction), or `off`.
    #[arg(long, env = "LULA_COMPRESSION_WINDOW_BITS", default_value = "10", value_parser = lula_protocol::compress::parse_window_setting)]
    compression_window_bits: u8,
    /// How often out streams are re-read when the hub's Redis refuses to send
    /// keyspace notifications (set `notify-keyspace-events` to include `Kt`).
    #[arg(long, env = "LULA_DOWNSTREAM_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    downstream_poll: Duration,
    /// How long broadcasts (`<prefix>:broadcast:x`) are kept; a device
    /// offline for longer misses the older ones and is told so. 0 keeps
    /// every broadcast.
    #[arg(long, env = "LULA_BROADCAST_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    broadcast_retention: Duration,
    /// Let a device hold several connections at once (by default the newest
    /// closes the older ones, on every replica, with close code 4002).
    #[arg(long, env = "LULA_ALLOW_CONCURRENT_CONNECTIONS")]
    allow_concurrent_connections: bool,
    /// This replica's name in the fleet view (default `<hostname>:<port>`).
    #[arg(long, env = "LULA_HUB_ID")]
    hub_id: Option<String>,
    /// Bearer token that opens `GET /fleet` (unset: /fleet answers 404).
    #[arg(long, env = "LULA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Read --admin-token from this file instead (inline it shows in `ps`).
    #[arg(long, env = "LULA_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: lula_runtime::tls::ServeTlsArgs,
    /// After SIGTERM, keep serving this long with /readyz answering 503, so
    /// a load balancer that polls readiness stops sending requests here first.
    #[arg(long, env = "LULA_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
    #[command(flatten)]
    log: lula_runtime::LogArgs,
    /// Keep a connection that never asked to renew (the Node lula-client,
    /// which cannot) open this long past its token's expiry, at most 24h;
    /// 0 closes it at expiry (4001). See SECURITY.md for the cost.
    #[arg(long, env = "LULA_NON_RENEWING_GRACE", default_value = "0s", value_parser = humantime::parse_duration)]
    non_renewing_grace: Duration,
    /// Do not deliver messages for a device that are older than this (by
    /// their stream id's time): delete them, count them, tell the device.
    /// 0: no maximum (a message's own `expiresAt` still applies).
    #[arg(long, env = "LULA_DOWNSTREAM_MAX_AGE", default_value = "0s", value_parser = humantime::parse_duration)]
    downstream_max_age: Duration,
    /// Refuse to start when the Redis evicts keys or does not persist
    /// (maxmemory-policy other than noeviction, appendonly off), or its
    /// settings cannot be read, instead of warning.
    #[arg(long, env = "LULA_REQUIRE_SAFE_REDIS")]
    require_safe_redis: bool,
}

#[derive(clap::Args)]
struct FleetArgs {
    #[command(flatten)]
    store: Store,
    /// Only this device.
    client: Option<lula_protocol::ClientId>,
    /// At most this many devices, most recently seen first (0: all).
    #[arg(long, env = "LULA_FLEET_LIMIT", default_value_t = 0)]
    limit: usize,
    /// Print JSON (`{"devices": [...]}`, as `GET /fleet` answers).
    #[arg(long, env = "LULA_JSON")]
    json: bool,
}

#[derive(clap::Args)]
struct CallArgs {
    #[command(flatten)]
    store: Store,
    /// The device.
    client: lula_protocol::ClientId,
    /// The method, e.g. `reboot`.
    method: String,
    /// Arguments as `key=value`.
    #[arg(value_parser = lula_protocol::rpc::parse_arg)]
    args: Vec<(Vec<u8>, Vec<u8>)>,
    /// How long to wait for the answer.
    #[arg(long, env = "LULA_CALL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// lula-auth's Redis, where provisioned devices are recorded, when it is
    /// not --redis-url.
    #[arg(long, env = "LULA_AUTH_REDIS_URL", hide_env_values = true)]
    auth_redis_url: Option<String>,
    /// Treat --auth-redis-url as a seed node of a Redis Cluster.
    #[arg(long, env = "LULA_AUTH_REDIS_CLUSTER")]
    auth_redis_cluster: bool,
    /// Prefix of lula-auth's Redis keys.
    #[arg(long, env = "LULA_AUTH_PREFIX", default_value = lula_protocol::keys::DEFAULT_AUTH_PREFIX)]
    auth_prefix: String,
    /// Print the answer as JSON.
    #[arg(long, env = "LULA_JSON")]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    match &mut cli.command {
        Command::Serve(args) => args.store.load_secrets()?,
        Command::Call(args) => args.store.load_secrets()?,
        Command::Fleet(args) => args.store.load_secrets()?,
        Command::ImportNode(args) => args.store.load_secrets()?,
        Command::TrimIngest(args) => args.store.load_secrets()?,
    }
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Call(args) => call(args).await,
        Command::Fleet(args) => fleet(args).await,
        Command::ImportNode(args) => import_node(args).await,
        Command::TrimIngest(args) => trim_ingest(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    lula_runtime::init_tracing_as(args.log.log_format);
    lula_hub::legacy_session::check_grace(args.non_renewing_grace)?;
    let auth_redis_url = secret_value(
        args.auth_redis_url,
        args.auth_redis_url_file.as_deref(),
        CLOUD_READERS,
    )
    .context("--auth-redis-url-file")?;
    let admin_token = secret_value(
        args.admin_token,
        args.admin_token_file.as_deref(),
        CLOUD_READERS,
    )
    .context("--admin-token-file")?;
    let config = Config {
        auth_redis_url,
        auth_redis_cluster: args.auth_redis_cluster,
        auth_prefix: args.auth_prefix,
        max_frame_bytes: args.max_frame_bytes,
        part_limits: lula_protocol::parts::PartLimits {
            max_values: args.max_entry_pairs.saturating_mul(2),
            max_bytes: args.max_entry_bytes,
        },
        assembly_bytes: args.assembly_bytes.max(args.max_entry_bytes),
        compression_window_bits: lula_protocol::compress::window_setting(
            args.compression_window_bits,
        ),
        downstream_poll: args.downstream_poll,
        broadcast_retention: args.broadcast_retention,
        one_connection_per_device: !args.allow_concurrent_connections,
        hub_id: args.hub_id,
        admin_token: admin_token.map(Into::into),
        non_renewing_grace: args.non_renewing_grace,
        downstream_max_age: Some(args.downstream_max_age).filter(|d| !d.is_zero()),
        serve: lula_runtime::ServeOptions {
            tls: args.tls.server_config().context("--tls-cert / --tls-key")?,
            drain_delay: args.drain_delay,
            ..Default::default()
        },
        ..args.store.config()
    };
    lula_runtime::log_start("lula-hub", env!("CARGO_PKG_VERSION"), &config);
    lula_runtime::redis_check::check_at_start(
        &config.redis_target(),
        "the hub Redis",
        args.require_safe_redis,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let listeners = lula_runtime::listeners::bind(
        args.listen,
        args.admin_listen,
        "/healthz /readyz /metrics /fleet",
    )
    .await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(lula_runtime::shutdown_on_signal(shutdown.clone()));
    lula_hub::run_with_admin(listeners.devices, listeners.admin, config, shutdown).await
}

async fn trim_ingest(args: TrimIngestArgs) -> anyhow::Result<()> {
    let config = args.store.config();
    let mut redis = config
        .redis_target()
        .connect()
        .await
        .context("connect to redis")?;
    let mut report = Vec::new();
    for stream in config.ingest_layout().in_streams() {
        let t = lula_runtime::retention::trim_consumed(&mut redis, &stream)
            .await
            .with_context(|| format!("trim {stream}"))?;
        if !args.json {
            match &t.floor {
                Some(floor) => println!("{stream}: trimmed {} entries below {floor}", t.entries),
                None => println!("{stream}: no consumer group, left as it is"),
            }
        }
        report.push(serde_json::json!({"stream": stream, "floor": t.floor, "trimmed": t.entries}));
    }
    if args.json {
        println!("{}", serde_json::json!({ "streams": report }));
    }
    Ok(())
}

async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    let config = args.store.config();
    let layout = config.ingest_layout();
    let keys = lula_protocol::keys::HubKeys::new(config.prefix.clone());
    let redis = config
        .redis_target()
        .connect()
        .await
        .context("connect to redis")?;
    let devices = lula_hub::fleet::list(
        &redis,
        &keys,
        &layout,
        &lula_hub::fleet::Query {
            client: args.client.clone(),
            limit: args.limit,
        },
    )
    .await
    .context("read the fleet")?;
    if let (Some(client), true) = (&args.client, devices.is_empty()) {
        anyhow::bail!("no hub has seen device {client}");
    }
    if args.json {
        println!("{}", serde_json::json!({ "devices": devices }));
    } else {
        print!(
            "{}",
            lula_hub::fleet::table(&devices, lula_hub::fleet::now_ms())
        );
    }
    Ok(())
}

async fn call(args: CallArgs) -> anyhow::Result<()> {
    let config = args.store.config();
    let layout = config.ingest_layout();
    let keys = lula_protocol::keys::HubKeys::new(config.prefix.clone());
    // A connection of its own: the call waits with blocking reads.
    let mut conn = lula_runtime::redis::RedisTarget {
        timeout: args.timeout + Duration::from_secs(10),
        ..config.redis_target()
    }
    .connect()
    .await
    .context("connect to redis")?;
    let auth_keys = lula_protocol::keys::AuthKeys::new(args.auth_prefix.clone());
    match &args.auth_redis_url {
        Some(url) => {
            let mut auth =
                lula_runtime::redis::RedisTarget::new(url.clone(), args.auth_redis_cluster)
                    .connect()
                    .await
                    .context("connect to lula-auth's redis")?;
            lula_hub::rpc::ensure_provisioned(&mut auth, &auth_keys, &args.client).await?
        }
        None => lula_hub::rpc::ensure_provisioned(&mut conn, &auth_keys, &args.client).await?,
    }
    let answer = lula_hub::rpc::call(
        &mut conn,
        &keys.out_stream(&args.client),
        &layout.in_stream(layout.partition_of(&args.client)),
        &args.client,
        &args.method,
        &args.args,
        args.timeout,
    )
    .await?;
    print!("{}", lula_protocol::rpc::render(&answer, args.json));
    Ok(())
}

async fn import_node(args: ImportNodeArgs) -> anyhow::Result<()> {
    let config = args.store.config();
    let mut conn = config
        .redis_target()
        .connect()
        .await
        .context("connect to redis")?;
    let report = lula_hub::import_node::import_cursors(
        &mut conn,
        &config.ingest_layout(),
        &args.node_prefix,
        args.dry_run,
    )
    .await
    .context("import the Node hub's cursors")?;
    let outs = lula_hub::import_node::import_out_streams(
        &mut conn,
        &lula_protocol::keys::HubKeys::new(config.prefix.clone()),
        &args.node_prefix,
        args.dry_run,
    )
    .await
    .context("copy the Node hub's out streams")?;
    let copy = if args.dry_run { "would copy" } else { "copied" };
    for o in &outs {
        println!(
            "{}: {copy} {} message(s) from {}:out:{}:x ({} already here)",
            o.client, o.copied, args.node_prefix, o.client, o.present
        );
    }
    let verb = if args.dry_run { "would set" } else { "set" };
    for r in &report {
        let before = r.ours_before.as_deref().unwrap_or("none");
        match r.action {
            "set" => println!("{}: {verb} {} (ours was {before})", r.client, r.node),
            "kept" => println!("{}: kept ours {before} (Node {})", r.client, r.node),
            _ => println!(
                "{}: skipped, not a client id and stream id: {:?}",
                r.client, r.node
            ),
        }
    }
    let set = report.iter().filter(|r| r.action == "set").count();
    println!(
        "{} device cursor(s) in {}:id:h; {set} {verb}{}",
        report.len(),
        args.node_prefix,
        if args.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
    Ok(())
}
