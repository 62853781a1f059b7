//! The result of a run: the table printed at the end, and the same as JSON
//! (`report.json` in the run dir).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::checker::{CheckOutcome, Tally};
use crate::config::{Mode, RunConfig};
use crate::drain::DrainOutcome;
use crate::faults::FaultKind;
use crate::logs::LogFindings;
use crate::workload::WorkloadOutcome;

/// One row of the fault table.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRow {
    /// The kind.
    pub kind: FaultKind,
    /// How many were injected.
    pub count: u64,
}

/// How long each phase took, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Starting Redis servers, auth, hub, proxies and daemons.
    pub setup: f64,
    /// Production and faults.
    pub faults: f64,
    /// Waiting for everything to be in sync.
    pub drain: f64,
    /// Reading and comparing both sides.
    pub check: f64,
    /// Everything.
    pub total: f64,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Short or long.
    pub mode: Mode,
    /// The seed (pass `--seed` to repeat the random choices).
    pub seed: u64,
    /// Logs, state dirs, timeline.
    pub run_dir: PathBuf,
    /// Devices.
    pub devices: usize,
    /// Device Redis servers they share.
    pub device_redis: usize,
    /// Entries produced per device, up.
    pub entries_up_per_device: u64,
    /// Entries produced per device, down.
    pub entries_down_per_device: u64,
    /// Session token lifetime.
    pub token_ttl: Duration,
    /// Faults injected, by kind.
    pub faults: Vec<FaultRow>,
    /// Daemon processes started (each logs in once at start): the devices'
    /// own, restarts included, and twins.
    pub daemon_starts: u64,
    /// What the producers went through.
    pub producer_reconnects: u64,
    /// Acknowledged source entries a Redis restart lost (voids the checks).
    pub source_lost_by_redis: u64,
    /// The drain.
    pub drain: Option<DrainOutcome>,
    /// The check; `None` when it could not run (see `errors`).
    pub check: Option<CheckOutcome>,
    /// Processes that exited by themselves, failed restarts, a check that could not run.
    pub errors: Vec<String>,
    /// Logins, refused tokens, panics, warnings.
    pub logs: LogFindings,
    /// Phase durations.
    pub timings: Timings,
}

impl Report {
    /// A report with the run's settings and nothing found yet.
    pub fn new(config: &RunConfig) -> Self {
        Report {
            mode: config.mode,
            seed: config.seed,
            run_dir: config.run_dir.clone(),
            devices: config.sizes.devices,
            device_redis: config.sizes.device_redis,
            entries_up_per_device: config.sizes.entries_up,
            entries_down_per_device: config.sizes.entries_down,
            token_ttl: config.faults.token_ttl,
            faults: Vec::new(),
            daemon_starts: 0,
            producer_reconnects: 0,
            source_lost_by_redis: 0,
            drain: None,
            check: None,
            errors: Vec::new(),
            logs: LogFindings::default(),
            timings: Timings::default(),
        }
    }

    /// Logins beyond each daemon's first: a token had expired or was about to.
    pub fn token_renewals(&self) -> u64 {
        self.logs.logins.saturating_sub(self.daemon_starts)
    }

    /// Records the producers' outcome.
    pub fn set_workload(&mut self, w: &WorkloadOutcome) {
        self.producer_reconnects = w.up.reconnects + w.down.reconnects;
        self.source_lost_by_redis = w.up.lost_by_redis + w.down.lost_by_redis;
    }

    /// Lost, duplicated, reordered and mismatched are 0 both ways, the sources
    /// are intact, everything drained, and no process crashed or panicked.
    pub fn passed(&self) -> bool {
        self.check
            .as_ref()
            .is_some_and(|c| c.up.clean() && c.down.clean())
            && self.drain.as_ref().is_some_and(|d| d.drained)
            && self.errors.is_empty()
            && self.logs.panics.is_empty()
            && self.source_lost_by_redis == 0
    }

