//! Authenticating a device at upgrade time: the token's signature against a key
//! lula-auth published in Redis, its claims, and the session record that
//! revocation deletes. Also the check of every live connection's session
//! record after the hub (re)subscribes to revocations ([`Revocations::resync`]),
//! since a revocation announced while the hub was not subscribed is lost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lula_protocol::keys::AuthKeys;
use lula_protocol::token::{self, Claims, TokenError};
use lula_runtime::redis::RedisConn;
use redis::AsyncCommands;

use lula_protocol::CloseReason;

use crate::live::Live;

/// Why a token does not authenticate a device.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is invalid, expired, or its session was revoked.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// How long a fetched verification key is trusted before it is looked up again
/// by default ([`crate::Config::key_cache_ttl`]), so a key lula-auth stopped
/// publishing stops verifying soon after.
pub const DEFAULT_KEY_CACHE_TTL: Duration = Duration::from_secs(60);

/// Session records read in one pipeline by [`Revocations::resync`].
const RESYNC_BATCH: usize = 500;

/// Verifies session tokens. Cheap to share; the key cache is behind a std mutex
/// that is never held across an await.
pub struct Authenticator {
    keys: AuthKeys,
    key_ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, [u8; 32])>>,
    /// What a token's `exp` is compared with.
    clock: lula_runtime::Clock,
}

impl Authenticator {
    /// An authenticator trusting a fetched verification key for `key_ttl`.
    pub fn with_key_cache_ttl(keys: AuthKeys, key_ttl: Duration) -> Self {
        Authenticator {
            keys,
            key_ttl,
            cache: Mutex::new(HashMap::new()),
            clock: lula_runtime::Clock::system(),
        }
    }

    /// This authenticator, judging token expiry by `clock` ([`crate::Config::clock`]).
    pub fn with_clock(self, clock: lula_runtime::Clock) -> Self {
        Authenticator { clock, ..self }
    }

    /// Verifies `token` and checks its session still exists; returns its claims.
    pub async fn authenticate(
        &self,
        redis: &mut RedisConn,
        token: &str,
    ) -> Result<Claims, AuthError> {
        let kid = token::kid_of(token)?;
        let key = self.key(redis, &kid).await?;
        let claims = token::verify_at(token, &key, self.clock.epoch_secs())?;
        if !self.session_alive(redis, &claims).await? {
            return Err(TokenError::Revoked.into());
        }
        Ok(claims)
    }

    /// Whether the session of `claims` still exists (and is that device's):
    /// lula-auth deletes the record when it revokes the session.
    pub async fn session_alive(
        &self,
        redis: &mut RedisConn,
        claims: &Claims,
    ) -> redis::RedisResult<bool> {
        let owner: Option<String> = redis.get(self.keys.session(&claims.sid)).await?;
        Ok(owner.as_deref() == Some(claims.sub.as_str()))
    }

    async fn key(&self, redis: &mut RedisConn, kid: &str) -> Result<[u8; 32], AuthError> {
        if let Some((at, key)) = self.lock().get(kid)
            && at.elapsed() < self.key_ttl
        {
            return Ok(*key);
        }
        let text: Option<String> = redis.get(self.keys.verify_key(kid)).await?;
        let Some(text) = text else {
            self.lock().remove(kid);
            return Err(TokenError::UnknownKey.into());
        };
        let key = token::decode_public_key(&text)?;
        let mut cache = self.lock();
        // Bound the cache: kids come from tokens, which only verified keys reach
        // here with, but drop stale ones so rotation does not accumulate entries.
        let ttl = self.key_ttl;
        cache.retain(|_, (at, _)| at.elapsed() < ttl);
        cache.insert(kid.to_owned(), (Instant::now(), key));
        Ok(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, [u8; 32])>> {
        // A poisoned cache only means another thread panicked mid-insert; the map
        // itself is still a valid cache.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where revocations come from: lula-auth's announcement channel, and its
/// Redis, where the session records live.
#[derive(Clone)]
pub struct Revocations {
    channel: String,
    keys: AuthKeys,
    redis: RedisConn,
}

impl Revocations {
    /// Revocations announced under `keys` (`lula-auth:revoked`), with the
    /// session records read on `redis` (lula-auth's Redis).
    pub fn new(keys: AuthKeys, redis: RedisConn) -> Self {
        Revocations {
            channel: keys.revocations(),
            keys,
            redis,
        }
    }

    /// The pub/sub channel revocations are announced on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Closes (as revoked, 4003) every live connection whose session record
    /// is gone or names another device; returns how many. Run after each
    /// (re)subscribe to [`Self::channel`]: lula-auth deletes the record before
    /// it announces, so a revocation announced while the hub was not
    /// subscribed is caught here, and one announced later is heard.
    pub async fn resync(&self, live: &Live) -> redis::RedisResult<usize> {
        let sessions = live.sessions();
        let mut redis = self.redis.clone();
        let mut closed = 0;
        for batch in sessions.chunks(RESYNC_BATCH) {
            let mut pipe = redis::pipe();
            for (_, sid) in batch {
                pipe.cmd("GET").arg(self.keys.session(sid));
            }
            let owners: Vec<Option<String>> = pipe.query_async(&mut redis).await?;
            for ((client, sid), owner) in batch.iter().zip(owners) {
                if owner.as_deref() != Some(client.as_str()) {
                    // Only connections still under `sid`: one that renewed
                    // meanwhile runs under a session of its own.
                    closed += live.kick(client, Some(sid), CloseReason::SessionRevoked);
                }
            }
        }
        Ok(closed)
    }
}
