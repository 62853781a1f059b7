//! `lula-auth`: device registration and login. See the crate docs of `lula_auth`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use lula_auth::Config;
use lula_protocol::keys::AuthKeys;
use lula_protocol::{ClientId, Redacted};
use lula_runtime::secret::{Readers, read_secret_file, secret_value};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "lula-auth",
    version,
    about = "Registers lula devices once and logs them in with revocable session tokens"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve devices: POST /register, /login, /renew and /logout on --listen;
    /// GET /healthz, /readyz and /metrics on --admin-listen (on --listen
    /// without it, deprecated).
    Serve(Box<ServeArgs>),
    /// Let a device register: generate its OTP secret and registration deadline.
    Provision(ProvisionArgs),
    /// Cut a device off: end its sessions (every hub closes its sockets at
    /// once) and forget its secret, so it must be provisioned again.
    Revoke(RevokeArgs),
    /// Import the Node lula-auth's device records (`lula:client:<client>:h`),
    /// once, so devices registered there log in here with their secret.
    ImportNode(ImportNodeArgs),
}

#[derive(Args)]
struct ImportNodeArgs {
    #[command(flatten)]
    common: Common,
    /// The Node lula-auth's Redis, when it is not --redis-url (a single
    /// server: it is scanned).
    #[arg(long, env = "LULA_NODE_REDIS_URL", hide_env_values = true)]
    node_redis_url: Option<String>,
    /// Key prefix of the Node lula-auth (its `redis.keyPrefix` without the
    /// trailing colon).
    #[arg(long, env = "LULA_NODE_PREFIX", default_value = "lula")]
    node_prefix: String,
    /// Show what would be imported without writing.
    #[arg(long, env = "LULA_DRY_RUN")]
    dry_run: bool,
}

#[derive(Args)]
struct Common {
    /// Redis holding client records, sessions and verification keys.
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
    /// Prefix of lula-auth's Redis keys.
    #[arg(long, env = "LULA_AUTH_PREFIX", default_value = lula_protocol::keys::DEFAULT_AUTH_PREFIX)]
    prefix: String,
}

#[derive(Args)]
struct ServeArgs {
    /// Refuse to start when the Redis evicts keys or does not persist
    /// (maxmemory-policy other than noeviction, appendonly off), or its
    /// settings cannot be read, instead of warning.
    #[arg(long, env = "LULA_REQUIRE_SAFE_REDIS")]
    require_safe_redis: bool,
    /// After SIGTERM, keep serving this long with /readyz answering 503, so
    /// a load balancer that polls readiness stops sending requests here first.
    #[arg(long, env = "LULA_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
    #[command(flatten)]
    log: lula_runtime::LogArgs,
    #[command(flatten)]
    common: Common,
    /// Address devices reach: POST /register, /login, /renew, /logout.
    #[arg(long, env = "LULA_AUTH_LISTEN", default_value = "0.0.0.0:3001")]
    listen: SocketAddr,
    /// Address of the admin listener: GET /healthz, /readyz, /metrics, off
    /// the device port. Unset: they are served on --listen as before
    /// (deprecated; that layout goes in the next release).
    #[arg(long, env = "LULA_AUTH_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// bcrypt cost of stored device secrets (4 to 31).
    #[arg(long, env = "LULA_BCRYPT_COST", default_value_t = lula_auth::config::DEFAULT_BCRYPT_COST)]
    bcrypt_cost: u32,
    /// bcrypt hashes run at once (default: one per core); more wait their turn.
    #[arg(long, env = "LULA_BCRYPT_CONCURRENCY")]
    bcrypt_concurrency: Option<std::num::NonZeroUsize>,
    /// Longest wait for a bcrypt slot before a registration or login is
    /// answered 503 busy with Retry-After.
    #[arg(long, env = "LULA_BCRYPT_MAX_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    bcrypt_max_wait: Duration,
    /// Lifetime of session tokens.
    #[arg(long, env = "LULA_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// Ed25519 signing key, PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
    /// Without it a key is generated at start; its public half is published in
    /// Redis either way.
    #[arg(long, env = "LULA_AUTH_SIGNING_KEY_FILE")]
    signing_key_file: Option<PathBuf>,
    /// Timeout of one Redis command.
    #[arg(long, env = "LULA_REDIS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    redis_timeout: Duration,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "LULA_AUTH_MAX_BODY_BYTES", default_value_t = lula_auth::config::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Failed registrations or logins of one client per window before 429.
    #[arg(long, env = "LULA_MAX_FAILURES_PER_CLIENT", default_value_t = 10)]
    max_failures_per_client: u64,
    /// Failed registrations or logins from one address per window before 429.
    #[arg(long, env = "LULA_MAX_FAILURES_PER_ADDRESS", default_value_t = 100)]
    max_failures_per_address: u64,
    /// The window failed attempts are counted in.
    #[arg(long, env = "LULA_FAILURE_WINDOW", default_value = "15m", value_parser = humantime::parse_duration)]
    failure_window: Duration,
    /// Shortest device secret accepted at /register and /login, in bytes
    /// (8 to 72). Below 16 lula-auth warns at start: only for fleets that
    /// already use short secrets (docs/MIGRATING.md).
    #[arg(long, env = "LULA_MIN_SECRET_LEN", default_value_t = lula_auth::routes::MIN_SECRET_LEN)]
    min_secret_len: usize,
    /// Take client addresses from X-Forwarded-For (only behind a proxy that sets it).
    #[arg(long, env = "LULA_TRUST_FORWARDED_FOR")]
    trust_forwarded_for: bool,
    #[command(flatten)]
    tls: lula_runtime::tls::ServeTlsArgs,
}

