//! What the real `lula-client` binary writes to a log that is not a
//! terminal, at the most verbose level: a start-up line naming what runs, no
//! colour codes, and no credential (the WebSocket library logs whole
//! handshake requests at trace level; lula_runtime filters them).

use std::time::Duration;

use lula_e2e::binary::ClientProcess;
use lula_e2e::{Cloud, Device};
use lula_testkit::eventually;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_log_has_a_start_line_no_colours_and_no_token() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-trace").await;
    let device = Device::new(&cloud, "dev-trace", &otp);
    let mut daemon = ClientProcess::run(&device, "trace", &[]);
    device.produce(0, 10).await;
    eventually("10 entries in the hub", WAIT, || async {
        (cloud.in_len().await >= 10).then_some(())
    })
    .await;
    // The hub's own handshake answer is logged too by now.
    eventually("the handshake logged", WAIT, || async {
        daemon.log().contains("Client handshake done").then_some(())
    })
    .await;
    daemon.terminate();
    let exit = daemon.wait(WAIT);
    let log = daemon.log();
    assert!(exit.success(), "exit {exit:?}:\n{log}");
    // Trace really was on, for the WebSocket library too.
    assert!(log.contains("TRACE"), "no trace lines:\n{log}");
    assert!(log.contains("tungstenite"), "no tungstenite lines:\n{log}");
    let start = log
        .lines()
        .find(|l| l.contains("starting"))
        .unwrap_or_else(|| panic!("no start-up line:\n{log}"));
    for part in [
        "name=\"lula-client\"".to_owned(),
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        format!("commit=\"{}\"", lula_runtime::metrics::COMMIT),
        "config=".to_owned(),
    ] {
        assert!(start.contains(&part), "{part} missing from: {start}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log}"
    );
    let identity = std::fs::read_to_string(device.state_dir().join("identity.json")).unwrap();
    let identity: serde_json::Value = serde_json::from_str(&identity).unwrap();
    let device_secret = identity["secret"].as_str().unwrap();
    // Session tokens are JWTs, whose header always encodes to `eyJ`.
    assert!(!log.contains("eyJ"), "a token is in the log:\n{log}");
    assert!(
        !log.to_lowercase().contains("bearer"),
        "an auth header is in the log:\n{log}"
    );
    assert!(
        !log.contains(device_secret),
        "the device secret is in the log"
    );
    assert!(!log.contains(&otp), "the OTP secret is in the log");
}
