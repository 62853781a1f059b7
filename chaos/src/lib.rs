//! lula-chaos: the fault-injection suite. It runs lula for real (hub, auth and
//! one daemon per device as processes, Redis servers with AOF), produces a
//! steady workload both ways while it breaks things at random, then checks that
//! nothing was lost, doubled or reordered.
//!
//! The faults: a TCP proxy of its own between every daemon and the hub cuts,
//! stalls, delays and cuts mid-frame; the hub and daemons are killed with
//! SIGKILL and restarted; device Redis servers and the hub's Redis are killed
//! and restarted from their AOF; twin daemons with a device's identity run
//! beside it; session tokens live 8 seconds, so reconnects need fresh logins,
//! and a device's way to lula-auth is blackholed past its token's expiry now
//! and then, so tokens run out on live connections.
//! Every random choice comes from the printed seed (`--seed` repeats the
//! choices; the timing of processes and networks still varies from run to run).
//!
//! A run: set up, then produce and inject faults for the fault window, then
//! stop the faults, wait until everything is in sync (with a hang guard), check
//! both sides entry by entry, and report. `scripts/chaos.sh` runs the long mode
//! in release; `tests/short.rs` runs the short mode under `cargo test`.
//!
//! # Layout
//! - [`config`]: modes, sizes, fault settings ([`RunConfig`]).
//! - [`cli`]: the command line, with the hidden service subcommands.
//! - [`services`]: `serve-hub`, `serve-auth`, `run-client`: the child side.
//! - [`children`]: starting, killing and restarting child processes.
//! - [`cluster`]: Redis servers, services, proxies and devices of one run.
//! - [`proxy`]: the TCP fault proxy.
//! - [`monkey`]: process-level faults at random points.
//! - [`expiry`]: auth outages that let tokens expire mid-sync.
//! - [`faults`]: fault kinds and their counters.
//! - [`chance`]: seeds and random gaps.
//! - [`workload`]: the paced producers, surviving Redis restarts.
//! - [`drain`]: waiting for both directions to be in sync.
//! - [`checker`]: lost, duplicated, reordered, mismatched.
//! - [`logs`]: logins, refused tokens and panics from the child logs.
//! - [`events`]: the run's timeline.
//! - [`report`]: the table and its JSON.

pub mod chance;
pub mod checker;
pub mod children;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod drain;
pub mod events;
pub mod expiry;
pub mod faults;
pub mod logs;
pub mod monkey;
pub mod proxy;
pub mod report;
pub mod services;
pub mod workload;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use config::{Mode, RunConfig};
pub use report::Report;

use cluster::Cluster;
use events::Events;
use faults::FaultCounts;
use report::FaultRow;
use workload::Workload;

/// A pause after the drain, for any stray late duplicate to land before the check.
const SETTLE: Duration = Duration::from_secs(2);
/// How often processes are checked for exits nobody asked for.
const SUPERVISE: Duration = Duration::from_secs(1);
/// How often progress goes to the timeline.
const PROGRESS: Duration = Duration::from_secs(15);

