//! The command line. `run` is the suite; the other subcommands are hidden:
//! the suite starts its own executable with them as the services under test.
//! Every `run` flag is also an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Mode, RunConfig};
use crate::services::{RunClientArgs, ServeAuthArgs, ServeHubArgs};

/// `lula-chaos`.
#[derive(Debug, Parser)]
#[command(
    name = "lula-chaos",
    version,
    about = "Fault-injection suite: breaks lula at random under load, then checks nothing was lost, doubled or reordered"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the suite and print the table; exits non-zero unless everything checks out.
    Run(RunArgs),
    /// Internal: lula-hub as a child of the suite.
    #[command(hide = true)]
    ServeHub(ServeHubArgs),
    /// Internal: lula-auth as a child of the suite.
    #[command(hide = true)]
    ServeAuth(ServeAuthArgs),
    /// Internal: a lula-client daemon as a child of the suite.
    #[command(hide = true)]
    RunClient(RunClientArgs),
}

/// `lula-chaos run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Short (a few minutes, scaled down) or long (the full workload, for `--duration`).
    #[arg(long, env = "LULA_CHAOS_MODE", value_enum, default_value = "long")]
    pub mode: Mode,
    /// How long the long mode injects faults (production takes the first 80 %).
    #[arg(long, env = "LULA_CHAOS_DURATION", default_value = "3m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Seed of every random choice (default: a fresh one, printed).
    #[arg(long, env = "LULA_CHAOS_SEED")]
    pub seed: Option<u64>,
    /// Where logs, state dirs, the timeline and the report go (default: a new
    /// directory under the system temp dir).
    #[arg(long, env = "LULA_CHAOS_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Devices.
    #[arg(long, env = "LULA_CHAOS_DEVICES")]
    pub devices: Option<usize>,
    /// Device Redis servers the devices share.
    #[arg(long, env = "LULA_CHAOS_DEVICE_REDIS")]
    pub device_redis: Option<usize>,
    /// Entries each device produces up.
    #[arg(long, env = "LULA_CHAOS_ENTRIES_UP")]
    pub entries_up: Option<u64>,
    /// Entries sent down to each device.
    #[arg(long, env = "LULA_CHAOS_ENTRIES_DOWN")]
    pub entries_down: Option<u64>,
    /// Lifetime of session tokens.
    #[arg(long, env = "LULA_CHAOS_TOKEN_TTL", value_parser = humantime::parse_duration)]
    pub token_ttl: Option<Duration>,
    /// Longest wait for everything to be in sync once the faults stop.
    #[arg(long, env = "LULA_CHAOS_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Only the table on stderr's behalf: do not echo the timeline.
    #[arg(long, env = "LULA_CHAOS_QUIET")]
    pub quiet: bool,
    /// Executable to run the services from (default: this one).
    #[arg(long, env = "LULA_CHAOS_EXE", hide = true)]
    pub exe: Option<PathBuf>,
}

impl RunArgs {
    /// The run's configuration; `current_exe` runs the services unless `--exe` says otherwise.
    pub fn config(&self, current_exe: PathBuf) -> RunConfig {
        let seed = self.seed.unwrap_or_else(crate::chance::random_seed);
        let run_dir = self.run_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "lula-chaos-{}-{seed}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string()
                    .replace(':', "")
            ))
        });
        // Absolute, so the report and the timeline name it unambiguously.
        let run_dir = std::path::absolute(&run_dir).unwrap_or(run_dir);
        let exe = self.exe.clone().unwrap_or(current_exe);
        let mut config = match self.mode {
            Mode::Short => RunConfig::short(exe, run_dir, seed),
            Mode::Long => RunConfig::long(exe, run_dir, seed, self.duration),
        };
        let s = &mut config.sizes;
        s.devices = self.devices.unwrap_or(s.devices).max(1);
        s.device_redis = self.device_redis.unwrap_or(s.device_redis).max(1);
        s.entries_up = self.entries_up.unwrap_or(s.entries_up);
        s.entries_down = self.entries_down.unwrap_or(s.entries_down);
        s.drain_timeout = self.drain_timeout.unwrap_or(s.drain_timeout);
        config.faults.token_ttl = self.token_ttl.unwrap_or(config.faults.token_ttl);
        config.verbose = !self.quiet;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_flags_shape_the_configuration() {
        let cli = Cli::try_parse_from([
            "lula-chaos",
            "run",
            "--duration",
            "10m",
            "--seed",
            "7",
            "--run-dir",
            "/tmp/r",
            "--entries-down",
            "5",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run");
        };
        let c = args.config("/bin/x".into());
        assert_eq!(c.mode, Mode::Long);
        assert_eq!(c.seed, 7);
        assert_eq!(c.sizes.faults_for, Duration::from_secs(600));
        assert_eq!(c.sizes.entries_down, 5);
        assert_eq!(c.sizes.entries_up, 24_000);
        assert_eq!(c.run_dir, PathBuf::from("/tmp/r"));

        let cli = Cli::try_parse_from(["lula-chaos", "run", "--mode", "short"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run");
        };
        let c = args.config("/bin/x".into());
        assert_eq!(c.mode, Mode::Short);
        assert_eq!(c.exe, PathBuf::from("/bin/x"));
    }
}
