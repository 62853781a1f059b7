//! lula-bench: how close lula comes to what Redis itself can take, with
//! exactly-once delivery checked after every scenario.
//!
//! Every run first measures the baseline, pipelined `XADD` straight into the
//! hub's Redis, and reports every throughput also as a fraction of it, since
//! absolute numbers change from machine to machine. Then, each with its own
//! Redis servers, lula-auth (in this process), lula-hub (a child process, so
//! its CPU and memory are its own) and devices:
//! 1. upstream: a preloaded device out stream to the hub;
//! 2. latency: a device producing at fixed rates, arrival latency in the hub;
//! 3. fan-in: many devices producing steadily into one hub;
//! 4. downstream: a preloaded hub out stream to one device;
//! 5. connections: many authenticated idle devices on one hub;
//! 6. wire: bytes on the link and CPU per entry for three payload shapes,
//!    counted by a proxy between device and hub;
//! 7. drain: a backlog through a slow link (256 kbit/s, 300 ms by default);
//! 8. big: peak memory of a daemon (its own process) through a backlog of
//!    300 KB entries, and of the hub through 5 MB broadcasts to slow
//!    subscribers;
//! 9. parts: entries too wide or too large for a batch, carried in parts:
//!    64 MiB and 100,000-pair entries up from a daemon (its own process),
//!    16 MiB and 100,000-pair broadcasts down to slow subscribers, at the
//!    default limits; time and peak memory of the daemon and the hub.
//!
//! Each scenario ends by comparing both sides entry by entry ([`verify`]).
//! `scripts/bench.sh` runs them all at full size; `tests/smoke.rs` runs each
//! at a tiny size so the benchmark keeps working.
//!
//! # Layout
//! - [`config`]: scenarios, sizes ([`Sizes::full`], [`Sizes::smoke`]), [`RunConfig`].
//! - [`cli`]: the command line (every flag also an environment variable).
//! - [`scenarios`]: one module per scenario.
//! - [`cloud`], [`devices`]: starting Redis, auth, hub and lula-client daemons.
//! - [`hub_process`]: the hub as a child process (`lula-bench serve-hub`).
//! - [`client_process`]: a lula-client daemon as a child process
//!   (`lula-bench serve-client`), for the memory readings of scenarios 8 and 9.
//! - [`load`]: preloads, paced producers, the latency reader.
//! - [`verify`]: exactly once, in order, all fields compared.
//! - [`wire_proxy`]: the byte-counting TCP proxy of scenario 6.
//! - [`procstat`]: resident memory, CPU time and fds from `/proc`.
//! - [`report`]: the table.

pub mod cli;
pub mod client_process;
pub mod cloud;
pub mod config;
pub mod devices;
pub mod hub_process;
pub mod load;
pub mod procstat;
pub mod report;
pub mod scenarios;
pub mod verify;
pub mod wire_proxy;

pub use config::{RunConfig, Scenario, Sizes};
pub use report::Report;

use report::{Check, Machine, Row};
use scenarios::{Ctx, Outcome};

/// Runs the baseline and the selected scenarios, one after the other, and
/// returns the report. A scenario that fails to run is recorded as a failed
/// check and the next one still runs.
pub async fn run(config: &RunConfig) -> Report {
    let mut report = Report {
        machine: Machine::detect(),
        rows: Vec::new(),
        checks: Vec::new(),
        notes: Vec::new(),
    };
    let mut ctx = Ctx {
        sizes: &config.sizes,
        hub_exe: &config.hub_exe,
        baseline: None,
        compression_window_bits: config.compression_window_bits,
    };
    for scenario in Scenario::expand(&config.scenarios) {
        let outcome = match scenario {
            Scenario::Baseline => scenarios::baseline::run(&ctx).await.map(|(rate, o)| {
                ctx.baseline = Some(rate);
                o
            }),
            Scenario::Upstream => scenarios::upstream::run(&ctx).await,
            Scenario::Latency => scenarios::latency::run(&ctx).await,
            Scenario::Fanin => scenarios::fanin::run(&ctx).await,
            Scenario::Downstream => scenarios::downstream::run(&ctx).await,
            Scenario::Connections => scenarios::connections::run(&ctx).await,
            Scenario::Wire => scenarios::wire::run(&ctx).await,
            Scenario::Drain => scenarios::drain::run(&ctx).await,
            Scenario::Big => scenarios::big::run(&ctx).await,
            Scenario::Parts => scenarios::parts::run(&ctx).await,
            Scenario::All => continue,
        };
        let outcome = outcome.unwrap_or_else(|e| {
            let detail = format!("did not complete: {e:#}");
            Outcome {
                rows: vec![Row::info(scenario, "error", detail.clone()).target("runs", false)],
                check: Err(detail),
                notes: Vec::new(),
            }
        });
        let (passed, detail) = match outcome.check {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        ctx.progress(scenario, if passed { "ok" } else { "FAILED" });
        report.rows.extend(outcome.rows);
        report.notes.extend(outcome.notes);
        report.checks.push(Check {
            scenario,
            passed,
            detail,
        });
    }
    report
}
