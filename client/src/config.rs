//! Client configuration, independent of how it was given (flags, env, tests).

use std::path::PathBuf;
use std::time::Duration;

use lula_protocol::keys::DEFAULT_DEVICE_PREFIX;
use lula_protocol::limits::{
    DEFAULT_BATCH_ENTRIES, DEFAULT_INFLIGHT_BATCHES, DEFAULT_MAX_FRAME_BYTES, IDLE_TIMEOUT,
};
use lula_protocol::{ClientId, Redacted, redact_url};

use crate::retention::{DEFAULT_KEEP_ACKED, KeepAcked};

/// The compression window the daemon asks the hub for unless told otherwise
/// (`--compression-window-bits`); `None` asks for none. On by default since
/// the daemon offers a 32 KiB frame window: with it, upstream on loopback
/// runs at 0.75–0.98 of the JSON rate for 500-byte log lines (median 0.93)
/// while a metered link carries 0.20–0.39 of the JSON bytes (BENCHMARKS.md,
/// issue 16). See `PROTOCOL.md`, "Compression".
pub const DEFAULT_COMPRESSION_WINDOW_BITS: Option<u8> =
    Some(lula_protocol::compress::DEFAULT_WINDOW_BITS);

/// Everything the daemon needs.
#[derive(Clone)]
pub struct Config {
    /// This device's identity, as provisioned in lula-auth.
    pub client_id: ClientId,
    /// The provisioned base32 TOTP secret, used to prove the registration;
    /// `None` once registered (the identity in `state_dir` replaces it).
    pub otp_secret: Option<Redacted<String>>,
    /// A file holding the OTP secret, read (and held to mode 0600/0400) only
    /// while the device is unregistered: after registration it may be gone.
    pub otp_secret_file: Option<PathBuf>,
    /// lula-auth base URL, e.g. `http://localhost:3001`.
    pub auth_url: String,
    /// lula-hub WebSocket URL, e.g. `ws://localhost:3002`.
    pub hub_url: String,
    /// A PEM file of CA certificates trusted for `https://` and `wss://`, in
    /// addition to the system roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// The device Redis.
    pub redis_url: String,
    /// Where the daemon keeps its identity (secret, registration state).
    pub state_dir: PathBuf,
    /// Prefix of the device Redis keys (`lula-client`).
    pub prefix: String,
    /// Most entries per upstream batch.
    pub batch_entries: usize,
    /// Batches sent and not yet acknowledged.
    pub inflight_batches: usize,
    /// Largest frame the client sends (the hub's limit wins if smaller).
    pub max_frame_bytes: usize,
    /// The widest and largest entry carried in parts, each way
    /// (`--max-entry-pairs`, `--max-entry-bytes`): upstream the hub's limits
    /// win if smaller; downstream the hub sets aside what is past these.
    /// The daemon holds one such entry per direction, so on a small device
    /// these bound its memory.
    pub part_limits: lula_protocol::parts::PartLimits,
    /// Compression window (bits) asked of the hub; `None` asks for no
    /// compression (JSON text frames). See `PROTOCOL.md`, "Compression".
    pub compression_window_bits: Option<u8>,
    /// Pause between failed registration attempts.
    pub register_retry: Duration,
    /// First reconnect delay; doubles per failure up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    /// Cap of the reconnect delay.
    pub max_backoff: Duration,
    /// A hub silent for this long (no frame, no ping) is considered gone.
    pub idle_timeout: Duration,
    /// On shutdown, how long to wait for batches in flight to be acknowledged.
    pub drain_timeout: Duration,
    /// Serve Prometheus metrics at `GET /metrics` on this address.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The secret a Node lula-client registered this device with (its
    /// `LULA_SECRET`), kept when its state is taken over (`crate::takeover`).
    pub node_secret: Option<Redacted<String>>,
    /// How much acknowledged history `out:x` keeps (upstream retention).
    pub keep_acked: KeepAcked,
    /// Trim `in:x` below what every consumer group acknowledged, this often
    /// (off when `None`: `in:x` is its consumers' to trim).
    pub trim_in_consumed: Option<Duration>,
    /// Refuse to start when the device Redis's settings can break the
    /// guarantees (eviction policy, persistence), instead of warning.
    pub require_safe_redis: bool,
}

impl Config {
    /// Defaults for everything but identity and where things are. A device
    /// that registered already may pass [`Config::otp_secret`] as `None`.
    pub fn new(
        client_id: ClientId,
        otp_secret: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Config {
            client_id,
            otp_secret: Some(Redacted::new(otp_secret.into())),
            otp_secret_file: None,
            auth_url: "http://localhost:3001".into(),
            hub_url: "ws://localhost:3002".into(),
            ca_file: None,
            redis_url: "redis://127.0.0.1:6379".into(),
            state_dir: state_dir.into(),
            prefix: DEFAULT_DEVICE_PREFIX.into(),
            batch_entries: DEFAULT_BATCH_ENTRIES,
            inflight_batches: DEFAULT_INFLIGHT_BATCHES,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            part_limits: lula_protocol::parts::PartLimits {
                max_values: lula_protocol::limits::DEFAULT_MAX_PART_VALUES,
                max_bytes: lula_protocol::limits::DEFAULT_MAX_ENTRY_BYTES,
            },
            compression_window_bits: DEFAULT_COMPRESSION_WINDOW_BITS,
            register_retry: Duration::from_secs(60),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            idle_timeout: IDLE_TIMEOUT,
            drain_timeout: Duration::from_secs(10),
            metrics_listen: None,
            node_secret: None,
            keep_acked: DEFAULT_KEEP_ACKED,
            trim_in_consumed: None,
            require_safe_redis: false,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("client_id", &self.client_id)
            .field("otp_secret", &self.otp_secret)
            .field("otp_secret_file", &self.otp_secret_file)
            .field("auth_url", &redact_url(&self.auth_url))
            .field("hub_url", &redact_url(&self.hub_url))
            .field("ca_file", &self.ca_file)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("state_dir", &self.state_dir)
            .field("prefix", &self.prefix)
            .field("batch_entries", &self.batch_entries)
            .field("inflight_batches", &self.inflight_batches)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("part_limits", &self.part_limits)
            .field("compression_window_bits", &self.compression_window_bits)
            .field("register_retry", &self.register_retry)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("idle_timeout", &self.idle_timeout)
            .field("metrics_listen", &self.metrics_listen)
            .field("node_secret", &self.node_secret)
            .field("keep_acked", &self.keep_acked.to_string())
            .field("trim_in_consumed", &self.trim_in_consumed)
            .field("require_safe_redis", &self.require_safe_redis)
            .finish_non_exhaustive()
    }
}