#[derive(Args)]
struct ProvisionArgs {
    #[command(flatten)]
    common: Common,
    /// The device's client id (A-Z a-z 0-9 . _ -).
    #[arg(required_unless_present = "from_file", conflicts_with = "from_file")]
    client: Option<ClientId>,
    /// Provision every client id in this file (one per line; blank lines and
    /// `#` comments skipped) and print CSV: client,otpSecret,regDeadline.
    /// The way to re-provision a whole fleet in one step.
    #[arg(long, env = "LULA_FROM_FILE")]
    from_file: Option<PathBuf>,
    /// How long the device has to register.
    #[arg(long, env = "LULA_VALID_FOR", default_value = "24h", value_parser = humantime::parse_duration)]
    valid_for: Duration,
    /// Print JSON instead of text.
    #[arg(long, env = "LULA_JSON")]
    json: bool,
    /// Re-provision a device that already registered: forgets its secret and
    /// revokes its sessions, so it must register again.
    #[arg(long, env = "LULA_FORCE")]
    force: bool,
}

#[derive(Args)]
struct RevokeArgs {
    #[command(flatten)]
    common: Common,
    /// The device whose sessions end.
    client: ClientId,
}

impl Common {
    /// Replaces `redis_url` with the content of `--redis-url-file`, if given.
    fn load_secrets(&mut self) -> anyhow::Result<()> {
        if let Some(url) = secret_value(None, self.redis_url_file.as_deref(), CLOUD_READERS)
            .context("--redis-url-file")?
        {
            self.redis_url = url;
        }
        Ok(())
    }
}

