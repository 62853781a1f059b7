//! Capped exponential backoff with full jitter, so a fleet that lost its hub at
//! the same moment does not come back in lockstep.

use std::time::Duration;

/// Reconnect delays: the n-th consecutive failure waits a uniformly random time
/// in `[0, min(max, min * 2^n)]`, never less than a millisecond.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays starting at `min`, capped at `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(20));
        self.min.saturating_mul(factor).min(self.max)
    }

    /// Records a failure and returns how long to wait.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let millis = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::random_range(1..=millis))
    }

    /// Forgets past failures (after a connection that worked).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                assert!(b.next_delay() <= c);
                c.as_millis() as u64
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }
}
