//! bcrypt hashing of device secrets, off the async runtime and bounded.
//!
//! A bcrypt at cost 12 takes a few hundred milliseconds of CPU. Running it on
//! the runtime would stall every other request, so it runs on the blocking pool;
//! and at most one hash per core runs at once, so a burst of registrations or
//! logins queues here instead of starting hundreds of blocking threads.

use anyhow::Context as _;
use tokio::sync::Semaphore;

use crate::error::AuthError;

/// Hashes and verifies device secrets.
pub struct Hasher {
    cost: u32,
    permits: Semaphore,
}

impl Hasher {
    /// A hasher at bcrypt `cost` (clamped to bcrypt's 4..=31).
    pub fn new(cost: u32) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Hasher {
            cost: cost.clamp(4, 31),
            permits: Semaphore::new(cores),
        }
    }

    /// The bcrypt hash of `secret`.
    pub async fn hash(&self, secret: String) -> Result<String, AuthError> {
        let cost = self.cost;
        self.blocking(move || bcrypt::hash(secret, cost).context("bcrypt hash"))
            .await
    }

    /// Whether `secret` matches `hash`. A stored hash bcrypt cannot read (an
    /// operator's typo) matches nothing and is logged.
    pub async fn verify(&self, secret: String, hash: String) -> Result<bool, AuthError> {
        self.blocking(move || match bcrypt::verify(secret, &hash) {
            Ok(ok) => Ok(ok),
            Err(e) => {
                tracing::warn!(error = %e, "stored secret is not a valid bcrypt hash");
                Ok(false)
            }
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| AuthError::Internal(e.into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| AuthError::Internal(e.into()))?
            .map_err(AuthError::Internal)
    }
}