/// Secret files may be group-readable: Kubernetes mounts them for the pod's
/// `fsGroup` (lula_runtime::secret).
const CLOUD_READERS: Readers = Readers::OwnerAndGroup;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    match &mut cli.command {
        Command::Serve(args) => args.common.load_secrets()?,
        Command::Provision(args) => args.common.load_secrets()?,
        Command::Revoke(args) => args.common.load_secrets()?,
        Command::ImportNode(args) => args.common.load_secrets()?,
    }
    match cli.command {
        Command::Serve(args) => {
            lula_runtime::init_tracing_as(args.log.log_format);
            serve(*args).await
        }
        Command::Provision(args) => {
            lula_runtime::init_tracing();
            provision(args).await
        }
        Command::Revoke(args) => {
            lula_runtime::init_tracing();
            revoke(args).await
        }
        Command::ImportNode(args) => {
            lula_runtime::init_tracing();
            import_node(args).await
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let signing_key_pem = match &args.signing_key_file {
        Some(path) => Some(Redacted::new(
            read_secret_file(path, CLOUD_READERS).context("--signing-key-file")?,
        )),
        None => None,
    };
    let config = Config {
        redis_cluster: args.common.redis_cluster,
        prefix: args.common.prefix,
        bcrypt_cost: args.bcrypt_cost,
        bcrypt_concurrency: args
            .bcrypt_concurrency
            .unwrap_or_else(lula_auth::password::default_slots),
        bcrypt_max_wait: args.bcrypt_max_wait,
        token_ttl: args.token_ttl,
        signing_key_pem,
        redis_timeout: args.redis_timeout,
        max_body_bytes: args.max_body_bytes,
        limits: lula_auth::throttle::Limits {
            per_client: args.max_failures_per_client,
            per_address: args.max_failures_per_address,
            window: args.failure_window,
        },
        trust_forwarded_for: args.trust_forwarded_for,
        min_secret_len: args.min_secret_len,
        serve: lula_runtime::ServeOptions {
            tls: args.tls.server_config().context("--tls-cert / --tls-key")?,
            drain_delay: args.drain_delay,
            ..Default::default()
        },
        ..Config::new(args.common.redis_url)
    };
    lula_runtime::log_start("lula-auth", env!("CARGO_PKG_VERSION"), &config);
    let target =
        lula_runtime::redis::RedisTarget::new(config.redis_url.clone(), config.redis_cluster);
    lula_runtime::redis_check::check_at_start(
        &target,
        "lula-auth's Redis",
        args.require_safe_redis,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let listeners =
        lula_runtime::listeners::bind(args.listen, args.admin_listen, "/healthz /readyz /metrics")
            .await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(lula_runtime::shutdown_on_signal(shutdown.clone()));
    lula_auth::run_with_admin(listeners.devices, listeners.admin, config, shutdown).await
}

async fn connect(common: &Common) -> anyhow::Result<lula_runtime::redis::RedisConn> {
    lula_runtime::redis::RedisTarget::new(common.redis_url.as_str(), common.redis_cluster)
        .connect()
        .await
        .with_context(|| {
            format!(
                "connect to {}",
                lula_protocol::redact_url(&common.redis_url)
            )
        })
}

async fn provision(args: ProvisionArgs) -> anyhow::Result<()> {
    let mut conn = connect(&args.common).await?;
    let keys = AuthKeys::new(args.common.prefix.clone());
    let Some(client) = &args.client else {
        let path = args
            .from_file
            .as_deref()
            .context("a client id or --from-file")?;
        return provision_batch(&mut conn, &keys, path, &args).await;
    };
    let p = match lula_auth::provision::provision(
        &mut conn,
        &keys,
        client,
        args.valid_for,
        args.force,
    )
    .await
    {
        Err(lula_auth::AuthError::AlreadyRegistered) => anyhow::bail!(
            "{client} is already registered; add --force to re-provision it (its secret is forgotten, its sessions revoked, and it must register again)"
        ),
        other => other.context("provision")?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        let deadline = std::time::UNIX_EPOCH + Duration::from_millis(p.reg_deadline);
        println!("client:       {}", p.client);
        println!("otpSecret:    {}", p.otp_secret);
        println!(
            "regDeadline:  {} ({})",
            p.reg_deadline,
            humantime::format_rfc3339_seconds(deadline)
        );
        println!("otpauth URI:  {}", p.otpauth_uri);
        if args.force {
            println!("revoked:      {} session(s)", p.revoked_sessions);
        }
        println!();
        // The secret goes in a file only the daemon's user reads, never on
        // a command line (`ps` shows those to every local user).
        println!("On the device, keep the secret in a file only root can read:");
        println!("  install -m 600 /dev/null /etc/lula-client/otp-secret");
        println!("  echo {} > /etc/lula-client/otp-secret", p.otp_secret);
        println!(
            "then set LULA_CLIENT_ID={} in /etc/lula-client/lula-client.env and start lula-client.service,",
            p.client
        );
        println!(
            "or run: lula-client run --client-id {} --otp-secret-file /etc/lula-client/otp-secret",
            p.client
        );
    }
    Ok(())
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let mut conn = connect(&args.common).await?;
    let keys = AuthKeys::new(args.common.prefix.clone());
    let n = lula_auth::sessions::revoke_device(&mut conn, &keys, &args.client)
        .await
        .context("revoke")?;
    println!(
        "revoked {n} session(s) of {}; it must be provisioned again (lula-auth provision {}) to come back",
        args.client, args.client
    );
    Ok(())
}

/// `provision --from-file`: every client id of the file, one CSV line each
/// on stdout; refusals on stderr, and an error at the end if any.
async fn provision_batch(
    conn: &mut lula_runtime::redis::RedisConn,
    keys: &AuthKeys,
    path: &std::path::Path,
    args: &ProvisionArgs,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read --from-file {}", path.display()))?;
    let mut clients = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let client: ClientId = line
            .parse()
            .with_context(|| format!("{}:{}: {line:?}", path.display(), n + 1))?;
        clients.push(client);
    }
    println!("client,otpSecret,regDeadline");
    let mut refused = 0;
    for client in &clients {
        match lula_auth::provision::provision(conn, keys, client, args.valid_for, args.force).await
        {
            Ok(p) => println!("{},{},{}", p.client, p.otp_secret, p.reg_deadline),
            Err(lula_auth::AuthError::AlreadyRegistered) => {
                refused += 1;
                eprintln!("{client}: already registered; add --force to re-provision it");
            }
            Err(e) => return Err(e).with_context(|| format!("provision {client}")),
        }
    }
    if refused > 0 {
        anyhow::bail!("{refused} of {} device(s) not provisioned", clients.len());
    }
    Ok(())
}

async fn import_node(args: ImportNodeArgs) -> anyhow::Result<()> {
    let mut ours = connect(&args.common).await?;
    let keys = AuthKeys::new(args.common.prefix.clone());
    let node_url = args
        .node_redis_url
        .clone()
        .unwrap_or_else(|| args.common.redis_url.clone());
    let mut node = lula_runtime::redis::RedisTarget::new(node_url.as_str(), false)
        .connect()
        .await
        .with_context(|| format!("connect to {}", lula_protocol::redact_url(&node_url)))?;
    let report = lula_auth::import_node::import_node(
        &mut node,
        &mut ours,
        &keys,
        &args.node_prefix,
        args.dry_run,
    )
    .await
    .context("import the Node lula-auth's records")?;
    let verb = if args.dry_run {
        "would import"
    } else {
        "imported"
    };
    for r in &report {
        match (r.outcome, &r.reason) {
            ("exists", _) => println!("{}: kept ours (a record exists here)", r.client),
            ("skipped", reason) => println!(
                "{}: skipped: {}",
                r.client,
                reason.as_deref().unwrap_or("unreadable")
            ),
            (outcome, _) => println!("{}: {verb} ({outcome})", r.client),
        }
    }
    let imported = report
        .iter()
        .filter(|r| matches!(r.outcome, "registered" | "provisioned"))
        .count();
    let skipped = report.iter().filter(|r| r.outcome == "skipped").count();
    println!(
        "{} Node record(s); {imported} {verb}; {skipped} skipped{}",
        report.len(),
        if args.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
    if skipped > 0 {
        println!(
            "re-provision the skipped devices: list them in a file and run lula-auth provision --from-file <file>"
        );
    }
    Ok(())
}
