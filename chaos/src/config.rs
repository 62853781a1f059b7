//! What a run does: its mode, sizes, fault settings and seed.
//!
//! Two modes:
//! - **short** (`cargo test`, under 3 minutes in a debug build on 2 cores): the
//!   full workload produced over 50 seconds under every kind of fault but
//!   blackholes (which take longer than the 45 s idle timeouts to show);
//! - **long** (`scripts/chaos.sh --duration 10m`): the full workload (20 devices
//!   x 20,000 entries up and 2,000 down) or more, spread over the requested
//!   duration under faults, with a quiet tail at the end in which the faults go on
//!   but production has stopped.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Short or long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// About 100 seconds in a debug build; what `cargo test` runs.
    Short,
    /// The full workload, for as long as asked.
    Long,
}

/// How much is produced, by how many devices, for how long.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    /// Devices, each with its own lula-client daemon and proxy.
    pub devices: usize,
    /// Device Redis servers the devices share (each device has its own key prefix).
    pub device_redis: usize,
    /// Entries each device produces into its out stream.
    pub entries_up: u64,
    /// Entries the cloud producer adds to each device's hub out stream.
    pub entries_down: u64,
    /// Bytes of every entry's `payload` value.
    pub payload_bytes: usize,
    /// Every this many entries up one is wide (and every other time large)
    /// enough to travel in parts (0: none); see `workload::fields`.
    pub in_parts_every_up: u64,
    /// The same for entries down.
    pub in_parts_every_down: u64,
    /// Production is spread evenly over this long.
    pub produce_for: Duration,
    /// Faults are injected for this long (from the start of production).
    pub faults_for: Duration,
    /// Longest wait for everything to drain once faults stop (a hang guard).
    pub drain_timeout: Duration,
}

/// How often and how hard faults hit.
#[derive(Debug, Clone, Serialize)]
pub struct FaultSettings {
    /// Lifetime of session tokens: connections outlive them, so reconnects
    /// need fresh logins.
    pub token_ttl: Duration,
    /// Mean time between two proxy faults on one connection (exponential).
    pub proxy_mean_gap: Duration,
    /// Mean time between two process faults (exponential).
    pub process_mean_gap: Duration,
    /// How long a stall lasts.
    pub stall: Range<Duration>,
    /// How long a delay lasts.
    pub delay_window: Range<Duration>,
    /// How long each chunk is held during a delay.
    pub delay_per_chunk: Range<Duration>,
    /// A blackhole's silence, longer than the 45 s idle timeouts; `None`: no blackholes.
    pub blackhole: Option<Duration>,
    /// How long a killed hub, daemon or Redis stays down.
    pub downtime: Range<Duration>,
    /// How long a twin daemon runs.
    pub twin_lifetime: Range<Duration>,
    /// First reconnect delay of the daemons.
    pub client_min_backoff: Duration,
    /// Cap of the daemons' reconnect delay.
    pub client_max_backoff: Duration,
    /// How long a device's way to lula-auth stays blackholed: longer than a
    /// token lives, so its token expires on the live connection.
    pub auth_outage: Duration,
    /// Mean time between the starts of two auth outages (exponential), each
    /// on a device not in one already.
    pub auth_outage_mean_gap: Duration,
    /// bcrypt cost of auth (low: every device logs in every few seconds).
    pub bcrypt_cost: u32,
}

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// Short or long.
    pub mode: Mode,
    /// Seed of every random choice; print it, pass it again to repeat the choices.
    pub seed: u64,
    /// Where logs, state dirs, the timeline and the report go.
    pub run_dir: PathBuf,
    /// The `lula-chaos` executable the services run from (`serve-hub`, ...).
    pub exe: PathBuf,
    /// Sizes.
    pub sizes: Sizes,
    /// Faults.
    pub faults: FaultSettings,
    /// Echo the timeline and progress to stderr.
    pub verbose: bool,
}

/// Devices of the full workload.
pub const FULL_DEVICES: usize = 20;
/// Entries up per device of the full workload.
pub const FULL_ENTRIES_UP: u64 = 20_000;
/// Entries down per device of the full workload.
pub const FULL_ENTRIES_DOWN: u64 = 2_000;
/// One entry in this many up travels in parts (4 per device in the full
/// workload, half of them larger than a frame).
pub const IN_PARTS_EVERY_UP: u64 = 5_000;
/// One entry in this many down travels in parts (4 per device).
pub const IN_PARTS_EVERY_DOWN: u64 = 500;

