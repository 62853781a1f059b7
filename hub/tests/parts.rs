//! Entries too wide or too large for a batch arrive in parts (issue 13):
//! put together per connection, appended once whole, exactly once, byte for
//! byte; wider than the ingest script takes they go through `WATCH`/`MULTI`.
//! Out-of-order parts, entries past the limits and a spent assembly budget
//! get clear error replies, and nothing is written for them.

mod common;

use common::{entry, spawn_hub, spawn_hub_with};
use lula_protocol::parts::{EntryPart, PartLimits, Splitter};
use lula_protocol::{Entry, StreamId};
use serde_json::{Value, json};

fn parts(entry: &Entry, budget: usize) -> Vec<EntryPart> {
    let mut split = Splitter::new(entry.clone(), budget);
    std::iter::from_fn(|| split.next_part()).collect()
}

/// Sends every part with `prev`; returns the replies, in order.
async fn send_parts(ws: &mut common::Ws, prev: &str, parts: &[EntryPart]) -> Vec<Value> {
    let mut replies = Vec::new();
    for part in parts {
        let payload = json!({"prev": prev, "entries": [], "part": part});
        replies.push(ws.request("xadds", payload).await);
    }
    replies
}

/// Keys and values of every entry of the in stream, as bytes.
async fn in_entries(hub: &common::TestHub) -> Vec<Vec<Vec<u8>>> {
    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(hub.keys.in_stream())
        .arg("-")
        .arg("+")
        .query_async(&mut hub.redis().await)
        .await
        .unwrap();
    entries.into_iter().map(|(_, fields)| fields).collect()
}

/// `pairs` pairs whose names and values hold every byte value.
fn binary_entry(id: StreamId, pairs: usize, value_len: usize) -> Entry {
    let fields = (0..pairs)
        .flat_map(|i| {
            let name = format!("k{i}-")
                .into_bytes()
                .into_iter()
                .chain([(i % 256) as u8]);
            let value = (0..value_len).map(move |j| ((i + j) % 256) as u8);
            [name.collect::<Vec<u8>>(), value.collect()]
        })
        .collect();
    Entry::new(id, fields)
}

