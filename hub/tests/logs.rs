//! The `lula-hub` binary's logs as a log pipeline takes them: one JSON object
//! a line, each line of a connection carrying its `client` and `conn`, and no
//! token or admin secret anywhere.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lula_testkit::eventually;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-never-logged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_connection_and_never_a_secret() {
    // The harness's Redis with a published verification key; the hub under
    // test is the binary, on the same Redis.
    let harness = common::spawn_hub().await;
    let port = lula_testkit::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lula-hub"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", &harness.redis.url(), "--log-format", "json"])
        .env("LULA_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lula-hub");
    // Lines as the hub writes them, read on a thread of their own.
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
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(
        "the hub to listen",
        Duration::from_secs(30),
        || async move { tokio::net::TcpStream::connect(addr).await.ok().map(drop) },
    )
    .await;

    let mut ws = harness.connect_to(addr, "dev-1").await;
    // A refused request is logged inside the connection's span.
    ws.send_text("not json").await;
    let reply = ws.recv().await;
    assert_eq!(reply["payload"]["status"], 400);
    ws.request("echo", json!({})).await;
    ws.ws.close(None).await.unwrap();
    // Until the connection's last line is written, then whatever follows.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!("no \"disconnected\" line within 30s:\n{}", seen.join("\n"))
        });
        let last = serde_json::from_str::<Value>(&line)
            .is_ok_and(|l| l["span"]["name"] == "conn" && l["message"] == "disconnected");
        seen.push(line);
        if last {
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    let logs = seen.join("\n");

    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of_connection: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "conn")
        .collect();
    let messages: Vec<&str> = of_connection
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"connected") && messages.contains(&"disconnected"),
        "{logs}"
    );
    for line in &of_connection {
        assert_eq!(line["span"]["client"], "dev-1", "{line}");
        assert!(line["span"]["conn"].is_u64(), "{line}");
    }
    assert!(!logs.contains(ADMIN), "the admin token was logged:\n{logs}");
    // Every JWT starts with the base64 of `{"`.
    assert!(!logs.contains("eyJ"), "a session token was logged:\n{logs}");
    assert!(logs.contains("admin_token: Some(***)"), "{logs}");
}