    /// The table.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let mode = match self.mode {
            Mode::Short => "short",
            Mode::Long => "long",
        };
        let _ = writeln!(
            t,
            "lula-chaos {mode} run, seed {} (repeat with --seed {})",
            self.seed, self.seed
        );
        let _ = writeln!(
            t,
            "run dir: {} (timeline: events.log, process logs: logs/)",
            self.run_dir.display()
        );
        let _ = writeln!(
            t,
            "workload: {} devices on {} device Redis servers; per device {} entries up, {} down",
            self.devices,
            self.device_redis,
            self.entries_up_per_device,
            self.entries_down_per_device
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "{:<44} {:>10}", "faults injected", "count");
        for row in &self.faults {
            let _ = writeln!(t, "  {:<42} {:>10}", row.kind.label(), row.count);
        }
        let _ = writeln!(
            t,
            "  {:<42} {:>10}",
            format!("token expiry (TTL {:?}): renewals", self.token_ttl),
            self.token_renewals()
        );
        let _ = writeln!(
            t,
            "  {:<42} {:>10}",
            "token expiries mid-sync (hub closed 4001)", self.logs.expired_mid_sync
        );
        let _ = writeln!(
            t,
            "  {:<42} {:>10}",
            "token expiry: reconnects refused (401)", self.logs.refused_tokens
        );
        let _ = writeln!(
            t,
            "  {:<42} {:>10}",
            "re-logins after expiry", self.logs.relogins_after_expiry
        );
        let _ = writeln!(
            t,
            "  {:<42} {:>10}",
            "producer reconnects (Redis restarts)", self.producer_reconnects
        );
        let _ = writeln!(t);
        let empty = Tally::default();
        let (up, down) = self
            .check
            .as_ref()
            .map_or((&empty, &empty), |c| (&c.up, &c.down));
        let _ = writeln!(t, "{:<44} {:>10} {:>10}", "result", "up", "down");
        type Column = fn(&Tally) -> u64;
        let rows: [(&str, Column); 7] = [
            ("entries", |x| x.entries),
            ("delivered", |x| x.delivered),
            ("lost", |x| x.lost),
            ("duplicated", |x| x.duplicated),
            ("reordered", |x| x.reordered),
            ("mismatched fields / unknown seq", |x| x.mismatched),
            ("source streams not intact", |x| x.source_defects),
        ];
        for (name, f) in rows {
            let _ = writeln!(t, "  {:<42} {:>10} {:>10}", name, f(up), f(down));
        }
        for e in up.examples.iter().chain(&down.examples) {
            let _ = writeln!(t, "  ! {e}");
        }
        let _ = writeln!(t);
        match &self.drain {
            Some(d) if d.drained => {
                let _ = writeln!(t, "drained in {:.1}s", d.waited.as_secs_f64());
            }
            Some(d) => {
                let _ = writeln!(
                    t,
                    "NOT DRAINED after {:.1}s: behind up {:?}, behind down {:?}",
                    d.waited.as_secs_f64(),
                    d.behind_up,
                    d.behind_down
                );
            }
            None => {
                let _ = writeln!(t, "drain did not run");
            }
        }
        if self.source_lost_by_redis > 0 {
            let _ = writeln!(
                t,
                "! Redis lost {} acknowledged source entries in restarts",
                self.source_lost_by_redis
            );
        }
        for e in &self.errors {
            let _ = writeln!(t, "! {e}");
        }
        for p in &self.logs.panics {
            let _ = writeln!(t, "! panic: {p}");
        }
        let tm = &self.timings;
        let _ = writeln!(
            t,
            "time: setup {:.0}s, faults {:.0}s, drain {:.0}s, check {:.0}s, total {:.0}s",
            tm.setup, tm.faults, tm.drain, tm.check, tm.total
        );
        let _ = writeln!(t, "{}", if self.passed() { "PASS" } else { "FAIL" });
        t
    }
}
