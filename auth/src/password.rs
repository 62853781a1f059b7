//! bcrypt hashing of device secrets, off the async runtime and bounded.
//!
//! A bcrypt at cost 12 takes a few hundred milliseconds of CPU. Running it on
//! the runtime would stall every other request, so it runs on the blocking pool;
//! and at most one hash per core runs at once, so a burst of registrations or
//! logins queues here instead of starting hundreds of blocking threads. A
//! request that waits longer than [`MAX_WAIT`] for its turn is answered 503
//! with `Retry-After` instead of piling up: a login flood slows logins, not the
//! rest of the service.
//!
//! Logins of clients that have no secret run a bcrypt too, against a dummy
//! hash, so an unknown client is refused in the same time as a wrong secret.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;

use crate::error::AuthError;

/// Longest wait for a hashing slot before the request is turned away.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Hashes and verifies device secrets.
pub struct Hasher {
    cost: u32,
    permits: Semaphore,
    /// A hash at the configured cost of a secret nobody has, for [`Hasher::burn`].
    dummy: String,
    /// bcrypt operations run (hash, verify or burn), for tests and metrics.
    runs: AtomicU64,
    metrics: std::sync::Arc<crate::metrics::AuthMetrics>,
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl Hasher {
    /// A hasher at bcrypt `cost` (clamped to bcrypt's 4..=31).
    pub fn new(cost: u32, metrics: std::sync::Arc<crate::metrics::AuthMetrics>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cost = cost.clamp(4, 31);
        let nobody = format!("{:x}", rand::random::<u128>());
        Hasher {
            cost,
            permits: Semaphore::new(cores),
            // Cost is clamped to bcrypt's range, so this cannot fail; a failure
            // would only make `burn` faster, never accept anything.
            dummy: bcrypt::hash(nobody, cost).unwrap_or_default(),
            runs: AtomicU64::new(0),
            metrics,
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// bcrypt operations run so far.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// The most bcrypt operations that ever ran at once.
    pub fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// How many may run at once (one per core).
    pub fn slots(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Spends what verifying a secret costs, and accepts nothing: for clients
    /// that have no secret, so their refusal takes as long as a wrong secret's.
    pub async fn burn(&self, secret: String) -> Result<(), AuthError> {
        let dummy = self.dummy.clone();
        self.blocking(move || {
            let _ = bcrypt::verify(secret, &dummy);
            Ok(())
        })
        .await
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
        let _permit = match tokio::time::timeout(MAX_WAIT, self.permits.acquire()).await {
            Ok(permit) => permit.map_err(|e| AuthError::Internal(e.into()))?,
            Err(_) => return Err(AuthError::Busy),
        };
        self.runs.fetch_add(1, Ordering::Relaxed);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(f).await;
        self.metrics.bcrypt(started.elapsed());
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
            .map_err(|e| AuthError::Internal(e.into()))?
            .map_err(AuthError::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flood_of_verifications_never_runs_more_than_one_per_core() {
        let hasher = std::sync::Arc::new(Hasher::new(6, Default::default()));
        let hash = hasher.hash("the secret of a device".into()).await.unwrap();
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let (h, hash) = (hasher.clone(), hash.clone());
                tokio::spawn(async move { h.verify(format!("guess {i}"), hash).await })
            })
            .collect();
        for t in tasks {
            assert!(!t.await.unwrap().unwrap());
        }
        assert!(hasher.peak_concurrency() <= hasher.slots());
        assert_eq!(hasher.runs(), 25);
    }

    #[tokio::test]
    async fn burning_costs_a_bcrypt_and_accepts_nothing() {
        let hasher = Hasher::new(4, Default::default());
        hasher.burn("anything".into()).await.unwrap();
        assert_eq!(hasher.runs(), 1);
    }
}
