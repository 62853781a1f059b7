//! Authenticating a device at upgrade time: the token's signature against a key
//! lula-auth published in Redis, its claims, and the session record that
//! revocation deletes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lula_protocol::keys::AuthKeys;
use lula_protocol::token::{self, Claims, TokenError};
use lula_runtime::redis::RedisConn;
use redis::AsyncCommands;

use crate::error::HubError;

/// How long a fetched verification key is trusted before it is looked up again,
/// so a key lula-auth stopped publishing stops verifying soon after.
const KEY_CACHE_TTL: Duration = Duration::from_secs(60);

/// Verifies session tokens. Cheap to share; the key cache is behind a std mutex
/// that is never held across an await.
pub struct Authenticator {
    keys: AuthKeys,
    cache: Mutex<HashMap<String, (Instant, [u8; 32])>>,
}

impl Authenticator {
    /// An authenticator reading auth keys under `keys`.
    pub fn new(keys: AuthKeys) -> Self {
        Authenticator {
            keys,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies `token` and checks its session still exists; returns its claims.
    pub async fn authenticate(
        &self,
        redis: &mut RedisConn,
        token: &str,
    ) -> Result<Claims, HubError> {
        let kid = token::kid_of(token)?;
        let key = self.key(redis, &kid).await?;
        let claims = token::verify(token, &key)?;
        let owner: Option<String> = redis.get(self.keys.session(&claims.sid)).await?;
        if owner.as_deref() != Some(claims.sub.as_str()) {
            return Err(TokenError::Revoked.into());
        }
        Ok(claims)
    }

    async fn key(&self, redis: &mut RedisConn, kid: &str) -> Result<[u8; 32], HubError> {
        if let Some((at, key)) = self.lock().get(kid)
            && at.elapsed() < KEY_CACHE_TTL
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
        cache.retain(|_, (at, _)| at.elapsed() < KEY_CACHE_TTL);
        cache.insert(kid.to_owned(), (Instant::now(), key));
        Ok(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, [u8; 32])>> {
        // A poisoned cache only means another thread panicked mid-insert; the map
        // itself is still a valid cache.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}
