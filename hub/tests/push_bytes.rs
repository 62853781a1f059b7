//! Push windows are counted in bytes as well as entries (issue 13): without
//! acks the hub stops after about `PUSH_WINDOW_BYTES` of large entries, far
//! below the entry window, and an entry larger than the whole byte window
//! still moves, alone, in order.

mod common;

use std::time::Duration;

use common::spawn_hub_with;
use lula_protocol::limits::{PUSH_WINDOW_BYTES, PUSH_WINDOW_ENTRIES};
use serde_json::{Value, json};

/// Entries of one push frame as (id, n, payload bytes).
fn entries_of(push: &Value) -> Vec<(String, String, usize)> {
    assert_eq!(push["type"], "push", "{push}");
    push["payload"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let fields = e["fields"].as_array().unwrap();
            (
                e["id"].as_str().unwrap().to_owned(),
                fields[1].as_str().unwrap().to_owned(),
                fields[3].as_str().unwrap().len(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_push_window_stops_at_its_bytes_and_a_larger_entry_still_moves() {
    // Frames large enough for the 6 MB entry.
    let hub = spawn_hub_with(|c| lula_hub::Config {
        max_frame_bytes: 16 << 20,
        ..c
    })
    .await;
    let client: lula_protocol::ClientId = "dev-big".parse().unwrap();
    let out = hub.keys.out_stream(&client);
    let mut c = hub.redis().await;
    // Twelve 1 MB entries, one of 6 MB (more than the whole byte window),
    // then three small ones.
    let mut sizes = vec![1_000_000; 12];
    sizes.push(6_000_000);
    sizes.extend([10, 10, 10]);
    for (i, size) in sizes.iter().enumerate() {
        let _: String = redis::cmd("XADD")
            .arg(&out)
            .arg("*")
            .arg("n")
            .arg(i)
            .arg("payload")
            .arg("x".repeat(*size))
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let mut ws = hub.connect("dev-big").await;
    ws.request("subscribe", json!({"id": "0-0"})).await;
    // Without acks the window holds at least four of the 1 MB entries...
    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(entries_of(&ws.recv().await));
    }
    // ...and then the hub goes quiet (anything past the window would follow
    // at once).
    loop {
        let next = tokio::time::timeout(Duration::from_secs(1), ws.recv()).await;
        match next {
            Ok(push) => got.extend(entries_of(&push)),
            Err(_) => break,
        }
    }
    let bytes: usize = got.iter().map(|(_, _, len)| len).sum();
    assert!(
        got.len() < sizes.len() && got.len() < PUSH_WINDOW_ENTRIES,
        "pushed {} entries ({bytes} bytes) without acks",
        got.len()
    );
    // At most the byte window plus the one entry that crossed it.
    assert!(
        bytes <= PUSH_WINDOW_BYTES + 1_000_000,
        "pushed {bytes} bytes without acks, window {PUSH_WINDOW_BYTES}"
    );
    // Ack as the device would; everything else follows, the 6 MB entry too.
    while got.len() < sizes.len() {
        let last = got.last().unwrap().0.clone();
        ws.send_text(json!({"type": "ack", "payload": {"id": last}}).to_string())
            .await;
        let push = ws.recv().await;
        got.extend(entries_of(&push));
    }
    let ns: Vec<String> = got.iter().map(|(_, n, _)| n.clone()).collect();
    let want: Vec<String> = (0..sizes.len()).map(|i| i.to_string()).collect();
    assert_eq!(ns, want, "every entry once, in order");
    let got_sizes: Vec<usize> = got.iter().map(|(_, _, len)| *len).collect();
    assert_eq!(got_sizes, sizes);
}
