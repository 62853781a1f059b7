//! Hub configuration, independent of how it was given (flags, env, tests).

use std::fmt;
use std::time::Duration;

use lula_protocol::keys::{DEFAULT_AUTH_PREFIX, DEFAULT_HUB_PREFIX};
use lula_protocol::limits::{DEFAULT_MAX_FRAME_BYTES, IDLE_TIMEOUT, PING_INTERVAL};

/// How long broadcasts are kept by default: a week.
pub const DEFAULT_BROADCAST_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything `run` needs besides the listener.
#[derive(Clone)]
pub struct Config {
    /// Cloud Redis holding the streams, cursors and (by default) auth's sessions.
    pub redis_url: String,
    /// `redis_url` is a seed node of a Redis Cluster: keys are spread over
    /// its masters, downstream notifications come from each master.
    pub redis_cluster: bool,
    /// lula-auth's Redis (sessions, verification keys, revocations) when it is
    /// not the hub's own.
    pub auth_redis_url: Option<String>,
    /// Whether `auth_redis_url` is a Redis Cluster seed.
    pub auth_redis_cluster: bool,
    /// In streams devices' entries are split into (1: `lula-hub:in:x`; more:
    /// `lula-hub:in:{p}:x`, a device always in partition
    /// `lula_protocol::keys::partition`). Every hub on one Redis must use the
    /// same number; see `lula_protocol::keys::IngestLayout`.
    pub ingest_partitions: u32,
    /// Prefix of the hub's keys (`lula-hub`).
    pub prefix: String,
    /// Prefix of lula-auth's keys, where sessions and verification keys live (`lula-auth`).
    pub auth_prefix: String,
    /// Largest WebSocket message accepted; larger ones close the socket with 1009.
    /// A compressed frame may not inflate past it either.
    pub max_frame_bytes: usize,
    /// The widest and largest upstream entry the hub puts together from
    /// parts (`--max-entry-pairs`, `--max-entry-bytes`); the client sets
    /// aside what is past them. See `lula_protocol::parts`.
    pub part_limits: lula_protocol::parts::PartLimits,
    /// Bytes of entries being put together from parts, over all connections
    /// (`--assembly-bytes`); see `lula_protocol::limits::DEFAULT_ASSEMBLY_BYTES`.
    pub assembly_bytes: usize,
    /// Largest compression window (bits) the hub agrees to when a client asks
    /// for compressed frames; `None` turns compression off (every client gets
    /// JSON text frames). See `PROTOCOL.md`, "Compression".
    pub compression_window_bits: Option<u8>,
    /// How long one Redis command may take before it counts as failed. An ingest
    /// script that times out may still have run; the client's retry is then
    /// answered as duplicates, so this never costs correctness.
    pub redis_timeout: Duration,
    /// Interval of WebSocket pings to each device.
    pub ping_interval: Duration,
    /// A device silent for this long (no frame, no pong) is disconnected.
    pub idle_timeout: Duration,
    /// How often out streams are re-read when Redis cannot send keyspace
    /// notifications (`CONFIG SET notify-keyspace-events` refused).
    pub downstream_poll: Duration,
    /// Broadcasts older than this are trimmed from `lula-hub:broadcast:x`
    /// (zero: keep every broadcast). A device offline for longer misses
    /// them and is told so.
    pub broadcast_retention: Duration,
    /// How often the hub trims the broadcast stream to the retention.
    pub broadcast_trim_interval: Duration,
    /// Limits of the accept loop (request head timeout, connection cap).
    pub serve: lula_runtime::ServeOptions,
    /// Keep one live connection per device across all replicas (the newest):
    /// a device that reconnects elsewhere leaves no half-dead connection
    /// behind. Off only for tests that race connections of one device.
    pub one_connection_per_device: bool,
    /// This replica's name in the fleet view (`None`: `<hostname>:<port>`).
    pub hub_id: Option<String>,
    /// Bearer token that opens `GET /fleet` (`None`: the endpoint answers 404).
    pub admin_token: Option<lula_protocol::Redacted<String>>,
    /// How long a verification key fetched from Redis is trusted before it is
    /// looked up again: a key lula-auth stopped publishing (rotated out)
    /// stops verifying within this. Not a flag; tests shorten it.
    pub key_cache_ttl: Duration,
    /// How long past its token's expiry a connection that never asked to
    /// renew (the Node lula-client) stays open; zero (the default) closes
    /// it at expiry like any other. At most
    /// [`crate::legacy_session::MAX_NON_RENEWING_GRACE`].
    pub non_renewing_grace: Duration,
    /// Messages for a device older than this (by their stream id's time) are
    /// not delivered: deleted, counted, and the device told
    /// (`--downstream-max-age`). `None`: no maximum; a message's own
    /// `expiresAt` field still applies.
    pub downstream_max_age: Option<Duration>,
    /// The wall clock tokens' `exp` is compared with, at the upgrade, on
    /// `renew` and for the moment a connection's session runs out. Not a
    /// flag; tests drive it so a token can expire "in 2 s" by the hub's
    /// clock however long the test takes to connect.
    pub clock: lula_runtime::Clock,
}

