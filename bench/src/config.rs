//! What to run and how big: the scenarios, their sizes at full scale and at
//! smoke scale, and the run configuration the library entry point takes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// One benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Every scenario below.
    All,
    /// Raw pipelined `XADD` into the hub's Redis: the ceiling everything is compared to.
    Baseline,
    /// One device, a preloaded out stream pushed up to the hub.
    Upstream,
    /// One device producing at fixed rates; arrival latency in the hub.
    Latency,
    /// Many devices on one hub, producing steadily.
    Fanin,
    /// A preloaded hub out stream pushed down to one device.
    Downstream,
    /// Many authenticated idle WebSockets on one hub.
    Connections,
    /// Bytes on the link and CPU per entry, for three payload shapes.
    Wire,
    /// A backlog drained through a slow, high-latency link.
    Drain,
    /// Large entries: a 300 KB backlog up, 5 MB broadcasts down to slow
    /// subscribers; peak memory of the daemon and of the hub.
    Big,
    /// Entries in parts: 64 MiB and 100,000-pair entries up at the default
    /// limits, 16 MiB and 100,000-pair broadcasts down to slow subscribers;
    /// time, and peak memory of the daemon and of the hub.
    Parts,
}

impl Scenario {
    /// Every concrete scenario, in the order they run.
    pub const ORDER: [Scenario; 10] = [
        Scenario::Baseline,
        Scenario::Upstream,
        Scenario::Latency,
        Scenario::Fanin,
        Scenario::Downstream,
        Scenario::Connections,
        Scenario::Wire,
        Scenario::Drain,
        Scenario::Big,
        Scenario::Parts,
    ];

    /// The name used on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::Baseline => "baseline",
            Scenario::Upstream => "upstream",
            Scenario::Latency => "latency",
            Scenario::Fanin => "fanin",
            Scenario::Downstream => "downstream",
            Scenario::Connections => "connections",
            Scenario::Wire => "wire",
            Scenario::Drain => "drain",
            Scenario::Big => "big",
            Scenario::Parts => "parts",
        }
    }

    /// The scenarios `selected` names, expanded and in run order. The
    /// baseline is always included: every throughput is reported against it.
    pub fn expand(selected: &[Scenario]) -> Vec<Scenario> {
        let all = selected.is_empty() || selected.contains(&Scenario::All);
        Scenario::ORDER
            .into_iter()
            .filter(|s| all || *s == Scenario::Baseline || selected.contains(s))
            .collect()
    }
}

/// Sizes of every scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    /// Bytes of the `payload` value of every entry (~100-byte entries at 80).
    pub payload_bytes: usize,
    /// Entries the baseline appends.
    pub baseline_entries: u64,
    /// Connections the baseline appends on, in parallel.
    pub baseline_connections: usize,
    /// `XADD`s per pipeline in the baseline.
    pub baseline_depth: usize,
    /// Entries preloaded in the device's out stream (scenario 1).
    pub upstream_entries: u64,
    /// Producer rates, entries per second, measured one after the other (scenario 2).
    pub latency_rates: Vec<u64>,
    /// How long each rate is produced.
    pub latency_duration: Duration,
    /// Samples of the first part of every paced run are left out.
    pub warmup: Duration,
    /// Devices on the hub (scenario 3).
    pub fanin_devices: usize,
    /// Aggregate rate the devices produce at in the throughput phase,
    /// entries per second: above what the hub can take, to find its ceiling.
    pub fanin_rate: u64,
    /// Aggregate rate of the latency phase, entries per second: below the
    /// ceiling, so the latency measured is not just queueing.
    pub fanin_latency_rate: u64,
    /// How long the devices produce, in each phase.
    pub fanin_duration: Duration,
    /// Entries per `XADD` batch of one device.
    pub fanin_batch: usize,
    /// Device Redis servers the devices share (each device has its own key prefix).
    pub fanin_redis_servers: usize,
    /// Devices started (registered, logged in, connected) at a time.
    pub setup_concurrency: usize,
    /// Entries preloaded in the hub's out stream for one device (scenario 4).
    pub downstream_entries: u64,
    /// Idle authenticated connections (scenario 5).
    pub connections: usize,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// Entries of each payload shape sent up, and as many down (scenario 6).
    pub wire_entries: u64,
    /// Backlog of telemetry entries drained through the slow link (scenario 7).
    pub drain_entries: u64,
    /// The slow link's rate each way, kbit/s.
    pub drain_rate_kbit: u64,
    /// The slow link's one-way delay.
    pub drain_delay: Duration,
    /// Entries of the device's backlog of large entries (scenario 8).
    pub big_backlog_entries: u64,
    /// Bytes of each backlog entry's payload.
    pub big_backlog_bytes: usize,
    /// Large broadcasts sent to the slow subscribers (scenario 8).
    pub big_broadcasts: u64,
    /// Bytes of each broadcast's payload.
    pub big_broadcast_bytes: usize,
    /// Slow subscribers, each behind a throttled link of its own (scenarios
    /// 8 and 9).
    pub big_subscribers: usize,
    /// Each subscriber's link rate, kbit/s (both ways; scenarios 8 and 9).
    pub big_subscriber_rate_kbit: u64,
    /// `--max-frame-bytes` of the hub and the clients in scenario 8 (a 5 MB
    /// entry needs more than the 1 MiB default).
    pub big_max_frame_bytes: usize,
    /// Large entries (one binary value each) in the device's out stream
    /// (scenario 9).
    pub parts_up_large: u64,
    /// Bytes of each large entry's keys and values together: at most the
    /// hub's default per-entry limit (64 MiB).
    pub parts_up_large_bytes: usize,
    /// Wide entries ([`Sizes::parts_wide_pairs`] each) in the out stream.
    pub parts_up_wide: u64,
    /// Large broadcasts (one binary value each) to the slow subscribers.
    pub parts_down_large: u64,
    /// Bytes of each large broadcast's keys and values together.
    pub parts_down_large_bytes: usize,
    /// Wide broadcasts.
    pub parts_down_wide: u64,
    /// Field pairs of every wide entry and broadcast, all keys included: at
    /// most the default per-entry limit (100,000).
    pub parts_wide_pairs: usize,
    /// Small entries around the large and wide ones, each way.
    pub parts_small_entries: u64,
    /// Longest wait for entries to arrive before a scenario gives up; a hang
    /// guard, never a speed check.
    pub wait_timeout: Duration,
}

