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

/// Provisions `client` in lula-auth's keys (the hub's Redis here), as
/// `lula-auth provision` does: `lula-hub call` asks only provisioned devices.
async fn provision(hub: &common::TestHub, client: &str) {
    lula_auth::provision::provision(
        &mut hub.redis().await,
        &hub.auth_keys,
        &client.parse().unwrap(),
        std::time::Duration::from_secs(3600),
        false,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lula_hub_call_prints_the_devices_answer_and_times_out_on_an_offline_one() {
    let hub = spawn_hub().await;
    let url = hub.redis.url();
    provision(&hub, "dev-1").await;
    provision(&hub, "dev-9").await;
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
    // The request expired with the call: when dev-9 shows up it is told,
    // and never given the stale request.
    let mut late = hub.connect("dev-9").await;
    late.request("subscribe", json!({"id": "0-0"})).await;
    let push = loop {
        let frame: Value = late.recv().await;
        if frame["type"] == "push" {
            break frame;
        }
    };
    assert_eq!(push["payload"]["entries"], json!([]), "{push}");
    assert_eq!(push["payload"]["expired"], 1, "{push}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lula_hub_call_refuses_a_device_that_was_never_provisioned_and_writes_nothing() {
    let hub = spawn_hub().await;
    let out = call(&hub.redis.url(), &["dev-404", "reboot", "--timeout", "30s"])
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dev-404 is not provisioned in lula-auth"),
        "{stderr}"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("lula-hub:out:*")
        .query_async(&mut hub.redis().await)
        .await
        .unwrap();
    assert!(keys.is_empty(), "nothing left for the device: {keys:?}");
}
