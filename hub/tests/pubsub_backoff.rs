//! A hub whose Redis is down says which Redis it cannot reach and retries
//! its pub/sub connection with a growing pause, instead of logging the same
//! address-less line every second.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lula_testkit::eventually;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_reconnects_back_off_and_name_the_redis() {
    // Nothing listens there.
    let redis_port = lula_testkit::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lula-hub"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--redis-url", &format!("redis://127.0.0.1:{redis_port}")])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lula-hub");
    let log = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let failures = || -> Vec<Value> {
        log.lock()
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| {
                l["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("pub/sub failed")
            })
            .collect()
    };
    // 1 s + 2 s + 4 s of pauses: four failures.
    eventually(
        "four failed pub/sub connects",
        Duration::from_secs(120),
        || async { (failures().len() >= 4).then_some(()) },
    )
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    let _ = reader.join();
    let failures = failures();
    let at = format!("127.0.0.1:{redis_port}");
    for f in &failures {
        let error = f["error"].as_str().unwrap_or_default();
        assert!(error.contains(&at), "no Redis address in {f}");
    }
    let pauses: Vec<&str> = failures
        .iter()
        .take(4)
        .map(|f| f["retry_in"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(pauses, ["1s", "2s", "4s", "8s"]);
}