/// In long runs longer than the full workload needs at this rate, each device
/// produces at least this many entries per second, so faults keep hitting a
/// busy system.
pub const LONG_MIN_RATE_UP: u64 = 50;

impl Sizes {
    /// The short mode: the full workload (20 devices x 20,000 entries up and
    /// 2,000 down), produced over 50 s, faults for 60 s. A debug build on 2
    /// cores keeps up with it; the whole run takes about 100 s.
    pub fn short() -> Self {
        Sizes {
            devices: FULL_DEVICES,
            device_redis: 4,
            entries_up: FULL_ENTRIES_UP,
            entries_down: FULL_ENTRIES_DOWN,
            payload_bytes: 64,
            in_parts_every_up: IN_PARTS_EVERY_UP,
            in_parts_every_down: IN_PARTS_EVERY_DOWN,
            produce_for: Duration::from_secs(50),
            faults_for: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(75),
        }
    }

    /// The long mode for `duration`: production over the first 80 %, faults
    /// throughout; at least the full workload, more in long runs.
    pub fn long(duration: Duration) -> Self {
        let produce_for = duration.mul_f64(0.8).max(Duration::from_secs(10));
        let at_min_rate = LONG_MIN_RATE_UP * produce_for.as_secs();
        let entries_up = FULL_ENTRIES_UP.max(at_min_rate);
        Sizes {
            devices: FULL_DEVICES,
            device_redis: 4,
            entries_up,
            entries_down: entries_up * FULL_ENTRIES_DOWN / FULL_ENTRIES_UP,
            payload_bytes: 64,
            in_parts_every_up: IN_PARTS_EVERY_UP,
            in_parts_every_down: IN_PARTS_EVERY_DOWN,
            produce_for,
            faults_for: duration.max(produce_for),
            drain_timeout: Duration::from_secs(600),
        }
    }
}

impl FaultSettings {
    /// Settings for `mode`.
    pub fn for_mode(mode: Mode) -> Self {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let token_ttl = s(8);
        FaultSettings {
            token_ttl,
            proxy_mean_gap: match mode {
                Mode::Short => s(4),
                Mode::Long => s(8),
            },
            process_mean_gap: match mode {
                Mode::Short => s(2),
                Mode::Long => s(5),
            },
            stall: ms(300)..s(4),
            delay_window: s(1)..s(6),
            delay_per_chunk: ms(20)..ms(300),
            blackhole: match mode {
                Mode::Short => None,
                Mode::Long => Some(s(60)),
            },
            downtime: ms(100)..s(3),
            twin_lifetime: s(3)..s(15),
            client_min_backoff: ms(100),
            client_max_backoff: s(2),
            // The renewal starts 2 s (a quarter of the TTL) before expiry, so
            // whatever the token's age, it expires within the outage.
            auth_outage: token_ttl + s(3),
            auth_outage_mean_gap: match mode {
                Mode::Short => s(4),
                Mode::Long => s(10),
            },
            bcrypt_cost: 4,
        }
    }
}

impl RunConfig {
    /// A short run (about 100 s in a debug build on 2 cores).
    pub fn short(exe: PathBuf, run_dir: PathBuf, seed: u64) -> Self {
        RunConfig {
            mode: Mode::Short,
            seed,
            run_dir,
            exe,
            sizes: Sizes::short(),
            faults: FaultSettings::for_mode(Mode::Short),
            verbose: false,
        }
    }

    /// A long run of about `duration` (plus the drain).
    pub fn long(exe: PathBuf, run_dir: PathBuf, seed: u64, duration: Duration) -> Self {
        RunConfig {
            mode: Mode::Long,
            seed,
            run_dir,
            exe,
            sizes: Sizes::long(duration),
            faults: FaultSettings::for_mode(Mode::Long),
            verbose: true,
        }
    }

    /// A seed of its own for random stream `stream` number `n`.
    pub fn seed_for(&self, stream: &str, n: u64) -> u64 {
        crate::chance::derive(self.seed, stream, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_runs_keep_at_least_the_full_workload_and_grow_with_the_duration() {
        let five = Sizes::long(Duration::from_secs(300));
        assert_eq!(five.entries_up, FULL_ENTRIES_UP);
        assert_eq!(five.entries_down, FULL_ENTRIES_DOWN);
        assert_eq!(five.devices, FULL_DEVICES);
        let hour = Sizes::long(Duration::from_secs(3600));
        assert_eq!(hour.entries_up, LONG_MIN_RATE_UP * 2880);
        assert_eq!(hour.entries_down, hour.entries_up / 10);
        assert!(hour.faults_for >= hour.produce_for);
    }
}
