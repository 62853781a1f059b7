//! The command line. Every flag is also an environment variable; size flags
//! override the full sizes, or the smoke sizes with `--smoke`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{RunConfig, Scenario, Sizes};

/// `lula-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "lula-bench",
    version,
    about = "Benchmarks lula against raw Redis, verifying exactly-once delivery in every scenario"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the baseline and the chosen scenarios, print one table.
    Run(Box<RunArgs>),
    /// Internal: run a hub for the benchmark (started by `run`).
    #[command(hide = true)]
    ServeHub(ServeHubArgs),
    /// Internal: run a lula-client daemon for the benchmark (started by `run`).
    #[command(hide = true)]
    ServeClient(Box<ServeClientArgs>),
}

/// `lula-bench run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenarios to run, repeated or comma-separated; the baseline always runs.
    #[arg(
        long = "scenario",
        env = "LULA_BENCH_SCENARIO",
        value_enum,
        value_delimiter = ',',
        default_value = "all"
    )]
    pub scenarios: Vec<Scenario>,
    /// Tiny sizes that run in seconds (what the smoke test uses).
    #[arg(long, env = "LULA_BENCH_SMOKE")]
    pub smoke: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long, env = "LULA_BENCH_JSON")]
    pub json: bool,
    /// Write the logs of the clients and lula-auth (which run in this
    /// process) to this file instead of stderr. The hub logs to a file of its
    /// own; warnings there are summed up under the table.
    #[arg(long, env = "LULA_BENCH_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Executable to start the hub from (default: this one).
    #[arg(long, env = "LULA_BENCH_HUB_EXE", hide = true)]
    pub hub_exe: Option<PathBuf>,
    /// Compression window the devices ask the hub for (9 to 15 bits, or
    /// `off`) in every scenario but `wire` and `drain`, which run both ways;
    /// lula-client's default when not given.
    #[arg(long, env = "LULA_BENCH_COMPRESSION_WINDOW_BITS", value_parser = lula_protocol::compress::parse_window_setting)]
    pub compression_window_bits: Option<u8>,
    /// Size overrides.
    #[command(flatten)]
    pub sizes: SizeArgs,
}

