//! The hub's wire protocol against a real Redis: authentication at upgrade,
//! lula-compatible requests, batches, exactly-once under concurrency, push,
//! limits and close codes.

mod common;

use std::time::Duration;

use common::{entry, spawn_hub, spawn_hub_with};
use futures_util::SinkExt;
use lula_protocol::message::close;
use lula_protocol::token::Claims;
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test]
async fn healthz_answers_and_unknown_routes_are_json_404() {
    let hub = spawn_hub().await;
    let http = reqwest::Client::new();
    let ok = http
        .get(format!("http://{}/healthz", hub.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let missing = http
        .get(format!("http://{}/nope", hub.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn missing_token_gets_401_before_upgrade() {
    let hub = spawn_hub().await;
    let res = reqwest::get(format!("http://{}/", hub.addr)).await.unwrap();
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    match tokio_tungstenite::connect_async(hub.url()).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
}

fn status_of(r: Result<common::Ws, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(r)) => r.status().as_u16(),
        Ok(_) => 101,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn invalid_expired_revoked_and_forged_tokens_get_401() {
    let hub = spawn_hub().await;
    let kid = hub.kid();
    // garbage
    assert_eq!(status_of(hub.connect_with_token("not.a.token").await), 401);
    // expired
    hub.session("s-exp", "dev-1").await;
    let expired = common::sign_with(hub.signing_key(), &kid, &hub.claims("dev-1", "s-exp", -5));
    assert_eq!(status_of(hub.connect_with_token(&expired).await), 401);
    // revoked: valid signature, session record gone
    let revoked = common::sign_with(
        hub.signing_key(),
        &kid,
        &hub.claims("dev-1", "s-gone", 3600),
    );
    assert_eq!(status_of(hub.connect_with_token(&revoked).await), 401);
    // session belongs to another device
    hub.session("s-other", "dev-2").await;
    let swapped = common::sign_with(
        hub.signing_key(),
        &kid,
        &hub.claims("dev-1", "s-other", 3600),
    );
    assert_eq!(status_of(hub.connect_with_token(&swapped).await), 401);
    // signed by a key nobody published, under the published kid and under its own
    let foreign = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    hub.session("s-f", "dev-1").await;
    let forged = common::sign_with(&foreign, &kid, &hub.claims("dev-1", "s-f", 3600));
    assert_eq!(status_of(hub.connect_with_token(&forged).await), 401);
    let own_kid = lula_protocol::token::kid_for(&foreign.verifying_key().to_bytes());
    let unknown = common::sign_with(&foreign, &own_kid, &hub.claims("dev-1", "s-f", 3600));
    assert_eq!(status_of(hub.connect_with_token(&unknown).await), 401);
    // and a good one is let in, also via ?sessionToken= and ?accessToken=
    let good = hub.token("dev-1").await;
    assert_eq!(status_of(hub.connect_with_token(&good).await), 101);
    for param in ["sessionToken", "accessToken"] {
        let url = format!("{}?{param}={good}", hub.url());
        assert!(
            tokio_tungstenite::connect_async(url).await.is_ok(),
            "{param}"
        );
    }
}

#[tokio::test]
async fn id_is_zero_at_first_and_follows_appends() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    let reply = ws.request("id", json!({})).await;
    assert_eq!(reply["id"], "0-0");
    assert_eq!(reply["maxFrameBytes"], 1 << 20);
    ws.request("xadd", entry("5-1", &["k", "v"])).await;
    assert_eq!(ws.request("id", json!(null)).await["id"], "5-1");
    // a second device has its own cursor
    let mut other = hub.connect("dev-2").await;
    assert_eq!(other.request("id", json!({})).await["id"], "0-0");
}

#[tokio::test]
async fn xadd_appends_client_and_seq_then_the_original_fields_in_order() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    let reply = ws
        .request(
            "xadd",
            entry(
                "1700000000000-0",
                &["topic", "t", "payload", "{\"a\":1}", "z", "last"],
            ),
        )
        .await;
    let hub_id = reply["id"].as_str().unwrap().to_owned();
    let stored = hub.range(&hub.keys.in_stream()).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, hub_id);
    assert_eq!(
        stored[0].1,
        [
            "client",
            "dev-1",
            "seq",
            "1700000000000-0",
            "topic",
            "t",
            "payload",
            "{\"a\":1}",
            "z",
            "last"
        ]
    );
}

#[tokio::test]
async fn duplicate_seq_is_stored_once_and_answered_409_with_the_saved_id() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    assert!(ws.request("xadd", entry("10-0", &["n", "1"])).await["id"].is_string());
    for seq in ["10-0", "9-5", "0-0"] {
        let dup = ws.request("xadd", entry(seq, &["n", "again"])).await;
        assert_eq!(dup["status"], 409, "{seq}");
        assert_eq!(dup["id"], "10-0");
    }
    assert_eq!(hub.range(&hub.keys.in_stream()).await.len(), 1);
}

#[tokio::test]
async fn malformed_frames_get_error_replies_and_the_connection_keeps_serving() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    ws.send_text("this is not json").await;
    let err = ws.recv().await;
    assert_eq!(err["type"], "err");
    assert_eq!(err["payload"]["status"], 400);

    ws.send_text(r#"{"id":"1"}"#).await;
    assert_eq!(ws.recv().await["type"], "err");

    for (kind, payload, status) in [
        ("xadd", json!({"id": "abc", "fields": ["k", "v"]}), 400),
        ("xadd", json!({"id": "1-", "fields": ["k", "v"]}), 400),
        ("xadd", json!({"id": "-1-0", "fields": ["k", "v"]}), 400),
        (
            "xadd",
            json!({"id": "18446744073709551616-0", "fields": ["k", "v"]}),
            400,
        ),
        ("xadd", json!({"id": 5, "fields": ["k", "v"]}), 400),
        ("xadd", json!({"id": "1-0", "fields": ["odd"]}), 400),
        ("xadd", json!({"id": "1-0", "fields": "k=v"}), 400),
        (
            "xadds",
            json!({"entries": [{"id": "2-0", "fields": ["a", "b"]}, {"id": "1-0", "fields": ["a", "b"]}]}),
            400,
        ),
        ("xadds", json!({"entries": "nope"}), 400),
        ("subscribe", json!({"id": "x"}), 400),
        ("nonsense", json!({}), 400),
    ] {
        let reply = ws.request(kind, payload.clone()).await;
        assert_eq!(reply["status"], status, "{kind} {payload}: {reply}");
        assert!(reply["message"].is_string());
    }

    ws.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let err = ws.recv().await;
    assert_eq!(err["type"], "err");
    assert_eq!(err["payload"]["status"], 400);

    // nothing reached Redis, and the socket still serves
    assert!(hub.range(&hub.keys.in_stream()).await.is_empty());
    assert_eq!(
        ws.request("echo", json!({"say": "hi"})).await,
        json!({"say": "hi"})
    );
    assert_eq!(ws.request("id", json!({})).await["id"], "0-0");
}

#[tokio::test]
async fn xadds_reports_added_and_duplicates_and_resumes_from_the_cursor() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    let batch = |from: u64, to: u64| -> Vec<serde_json::Value> {
        (from..=to)
            .map(|i| entry(&format!("{i}-0"), &["i", &i.to_string()]))
            .collect()
    };
    let r = ws
        .request("xadds", json!({"prev": "0-0", "entries": batch(1, 5)}))
        .await;
    assert_eq!(r, json!({"id": "5-0", "added": 5, "duplicates": 0}));
    // overlap: 4 and 5 again, then 6..8
    let r = ws
        .request("xadds", json!({"prev": "3-0", "entries": batch(4, 8)}))
        .await;
    assert_eq!(r, json!({"id": "8-0", "added": 3, "duplicates": 2}));
    let r = ws.request("xadds", json!({"entries": batch(1, 8)})).await;
    assert_eq!(r, json!({"id": "8-0", "added": 0, "duplicates": 8}));
    let seqs: Vec<String> = hub
        .range(&hub.keys.in_stream())
        .await
        .into_iter()
        .map(|(_, f)| f[3].clone())
        .collect();
    assert_eq!(seqs, (1..=8).map(|i| format!("{i}-0")).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_batch_after_a_gap_is_refused_and_writes_nothing() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    ws.request(
        "xadds",
        json!({"prev": "0-0", "entries": [entry("1-0", &["a", "1"])]}),
    )
    .await;
    // the client believes 2-0 was applied; the hub only holds 1-0
    let r = ws
        .request(
            "xadds",
            json!({"prev": "2-0", "entries": [entry("3-0", &["a", "3"])]}),
        )
        .await;
    assert_eq!(r["status"], 409);
    assert_eq!(r["id"], "1-0");
    assert_eq!(hub.range(&hub.keys.in_stream()).await.len(), 1);
}

#[tokio::test]
async fn binary_values_and_reserved_names_survive_ingest() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let e = json!({"id": "1-0", "fields64": [b64(b"bin"), b64(&[0, 255, 1]), b64(b"client"), b64(b"spoofed")]});
    ws.request("xadds", json!({"entries": [e]})).await;
    ws.request("xadd", entry("2-0", &["seq", "mine", "k", "v"]))
        .await;
    let mut c = hub.redis().await;
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(hub.keys.in_stream())
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let entries = lula_protocol::redis_value::entries_from_range(v).unwrap();
    assert_eq!(
        entries[0].fields,
        vec![
            b"client".to_vec(),
            b"dev-1".to_vec(),
            b"seq".to_vec(),
            b"1-0".to_vec(),
            b"bin".to_vec(),
            vec![0, 255, 1],
            b"_client".to_vec(),
            b"spoofed".to_vec()
        ]
    );
    assert_eq!(entries[1].fields[4], b"_seq");
}

