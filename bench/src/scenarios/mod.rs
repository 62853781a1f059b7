//! One module per scenario. Each starts its own Redis servers, auth, hub and
//! clients, measures, checks exactly-once delivery (or, for idle connections,
//! that every device got in), and returns its rows. Everything it started is
//! stopped when it returns, error or not: servers, the hub process and daemon
//! tasks all stop on drop.

pub mod baseline;
pub mod big;
pub mod connections;
pub mod downstream;
pub mod drain;
pub mod fanin;
pub mod heavy;
pub mod latency;
pub mod parts;
pub mod upstream;
pub mod wire;

use std::path::Path;

use crate::config::{Scenario, Sizes};
use crate::procstat::{CpuMeter, RssPeak, RssSampler};
use crate::report::{Row, bytes};

/// What every scenario gets.
pub struct Ctx<'a> {
    /// Sizes.
    pub sizes: &'a Sizes,
    /// The executable to start the hub from (`<exe> serve-hub`).
    pub hub_exe: &'a Path,
    /// The baseline's entries per second, once measured.
    pub baseline: Option<f64>,
    /// The compression window devices ask for ([`crate::RunConfig`]).
    pub compression_window_bits: Option<u8>,
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

/// The resident memory of the hub process and of lula-bench (which runs the
/// client and lula-auth in-process), sampled through a catch-up.
pub fn catch_up_sampler(hub_pid: u32) -> RssSampler {
    RssSampler::start(vec![
        ("hub RSS".into(), hub_pid),
        ("lula-bench RSS (client)".into(), std::process::id()),
    ])
}

/// Rows of the memory a catch-up of `n` entries took: each process's peak,
/// with its reading at the start and its peak by the 10 % mark, then how much
/// the peak grew per 100k entries from the 10 % mark to the end. A client or
/// hub that held the backlog, or anything per entry, would grow with it.
pub fn memory_rows(
    scenario: Scenario,
    at_tenth: &[RssPeak],
    at_end: &[RssPeak],
    n: u64,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut growth = Vec::new();
    for end in at_end {
        let tenth = at_tenth
            .iter()
            .find(|p| p.label == end.label)
            .map_or(end.peak, |p| p.peak);
        rows.push(Row::info(
            scenario,
            format!("peak {} during catch-up", end.label),
            format!(
                "{} (at start {}, peak by the 10% mark {})",
                bytes(end.peak as f64),
                bytes(end.start as f64),
                bytes(tenth as f64)
            ),
        ));
        let hundreds_of_k = (n as f64 * 0.9 / 100_000.0).max(1e-9);
        let per = (end.peak as f64 - tenth as f64) / hundreds_of_k;
        let name = end.label.split(' ').next().unwrap_or(&end.label);
        growth.push(format!("{name} +{}", bytes(per)));
    }
    rows.push(Row::info(
        scenario,
        "peak RSS growth per 100k entries, 10% mark to end",
        growth.join(", "),
    ));
    rows
}

/// A row saying what compression the devices of `scenario` asked the hub for.
pub fn compression_row(scenario: Scenario, window_bits: Option<u8>) -> Row {
    let asked = window_bits
        .and_then(lula_protocol::compress::Params::new)
        .map_or_else(|| "off (JSON text frames)".to_owned(), |p| p.to_string());
    Row::info(scenario, "compression asked for", asked)
}

/// The row of a scenario's check (`target` says what must hold).
pub fn check_row(scenario: Scenario, target: &str, check: &Result<String, String>) -> Row {
    let value = match check {
        Ok(what) => format!("ok: {what}"),
        Err(e) => format!("FAILED: {}", e.chars().take(160).collect::<String>()),
    };
    Row::info(scenario, "verified", value).target(target, check.is_ok())
}

/// What an exactly-once check found, failed when it found nothing: both sides
/// empty match trivially, and a run that moved no entry proves nothing (a
/// producer or pacing that broke would otherwise pass). `expected`, when
/// known, is how many entries the run produced.
pub fn moved_entries(verified: anyhow::Result<u64>, expected: Option<u64>) -> anyhow::Result<u64> {
    let n = verified?;
    anyhow::ensure!(n > 0, "no entries were moved: nothing to verify");
    if let Some(expected) = expected {
        anyhow::ensure!(n == expected, "{n} entries verified, {expected} produced");
    }
    Ok(n)
}

/// The check of every scenario that moves entries.
pub const EXACTLY_ONCE: &str = "exactly once, in order";