/// Overrides of [`Sizes`].
#[derive(Debug, Args)]
pub struct SizeArgs {
    /// Bytes of each entry's payload value.
    #[arg(long, env = "LULA_BENCH_PAYLOAD_BYTES")]
    pub payload_bytes: Option<usize>,
    /// Entries the baseline appends.
    #[arg(long, env = "LULA_BENCH_BASELINE_ENTRIES")]
    pub baseline_entries: Option<u64>,
    /// Connections of the baseline.
    #[arg(long, env = "LULA_BENCH_BASELINE_CONNECTIONS")]
    pub baseline_connections: Option<usize>,
    /// Pipeline depth of the baseline.
    #[arg(long, env = "LULA_BENCH_BASELINE_DEPTH")]
    pub baseline_depth: Option<usize>,
    /// Entries preloaded for scenario 1.
    #[arg(long, env = "LULA_BENCH_UPSTREAM_ENTRIES")]
    pub upstream_entries: Option<u64>,
    /// Producer rates of scenario 2, entries/s, comma-separated.
    #[arg(long, env = "LULA_BENCH_LATENCY_RATES", value_delimiter = ',')]
    pub latency_rates: Option<Vec<u64>>,
    /// How long each rate of scenario 2 runs.
    #[arg(long, env = "LULA_BENCH_LATENCY_DURATION", value_parser = humantime::parse_duration)]
    pub latency_duration: Option<Duration>,
    /// Start of each paced run left out of the latency figures.
    #[arg(long, env = "LULA_BENCH_WARMUP", value_parser = humantime::parse_duration)]
    pub warmup: Option<Duration>,
    /// Devices of scenario 3.
    #[arg(long, env = "LULA_BENCH_FANIN_DEVICES")]
    pub fanin_devices: Option<usize>,
    /// Aggregate rate the devices of scenario 3 produce at in its throughput
    /// phase, entries/s.
    #[arg(long, env = "LULA_BENCH_FANIN_RATE")]
    pub fanin_rate: Option<u64>,
    /// Aggregate rate the devices of scenario 3 produce at in its latency
    /// phase, entries/s (below what the hub can take).
    #[arg(long, env = "LULA_BENCH_FANIN_LATENCY_RATE")]
    pub fanin_latency_rate: Option<u64>,
    /// How long the devices of scenario 3 produce, in each phase.
    #[arg(long, env = "LULA_BENCH_FANIN_DURATION", value_parser = humantime::parse_duration)]
    pub fanin_duration: Option<Duration>,
    /// Entries per XADD batch of one device in scenario 3.
    #[arg(long, env = "LULA_BENCH_FANIN_BATCH")]
    pub fanin_batch: Option<usize>,
    /// Device Redis servers the devices of scenario 3 share.
    #[arg(long, env = "LULA_BENCH_FANIN_REDIS_SERVERS")]
    pub fanin_redis_servers: Option<usize>,
    /// Devices started at a time in scenario 3.
    #[arg(long, env = "LULA_BENCH_SETUP_CONCURRENCY")]
    pub setup_concurrency: Option<usize>,
    /// Entries preloaded for scenario 4.
    #[arg(long, env = "LULA_BENCH_DOWNSTREAM_ENTRIES")]
    pub downstream_entries: Option<u64>,
    /// Idle connections of scenario 5.
    #[arg(long, env = "LULA_BENCH_CONNECTIONS")]
    pub connections: Option<usize>,
    /// Connects in flight at once in scenario 5.
    #[arg(long, env = "LULA_BENCH_CONNECT_CONCURRENCY")]
    pub connect_concurrency: Option<usize>,
    /// Entries of each payload shape sent each way in scenario 6.
    #[arg(long, env = "LULA_BENCH_WIRE_ENTRIES")]
    pub wire_entries: Option<u64>,
    /// Backlog drained through the slow link in scenario 7.
    #[arg(long, env = "LULA_BENCH_DRAIN_ENTRIES")]
    pub drain_entries: Option<u64>,
    /// The slow link's rate each way in scenario 7, kbit/s.
    #[arg(long, env = "LULA_BENCH_DRAIN_RATE_KBIT")]
    pub drain_rate_kbit: Option<u64>,
    /// The slow link's one-way delay in scenario 7.
    #[arg(long, env = "LULA_BENCH_DRAIN_DELAY", value_parser = humantime::parse_duration)]
    pub drain_delay: Option<Duration>,
    /// Backlog entries of scenario 8.
    #[arg(long, env = "LULA_BENCH_BIG_BACKLOG_ENTRIES")]
    pub big_backlog_entries: Option<u64>,
    /// Payload bytes of each backlog entry of scenario 8.
    #[arg(long, env = "LULA_BENCH_BIG_BACKLOG_BYTES")]
    pub big_backlog_bytes: Option<usize>,
    /// Broadcasts of scenario 8.
    #[arg(long, env = "LULA_BENCH_BIG_BROADCASTS")]
    pub big_broadcasts: Option<u64>,
    /// Payload bytes of each broadcast of scenario 8.
    #[arg(long, env = "LULA_BENCH_BIG_BROADCAST_BYTES")]
    pub big_broadcast_bytes: Option<usize>,
    /// Slow subscribers of scenario 8.
    #[arg(long, env = "LULA_BENCH_BIG_SUBSCRIBERS")]
    pub big_subscribers: Option<usize>,
    /// Each slow subscriber's link rate in scenario 8, kbit/s.
    #[arg(long, env = "LULA_BENCH_BIG_SUBSCRIBER_RATE_KBIT")]
    pub big_subscriber_rate_kbit: Option<u64>,
    /// `--max-frame-bytes` of hub and clients in scenario 8.
    #[arg(long, env = "LULA_BENCH_BIG_MAX_FRAME_BYTES")]
    pub big_max_frame_bytes: Option<usize>,
    /// Large entries of scenario 9's upstream part.
    #[arg(long, env = "LULA_BENCH_PARTS_UP_LARGE")]
    pub parts_up_large: Option<u64>,
    /// Bytes of keys and values of each large entry up in scenario 9.
    #[arg(long, env = "LULA_BENCH_PARTS_UP_LARGE_BYTES")]
    pub parts_up_large_bytes: Option<usize>,
    /// Wide entries of scenario 9's upstream part.
    #[arg(long, env = "LULA_BENCH_PARTS_UP_WIDE")]
    pub parts_up_wide: Option<u64>,
    /// Large broadcasts of scenario 9.
    #[arg(long, env = "LULA_BENCH_PARTS_DOWN_LARGE")]
    pub parts_down_large: Option<u64>,
    /// Bytes of keys and values of each large broadcast in scenario 9.
    #[arg(long, env = "LULA_BENCH_PARTS_DOWN_LARGE_BYTES")]
    pub parts_down_large_bytes: Option<usize>,
    /// Wide broadcasts of scenario 9.
    #[arg(long, env = "LULA_BENCH_PARTS_DOWN_WIDE")]
    pub parts_down_wide: Option<u64>,
    /// Field pairs of each wide entry and broadcast in scenario 9.
    #[arg(long, env = "LULA_BENCH_PARTS_WIDE_PAIRS")]
    pub parts_wide_pairs: Option<usize>,
    /// Small entries around the others, each way, in scenario 9.
    #[arg(long, env = "LULA_BENCH_PARTS_SMALL_ENTRIES")]
    pub parts_small_entries: Option<u64>,
    /// Longest wait for entries to arrive (a hang guard).
    #[arg(long, env = "LULA_BENCH_WAIT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub wait_timeout: Option<Duration>,
}