#[tokio::test]
async fn concurrent_connections_of_one_device_never_duplicate() {
    // Several live connections per device, so they race for as long as the
    // test wants (by default a newer one closes the older ones).
    let hub = spawn_hub_with(|c| lula_hub::Config {
        one_connection_per_device: false,
        ..c
    })
    .await;
    const N: u64 = 3_000;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut ws = hub.connect("dev-1").await;
        tasks.push(tokio::spawn(async move {
            // every connection sends every entry, in batches of 100, racing the others
            for start in (1..=N).step_by(100) {
                let entries: Vec<_> = (start..start + 100)
                    .map(|i| entry(&format!("{i}-0"), &["i", &i.to_string()]))
                    .collect();
                let r = ws.request("xadds", json!({"entries": entries})).await;
                assert!(r["status"].is_null(), "{r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored = hub.range(&hub.keys.in_stream()).await;
    let seqs: Vec<String> = stored.iter().map(|(_, f)| f[3].clone()).collect();
    let want: Vec<String> = (1..=N).map(|i| format!("{i}-0")).collect();
    let first_diff = seqs.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        seqs == want,
        "{} stored for {N} sent; first difference at index {first_diff:?}",
        seqs.len()
    );
}

#[tokio::test]
async fn oversized_frames_close_with_1009_and_other_devices_keep_syncing() {
    let hub = spawn_hub_with(|c| lula_hub::Config {
        max_frame_bytes: 4096,
        ..c
    })
    .await;
    let mut big = hub.connect("dev-big").await;
    let mut other = hub.connect("dev-ok").await;
    let huge = "x".repeat(10_000);
    big.send_text(
        json!({"type": "xadd", "id": "1", "payload": entry("1-0", &["k", &huge])}).to_string(),
    )
    .await;
    assert_eq!(big.closed().await, Some(close::TOO_BIG));
    assert!(other.request("xadd", entry("1-0", &["k", "v"])).await["id"].is_string());
    let stored = hub.range(&hub.keys.in_stream()).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].1[1], "dev-ok");
}

#[tokio::test]
async fn subscribe_pushes_the_out_stream_in_order_within_the_ack_window() {
    let hub = spawn_hub().await;
    let client: lula_protocol::ClientId = "dev-1".parse().unwrap();
    let out = hub.keys.out_stream(&client);
    let mut c = hub.redis().await;
    let window = lula_protocol::limits::PUSH_WINDOW_ENTRIES;
    let total = window + 500;
    for i in 0..total {
        let _: String = redis::cmd("XADD")
            .arg(&out)
            .arg("*")
            .arg("n")
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let mut ws = hub.connect("dev-1").await;
    let r = ws.request("subscribe", json!({"id": "0-0"})).await;
    assert_eq!(r["id"], "0-0");
    let mut got: Vec<(String, String)> = Vec::new();
    // without acks the hub stops at the window
    while got.len() < window {
        let push = ws.recv().await;
        assert_eq!(push["type"], "push");
        if got.is_empty() {
            // The first push says how much more waits after it.
            let n = push["payload"]["entries"].as_array().unwrap().len();
            assert_eq!(push["payload"]["backlog"], json!(total - n), "{push}");
        }
        for e in push["payload"]["entries"].as_array().unwrap() {
            got.push((
                e["id"].as_str().unwrap().into(),
                e["fields"][1].as_str().unwrap().into(),
            ));
        }
    }
    assert_eq!(got.len(), window);
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.recv()).await;
    assert!(quiet.is_err(), "pushed past the window without acks");
    // ack everything so far, the rest follows
    let last = got.last().unwrap().0.clone();
    ws.send_text(json!({"type": "ack", "payload": {"id": last}}).to_string())
        .await;
    while got.len() < total {
        let push = ws.recv().await;
        for e in push["payload"]["entries"].as_array().unwrap() {
            got.push((
                e["id"].as_str().unwrap().into(),
                e["fields"][1].as_str().unwrap().into(),
            ));
        }
    }
    let ns: Vec<String> = got.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(ns, (0..total).map(|i| i.to_string()).collect::<Vec<_>>());
    // a new entry arrives live
    let _: String = redis::cmd("XADD")
        .arg(&out)
        .arg("*")
        .arg("n")
        .arg("live")
        .query_async(&mut c)
        .await
        .unwrap();
    ws.send_text(json!({"type": "ack", "payload": {"id": got.last().unwrap().0}}).to_string())
        .await;
    let push = loop {
        let push = ws.recv().await;
        if push["payload"]["entries"].as_array().unwrap().is_empty() {
            // The drained backlog, reported on its own.
            assert_eq!(push["payload"]["backlog"], 0, "{push}");
            continue;
        }
        break push;
    };
    assert_eq!(push["payload"]["entries"][0]["fields"][1], "live");
    // Caught up: nothing waits after it.
    assert_eq!(push["payload"]["backlog"], 0, "{push}");
}

#[tokio::test]
async fn legacy_xread_returns_items_and_blocks_until_one_arrives() {
    let hub = spawn_hub().await;
    let client: lula_protocol::ClientId = "dev-1".parse().unwrap();
    let out = hub.keys.out_stream(&client);
    let mut c = hub.redis().await;
    let first: String = redis::cmd("XADD")
        .arg(&out)
        .arg("*")
        .arg("topic")
        .arg("a")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut ws = hub.connect("dev-1").await;
    let r = ws.request("xread", json!({"id": "0-0"})).await;
    assert_eq!(r["items"], json!([{"topic": "a", "id": first}]));
    // a blocking read waits for the next entry, while the same socket keeps answering
    ws.send_text(
        json!({"type": "xread", "id": "blk", "payload": {"id": first, "blockTimeout": 5000}})
            .to_string(),
    )
    .await;
    assert_eq!(
        ws.request("echo", json!({"still": "here"})).await,
        json!({"still": "here"})
    );
    let second: String = redis::cmd("XADD")
        .arg(&out)
        .arg("*")
        .arg("topic")
        .arg("b")
        .query_async(&mut c)
        .await
        .unwrap();
    let reply = ws.recv().await;
    assert_eq!(reply["id"], "blk");
    assert_eq!(
        reply["payload"]["items"],
        json!([{"topic": "b", "id": second}])
    );
    // nothing new: an empty list after the block
    let r = ws
        .request("xread", json!({"id": second, "blockTimeout": 50}))
        .await;
    assert_eq!(r["items"], json!([]));
}

#[tokio::test]
async fn shutdown_closes_connections_with_going_away() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    ws.request("id", json!({})).await;
    hub.shutdown.cancel();
    assert_eq!(ws.closed().await, Some(close::GOING_AWAY));
    hub.task.await.unwrap().unwrap();
}

/// Reads `INFO clients` fields of the hub's Redis.
async fn redis_clients(hub: &common::TestHub) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut hub.redis().await)
        .await
        .unwrap();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    (field("connected_clients"), field("blocked_clients"))
}

