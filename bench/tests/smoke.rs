//! Every benchmark scenario at a tiny size, so the benchmark cannot rot: each
//! must run to the end and pass its exactly-once (or all-connected) check.
//! Nothing here looks at a speed; the numbers are printed for the curious.

use std::path::PathBuf;

use lula_bench::{RunConfig, Scenario, Sizes};

async fn smoke(scenario: Scenario) -> lula_bench::Report {
    let config = RunConfig {
        scenarios: vec![scenario],
        sizes: Sizes::smoke(),
        hub_exe: PathBuf::from(env!("CARGO_BIN_EXE_lula-bench")),
        compression_window_bits: lula_client::config::DEFAULT_COMPRESSION_WINDOW_BITS,
    };
    let report = lula_bench::run(&config).await;
    println!("{}", report.to_text());
    for s in [Scenario::Baseline, scenario] {
        let check = report
            .check(s)
            .unwrap_or_else(|| panic!("{} did not run", s.name()));
        assert!(check.passed, "{}: {}", s.name(), check.detail);
    }
    report
}

/// The value of a memory row (`"12.3 MiB (...)"`) in bytes.
fn row_bytes(report: &lula_bench::Report, scenario: Scenario, metric: &str) -> f64 {
    let row = report
        .rows
        .iter()
        .find(|r| r.scenario == scenario && r.metric == metric)
        .unwrap_or_else(|| panic!("no row {metric:?}"));
    let mut words = row.value.split_whitespace();
    let number: f64 = words.next().and_then(|n| n.parse().ok()).expect("a number");
    match words.next() {
        Some("MiB") => number * 1024.0 * 1024.0,
        Some("KiB") => number * 1024.0,
        other => panic!("unknown unit {other:?} in {:?}", row.value),
    }
}

/// The latency samples each phase of `scenario` counted: the number just
/// before `marker` (or the whole value) of every row whose metric starts
/// with `metric`. Fails when there is no such row.
fn samples(
    report: &lula_bench::Report,
    scenario: Scenario,
    metric: &str,
    marker: Option<&str>,
) -> Vec<u64> {
    let counts: Vec<u64> = report
        .rows
        .iter()
        .filter(|r| r.scenario == scenario && r.metric.starts_with(metric))
        .map(|r| {
            let before = match marker {
                Some(m) => r.value.split(m).next().unwrap_or_default(),
                None => r.value.as_str(),
            };
            let word = before.split_whitespace().last().unwrap_or_default();
            word.replace(',', "")
                .parse()
                .unwrap_or_else(|_| panic!("no sample count in {:?}", r.value))
        })
        .collect();
    assert!(
        !counts.is_empty(),
        "no {metric:?} rows: the phase did not run"
    );
    counts
}

/// A loose bound on the catch-up's memory: far above what a bounded client
/// and hub need, far below what holding a backlog would take at full size.
/// Not a measurement; the numbers are in the full run's table.
const SANE_PEAK_BYTES: f64 = 512.0 * 1024.0 * 1024.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_writes_every_entry() {
    smoke(Scenario::Baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_delivers_a_preloaded_stream_exactly_once() {
    let report = smoke(Scenario::Upstream).await;
    for metric in [
        "peak hub RSS during catch-up",
        "peak lula-bench RSS (client) during catch-up",
    ] {
        let peak = row_bytes(&report, Scenario::Upstream, metric);
        assert!(
            peak > 0.0 && peak < SANE_PEAK_BYTES,
            "{metric}: {peak} bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_run_delivers_paced_entries_exactly_once() {
    let report = smoke(Scenario::Latency).await;
    // Percentiles of nothing are zeros that look like a fast run.
    let counts = samples(&report, Scenario::Latency, "produced @", Some("samples"));
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanin_delivers_every_device_exactly_once() {
    let report = smoke(Scenario::Fanin).await;
    let metric = "latency samples after warm-up";
    let counts = samples(&report, Scenario::Fanin, metric, None);
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_delivers_a_preloaded_stream_exactly_once() {
    let report = smoke(Scenario::Downstream).await;
    for metric in [
        "peak hub RSS during catch-up",
        "peak lula-bench RSS (client) during catch-up",
    ] {
        let peak = row_bytes(&report, Scenario::Downstream, metric);
        assert!(
            peak > 0.0 && peak < SANE_PEAK_BYTES,
            "{metric}: {peak} bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_counts_bytes_of_every_shape_and_delivers_exactly_once() {
    let report = smoke(Scenario::Wire).await;
    for shape in ["telemetry", "logs", "random"] {
        for phase in ["up (json)", "down (json)", "up (deflate)", "down (deflate)"] {
            let metric = format!("{shape} {phase}: wire bytes/entry, both ways");
            let row = report
                .rows
                .iter()
                .find(|r| r.scenario == Scenario::Wire && r.metric == metric)
                .unwrap_or_else(|| panic!("no row {metric:?}"));
            let per_entry: f64 = row
                .value
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a number");
            // Every entry crossed the proxy: something per entry did.
            assert!(per_entry > 5.0, "{metric}: {}", row.value);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_through_a_slow_link_delivers_exactly_once() {
    smoke(Scenario::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_all_authenticate_and_stay_open() {
    smoke(Scenario::Connections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_entries_arrive_exactly_once_with_memory_measured() {
    let report = smoke(Scenario::Big).await;
    // Memory is reported (row_bytes fails without the row), never compared
    // with the goals here: smoke sizes, debug build.
    for metric in ["daemon peak RSS above idle", "hub peak RSS above idle"] {
        row_bytes(&report, Scenario::Big, metric);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_parts_arrive_exactly_once_with_memory_measured() {
    let report = smoke(Scenario::Parts).await;
    // Reported, never compared with anything: smoke sizes, debug build.
    for metric in [
        "daemon peak RSS above idle",
        "hub (up) peak RSS above idle",
        "hub (down) peak RSS above idle",
    ] {
        row_bytes(&report, Scenario::Parts, metric);
    }
}