impl SizeArgs {
    /// `base` with every given override applied.
    pub fn apply(&self, base: Sizes) -> Sizes {
        Sizes {
            payload_bytes: self.payload_bytes.unwrap_or(base.payload_bytes),
            baseline_entries: self.baseline_entries.unwrap_or(base.baseline_entries),
            baseline_connections: self
                .baseline_connections
                .unwrap_or(base.baseline_connections),
            baseline_depth: self.baseline_depth.unwrap_or(base.baseline_depth),
            upstream_entries: self.upstream_entries.unwrap_or(base.upstream_entries),
            latency_rates: self.latency_rates.clone().unwrap_or(base.latency_rates),
            latency_duration: self.latency_duration.unwrap_or(base.latency_duration),
            warmup: self.warmup.unwrap_or(base.warmup),
            fanin_devices: self.fanin_devices.unwrap_or(base.fanin_devices),
            fanin_rate: self.fanin_rate.unwrap_or(base.fanin_rate),
            fanin_latency_rate: self.fanin_latency_rate.unwrap_or(base.fanin_latency_rate),
            fanin_duration: self.fanin_duration.unwrap_or(base.fanin_duration),
            fanin_batch: self.fanin_batch.unwrap_or(base.fanin_batch),
            fanin_redis_servers: self.fanin_redis_servers.unwrap_or(base.fanin_redis_servers),
            setup_concurrency: self.setup_concurrency.unwrap_or(base.setup_concurrency),
            downstream_entries: self.downstream_entries.unwrap_or(base.downstream_entries),
            connections: self.connections.unwrap_or(base.connections),
            connect_concurrency: self.connect_concurrency.unwrap_or(base.connect_concurrency),
            wire_entries: self.wire_entries.unwrap_or(base.wire_entries),
            drain_entries: self.drain_entries.unwrap_or(base.drain_entries),
            drain_rate_kbit: self.drain_rate_kbit.unwrap_or(base.drain_rate_kbit),
            drain_delay: self.drain_delay.unwrap_or(base.drain_delay),
            big_backlog_entries: self.big_backlog_entries.unwrap_or(base.big_backlog_entries),
            big_backlog_bytes: self.big_backlog_bytes.unwrap_or(base.big_backlog_bytes),
            big_broadcasts: self.big_broadcasts.unwrap_or(base.big_broadcasts),
            big_broadcast_bytes: self.big_broadcast_bytes.unwrap_or(base.big_broadcast_bytes),
            big_subscribers: self.big_subscribers.unwrap_or(base.big_subscribers),
            big_subscriber_rate_kbit: self
                .big_subscriber_rate_kbit
                .unwrap_or(base.big_subscriber_rate_kbit),
            big_max_frame_bytes: self.big_max_frame_bytes.unwrap_or(base.big_max_frame_bytes),
            parts_up_large: self.parts_up_large.unwrap_or(base.parts_up_large),
            parts_up_large_bytes: self
                .parts_up_large_bytes
                .unwrap_or(base.parts_up_large_bytes),
            parts_up_wide: self.parts_up_wide.unwrap_or(base.parts_up_wide),
            parts_down_large: self.parts_down_large.unwrap_or(base.parts_down_large),
            parts_down_large_bytes: self
                .parts_down_large_bytes
                .unwrap_or(base.parts_down_large_bytes),
            parts_down_wide: self.parts_down_wide.unwrap_or(base.parts_down_wide),
            parts_wide_pairs: self.parts_wide_pairs.unwrap_or(base.parts_wide_pairs),
            parts_small_entries: self.parts_small_entries.unwrap_or(base.parts_small_entries),
            wait_timeout: self.wait_timeout.unwrap_or(base.wait_timeout),
        }
    }
}

