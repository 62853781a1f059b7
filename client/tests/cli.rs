//! The `lula-client` binary as operators run it: logs as JSON lines for log
//! pipelines, and secrets in none of its output.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lula_testkit::RedisServer;

const OTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

#[test]
fn json_logs_are_one_object_a_line_and_never_show_the_secrets() {
    let redis = RedisServer::start();
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lula-client"))
        .args(["run", "--client-id", "dev-1", "--log-format", "json"])
        // Nothing listens there: the daemon logs its failed registrations.
        .args([
            "--auth-url",
            "http://127.0.0.1:9",
            "--hub-url",
            "ws://127.0.0.1:9",
        ])
        .arg("--redis-url")
        .arg(redis.url())
        .arg("--state-dir")
        .arg(state.path())
        .env("LULA_OTP_SECRET", OTP_SECRET)
        .env("LULA_MAX_BACKOFF", "200ms")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the lines as they are written until the failed registration is
    // logged among at least two lines (a generous deadline, not a fixed
    // wait), then the rest.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let enough =
        |seen: &[String]| seen.len() >= 2 && seen.iter().any(|l| l.contains("registration failed"));
    while !enough(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "no failed registration logged within 30s:\n{}",
                seen.join("\n")
            ),
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    let logs = seen.join("\n");

    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "too few log lines:\n{logs}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        logs.contains("registration failed"),
        "the failure is logged:\n{logs}"
    );
    // The provisioned OTP secret and the device's own secret stay out.
    assert!(!logs.contains(OTP_SECRET), "the OTP secret was logged");
    let identity = std::fs::read_to_string(state.path().join("identity.json")).unwrap();
    let secret: serde_json::Value = serde_json::from_str(&identity).unwrap();
    let secret = secret["secret"].as_str().unwrap();
    assert!(!logs.contains(secret), "the device secret was logged");
}

#[test]
fn help_does_not_show_secret_values_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_lula-client"))
        .args(["run", "--help"])
        .env("LULA_OTP_SECRET", OTP_SECRET)
        .env("REDIS_URL", "redis://user:hunter2@db:6379")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--otp-secret"));
    assert!(!help.contains(OTP_SECRET), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}