async fn xadd_out(hub: &common::TestHub, client: &str, n: &str) -> String {
    let client: lula_protocol::ClientId = client.parse().unwrap();
    redis::cmd("XADD")
        .arg(hub.keys.out_stream(&client))
        .arg("*")
        .arg("n")
        .arg(n)
        .query_async(&mut hub.redis().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn subscribed_devices_hold_no_redis_connection_of_their_own() {
    let hub = spawn_hub().await;
    let mut devices = Vec::new();
    for i in 0..30 {
        let mut ws = hub.connect(&format!("dev-{i}")).await;
        ws.request("subscribe", json!({"id": "0-0"})).await;
        devices.push(ws);
    }
    let (connected, blocked) = redis_clients(&hub).await;
    // The hub's shared connection, its pub/sub watcher and this test's own.
    assert!(
        connected <= 5,
        "{connected} Redis connections for 30 devices"
    );
    assert_eq!(blocked, 0, "a device holds a blocking read");
    // And each of them still gets its own messages, live.
    for i in [0, 17, 29] {
        let id = xadd_out(&hub, &format!("dev-{i}"), &format!("to-{i}")).await;
        let push = devices[i].recv().await;
        assert_eq!(push["type"], "push");
        assert_eq!(push["payload"]["entries"][0]["id"], id.as_str());
        assert_eq!(
            push["payload"]["entries"][0]["fields"][1],
            format!("to-{i}")
        );
    }
}

#[tokio::test]
async fn without_keyspace_notifications_the_hub_polls_and_still_delivers() {
    // A managed Redis that refuses CONFIG: the hub cannot enable notifications.
    let redis = lula_testkit::RedisServer::start_with(lula_testkit::RedisOptions {
        extra_args: vec!["--rename-command".into(), "CONFIG".into(), "".into()],
        ..Default::default()
    });
    let hub = common::spawn_hub_on(redis, |mut c| {
        c.downstream_poll = Duration::from_millis(100);
        c
    })
    .await;
    let mut ws = hub.connect("dev-1").await;
    ws.request("subscribe", json!({"id": "0-0"})).await;
    // Sweeps (every 100 ms here) check the watcher's pub/sub connection with a
    // PING; a healthy one must not be replaced each time.
    let connections = || async {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut hub.redis().await)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap()
    };
    let before = connections().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = connections().await;
    assert!(
        after <= before + 1,
        "{} new Redis connections in 1 s",
        after - before
    );
    let id = xadd_out(&hub, "dev-1", "polled").await;
    let push = ws.recv().await;
    assert_eq!(push["payload"]["entries"][0]["id"], id.as_str());
    // The lula xread with a block is served the same way.
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        xadd_out(&hub, "dev-1", "second").await;
        hub
    });
    let r = ws
        .request("xread", json!({"id": id, "blockTimeout": 10_000}))
        .await;
    assert_eq!(r["items"][0]["n"], "second");
    later.await.unwrap();
}

