//! `lula-client status --check` as a health check runs it: the real binary,
//! against a real daemon, exiting 0 while all is well and non-zero when the
//! hub is gone too long, when the upstream backlog stops draining, and when
//! the daemon stopped; `status --json` gives every time in epoch ms.

use std::process::Command;
use std::time::Duration;

use lula_e2e::binary::client_binary;
use lula_e2e::{Cloud, Device};
use lula_testkit::eventually;

const WAIT: Duration = Duration::from_secs(120);

/// `lula-client status <args>` for `device`: (exit code, stdout).
fn status(device: &Device, args: &[&str]) -> (i32, String) {
    let out = Command::new(client_binary())
        .arg("status")
        .args(["--redis-url", &device.redis.url()])
        .arg("--state-dir")
        .arg(device.state_dir())
        .args(["--prefix", device.keys.prefix()])
        .args(args)
        .env_remove("REDIS_URL")
        .output()
        .expect("run lula-client status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn exits(device: &Device, what: &str, args: &[&str], code: i32) -> String {
    eventually(what, WAIT, || async {
        let (got, out) = status(device, args);
        (got == code).then_some(out)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_check_exits_non_zero_when_stopped_disconnected_or_stuck() {
    let mut cloud = Cloud::start().await;
    let otp = cloud.provision("dev-check").await;
    let mut device = Device::new(&cloud, "dev-check", &otp);
    device.start();
    device.produce(0, 10).await;
    eventually("10 entries in the hub", WAIT, || async {
        (cloud.in_len().await >= 10).then_some(())
    })
    .await;
    let out = exits(&device, "a healthy check", &["--check"], 0).await;
    assert_eq!(out.trim(), "ok");

    // Times in one unit, ms.
    let (code, json) = status(&device, &["--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let now = lula_runtime::now_ms();
    let updated = json["updatedAt"].as_u64().unwrap();
    let expires = json["sessionExpiresAt"].as_u64().unwrap();
    assert!(
        updated.abs_diff(now) < 600_000,
        "updatedAt {updated} vs now {now}"
    );
    // The harness's tokens live an hour.
    assert!(
        expires > now && expires < now + 2 * 3_600_000,
        "sessionExpiresAt {expires} is not epoch ms (now {now})"
    );
    let (_, text) = status(&device, &[]);
    assert!(text.contains("figures as of:"), "{text}");

    // The hub goes away: disconnected, past a 1 s limit (not past an hour).
    cloud.kill_hub();
    let out = exits(
        &device,
        "disconnected",
        &["--check", "--max-disconnected", "1s"],
        3,
    )
    .await;
    assert!(out.contains("disconnected"), "{out}");
    let (code, _) = status(&device, &["--check", "--max-disconnected", "1h"]);
    assert_eq!(code, 0, "an hour's grace has not run out");

    // Entries wait and the cursor stands still.
    device.produce(10, 20).await;
    let out = exits(
        &device,
        "a stuck backlog",
        &["--check", "--max-disconnected", "1h", "--max-stall", "1s"],
        4,
    )
    .await;
    assert!(out.contains("not draining"), "{out}");
    // The hub is back: it drains, and the check is healthy again.
    cloud.start_hub();
    exits(
        &device,
        "drained",
        &["--check", "--max-disconnected", "1h", "--max-stall", "1s"],
        0,
    )
    .await;

    device.stop().await.unwrap();
    let out = exits(&device, "stopped", &["--check"], 2).await;
    assert!(out.contains("not running"), "{out}");
}
