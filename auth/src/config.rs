//! lula-auth configuration, independent of how it was given (flags, env, tests).

use std::fmt;
use std::time::Duration;

use lula_protocol::Redacted;
use lula_protocol::keys::DEFAULT_AUTH_PREFIX;

/// Default bcrypt cost of stored device secrets.
pub const DEFAULT_BCRYPT_COST: u32 = 12;
/// Default lifetime of a session token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Largest request body accepted by `/register`, `/login` and `/logout`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;

/// The time source for TOTP windows, registration deadlines and token expiry.
/// Tests drive it; production reads the system clock. (The hub takes the same.)
pub use lula_runtime::Clock;

/// Everything `run` needs besides the listener.
#[derive(Clone)]
pub struct Config {
    /// Redis holding client records, sessions and published verification keys.
    pub redis_url: String,
    /// `redis_url` is a seed node of a Redis Cluster.
    pub redis_cluster: bool,
    /// Prefix of lula-auth's keys (`lula-auth`).
    pub prefix: String,
    /// bcrypt cost for device secrets (4 to 31).
    pub bcrypt_cost: u32,
    /// bcrypt hashes that may run at once (default: one per core).
    pub bcrypt_concurrency: std::num::NonZeroUsize,
    /// Longest wait for a bcrypt slot before a request is answered 503 `busy`.
    pub bcrypt_max_wait: Duration,
    /// Lifetime of a session token and its session record.
    pub token_ttl: Duration,
    /// The Ed25519 signing key as PKCS#8 PEM. `None`: generate one at start.
    /// Every instance publishes its public key in Redis, so several replicas
    /// with different keys (or a restarted one) all issue tokens hubs accept.
    pub signing_key_pem: Option<Redacted<String>>,
    /// How long one Redis command may take.
    pub redis_timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Time source.
    pub clock: Clock,
    /// Limits of the accept loop (request head timeout, connection cap).
    pub serve: lula_runtime::ServeOptions,
    /// Failed attempts allowed per client and per address.
    pub limits: crate::throttle::Limits,
    /// Shortest device secret `/register` and `/login` accept (default
    /// [`crate::routes::MIN_SECRET_LEN`]; at least
    /// [`crate::routes::MIN_SECRET_FLOOR`], see [`Config::check`]).
    pub min_secret_len: usize,
    /// Take the client address from `X-Forwarded-For` (only behind a proxy
    /// that sets it; otherwise anyone could pick their own address).
    pub trust_forwarded_for: bool,
}

impl Config {
    /// Defaults for everything but the Redis URL.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Config {
            redis_url: redis_url.into(),
            redis_cluster: false,
            prefix: DEFAULT_AUTH_PREFIX.into(),
            bcrypt_cost: DEFAULT_BCRYPT_COST,
            bcrypt_concurrency: crate::password::default_slots(),
            bcrypt_max_wait: crate::password::MAX_WAIT,
            token_ttl: DEFAULT_TOKEN_TTL,
            signing_key_pem: None,
            redis_timeout: Duration::from_secs(5),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            clock: Clock::system(),
            serve: lula_runtime::ServeOptions::default(),
            limits: crate::throttle::Limits::default(),
            trust_forwarded_for: false,
            min_secret_len: crate::routes::MIN_SECRET_LEN,
        }
    }

    /// Refuses settings lula-auth cannot serve with, and warns about weak
    /// ones: a `min_secret_len` outside [`crate::routes::MIN_SECRET_FLOOR`]
    /// to [`crate::routes::MAX_SECRET_LEN`] is an error; one below
    /// [`crate::routes::MIN_SECRET_LEN`] is logged at warn, since short
    /// secrets are easier to guess (they are only for fleets that already
    /// use them, e.g. Node lula devices kept on their secret).
    pub fn check(&self) -> anyhow::Result<()> {
        use crate::routes::{MAX_SECRET_LEN, MIN_SECRET_FLOOR, MIN_SECRET_LEN};
        let min = self.min_secret_len;
        if !(MIN_SECRET_FLOOR..=MAX_SECRET_LEN).contains(&min) {
            anyhow::bail!(
                "--min-secret-len {min} is outside {MIN_SECRET_FLOOR} to {MAX_SECRET_LEN} bytes"
            );
        }
        if min < MIN_SECRET_LEN {
            tracing::warn!(
                min_secret_len = min,
                default = MIN_SECRET_LEN,
                "--min-secret-len is below the default: device secrets this short are easier to guess; raise it once every device has a longer secret"
            );
        }
        Ok(())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("redis_url", &lula_protocol::redact_url(&self.redis_url))
            .field("redis_cluster", &self.redis_cluster)
            .field("prefix", &self.prefix)
            .field("bcrypt_cost", &self.bcrypt_cost)
            .field("bcrypt_concurrency", &self.bcrypt_concurrency)
            .field("bcrypt_max_wait", &self.bcrypt_max_wait)
            .field("token_ttl", &self.token_ttl)
            .field(
                "signing_key",
                &self.signing_key_pem.as_ref().map(|_| "(configured)"),
            )
            .field("redis_timeout", &self.redis_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("min_secret_len", &self.min_secret_len)
            .finish_non_exhaustive()
    }
}
