//! One module per scenario. Each starts its own Redis servers, auth, hub and
//! clients, measures, checks exactly-once delivery (or, for idle connections,
//! that every device got in), and returns its rows. Everything it started is
//! stopped when it returns, error or not: servers, the hub process and daemon
//! tasks all stop on drop.

pub mod baseline;
pub mod connections;
pub mod downstream;
pub mod fanin;
pub mod latency;
pub mod upstream;

use std::path::Path;

use crate::config::{Scenario, Sizes};
use crate::procstat::CpuMeter;
use crate::report::Row;

/// What every scenario gets.
pub struct Ctx<'a> {
    /// Sizes.
    pub sizes: &'a Sizes,
    /// The executable to start the hub from (`<exe> serve-hub`).
    pub hub_exe: &'a Path,
    /// The baseline's entries per second, once measured.
    pub baseline: Option<f64>,
}

impl Ctx<'_> {
    /// `rate` as a fraction of the baseline.
    pub fn ratio(&self, rate: f64) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| rate / b)
    }

    /// Progress on stderr (the table goes to stdout).
    pub fn progress(&self, scenario: Scenario, what: impl std::fmt::Display) {
        eprintln!("[{}] {what}", scenario.name());
    }
}

/// What a scenario found.
pub struct Outcome {
    /// Its rows of the table.
    pub rows: Vec<Row>,
    /// `Ok(what was verified)` or `Err(what went wrong)`.
    pub check: Result<String, String>,
    /// Observations for the notes under the table.
    pub notes: Vec<String>,
}

/// Rows of the cores each process kept busy during the measured phase.
pub fn cpu_rows(scenario: Scenario, phase: &str, meter: &CpuMeter) -> Vec<Row> {
    meter
        .finish()
        .into_iter()
        .map(|(label, cores)| {
            Row::info(
                scenario,
                format!("cpu {label} during {phase}"),
                format!("{cores:.2} cores"),
            )
        })
        .collect()
}

/// The row of a scenario's check (`target` says what must hold).
pub fn check_row(scenario: Scenario, target: &str, check: &Result<String, String>) -> Row {
    let value = match check {
        Ok(what) => format!("ok: {what}"),
        Err(e) => format!("FAILED: {}", e.chars().take(160).collect::<String>()),
    };
    Row::info(scenario, "verified", value).target(target, check.is_ok())
}

/// The check of every scenario that moves entries.
pub const EXACTLY_ONCE: &str = "exactly once, in order";