impl Sizes {
    /// The sizes the issue asks for.
    pub fn full() -> Self {
        Sizes {
            payload_bytes: 80,
            baseline_entries: 1_000_000,
            baseline_connections: 4,
            baseline_depth: 50,
            upstream_entries: 1_000_000,
            latency_rates: vec![1_000, 10_000],
            latency_duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            fanin_devices: 1_000,
            fanin_rate: 60_000,
            fanin_latency_rate: 20_000,
            fanin_duration: Duration::from_secs(10),
            fanin_batch: 5,
            fanin_redis_servers: 4,
            setup_concurrency: 100,
            downstream_entries: 1_000_000,
            connections: 10_000,
            connect_concurrency: 100,
            wire_entries: 100_000,
            drain_entries: 100_000,
            drain_rate_kbit: 256,
            drain_delay: Duration::from_millis(300),
            big_backlog_entries: 1_500,
            big_backlog_bytes: 300_000,
            big_broadcasts: 20,
            big_broadcast_bytes: 5_000_000,
            big_subscribers: 8,
            big_subscriber_rate_kbit: 24_000,
            big_max_frame_bytes: 8 << 20,
            parts_up_large: 2,
            parts_up_large_bytes: (64 << 20) - 256,
            parts_up_wide: 2,
            parts_down_large: 2,
            parts_down_large_bytes: 16 << 20,
            parts_down_wide: 1,
            parts_wide_pairs: 100_000,
            parts_small_entries: 100,
            wait_timeout: Duration::from_secs(600),
        }
    }

    /// Tiny sizes that run in seconds, even in debug builds: for the smoke test.
    pub fn smoke() -> Self {
        Sizes {
            payload_bytes: 80,
            baseline_entries: 2_000,
            baseline_connections: 4,
            baseline_depth: 50,
            upstream_entries: 2_000,
            latency_rates: vec![500, 2_000],
            latency_duration: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            fanin_devices: 10,
            fanin_rate: 1_000,
            fanin_latency_rate: 500,
            fanin_duration: Duration::from_secs(1),
            fanin_batch: 5,
            fanin_redis_servers: 2,
            setup_concurrency: 10,
            downstream_entries: 2_000,
            connections: 50,
            connect_concurrency: 10,
            wire_entries: 300,
            drain_entries: 200,
            drain_rate_kbit: 256,
            drain_delay: Duration::from_millis(300),
            big_backlog_entries: 20,
            big_backlog_bytes: 300_000,
            big_broadcasts: 3,
            big_broadcast_bytes: 2_000_000,
            big_subscribers: 2,
            big_subscriber_rate_kbit: 80_000,
            big_max_frame_bytes: 8 << 20,
            parts_up_large: 1,
            parts_up_large_bytes: 3_000_000,
            parts_up_wide: 1,
            parts_down_large: 1,
            parts_down_large_bytes: 3_000_000,
            parts_down_wide: 1,
            parts_wide_pairs: 5_000,
            parts_small_entries: 10,
            wait_timeout: Duration::from_secs(120),
        }
    }
}

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Scenarios to run ([`Scenario::expand`] adds the baseline).
    pub scenarios: Vec<Scenario>,
    /// Their sizes.
    pub sizes: Sizes,
    /// The `lula-bench` executable, started as `lula-bench serve-hub` so the
    /// hub is a process of its own whose CPU and memory can be read.
    pub hub_exe: PathBuf,
    /// The compression window the devices ask the hub for (`None`: JSON text
    /// frames), in every scenario but `wire` and `drain`, which run both.
    pub compression_window_bits: Option<u8>,
}
