//! `lula-hub call`, the binary: asks a device (here a raw WebSocket device
//! that answers by hand) and prints its answer; an offline device is a clear
//! timeout, not a hang.

mod common;

use std::process::Command;

use common::{entry, spawn_hub};
use serde_json::{Value, json};

fn call(redis_url: &str, args: &[&str]) -> tokio::task::JoinHandle<std::process::Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lula-hub"));
    cmd.args(["call", "--redis-url", redis_url]).args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("run lula-hub call"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lula_hub_call_prints_the_devices_answer_and_times_out_on_an_offline_one() {
    let hub = spawn_hub().await;
    let url = hub.redis.url();
    let mut device = hub.connect("dev-1").await;
    device.request("subscribe", json!({"id": "0-0"})).await;

    let asking = call(
        &url,
        &[
            "dev-1",
            "config.get",
            "key=interval",
            "--json",
            "--timeout",
            "30s",
        ],
    );
    // The request arrives as a push: rpc <method>, then the arguments.
    let push = loop {
        let frame: Value = device.recv().await;
        if frame["type"] == "push" {
            break frame;
        }
    };
    let request = &push["payload"]["entries"][0];
    let fields = request["fields"].as_array().unwrap();
    assert_eq!(
        fields[..4],
        [
            json!("rpc"),
            json!("config.get"),
            json!("key"),
            json!("interval")
        ]
    );
    let id = request["id"].as_str().unwrap();
    // The device answers in its own stream, req = the request's hub id.
    let r = device
        .request(
            "xadds",
            json!({"prev": "0-0", "entries": [entry("1-0", &["req", id, "interval", "30"])]}),
        )
        .await;
    assert_eq!(r["added"], 1, "{r}");
    let out = asking.await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"interval\":\"30\"}\n"
    );

    let out = call(&url, &["dev-9", "ping", "--timeout", "1s"])
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dev-9 did not answer within 1s"),
        "{stderr}"
    );
}
