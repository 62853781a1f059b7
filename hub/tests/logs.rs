//! The `lula-hub` binary's logs as a log pipeline takes them: one JSON object
//! a line, each line of a connection carrying its `client` and `conn`, and no
//! token or admin secret anywhere.

mod common;

use std::io::Read;
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
    tokio::time::sleep(Duration::from_millis(500)).await;

    child.kill().unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let _ = child.wait();

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