impl Config {
    /// The cloud Redis to connect to.
    pub fn redis_target(&self) -> lula_runtime::redis::RedisTarget {
        lula_runtime::redis::RedisTarget {
            url: self.redis_url.clone(),
            cluster: self.redis_cluster,
            timeout: self.redis_timeout,
        }
    }

    /// Where lula-auth's keys are: its own Redis, or the hub's.
    pub fn auth_redis_target(&self) -> lula_runtime::redis::RedisTarget {
        match &self.auth_redis_url {
            Some(url) => lula_runtime::redis::RedisTarget {
                url: url.clone(),
                cluster: self.auth_redis_cluster,
                timeout: self.redis_timeout,
            },
            None => self.redis_target(),
        }
    }

    /// Where entries are appended.
    pub fn ingest_layout(&self) -> lula_protocol::keys::IngestLayout {
        lula_protocol::keys::IngestLayout::new(
            &lula_protocol::keys::HubKeys::new(self.prefix.clone()),
            self.ingest_partitions,
            self.redis_cluster,
        )
    }

    /// Defaults for everything but the Redis URL.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Config {
            redis_url: redis_url.into(),
            redis_cluster: false,
            auth_redis_url: None,
            auth_redis_cluster: false,
            ingest_partitions: 1,
            prefix: DEFAULT_HUB_PREFIX.into(),
            auth_prefix: DEFAULT_AUTH_PREFIX.into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            part_limits: lula_protocol::parts::PartLimits {
                max_values: lula_protocol::limits::DEFAULT_MAX_PART_VALUES,
                max_bytes: lula_protocol::limits::DEFAULT_MAX_ENTRY_BYTES,
            },
            assembly_bytes: lula_protocol::limits::DEFAULT_ASSEMBLY_BYTES,
            compression_window_bits: Some(lula_protocol::compress::DEFAULT_WINDOW_BITS),
            redis_timeout: Duration::from_secs(5),
            ping_interval: PING_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
            downstream_poll: Duration::from_secs(1),
            broadcast_retention: DEFAULT_BROADCAST_RETENTION,
            broadcast_trim_interval: crate::downstream::SWEEP,
            serve: lula_runtime::ServeOptions::default(),
            one_connection_per_device: true,
            hub_id: None,
            admin_token: None,
            key_cache_ttl: crate::session::DEFAULT_KEY_CACHE_TTL,
            non_renewing_grace: Duration::ZERO,
            downstream_max_age: None,
            clock: lula_runtime::Clock::system(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("redis_url", &lula_protocol::redact_url(&self.redis_url))
            .field("redis_cluster", &self.redis_cluster)
            .field(
                "auth_redis_url",
                &self
                    .auth_redis_url
                    .as_deref()
                    .map(lula_protocol::redact_url),
            )
            .field("auth_redis_cluster", &self.auth_redis_cluster)
            .field("ingest_partitions", &self.ingest_partitions)
            .field("prefix", &self.prefix)
            .field("auth_prefix", &self.auth_prefix)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("part_limits", &self.part_limits)
            .field("assembly_bytes", &self.assembly_bytes)
            .field("compression_window_bits", &self.compression_window_bits)
            .field("redis_timeout", &self.redis_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("downstream_poll", &self.downstream_poll)
            .field("broadcast_retention", &self.broadcast_retention)
            .field("broadcast_trim_interval", &self.broadcast_trim_interval)
            .field("serve", &self.serve)
            .field("one_connection_per_device", &self.one_connection_per_device)
            .field("hub_id", &self.hub_id)
            .field("admin_token", &self.admin_token)
            .field("key_cache_ttl", &self.key_cache_ttl)
            .field("non_renewing_grace", &self.non_renewing_grace)
            .field("downstream_max_age", &self.downstream_max_age)
            .field("clock", &self.clock)
            .finish()
    }
}
