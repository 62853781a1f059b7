//! Blocking lula `xread`s of one connection against a real Redis and a real
//! WebSocket client: they wait side by side, never hold up the connection's
//! other requests, and past `MAX_BLOCKING_XREADS` are refused with 429 while
//! the socket keeps serving. Timeouts are hang guards, never speed checks.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{TestHub, Ws, entry, spawn_hub};
use lula_protocol::ClientId;
use lula_protocol::limits::MAX_BLOCKING_XREADS;
use serde_json::{Value, json};

/// An id no entry reaches: an `xread` after it waits its whole block.
const NEVER: &str = "18446744073709551615-0";
/// Longer than any test runs: a blocking read ends by an entry, not its timeout.
const BLOCK_MS: u64 = 60_000;

fn send_xread(request_id: &str, after: &str) -> String {
    json!({
        "type": "xread",
        "id": request_id,
        "payload": {"id": after, "blockTimeout": BLOCK_MS},
    })
    .to_string()
}

async fn xadd_out(hub: &TestHub, value: &str) -> String {
    let client: ClientId = "dev-1".parse().unwrap();
    redis::cmd("XADD")
        .arg(hub.keys.out_stream(&client))
        .arg("*")
        .arg("topic")
        .arg(value)
        .query_async(&mut hub.redis().await)
        .await
        .unwrap()
}

/// Receives frames until one reply for each of `ids` came; returns them by id.
async fn replies_to(ws: &mut Ws, ids: &[&str]) -> BTreeMap<String, Value> {
    let mut got = BTreeMap::new();
    while got.len() < ids.len() {
        let frame = ws.recv().await;
        let id = frame["id"].as_str().unwrap_or_default().to_owned();
        assert!(ids.contains(&id.as_str()), "unexpected frame {frame}");
        assert!(got.insert(id, frame).is_none(), "two replies to one id");
    }
    got
}

#[tokio::test]
async fn blocking_xreads_do_not_hold_up_the_socket_and_one_entry_answers_all() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    for id in ["b1", "b2", "b3"] {
        ws.send_text(send_xread(id, "0-0")).await;
    }
    // Nothing can answer a read yet: the very next frame is the echo's reply.
    ws.send_text(json!({"type": "echo", "id": "e", "payload": {"n": 1}}).to_string())
        .await;
    let first = ws.recv().await;
    assert_eq!(first["id"], "e", "{first}");
    assert_eq!(first["payload"], json!({"n": 1}));
    // So are `id` and `xadd`.
    assert_eq!(ws.request("id", json!({})).await["id"], "0-0");
    let added = ws.request("xadd", entry("1-1", &["k", "v"])).await;
    assert!(added["id"].is_string(), "{added}");

    let hub_id = xadd_out(&hub, "a").await;
    let replies = replies_to(&mut ws, &["b1", "b2", "b3"]).await;
    for (id, reply) in &replies {
        assert_eq!(reply["type"], "xread", "{id}: {reply}");
        assert_eq!(
            reply["payload"]["items"],
            json!([{"topic": "a", "id": hub_id}]),
            "{id}"
        );
    }
}

#[tokio::test]
async fn a_blocking_xread_does_not_hold_up_the_next_one() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    // The first waits for an entry that never comes; the one behind it is
    // answered as soon as its entry is there (served one after the other,
    // it would wait the first one's whole minute).
    ws.send_text(send_xread("stuck", NEVER)).await;
    ws.send_text(send_xread("next", "0-0")).await;
    assert_eq!(ws.request("echo", json!("sync")).await, json!("sync"));
    let hub_id = xadd_out(&hub, "a").await;
    let reply = ws.recv().await;
    assert_eq!(reply["id"], "next", "{reply}");
    assert_eq!(
        reply["payload"]["items"],
        json!([{"topic": "a", "id": hub_id}])
    );
}

#[tokio::test]
async fn blocking_xreads_past_the_limit_are_refused_and_the_socket_keeps_serving() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    let ids: Vec<String> = (0..MAX_BLOCKING_XREADS).map(|i| format!("b{i}")).collect();
    for id in &ids {
        ws.send_text(send_xread(id, "0-0")).await;
    }
    ws.send_text(send_xread("over", "0-0")).await;
    let refused = ws.recv().await;
    assert_eq!(refused["id"], "over", "{refused}");
    assert_eq!(refused["type"], "xread");
    assert_eq!(refused["payload"]["status"], 429, "{refused}");
    let message = refused["payload"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("at most {MAX_BLOCKING_XREADS}")),
        "{message}"
    );

    // The socket keeps serving: echo, id, xadd, a non-blocking xread.
    assert_eq!(ws.request("echo", json!("still")).await, json!("still"));
    assert_eq!(ws.request("id", json!({})).await["id"], "0-0");
    assert!(ws.request("xadd", entry("1-1", &["k", "v"])).await["id"].is_string());
    assert_eq!(
        ws.request("xread", json!({"id": "0-0"})).await["items"],
        json!([])
    );

    // An entry answers every waiting read; their slots are free again.
    let first = xadd_out(&hub, "a").await;
    let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    let replies = replies_to(&mut ws, &wanted).await;
    assert_eq!(
        replies.keys().cloned().collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect::<BTreeSet<_>>()
    );
    for reply in replies.values() {
        assert_eq!(
            reply["payload"]["items"][0]["id"],
            first.as_str(),
            "{reply}"
        );
    }
    ws.send_text(send_xread("again", &first)).await;
    let second = xadd_out(&hub, "b").await;
    let reply = ws.recv().await;
    assert_eq!(reply["id"], "again", "{reply}");
    assert_eq!(
        reply["payload"]["items"],
        json!([{"topic": "b", "id": second}])
    );
}
