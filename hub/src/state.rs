//! [`AppState`]: what every request and connection of one hub shares.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context as _;
use lula_protocol::keys::{AuthKeys, HubKeys};
use lula_runtime::redis::{RedisConn, RedisTarget};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::session::Authenticator;
use crate::{Config, downstream, ingest, live, metrics};

/// Shared by every request and connection.
pub struct AppState {
    /// Settings.
    pub config: Config,
    /// Hub key names.
    pub keys: HubKeys,
    /// Cheap-to-clone multiplexed connection for ordinary (non-blocking)
    /// commands: to one Redis, or to a Redis Cluster.
    pub redis: RedisConn,
    /// Where `redis` goes, for the downstream watcher's pub/sub connections.
    pub redis_target: RedisTarget,
    /// Downstream readers waiting for their out stream to change.
    pub wakers: Arc<downstream::Wakers>,
    /// Group commit of every connection's batches.
    pub ingestor: ingest::Ingestor,
    /// Bytes of entries carried in parts, both ways, over all connections
    /// (`Config::assembly_bytes`).
    pub assembly: crate::parts_budget::PartsBudget,
    /// Live connections by device.
    pub live: Arc<live::Live>,
    /// What the hub counts (`GET /metrics`).
    pub metrics: Arc<metrics::HubMetrics>,
    /// Token verification.
    pub auth: Authenticator,
    /// lula-auth's Redis (sessions, verification keys): `redis` itself unless
    /// `--auth-redis-url` names another.
    pub auth_redis: RedisConn,
    /// Cancelled when the hub shuts down; connections close with 1001.
    pub shutdown: CancellationToken,
    /// Cancelled when the hub was told to stop, `--drain-delay` before
    /// `shutdown`: `/readyz` answers 503 from then on.
    pub draining: CancellationToken,
    /// This replica's name in the fleet view.
    pub hub_id: String,
    /// Connection tasks, awaited on shutdown (axum does not track upgraded sockets).
    pub tracker: TaskTracker,
    /// The next connection's id (in logs and the fleet view).
    pub(crate) next_conn: AtomicU64,
}

impl AppState {
    /// Builds the state. Connects to Redis lazily, so the hub starts (and
    /// answers 503) while Redis is still coming up.
    pub fn new(config: Config, shutdown: CancellationToken) -> anyhow::Result<Arc<Self>> {
        Self::build(config, shutdown.clone(), shutdown)
    }

    /// [`AppState::new`] with readiness ending (`draining`) before the stop.
    pub(crate) fn build(
        config: Config,
        draining: CancellationToken,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let redis_target = config.redis_target();
        // Requests fail within --redis-timeout while Redis is down (503),
        // rather than wait on reconnects (see lula_runtime::redis).
        let redis = redis_target.connect_lazy().context("parse --redis-url")?;
        let auth_redis = match &config.auth_redis_url {
            Some(_) => config
                .auth_redis_target()
                .connect_lazy()
                .context("parse --auth-redis-url")?,
            None => redis.clone(),
        };
        let keys = HubKeys::new(config.prefix.clone());
        let hub_id = config.hub_id.clone().unwrap_or_else(hostname);
        let layout = config.ingest_layout();
        let metrics = Arc::new(metrics::HubMetrics::default());
        if config.redis_cluster
            && let Some(p) = layout.cross_slot_partition()
        {
            anyhow::bail!(
                "--prefix {:?} puts {} and {} in different Redis Cluster slots; use a prefix without braces",
                config.prefix,
                layout.cursors(p),
                layout.in_stream(p)
            );
        }
        Ok(Arc::new(AppState {
            ingestor: ingest::Ingestor::start(
                redis.clone(),
                redis_target.clone(),
                &keys,
                layout,
                metrics.clone(),
            ),
            assembly: crate::parts_budget::PartsBudget::new(
                config.assembly_bytes,
                metrics.assembly_bytes.clone(),
            ),
            metrics,
            keys,
            auth: Authenticator::with_key_cache_ttl(
                AuthKeys::new(config.auth_prefix.clone()),
                config.key_cache_ttl,
            )
            .with_clock(config.clock.clone()),
            config,
            redis,
            redis_target,
            auth_redis,
            wakers: Arc::default(),
            live: Arc::default(),
            hub_id,
            draining,
            shutdown,
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
        }))
    }
}

/// This machine's name: `$HOSTNAME` (a pod's name on Kubernetes), else the
/// kernel's, else `hub`.
pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hub".to_owned())
}
