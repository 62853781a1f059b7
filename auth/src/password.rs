//! bcrypt hashing of device secrets, off the async runtime and bounded.
//!
//! A bcrypt at cost 12 takes a few hundred milliseconds of CPU. Running it on
//! the runtime would stall every other request, so it runs on the blocking pool;
//! and at most `--bcrypt-concurrency` hashes (default: one per core) run at
//! once, so a burst of registrations or logins queues here instead of starting
//! hundreds of blocking threads. A request that waits longer than
//! `--bcrypt-max-wait` (default [`MAX_WAIT`]) for its turn is answered 503
//! `busy` with `Retry-After` instead of piling up: a login flood slows logins, not the
//! rest of the service.
//!
//! Logins of clients that have no secret run a bcrypt too, against a dummy
//! hash, so an unknown client is refused in the same time as a wrong secret.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;

use crate::error::AuthError;

/// Default longest wait for a hashing slot before the request is turned away
/// (`--bcrypt-max-wait`).
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// The default number of hashing slots: one per core.
pub fn default_slots() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Hashes and verifies device secrets.
pub struct Hasher {
    cost: u32,
    permits: Semaphore,
    slots: usize,
    max_wait: Duration,
    /// A hash at the configured cost of a secret nobody has, for [`Hasher::burn`].
    dummy: String,
    /// bcrypt operations that ran (hash, verify or burn), counted where bcrypt
    /// is called, for tests and metrics.
    runs: Arc<AtomicU64>,
    metrics: Arc<crate::metrics::AuthMetrics>,
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl Hasher {
    /// A hasher at bcrypt `cost` (clamped to bcrypt's 4..=31), one slot per
    /// core, waiting at most [`MAX_WAIT`] for one.
    pub fn new(cost: u32, metrics: Arc<crate::metrics::AuthMetrics>) -> Self {
        Self::with_slots(cost, default_slots(), MAX_WAIT, metrics)
    }

    /// A hasher at bcrypt `cost` running at most `slots` hashes at once; a
    /// request that waits longer than `max_wait` for a slot gets
    /// [`AuthError::Busy`].
    pub fn with_slots(
        cost: u32,
        slots: NonZeroUsize,
        max_wait: Duration,
        metrics: Arc<crate::metrics::AuthMetrics>,
    ) -> Self {
        let cost = cost.clamp(4, 31);
        let nobody = format!("{:x}", rand::random::<u128>());
        Hasher {
            cost,
            permits: Semaphore::new(slots.get()),
            slots: slots.get(),
            max_wait,
            // Cost is clamped to bcrypt's range, so this cannot fail; a failure
            // would only make `burn` faster (and `runs` not move), never
            // accept anything.
            dummy: bcrypt::hash(nobody, cost).unwrap_or_default(),
            runs: Arc::new(AtomicU64::new(0)),
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

    /// How many may run at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The dummy hash [`Hasher::burn`] verifies against: bcrypt at the
    /// configured cost, of a random secret nobody knows.
    pub fn dummy_hash(&self) -> &str {
        &self.dummy
    }

    /// Spends what verifying a secret costs, and accepts nothing: for clients
    /// that have no secret, so their refusal takes as long as a wrong secret's.
    /// It is [`Hasher::verify`] itself, against [`Hasher::dummy_hash`].
    pub async fn burn(&self, secret: String) -> Result<(), AuthError> {
        self.verify(secret, self.dummy.clone()).await.map(|_| ())
    }

    /// The bcrypt hash of `secret`.
    pub async fn hash(&self, secret: String) -> Result<String, AuthError> {
        let (cost, runs) = (self.cost, self.runs.clone());
        self.blocking(move || {
            let hash = bcrypt::hash(secret, cost).context("bcrypt hash");
            runs.fetch_add(1, Ordering::Relaxed);
            hash
        })
        .await
    }

    /// Whether `secret` matches `hash`. A stored hash bcrypt cannot read (an
    /// operator's typo) matches nothing and is logged; no bcrypt ran for it,
    /// so it is not counted in [`Hasher::runs`].
    pub async fn verify(&self, secret: String, hash: String) -> Result<bool, AuthError> {
        let runs = self.runs.clone();
        self.blocking(move || match bcrypt::verify(secret, &hash) {
            Ok(ok) => {
                runs.fetch_add(1, Ordering::Relaxed);
                Ok(ok)
            }
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
        let _permit = match tokio::time::timeout(self.max_wait, self.permits.acquire()).await {
            Ok(permit) => permit.map_err(|e| AuthError::Internal(e.into()))?,
            Err(_) => return Err(AuthError::Busy),
        };
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

    fn slots(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flood_of_verifications_runs_exactly_as_many_at_once_as_there_are_slots() {
        let hasher = Arc::new(Hasher::with_slots(
            6,
            slots(2),
            Duration::from_secs(60),
            Default::default(),
        ));
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
        assert_eq!(hasher.slots(), 2);
        assert_eq!(hasher.peak_concurrency(), 2);
        assert_eq!(hasher.runs(), 25);
    }

    #[tokio::test]
    async fn the_default_is_one_slot_per_core() {
        let hasher = Hasher::new(4, Default::default());
        assert_eq!(hasher.slots(), default_slots().get());
    }

    #[tokio::test]
    async fn a_wait_for_a_slot_longer_than_the_maximum_is_busy() {
        let hasher = Arc::new(Hasher::with_slots(
            4,
            slots(1),
            Duration::from_millis(10),
            Default::default(),
        ));
        // Hold the only slot from outside, as a long bcrypt would.
        let held = hasher.permits.acquire().await.unwrap();
        assert!(matches!(
            hasher.verify("guess".into(), hasher.dummy.clone()).await,
            Err(AuthError::Busy)
        ));
        drop(held);
        assert!(
            !hasher
                .verify("guess".into(), hasher.dummy.clone())
                .await
                .unwrap()
        );
    }

    #[test]
    fn the_dummy_hash_has_the_configured_cost() {
        for cost in [4, 5, 7] {
            let hasher = Hasher::new(cost, Default::default());
            let dummy = hasher.dummy_hash();
            assert!(
                dummy.starts_with(&format!("$2b${cost:02}$")),
                "cost {cost}: {dummy}"
            );
            // A hash bcrypt reads (a broken one would fail at once, no work).
            assert!(matches!(bcrypt::verify("anything", dummy), Ok(false)));
        }
    }

    #[tokio::test]
    async fn burning_runs_a_bcrypt_verification_and_accepts_nothing() {
        let hasher = Hasher::new(4, Default::default());
        let dummy = hasher.dummy_hash().to_owned();
        hasher.burn("anything".into()).await.unwrap();
        // Counted where bcrypt::verify returns, not where a slot is taken: a
        // burn that skipped the verification (or met an unreadable hash)
        // would not count.
        assert_eq!(hasher.runs(), 1);
        // The same verification a real client's secret gets, at the same cost.
        assert!(!hasher.verify("anything".into(), dummy).await.unwrap());
        assert_eq!(hasher.runs(), 2);
        assert!(
            !hasher
                .verify("anything".into(), "$2b$oops".into())
                .await
                .unwrap()
        );
        assert_eq!(hasher.runs(), 2, "an unreadable hash ran no bcrypt");
    }
}