fn appended_as(fields: &[Vec<u8>], client: &str, entry: &Entry) {
    assert_eq!(fields[0], b"client");
    assert_eq!(fields[1], client.as_bytes());
    assert_eq!(fields[2], b"seq");
    assert_eq!(fields[3], entry.id.to_string().as_bytes());
    assert_eq!(fields.len(), entry.fields.len() + 4);
    assert!(fields[4..] == entry.fields[..], "byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_and_large_entries_in_parts_are_appended_once_byte_for_byte() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    let id = ws.request("id", json!({})).await;
    assert_eq!(
        id["parts"],
        json!({"maxValues": 200_000, "maxBytes": 64 << 20}),
        "{id}"
    );
    let first = ws
        .request(
            "xadds",
            json!({"prev": "0-0", "entries": [entry("1-0", &["a", "1"])]}),
        )
        .await;
    assert_eq!(first["added"], 1);
    // 20,000 pairs: too wide for the ingest script, appended with WATCH/MULTI.
    let wide = binary_entry(StreamId::new(2, 0), 20_000, 3);
    let wide_parts = parts(&wide, 256 * 1024);
    assert!(wide_parts.len() > 2);
    let replies = send_parts(&mut ws, "1-0", &wide_parts).await;
    for r in &replies[..replies.len() - 1] {
        assert_eq!(r, &json!({"id": "1-0", "added": 0, "duplicates": 0}));
    }
    assert_eq!(
        replies.last().unwrap(),
        &json!({"id": "2-0", "added": 1, "duplicates": 0})
    );
    // 1,500 pairs (past a batch, within the script) and one 3 MB value.
    let middling = binary_entry(StreamId::new(3, 0), 1_500, 10);
    let replies = send_parts(&mut ws, "2-0", &parts(&middling, 64 * 1024)).await;
    assert_eq!(replies.last().unwrap()["added"], 1);
    let large = binary_entry(StreamId::new(4, 0), 1, 3_000_000);
    let large_parts = parts(&large, 512 * 1024);
    assert!(large_parts.len() >= 6);
    let replies = send_parts(&mut ws, "3-0", &large_parts).await;
    assert_eq!(replies.last().unwrap()["id"], "4-0");
    let stored = in_entries(&hub).await;
    assert_eq!(stored.len(), 4);
    appended_as(&stored[1], "dev-1", &wide);
    appended_as(&stored[2], "dev-1", &middling);
    appended_as(&stored[3], "dev-1", &large);
    // Sent again (as after a lost reply): duplicates, nothing appended.
    let replies = send_parts(&mut ws, "1-0", &wide_parts).await;
    assert_eq!(
        replies.last().unwrap(),
        &json!({"id": "4-0", "added": 0, "duplicates": 1})
    );
    assert_eq!(in_entries(&hub).await.len(), 4);
    let metrics = reqwest::get(format!("http://{}/metrics", hub.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lula_hub_assembled_entries_total 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_racing_with_one_wide_entry_append_it_once() {
    let no_takeover = |mut c: lula_hub::Config| {
        c.one_connection_per_device = false;
        c
    };
    let hub = spawn_hub_with(no_takeover).await;
    let mut addrs = vec![hub.addr];
    let mut stops = Vec::new();
    for _ in 0..2 {
        let (addr, stop) = hub.spawn_replica_with(no_takeover).await;
        addrs.push(addr);
        stops.push(stop);
    }
    // Each round the same wide entry goes to three hubs at once: their
    // transactions race on the same cursor hash.
    for round in 1..=3u64 {
        let wide = binary_entry(StreamId::new(round, 0), 10_000, 8);
        let all = parts(&wide, 128 * 1024);
        let prev = format!("{}-0", round - 1);
        let mut tasks = Vec::new();
        for addr in &addrs {
            let mut ws = hub.connect_to(*addr, "dev-1").await;
            let (all, prev) = (all.clone(), prev.clone());
            tasks.push(tokio::spawn(async move {
                send_parts(&mut ws, &prev, &all).await.pop().unwrap()
            }));
        }
        let mut added = 0;
        for task in tasks {
            let last = task.await.unwrap();
            assert_eq!(last["id"], format!("{round}-0"), "{last}");
            added += last["added"].as_u64().unwrap();
        }
        assert_eq!(added, 1, "appended once");
        let stored = in_entries(&hub).await;
        assert_eq!(stored.len() as u64, round);
        appended_as(stored.last().unwrap(), "dev-1", &wide);
    }
    for stop in stops {
        stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_out_of_order_past_the_limits_after_a_gap_or_past_the_budget_are_refused() {
    let limits = PartLimits {
        max_values: 100,
        max_bytes: 10_000,
    };
    let hub = spawn_hub_with(move |mut c| {
        c.part_limits = limits;
        c.assembly_bytes = 20_000;
        c
    })
    .await;
    let mut ws = hub.connect("dev-1").await;
    let ok = binary_entry(StreamId::new(1, 0), 20, 400);
    let ok_parts = parts(&ok, 2_000);
    assert!(ok_parts.len() > 3);
    // A part without its part 0.
    let r = send_parts(&mut ws, "0-0", &ok_parts[1..2]).await.remove(0);
    assert_eq!(r["status"], 400, "{r}");
    assert!(
        r.get("entry").is_none(),
        "not set aside for a protocol slip"
    );
    // Past the limits: refused at part 0, naming the entry to set aside.
    let wide = binary_entry(StreamId::new(1, 0), 60, 1);
    let r = send_parts(&mut ws, "0-0", &parts(&wide, 2_000)[..1])
        .await
        .remove(0);
    assert_eq!(r["status"], 413, "{r}");
    assert_eq!(r["entry"], "1-0");
    // A new entry while one is incomplete.
    send_parts(&mut ws, "0-0", &ok_parts[..1]).await;
    let other = binary_entry(StreamId::new(2, 0), 2, 10);
    let r = send_parts(&mut ws, "0-0", &parts(&other, 2_000))
        .await
        .remove(0);
    assert_eq!(r["status"], 400, "{r}");
    // The budget: one entry holds about 8,600 bytes of 20,000; two more
    // connections start one each, the second is told to retry later.
    let mut a = hub.connect("dev-a").await;
    let mut b = hub.connect("dev-b").await;
    let mut c = hub.connect("dev-c").await;
    send_parts(&mut a, "0-0", &ok_parts[..1]).await;
    send_parts(&mut b, "0-0", &ok_parts[..1]).await;
    let r = send_parts(&mut c, "0-0", &ok_parts[..1]).await.remove(0);
    assert_eq!(r["status"], 503, "{r}");
    assert!(r.get("entry").is_none(), "a busy hub sets nothing aside");
    let done = send_parts(&mut a, "0-0", &ok_parts[1..]).await;
    assert_eq!(done.last().unwrap()["added"], 1);
    // With a's share back, c goes through.
    let done = send_parts(&mut c, "0-0", &ok_parts).await;
    assert_eq!(done.last().unwrap()["added"], 1);
    // A gap: the entry follows 7-0, which the hub does not hold.
    let later = binary_entry(StreamId::new(9, 0), 20, 400);
    let r = send_parts(&mut c, "7-0", &parts(&later, 2_000))
        .await
        .pop()
        .unwrap();
    assert_eq!(r["status"], 409, "{r}");
    let stored = in_entries(&hub).await;
    assert_eq!(stored.len(), 2, "dev-a's and dev-c's entries only");
}