#[tokio::test]
async fn readyz_follows_redis_and_healthz_stays_up() {
    let mut hub = spawn_hub_with(|mut c| {
        c.redis_timeout = Duration::from_millis(500);
        c
    })
    .await;
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let (http, addr) = (http.clone(), hub.admin);
        async move {
            http.get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(get("/readyz").await.status(), 200);
    hub.redis.kill();
    let down = get("/readyz").await;
    assert_eq!(down.status(), 503);
    let body: serde_json::Value = down.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(get("/healthz").await.status(), 200);
    hub.redis.restart();
    lula_testkit::eventually("readyz to recover", Duration::from_secs(30), || async {
        (get("/readyz").await.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_expired_session_closes_its_socket_with_4001() {
    // The hub's clock stands still, so the token has 2 s left at the upgrade
    // however long connecting takes; the socket closes when they run out.
    let t0 = common::now();
    let hub = spawn_hub_with(|c| lula_hub::Config {
        clock: common::frozen_clock(t0),
        ..c
    })
    .await;
    hub.session("s-short", "dev-1").await;
    let claims = Claims {
        exp: t0 + 2,
        ..hub.claims("dev-1", "s-short", 0)
    };
    let token = common::sign_with(hub.signing_key(), &hub.kid(), &claims);
    let mut ws = hub.connect_with_token(&token).await.unwrap();
    assert_eq!(ws.closed().await, Some(close::SESSION_EXPIRED));
}

#[tokio::test]
async fn the_hub_judges_token_expiry_by_its_own_clock() {
    // The hub's clock reads 100 s ago: a token that ran out 10 s ago by the
    // wall clock is still good by the hub's, one that ran out before the
    // hub's now is not.
    let then = common::now() - 100;
    let hub = spawn_hub_with(|c| lula_hub::Config {
        clock: common::frozen_clock(then),
        ..c
    })
    .await;
    hub.session("s-1", "dev-1").await;
    let token = |exp| {
        let claims = Claims {
            exp,
            ..hub.claims("dev-1", "s-1", 0)
        };
        common::sign_with(hub.signing_key(), &hub.kid(), &claims)
    };
    let mut ws = hub.connect_with_token(&token(then + 90)).await.unwrap();
    let r = ws.request("echo", json!({"ok": 1})).await;
    assert_eq!(r["ok"], 1);
    let refused = hub.connect_with_token(&token(then - 1)).await;
    assert_eq!(common::status_of(refused), 401);
}

#[tokio::test]
async fn renew_moves_a_live_connection_to_a_new_token() {
    // The hub's clock stands still at t0: the connection's first token is
    // good for an hour, the renewed one for 2 s by that clock, so the socket
    // closing as expired proves the renewed token now sets its end (no
    // request races a short token's window).
    let t0 = common::now();
    let hub = spawn_hub_with(|c| lula_hub::Config {
        clock: common::frozen_clock(t0),
        ..c
    })
    .await;
    let mut ws = hub.connect("dev-1").await;
    // Another device's token is refused, and the connection goes on.
    let foreign = hub.token("dev-2").await;
    let r = ws.request("renew", json!({"token": foreign})).await;
    assert_eq!(r["status"], 401);
    let r = ws.request("renew", json!({"token": "garbage"})).await;
    assert_eq!(r["status"], 401);
    let r = ws.request("echo", json!({"still": "here"})).await;
    assert_eq!(r["still"], "here");
    // A fresh token of the same device replaces the hour-long one.
    hub.session("s-renewed", "dev-1").await;
    let claims = Claims {
        exp: t0 + 2,
        ..hub.claims("dev-1", "s-renewed", 0)
    };
    let renewed = common::sign_with(hub.signing_key(), &hub.kid(), &claims);
    let r = ws.request("renew", json!({"token": renewed})).await;
    assert_eq!(r["exp"].as_u64(), Some(t0 + 2), "{r}");
    assert_eq!(ws.closed().await, Some(close::SESSION_EXPIRED));
}

#[tokio::test]
async fn revocations_close_the_sockets_of_that_device_on_every_replica() {
    // Two live connections of one device (one per replica) to revoke at once.
    let racing = |c| lula_hub::Config {
        one_connection_per_device: false,
        ..c
    };
    let hub = spawn_hub_with(racing).await;
    let (replica, _stop) = hub.spawn_replica_with(racing).await;
    let mut a = hub.connect_to(hub.addr, "dev-1").await;
    let mut b = hub.connect_to(replica, "dev-1").await;
    let mut other = hub.connect_to(replica, "dev-2").await;
    // Each connection is registered once its first request is answered.
    for ws in [&mut a, &mut b, &mut other] {
        ws.request("id", json!({})).await;
    }
    // Announce until heard: a replica's watcher subscribes when it starts,
    // which a test cannot see.
    let (mut conn, channel) = (hub.redis().await, hub.auth_keys.revocations());
    let announcer = tokio::spawn(async move {
        loop {
            let _: u64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg("dev-1")
                .query_async(&mut conn)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert_eq!(a.closed().await, Some(close::SESSION_REVOKED));
    assert_eq!(b.closed().await, Some(close::SESSION_REVOKED));
    let r = other.request("echo", json!({"ok": 1})).await;
    assert_eq!(r["ok"], 1);
    announcer.abort();
}

#[tokio::test]
async fn a_newer_connection_of_a_device_closes_the_older_on_every_replica() {
    let hub = spawn_hub().await;
    let (replica, _stop) = hub.spawn_replica().await;
    let mut first = hub.connect_to(hub.addr, "dev-1").await;
    first.request("id", json!({})).await;
    let mut other = hub.connect_to(hub.addr, "dev-2").await;
    other.request("id", json!({})).await;
    // The device comes back through another replica: the old socket goes
    // (the replica announces it; this hub's watcher hears it).
    let mut second = hub.connect_to(replica, "dev-1").await;
    second.request("id", json!({})).await;
    assert_eq!(first.closed().await, Some(close::REPLACED));
    let r = second.request("echo", json!({"n": 1})).await;
    assert_eq!(r["n"], 1);
    // On one hub too, at once.
    let mut third = hub.connect_to(replica, "dev-1").await;
    third.request("id", json!({})).await;
    assert_eq!(second.closed().await, Some(close::REPLACED));
    let r = other.request("echo", json!({"n": 2})).await;
    assert_eq!(r["n"], 2);
}

#[tokio::test]
async fn broadcasts_go_only_to_devices_that_ask_with_a_window_and_acks_of_their_own() {
    let hub = spawn_hub().await;
    let mut c = hub.redis().await;
    let broadcast = hub.keys.broadcast_stream();
    let window = lula_protocol::limits::PUSH_WINDOW_ENTRIES;
    let total = window + 100;
    for i in 0..total {
        let _: String = redis::cmd("XADD")
            .arg(&broadcast)
            .arg("*")
            .arg("n")
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let old: lula_protocol::ClientId = "dev-old".parse().unwrap();
    let direct: String = redis::cmd("XADD")
        .arg(hub.keys.out_stream(&old))
        .arg("*")
        .arg("n")
        .arg("direct")
        .query_async(&mut c)
        .await
        .unwrap();

    // A client that does not name a broadcast cursor (as before broadcasts)
    // gets its direct message, unmarked, and no broadcast.
    let mut ws = hub.connect("dev-old").await;
    let r = ws.request("subscribe", json!({"id": "0-0"})).await;
    assert_eq!(r, json!({"id": "0-0"}));
    let push = ws.recv().await;
    assert_eq!(push["type"], "push");
    assert_eq!(push["payload"]["entries"][0]["id"], direct.as_str());
    assert!(push["payload"].get("stream").is_none(), "{push}");
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.recv()).await;
    assert!(
        quiet.is_err(),
        "broadcast pushed to a client that did not ask"
    );

    // One that does gets them marked, up to the window.
    let mut ws = hub.connect("dev-new").await;
    let r = ws
        .request("subscribe", json!({"id": "0-0", "broadcastAfter": "0-0"}))
        .await;
    assert_eq!(r["broadcastAfter"], "0-0");
    let mut got: Vec<(String, String)> = Vec::new();
    let recv_broadcasts = async |ws: &mut common::Ws, got: &mut Vec<(String, String)>, n| {
        while got.len() < n {
            let push = ws.recv().await;
            assert_eq!(push["type"], "push");
            assert_eq!(push["payload"]["stream"], "broadcast", "{push}");
            for e in push["payload"]["entries"].as_array().unwrap() {
                got.push((
                    e["id"].as_str().unwrap().into(),
                    e["fields"][1].as_str().unwrap().into(),
                ));
            }
        }
    };
    recv_broadcasts(&mut ws, &mut got, window).await;
    assert_eq!(got.len(), window);
    // An ack of the direct stream does not open the broadcast window...
    let last = got.last().unwrap().0.clone();
    ws.send_text(json!({"type": "ack", "payload": {"id": last}}).to_string())
        .await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.recv()).await;
    assert!(
        quiet.is_err(),
        "pushed past the window without broadcast acks"
    );
    // ...an ack of the broadcast stream does.
    ws.send_text(
        json!({"type": "ack", "payload": {"id": last, "stream": "broadcast"}}).to_string(),
    )
    .await;
    recv_broadcasts(&mut ws, &mut got, total).await;
    let ns: Vec<String> = got.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(ns, (0..total).map(|i| i.to_string()).collect::<Vec<_>>());
    // Nothing was copied into per-device streams.
    let new: lula_protocol::ClientId = "dev-new".parse().unwrap();
    let exists: u64 = redis::cmd("EXISTS")
        .arg(hub.keys.out_stream(&new))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

/// Pushes of one `subscribe` until `n` entries came, flattened.
async fn pushed_entries(ws: &mut common::Ws, n: usize) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let push = ws.recv().await;
        assert_eq!(push["type"], "push", "{push}");
        got.extend(
            push["payload"]["entries"]
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
    }
    got
}

#[tokio::test]
async fn a_wide_message_is_set_aside_only_for_devices_that_take_markers() {
    let hub = spawn_hub().await;
    let client: lula_protocol::ClientId = "dev-1".parse().unwrap();
    let mut c = hub.redis().await;
    let mut xadd = redis::cmd("XADD");
    xadd.arg(hub.keys.out_stream(&client)).arg("*");
    for i in 0..lula_protocol::limits::MAX_ENTRY_VALUES / 2 + 1 {
        xadd.arg("k").arg(i);
    }
    let wide: String = xadd.query_async(&mut c).await.unwrap();
    // A client that did not say it takes markers (the Node lula-client, an
    // older lula-client) gets the entry as it is, as before.
    let mut ws = hub.connect("dev-1").await;
    ws.request("subscribe", json!({"id": "0-0"})).await;
    let got = pushed_entries(&mut ws, 1).await;
    assert_eq!(got[0]["id"], json!(wide));
    assert_eq!(got[0]["fields"].as_array().unwrap().len(), 2_050);
    let dead: u64 = redis::cmd("XLEN")
        .arg(hub.keys.dead_stream())
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    // One that did gets a marker, and the entry is in the dead letters.
    let r = ws
        .request("subscribe", json!({"id": "0-0", "setAside": true}))
        .await;
    assert_eq!(r["id"], "0-0");
    let got = pushed_entries(&mut ws, 1).await;
    assert_eq!(
        got[0],
        json!({"id": wide, "setAside": "entry has 1025 fields, more than the limit of 1024"})
    );
    let dead: u64 = redis::cmd("XLEN")
        .arg(hub.keys.dead_stream())
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(dead, 1);
    // And the id reply says the hub takes markers upstream.
    let id = ws.request("id", json!({})).await;
    assert_eq!(id["setAside"], json!(true));
    assert_eq!(id["maxEntryValues"], json!(2048));
}
