//! Every benchmark scenario at a tiny size, so the benchmark cannot rot: each
//! must run to the end and pass its exactly-once (or all-connected) check.
//! Nothing here looks at a speed; the numbers are printed for the curious.

use std::path::PathBuf;

use lula_bench::{RunConfig, Scenario, Sizes};

async fn smoke(scenario: Scenario) {
    let config = RunConfig {
        scenarios: vec![scenario],
        sizes: Sizes::smoke(),
        hub_exe: PathBuf::from(env!("CARGO_BIN_EXE_lula-bench")),
    };
    let report = lula_bench::run(&config).await;
    println!("{}", report.to_text());
    for s in [Scenario::Baseline, scenario] {
        let check = report
            .check(s)
            .unwrap_or_else(|| panic!("{} did not run", s.name()));
        assert!(check.passed, "{}: {}", s.name(), check.detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_writes_every_entry() {
    smoke(Scenario::Baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_delivers_a_preloaded_stream_exactly_once() {
    smoke(Scenario::Upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_run_delivers_paced_entries_exactly_once() {
    smoke(Scenario::Latency).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanin_delivers_every_device_exactly_once() {
    smoke(Scenario::Fanin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_delivers_a_preloaded_stream_exactly_once() {
    smoke(Scenario::Downstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_all_authenticate_and_stay_open() {
    smoke(Scenario::Connections).await;
}
