//! Seeded randomness: every random choice of a run comes from generators
//! seeded from the run's seed, one per stream of choices (each proxy
//! connection, the monkey), so a seed repeats the same choices.

use std::time::Duration;

use rand::RngExt as _;
use rand::rngs::StdRng;

/// A seed for stream `stream` number `n`, derived from `seed` (splitmix64), so
/// each stream's choices depend on the seed only, not on how streams interleave.
pub fn derive(seed: u64, stream: &str, n: u64) -> u64 {
    let mut x = seed;
    for b in stream.bytes() {
        x = splitmix(x ^ u64::from(b));
    }
    splitmix(x ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fresh random seed (52 bits, so it survives a trip through JSON numbers).
pub fn random_seed() -> u64 {
    rand::random::<u64>() >> 12
}

/// An exponentially distributed wait with the given mean (faults as a Poisson
/// process), capped at five means.
pub fn exponential(rng: &mut StdRng, mean: Duration) -> Duration {
    let u: f64 = rng.random_range(0.0..1.0);
    mean.mul_f64((-(1.0 - u).ln()).min(5.0))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn derived_seeds_depend_on_seed_stream_and_number() {
        assert_eq!(derive(42, "proxy", 1), derive(42, "proxy", 1));
        assert_ne!(derive(42, "proxy", 1), derive(42, "proxy", 2));
        assert_ne!(derive(42, "proxy", 1), derive(42, "monkey", 1));
        assert_ne!(derive(42, "proxy", 1), derive(43, "proxy", 1));
    }

    #[test]
    fn exponential_gaps_average_near_the_mean() {
        let mut rng = StdRng::seed_from_u64(1);
        let mean = Duration::from_secs(4);
        let n = 10_000;
        let total: Duration = (0..n).map(|_| exponential(&mut rng, mean)).sum();
        let avg = total / n;
        assert!(
            avg > Duration::from_millis(3_600) && avg < Duration::from_millis(4_200),
            "{avg:?}"
        );
    }
}
