//! The exactly-once append under the hub's group commit: several devices'
//! batches in one script call, a connection's pipelined batches, and hub
//! replicas racing for the same device, all against a real Redis.

mod common;

use common::{entry, spawn_hub};
use lula_hub::ingest::{self, Appended, Section};
use lula_protocol::keys::{HubKeys, IngestLayout};
use lula_protocol::{Entry, StreamId};
use lula_testkit::RedisServer;
use serde_json::json;

fn entries(client: &str, ms: std::ops::Range<u64>) -> Vec<Entry> {
    ms.map(|i| {
        Entry::from_pairs(
            StreamId::new(i, 0),
            &[("from", client), ("n", &i.to_string())],
        )
    })
    .collect()
}

fn section(client: &str, prev: Option<u64>, ms: std::ops::Range<u64>) -> Section {
    Section {
        client: client.parse().unwrap(),
        prev: prev.map(|p| StreamId::new(p, 0)),
        entries: entries(client, ms),
    }
}

#[tokio::test]
async fn sections_of_several_devices_in_one_call_are_each_checked_on_their_own() {
    let redis = RedisServer::start();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = HubKeys::default();
    let results = ingest::append_many(
        &mut conn,
        &IngestLayout::single(&keys),
        0,
        vec![
            section("a", None, 1..4),
            section("b", None, 1..3),
            // follows a's first section, in the same call
            section("a", Some(3), 4..6),
            // b's cursor is 2: a batch claiming to follow 9 is a gap
            section("b", Some(9), 10..11),
            // 5 is a duplicate of the section before, 6 is new
            section("a", Some(5), 5..7),
        ],
    )
    .await
    .unwrap();
    let applied = |cursor: u64, added, duplicates| Appended::Applied {
        cursor: StreamId::new(cursor, 0),
        added,
        duplicates,
        last: None,
        set_aside: None,
    };
    let strip = |r: &Appended| match r {
        Appended::Applied {
            cursor,
            added,
            duplicates,
            ..
        } => Appended::Applied {
            cursor: *cursor,
            added: *added,
            duplicates: *duplicates,
            last: None,
            set_aside: None,
        },
        gap => gap.clone(),
    };
    let got: Vec<Appended> = results.iter().map(strip).collect();
    assert_eq!(
        got,
        vec![
            applied(3, 3, 0),
            applied(2, 2, 0),
            applied(5, 2, 0),
            Appended::Gap {
                cursor: StreamId::new(2, 0)
            },
            applied(6, 1, 1),
        ]
    );
    // Stored: a1 a2 a3 b1 b2 a4 a5 a6, each once, each device in order.
    let stored = lula_protocol::redis_value::entries_from_range(
        redis::cmd("XRANGE")
            .arg(keys.in_stream())
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap(),
    )
    .unwrap();
    let got: Vec<(String, String)> = stored
        .iter()
        .map(|e| {
            (
                String::from_utf8_lossy(&e.fields[1]).into_owned(),
                String::from_utf8_lossy(&e.fields[3]).into_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 1),
        ("b", 2),
        ("a", 4),
        ("a", 5),
        ("a", 6),
    ]
    .iter()
    .map(|(c, n)| (c.to_string(), format!("{n}-0")))
    .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn pipelined_batches_are_answered_in_order_and_id_waits_for_them() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    // Ten batches sent back to back, each naming the one before as prev.
    for b in 0..10u64 {
        let es: Vec<_> = (b * 100 + 1..=b * 100 + 100)
            .map(|i| entry(&format!("{i}-0"), &["i", &i.to_string()]))
            .collect();
        let prev = format!("{}-0", b * 100);
        ws.send_text(
            json!({"type": "xadds", "id": b, "payload": {"prev": prev, "entries": es}}).to_string(),
        )
        .await;
    }
    ws.send_text(json!({"type": "id", "id": "cursor"}).to_string())
        .await;
    for b in 0..10u64 {
        let r = ws.recv().await;
        assert_eq!(
            (r["type"].as_str(), r["id"].as_u64()),
            (Some("xadds"), Some(b)),
            "{r}"
        );
        assert_eq!(r["payload"]["id"], format!("{}-0", b * 100 + 100));
        assert_eq!(r["payload"]["added"], 100);
    }
    let r = ws.recv().await;
    assert_eq!(r["id"], "cursor");
    assert_eq!(r["payload"]["id"], "1000-0");
    assert_eq!(hub.range(&hub.keys.in_stream()).await.len(), 1000);
}

#[tokio::test]
async fn many_devices_at_once_each_get_exactly_their_entries_in_order() {
    let hub = spawn_hub().await;
    const DEVICES: usize = 20;
    const BATCHES: u64 = 20;
    let mut tasks = Vec::new();
    for d in 0..DEVICES {
        let mut ws = hub.connect(&format!("dev-{d}")).await;
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let es: Vec<_> = (b * 10 + 1..=b * 10 + 10)
                    .map(|i| entry(&format!("{i}-0"), &["d", &d.to_string()]))
                    .collect();
                let prev = format!("{}-0", b * 10);
                ws.send_text(
                    json!({"type": "xadds", "id": b, "payload": {"prev": prev, "entries": es}})
                        .to_string(),
                )
                .await;
            }
            for b in 0..BATCHES {
                let r = ws.recv().await;
                assert_eq!(r["id"].as_u64(), Some(b));
                assert!(r["payload"]["status"].is_null(), "{r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored = hub.range(&hub.keys.in_stream()).await;
    assert_eq!(stored.len(), DEVICES * BATCHES as usize * 10);
    for d in 0..DEVICES {
        let name = format!("dev-{d}");
        let seqs: Vec<&str> = stored
            .iter()
            .filter(|(_, f)| f[1] == name)
            .map(|(_, f)| f[3].as_str())
            .collect();
        let want: Vec<String> = (1..=BATCHES * 10).map(|i| format!("{i}-0")).collect();
        assert_eq!(seqs, want, "{name}");
    }
}

#[tokio::test]
async fn hub_replicas_racing_for_one_device_store_every_seq_once() {
    // Several live connections per device, so they race for as long as the
    // test wants (by default a newer one closes the older ones).
    let racing = |c| lula_hub::Config {
        one_connection_per_device: false,
        ..c
    };
    let hub = common::spawn_hub_with(racing).await;
    let (replica, stop_replica) = hub.spawn_replica_with(racing).await;
    const N: u64 = 2_000;
    let mut tasks = Vec::new();
    for i in 0..4 {
        // Two connections to each hub; all send every entry.
        let addr = if i % 2 == 0 { hub.addr } else { replica };
        let mut ws = hub.connect_to(addr, "dev-1").await;
        tasks.push(tokio::spawn(async move {
            for start in (1..=N).step_by(100) {
                let es: Vec<_> = (start..start + 100)
                    .map(|i| entry(&format!("{i}-0"), &["i", &i.to_string()]))
                    .collect();
                let r = ws.request("xadds", json!({"entries": es})).await;
                assert!(r["status"].is_null(), "{r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop_replica.cancel();
    let stored = hub.range(&hub.keys.in_stream()).await;
    let seqs: Vec<String> = stored.iter().map(|(_, f)| f[3].clone()).collect();
    let want: Vec<String> = (1..=N).map(|i| format!("{i}-0")).collect();
    assert!(seqs == want, "{} stored for {N} sent", seqs.len());
}

#[tokio::test]
async fn a_set_aside_marker_moves_the_cursor_once_and_appends_nothing() {
    let redis = RedisServer::start();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = HubKeys::default();
    let layout = IngestLayout::single(&keys);
    let mut batch = entries("a", 1..4);
    batch[1] = Entry::marker(StreamId::new(2, 0), "entry has 1025 fields");
    let section = Section {
        client: "a".parse().unwrap(),
        prev: None,
        entries: batch,
    };
    let first = ingest::append_many(&mut conn, &layout, 0, vec![section.clone()])
        .await
        .unwrap();
    let Appended::Applied {
        cursor,
        added,
        duplicates,
        set_aside: Some(aside),
        ..
    } = &first[0]
    else {
        panic!("{first:?}");
    };
    assert_eq!((*cursor, *added, *duplicates), (StreamId::new(3, 0), 2, 0));
    assert_eq!((aside.count, aside.last), (1, StreamId::new(2, 0)));
    assert_eq!(aside.reason, "entry has 1025 fields");
    // Sent again (a retry after a lost reply): all duplicates, marker included.
    let again = ingest::append_many(&mut conn, &layout, 0, vec![section])
        .await
        .unwrap();
    assert!(
        matches!(
            &again[0],
            Appended::Applied {
                added: 0,
                duplicates: 3,
                set_aside: None,
                ..
            }
        ),
        "{again:?}"
    );
    let seqs: Vec<String> = in_seqs(&mut conn, &keys.in_stream()).await;
    assert_eq!(seqs, ["1-0", "3-0"]);
    // A marker alone, at the end of a batch, moves the cursor too.
    let alone = Section {
        client: "a".parse().unwrap(),
        prev: Some(StreamId::new(3, 0)),
        entries: vec![Entry::marker(StreamId::new(4, 0), "too big")],
    };
    let r = ingest::append_many(&mut conn, &layout, 0, vec![alone])
        .await
        .unwrap();
    assert!(
        matches!(&r[0], Appended::Applied { cursor, added: 0, .. } if *cursor == StreamId::new(4, 0)),
        "{r:?}"
    );
}

/// The `seq` of every entry of `key`.
async fn in_seqs(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    lula_protocol::redis_value::entries_from_range(v)
        .unwrap()
        .iter()
        .map(|e| String::from_utf8_lossy(&e.fields[3]).into_owned())
        .collect()
}