impl RunArgs {
    /// The run configuration; `current_exe` serves the hub unless `--hub-exe` says otherwise.
    pub fn config(&self, current_exe: PathBuf) -> RunConfig {
        let base = if self.smoke {
            Sizes::smoke()
        } else {
            Sizes::full()
        };
        RunConfig {
            scenarios: self.scenarios.clone(),
            sizes: self.sizes.apply(base),
            hub_exe: self.hub_exe.clone().unwrap_or(current_exe),
            compression_window_bits: match self.compression_window_bits {
                Some(bits) => lula_protocol::compress::window_setting(bits),
                None => lula_client::config::DEFAULT_COMPRESSION_WINDOW_BITS,
            },
        }
    }
}

/// `lula-bench serve-hub`.
#[derive(Debug, Args)]
pub struct ServeHubArgs {
    /// Address to listen on; the bound address is printed as `listening <addr>`.
    #[arg(long, env = "LULA_BENCH_HUB_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The cloud Redis.
    #[arg(
        long,
        env = "LULA_BENCH_HUB_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// The hub's `--max-frame-bytes` (default: the hub's default).
    #[arg(long, env = "LULA_BENCH_HUB_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
}

/// `lula-bench serve-client`: one daemon, configured like the in-process
/// daemons of [`crate::devices::Daemons`].
#[derive(Debug, Args)]
pub struct ServeClientArgs {
    /// The device's client id.
    #[arg(long)]
    pub client: String,
    /// Its OTP secret (an environment variable, so it is not on the command line).
    #[arg(long, env = "LULA_BENCH_CLIENT_OTP_SECRET", hide_env_values = true)]
    pub otp_secret: String,
    /// Directory for the daemon's state.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// lula-auth's base URL.
    #[arg(long)]
    pub auth_url: String,
    /// The hub (or a proxy in front of it).
    #[arg(long)]
    pub hub_url: String,
    /// The device Redis.
    #[arg(long)]
    pub redis_url: String,
    /// The device's key prefix.
    #[arg(long)]
    pub prefix: String,
    /// The client's `--max-frame-bytes` (default: the client's default).
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_override_sizes() {
        let cli = Cli::try_parse_from([
            "lula-bench",
            "run",
            "--scenario",
            "upstream,latency",
            "--scenario",
            "connections",
            "--smoke",
            "--upstream-entries",
            "7",
            "--latency-rates",
            "10,20",
            "--fanin-duration",
            "3s",
            "--fanin-latency-rate",
            "300",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run");
        };
        let config = args.config("/x".into());
        assert_eq!(
            config.scenarios,
            [Scenario::Upstream, Scenario::Latency, Scenario::Connections]
        );
        assert_eq!(config.sizes.upstream_entries, 7);
        assert_eq!(config.sizes.latency_rates, [10, 20]);
        assert_eq!(config.sizes.fanin_duration, Duration::from_secs(3));
        assert_eq!(config.sizes.fanin_latency_rate, 300);
        assert_eq!(config.sizes.fanin_rate, Sizes::smoke().fanin_rate);
        assert_eq!(config.sizes.connections, Sizes::smoke().connections);
        assert_eq!(
            Scenario::expand(&config.scenarios),
            [
                Scenario::Baseline,
                Scenario::Upstream,
                Scenario::Latency,
                Scenario::Connections
            ]
        );
    }

    #[test]
    fn compression_defaults_to_the_clients_and_can_be_set_either_way() {
        let bits = |extra: &[&str]| {
            let cli = Cli::try_parse_from([&["lula-bench", "run"], extra].concat()).unwrap();
            let Command::Run(args) = cli.command else {
                panic!("run");
            };
            args.config("/x".into()).compression_window_bits
        };
        assert_eq!(
            bits(&[]),
            lula_client::config::DEFAULT_COMPRESSION_WINDOW_BITS
        );
        assert_eq!(bits(&["--compression-window-bits", "off"]), None);
        assert_eq!(bits(&["--compression-window-bits", "11"]), Some(11));
        assert!(
            Cli::try_parse_from(["lula-bench", "run", "--compression-window-bits", "8"]).is_err()
        );
    }
}
