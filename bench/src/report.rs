//! The results: one table of rows (scenario, metric, value, ratio to the
//! baseline, target, met?), the machine it ran on, the exactly-once check of
//! every scenario, and notes. Printed as a Markdown table or as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::config::Scenario;

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Which scenario.
    pub scenario: Scenario,
    /// What was measured.
    pub metric: String,
    /// The measurement, formatted.
    pub value: String,
    /// Throughput as a fraction of the baseline's, where it is a throughput.
    pub ratio: Option<f64>,
    /// The target, if it sets one.
    pub target: Option<String>,
    /// Whether the target was met.
    pub met: Option<bool>,
}

impl Row {
    /// A row without ratio or target.
    pub fn info(scenario: Scenario, metric: impl Into<String>, value: impl Into<String>) -> Self {
        Row {
            scenario,
            metric: metric.into(),
            value: value.into(),
            ratio: None,
            target: None,
            met: None,
        }
    }

    /// Adds a target and whether it was met.
    pub fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = Some(target.into());
        self.met = Some(met);
        self
    }

    /// Adds the ratio to the baseline.
    pub fn ratio(mut self, ratio: Option<f64>) -> Self {
        self.ratio = ratio;
        self
    }
}

/// The exactly-once (or, for idle connections, all-authenticated) check of
/// one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Which scenario.
    pub scenario: Scenario,
    /// Whether it passed. A scenario that failed to run did not pass.
    pub passed: bool,
    /// What was checked, or what went wrong.
    pub detail: String,
}

/// Where the benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores available to this process.
    pub nproc: usize,
    /// `model name` of `/proc/cpuinfo`.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// `redis-server --version`.
    pub redis: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let redis = std::process::Command::new(
            std::env::var_os("LULA_REDIS_SERVER").unwrap_or_else(|| "redis-server".into()),
        )
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            redis,
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The table.
    pub rows: Vec<Row>,
    /// One check per scenario run.
    pub checks: Vec<Check>,
    /// Observations worth reading next to the table (hub warnings, errors).
    pub notes: Vec<String>,
}

impl Report {
    /// Whether every scenario ran and passed its check.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The check of `scenario`, if it ran.
    pub fn check(&self, scenario: Scenario) -> Option<&Check> {
        self.checks.iter().find(|c| c.scenario == scenario)
    }

    /// The machine, the table (Markdown), the checks and the notes.
    pub fn to_text(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "machine: {} cores, {}, Linux {}\nredis:   {}\n",
            m.nproc, m.cpu, m.kernel, m.redis
        );
        let header = [
            "scenario",
            "metric",
            "value",
            "ratio to baseline",
            "target",
            "met?",
        ];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.scenario.name().to_owned(),
                    r.metric.clone(),
                    r.value.clone(),
                    r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default(),
                    r.target.clone().unwrap_or_default(),
                    match r.met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        let mut width = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (c, w) in cells.iter().zip(width) {
                let _ = write!(s, " {c:<w$} |");
            }
            s
        };
        let _ = writeln!(out, "{}", line(&header.map(String::from)));
        let _ = writeln!(out, "{}", line(&width.map(|w| "-".repeat(w))));
        for row in &cells {
            let _ = writeln!(out, "{}", line(row));
        }
        let failed: Vec<&Check> = self.checks.iter().filter(|c| !c.passed).collect();
        if !failed.is_empty() {
            let _ = writeln!(out, "\nFAILED:");
            for c in failed {
                let _ = writeln!(out, "- {}: {}", c.scenario.name(), c.detail);
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nnotes:");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate as `123,456 entries/s`.
pub fn per_second(n: f64, unit: &str) -> String {
    format!("{} {unit}/s", thousands(n.round() as u64))
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

/// A duration as seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Bytes as KiB or MiB.
pub fn bytes(b: f64) -> String {
    if b.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(per_second(99_999.6, "entries"), "100,000 entries/s");
        assert_eq!(ms(1500), "1.50 ms");
        assert_eq!(bytes(16.0 * 1024.0), "16.0 KiB");
    }
}