/// Runs the suite and returns its report (also written to the run dir). An
/// error means the run could not be set up; anything found later is in the report.
pub async fn run(config: &RunConfig) -> anyhow::Result<Report> {
    let total_start = Instant::now();
    std::fs::create_dir_all(&config.run_dir)
        .with_context(|| format!("create {}", config.run_dir.display()))?;
    let events = Arc::new(Events::create(
        &config.run_dir.join("events.log"),
        config.verbose,
    )?);
    std::fs::write(
        config.run_dir.join("config.json"),
        serde_json::to_string_pretty(config)?,
    )
    .context("write config.json")?;
    events.note(format_args!(
        "lula-chaos {:?} run, seed {}, run dir {}",
        config.mode,
        config.seed,
        config.run_dir.display()
    ));
    let counts = Arc::new(FaultCounts::default());
    let mut report = Report::new(config);

    let cluster = Arc::new(Cluster::start(config, counts.clone(), events.clone()).await?);
    report.timings.setup = total_start.elapsed().as_secs_f64();

    let supervise_stop = CancellationToken::new();
    let supervisor = tokio::spawn(supervise(
        cluster.clone(),
        events.clone(),
        supervise_stop.clone(),
    ));

    // Production and faults.
    let faults_start = Instant::now();
    events.note(format_args!(
        "faults on for {:?}; producing {} x {} entries up and {} down over {:?}",
        config.sizes.faults_for,
        config.sizes.devices,
        config.sizes.entries_up,
        config.sizes.entries_down,
        config.sizes.produce_for
    ));
    cluster.faults_on.store(true, Ordering::Relaxed);
    let monkey_stop = CancellationToken::new();
    let monkey = tokio::spawn(monkey::run(
        cluster.clone(),
        config.faults.clone(),
        config.seed_for("monkey", 0),
        counts.clone(),
        events.clone(),
        monkey_stop.clone(),
    ));
    let expiry = tokio::spawn(expiry::run(
        cluster.clone(),
        config.faults.clone(),
        config.seed_for("expiry", 0),
        counts.clone(),
        events.clone(),
        monkey_stop.clone(),
    ));
    let workload = Workload::start(&cluster, &config.sizes, events.clone());
    let progress_stop = CancellationToken::new();
    tokio::spawn(progress(
        workload.produced_up.clone(),
        workload.produced_down.clone(),
        counts.clone(),
        events.clone(),
        progress_stop.clone(),
    ));
    tokio::time::sleep(config.sizes.faults_for).await;
    cluster.faults_on.store(false, Ordering::Relaxed);
    monkey_stop.cancel();
    match monkey.await {
        Ok(errors) => report.errors.extend(errors),
        Err(e) => report
            .errors
            .push(format!("the fault injector failed: {e}")),
    }
    if let Err(e) = expiry.await {
        report
            .errors
            .push(format!("the expiry injector failed: {e}"));
    }
    events.note("faults off");
    let produced = workload.finish(config.sizes.drain_timeout).await;
    progress_stop.cancel();
    report.set_workload(&produced);
    report.timings.faults = faults_start.elapsed().as_secs_f64();
    report.faults = counts
        .snapshot()
        .into_iter()
        .map(|(kind, count)| FaultRow { kind, count })
        .collect();
    events.note(format_args!(
        "production done: {} up, {} down; {} faults injected",
        produced.up.produced,
        produced.down.produced,
        counts.total()
    ));

    // Drain and check.
    let drain_start = Instant::now();
    if let Err(e) = cluster.ensure_running().await {
        report
            .errors
            .push(format!("restart after the faults: {e:#}"));
    }
    let drained = drain::wait(&cluster, config.sizes.drain_timeout, &events).await;
    events.note(format_args!(
        "drain: {} after {:.1}s",
        if drained.drained {
            "in sync"
        } else {
            "NOT in sync"
        },
        drained.waited.as_secs_f64()
    ));
    report.drain = Some(drained);
    tokio::time::sleep(SETTLE).await;
    report.timings.drain = drain_start.elapsed().as_secs_f64();
    let check_start = Instant::now();
    match checker::check(
        &cluster,
        config.sizes.entries_up,
        config.sizes.entries_down,
        &events,
    )
    .await
    {
        Ok(c) => report.check = Some(c),
        Err(e) => report.errors.push(format!("check could not run: {e:#}")),
    }
    report.timings.check = check_start.elapsed().as_secs_f64();

    supervise_stop.cancel();
    match supervisor.await {
        Ok(exits) => report.errors.extend(exits),
        Err(e) => report.errors.push(format!("the supervisor failed: {e}")),
    }
    report.daemon_starts =
        cluster.daemon_starts().await + counts.get(faults::FaultKind::TwinDaemon);
    report.errors.extend(cluster.shutdown().await);
    report.logs = logs::scan(cluster.logs_dir());
    report.timings.total = total_start.elapsed().as_secs_f64();
    events.note(format_args!(
        "{}",
        if report.passed() { "PASS" } else { "FAIL" }
    ));
    std::fs::write(
        config.run_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )
    .context("write report.json")?;
    std::fs::write(config.run_dir.join("report.txt"), report.to_text())
        .context("write report.txt")?;
    Ok(report)
}

/// Restarts processes that exited by themselves until `stop`; returns what it saw.
async fn supervise(
    cluster: Arc<Cluster>,
    events: Arc<Events>,
    stop: CancellationToken,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return seen,
            _ = tokio::time::sleep(SUPERVISE) => {}
        }
        for what in cluster.restart_exited().await {
            events.note(format_args!("supervisor: {what}"));
            seen.push(what);
        }
    }
}

/// Notes production and fault counts every [`PROGRESS`].
async fn progress(
    up: Arc<std::sync::atomic::AtomicU64>,
    down: Arc<std::sync::atomic::AtomicU64>,
    counts: Arc<FaultCounts>,
    events: Arc<Events>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROGRESS) => {}
        }
        events.note(format_args!(
            "progress: produced {} up, {} down; {} faults so far",
            up.load(Ordering::Relaxed),
            down.load(Ordering::Relaxed),
            counts.total()
        ));
    }
}
