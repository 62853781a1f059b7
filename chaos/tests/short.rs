//! The short mode of the fault-injection suite, under `cargo test`: real hub,
//! auth and daemon processes (this crate's `lula-chaos` binary) behind the
//! fault proxy, with every kind of fault, then exactly once checked both ways.
//!
//! Set `LULA_CHAOS_SEED` to repeat a failed run's random choices; the run dir
//! with every log is kept when the test fails and printed either way.

use std::path::PathBuf;

use lula_chaos::RunConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_random_faults_nothing_is_lost_doubled_or_reordered_either_way() {
    let seed = std::env::var("LULA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(lula_chaos::chance::random_seed);
    let run_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-short-{seed}"));
    let _ = std::fs::remove_dir_all(&run_dir);
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_lula-chaos"));
    eprintln!(
        "lula-chaos short run: seed {seed}, run dir {}",
        run_dir.display()
    );

    let report = lula_chaos::run(&RunConfig::short(exe, run_dir.clone(), seed))
        .await
        .expect("the suite could not be set up");
    eprintln!("{}", report.to_text());

    let check = report.check.as_ref().expect("the check ran");
    for (direction, tally) in [("up", &check.up), ("down", &check.down)] {
        assert!(tally.entries > 0, "{direction}: nothing was produced");
        assert_eq!(tally.lost, 0, "{direction}: lost entries (seed {seed})");
        assert_eq!(
            tally.duplicated, 0,
            "{direction}: duplicated entries (seed {seed})"
        );
        assert_eq!(
            tally.reordered, 0,
            "{direction}: reordered entries (seed {seed})"
        );
        assert_eq!(
            tally.mismatched, 0,
            "{direction}: mismatched entries (seed {seed})"
        );
        assert_eq!(tally.delivered, tally.entries, "{direction} (seed {seed})");
    }
    for row in &report.faults {
        // Blackholes outlast the idle timeouts; only the long mode has them.
        if row.kind != lula_chaos::faults::FaultKind::ProxyBlackhole {
            assert!(
                row.count > 0,
                "no {:?} was injected (seed {seed})",
                row.kind
            );
        }
    }
    assert!(report.token_renewals() > 0, "no token was renewed");
    assert!(
        report.logs.expired_mid_sync > 0,
        "no token expired on a live connection (seed {seed})"
    );
    assert!(
        report.logs.relogins_after_expiry > 0,
        "no daemon logged in again after its token expired (seed {seed})"
    );
    assert!(report.passed(), "see the table above (seed {seed})");
    let _ = std::fs::remove_dir_all(&run_dir);
}
