//! lula-hub on a Redis Cluster (three masters, made by the test from local
//! redis-server processes): partitioned ingest spread over the masters and
//! still exactly once across replicas, one connection per device and
//! revocation through cluster-wide pub/sub, and downstream pushes woken by
//! each master's keyspace notifications.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use common::{Ws, entry, now, sign_with};
use ed25519_dalek::SigningKey;
use lula_hub::Config;
use lula_protocol::keys::{AuthKeys, HubKeys, IngestLayout, partition};
use lula_protocol::message::close;
use lula_protocol::token::{AUDIENCE, Claims, ISSUER, encode_public_key, kid_for};
use lula_runtime::redis::{RedisConn, RedisTarget};
use lula_testkit::RedisCluster;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// Hubs on one cluster, and what the test needs to mint their tokens.
struct ClusterHubs {
    cluster: RedisCluster,
    conn: RedisConn,
    hubs: Vec<(SocketAddr, CancellationToken)>,
    auth_keys: AuthKeys,
    signing: SigningKey,
}

impl ClusterHubs {
    /// `n` hubs with `--redis-cluster` and `configure` applied, on a fresh
    /// three-master cluster.
    async fn start(n: usize, configure: impl Fn(Config) -> Config) -> Self {
        let cluster = RedisCluster::start(3);
        let mut target = RedisTarget::new(cluster.url(), true);
        target.timeout = Duration::from_secs(30);
        let mut conn = target.connect().await.unwrap();
        let signing = SigningKey::from_bytes(&rand::random());
        let pk = signing.verifying_key().to_bytes();
        let auth_keys = AuthKeys::default();
        let () = redis::cmd("SET")
            .arg(auth_keys.verify_key(&kid_for(&pk)))
            .arg(encode_public_key(&pk))
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut hubs = Vec::new();
        for _ in 0..n {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let shutdown = CancellationToken::new();
            let config = configure(Config {
                redis_cluster: true,
                ..Config::new(cluster.url())
            });
            tokio::spawn(lula_hub::run(listener, config, shutdown.clone()));
            hubs.push((addr, shutdown));
        }
        for (addr, _) in &hubs {
            let addr = *addr;
            lula_testkit::eventually("a hub ready", Duration::from_secs(30), || async move {
                let res = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
                res.status().is_success().then_some(())
            })
            .await;
        }
        ClusterHubs {
            cluster,
            conn,
            hubs,
            auth_keys,
            signing,
        }
    }

    /// A token of `client` with a live session `sid`.
    async fn token(&self, client: &str, sid: &str) -> String {
        let () = redis::cmd("SET")
            .arg(self.auth_keys.session(sid))
            .arg(client)
            .arg("EX")
            .arg(3600)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        let claims = Claims {
            sub: client.parse().unwrap(),
            sid: sid.to_owned(),
            iat: now(),
            exp: now() + 3600,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        };
        let kid = kid_for(&self.signing.verifying_key().to_bytes());
        sign_with(&self.signing, &kid, &claims)
    }

    /// Connects `client` (session `sid`) to hub `i`.
    async fn connect(&self, i: usize, client: &str, sid: &str) -> Ws {
        let token = self.token(client, sid).await;
        let mut req = format!("ws://{}/", self.hubs[i].0)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Ws::from(ws)
    }

    /// Every entry of `key` as (client, seq) pairs.
    async fn stored(&self, key: &str) -> Vec<(String, String)> {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        lula_protocol::redis_value::entries_from_range(v)
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.fields[1]).into_owned(),
                    String::from_utf8_lossy(&e.fields[3]).into_owned(),
                )
            })
            .collect()
    }
}

fn batch(from: u64, to: u64) -> serde_json::Value {
    let entries: Vec<_> = (from..to)
        .map(|i| entry(&format!("{i}-0"), &["n", &i.to_string()]))
        .collect();
    json!(entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_ingest_spreads_over_the_masters_and_stays_exactly_once() {
    const PARTITIONS: u32 = 4;
    // Several connections per device, so two replicas race with the same entries.
    let hubs = ClusterHubs::start(2, |c| Config {
        ingest_partitions: PARTITIONS,
        one_connection_per_device: false,
        ..c
    })
    .await;
    let layout = IngestLayout::new(&HubKeys::default(), PARTITIONS, true);
    const DEVICES: usize = 12;
    const ENTRIES: u64 = 300;
    let mut tasks = Vec::new();
    for d in 0..DEVICES {
        let client = format!("dev-{d}");
        for hub in 0..2 {
            let mut ws = hubs.connect(hub, &client, &format!("s-{d}-{hub}")).await;
            tasks.push(tokio::spawn(async move {
                // Both replicas get every entry of the device, in batches of 50.
                for start in (1..=ENTRIES).step_by(50) {
                    let r = ws
                        .request("xadds", json!({"entries": batch(start, start + 50)}))
                        .await;
                    assert!(r["status"].is_null(), "{r}");
                }
                let r = ws.request("id", json!({})).await;
                assert_eq!(r["id"], json!(format!("{ENTRIES}-0")));
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Each device's entries are in its partition's stream, once each, in order.
    let mut by_partition: HashMap<u32, Vec<String>> = HashMap::new();
    for d in 0..DEVICES {
        let client = format!("dev-{d}");
        by_partition
            .entry(partition(&client.parse().unwrap(), PARTITIONS))
            .or_default()
            .push(client);
    }
    let want: Vec<String> = (1..=ENTRIES).map(|i| format!("{i}-0")).collect();
    let mut holders = BTreeSet::new();
    for p in 0..PARTITIONS {
        let stream = layout.in_stream(p);
        assert_eq!(stream, format!("lula-hub:in:{{{p}}}:x"));
        let stored = hubs.stored(&stream).await;
        let clients = by_partition.get(&p).cloned().unwrap_or_default();
        assert_eq!(stored.len(), clients.len() * ENTRIES as usize, "{stream}");
        for client in &clients {
            let seqs: Vec<String> = stored
                .iter()
                .filter(|(c, _)| c == client)
                .map(|(_, s)| s.clone())
                .collect();
            assert_eq!(seqs, want, "{client} in {stream}");
            let cursor: Option<String> = redis::cmd("HGET")
                .arg(layout.cursors(p))
                .arg(client)
                .query_async(&mut hubs.conn.clone())
                .await
                .unwrap();
            assert_eq!(cursor, Some(format!("{ENTRIES}-0")));
        }
        if !clients.is_empty() {
            let nodes = hubs.cluster.holders(&stream);
            assert_eq!(nodes.len(), 1, "{stream} on one node");
            holders.insert(nodes[0]);
            assert_eq!(hubs.cluster.holders(&layout.cursors(p)), nodes);
        }
    }
    assert!(
        holders.len() >= 2,
        "the partitions live on {holders:?}, not spread over the masters"
    );
    let recorded: Option<String> = redis::cmd("GET")
        .arg(HubKeys::default().ingest_layout())
        .query_async(&mut hubs.conn.clone())
        .await
        .unwrap();
    assert_eq!(recorded, Some(layout.description()));

    // A hub started with another partition count refuses to ingest (and is
    // not ready), instead of taking devices' entries again.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(lula_hub::run(
        listener,
        Config {
            redis_cluster: true,
            ..Config::new(hubs.cluster.url())
        },
        shutdown.clone(),
    ));
    let status =
        lula_testkit::eventually("the odd hub to answer", Duration::from_secs(30), || async {
            let res = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
            Some(res.status().as_u16())
        })
        .await;
    assert_eq!(status, 503);
    let token = hubs.token("dev-0", "s-odd").await;
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut ws = Ws::from(tokio_tungstenite::connect_async(req).await.unwrap().0);
    let r = ws
        .request("xadds", json!({"entries": batch(ENTRIES + 1, ENTRIES + 2)}))
        .await;
    assert_eq!(r["status"], json!(503), "{r}");
    shutdown.cancel();
    for p in 0..PARTITIONS {
        let n = hubs.stored(&layout.in_stream(p)).await.len();
        let clients = by_partition.get(&p).map(Vec::len).unwrap_or(0);
        assert_eq!(n, clients * ENTRIES as usize);
    }
    for (_, stop) in &hubs.hubs {
        stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_per_device_and_revocation_reach_every_hub_of_a_cluster() {
    let hubs = ClusterHubs::start(2, |c| c).await;
    // Devices whose keys land on different masters.
    for d in 0..3 {
        let client = format!("dev-{d}");
        let mut first = hubs.connect(0, &client, &format!("a-{d}")).await;
        assert!(first.request("echo", json!({})).await.is_object());
        // A newer connection on the other replica closes the older one.
        let mut second = hubs.connect(1, &client, &format!("b-{d}")).await;
        assert!(second.request("echo", json!({})).await.is_object());
        assert_eq!(first.closed().await, Some(close::REPLACED));

        // Revoked as lula-auth does it: the session goes, then the announcement.
        let mut conn = hubs.conn.clone();
        let () = redis::cmd("DEL")
            .arg(hubs.auth_keys.session(&format!("b-{d}")))
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(hubs.auth_keys.revocations())
            .arg(format!("{client} b-{d}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(second.closed().await, Some(close::SESSION_REVOKED));
    }
    for (_, stop) in &hubs.hubs {
        stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_woken_by_the_keyspace_notifications_of_every_master() {
    // Polling so slow that only notifications can deliver within the test.
    let hubs = ClusterHubs::start(1, |c| Config {
        downstream_poll: Duration::from_secs(3600),
        ..c
    })
    .await;
    let keys = HubKeys::default();
    let mut devices = Vec::new();
    for d in 0..9 {
        let client = format!("dev-{d}");
        let mut ws = hubs.connect(0, &client, &format!("s-{d}")).await;
        let r = ws.request("subscribe", json!({"id": "0-0"})).await;
        assert_eq!(r["id"], "0-0");
        devices.push((client, ws));
    }
    // Let the subscribe-time reads pass, so what follows is woken by
    // notifications, not by the first read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut nodes = BTreeSet::new();
    for (client, ws) in &mut devices {
        let out = keys.out_stream(&client.parse().unwrap());
        let id: String = redis::cmd("XADD")
            .arg(&out)
            .arg("*")
            .arg("cmd")
            .arg("hello")
            .query_async(&mut hubs.conn.clone())
            .await
            .unwrap();
        nodes.extend(hubs.cluster.holders(&out));
        // Ws::recv gives up after 10 s; the safety sweep is 30 s away.
        let push = ws.recv().await;
        assert_eq!(push["type"], "push", "{push}");
        assert_eq!(push["payload"]["entries"][0]["id"], json!(id));
    }
    assert_eq!(
        nodes.len(),
        3,
        "the out streams should live on every master: {nodes:?}"
    );
    for (_, stop) in &hubs.hubs {
        stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lula_hub_fleet_reads_the_fleet_from_a_cluster() {
    let hubs = ClusterHubs::start(2, |c| Config {
        ingest_partitions: 3,
        ..c
    })
    .await;
    let mut devices = Vec::new();
    for d in 0..4 {
        let mut ws = hubs
            .connect(d % 2, &format!("dev-{d}"), &format!("s-{d}"))
            .await;
        let r = ws
            .request(
                "xadds",
                json!({"prev": "0-0", "entries": [entry(&format!("{}-0", d + 1), &["k", "v"])]}),
            )
            .await;
        assert_eq!(r["added"], 1, "{r}");
        devices.push(ws);
    }
    let fleet = lula_testkit::eventually(
        "every device in the fleet",
        Duration::from_secs(60),
        || async {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_lula-hub"))
                .args([
                    "fleet",
                    "--redis-cluster",
                    "--ingest-partitions",
                    "3",
                    "--json",
                ])
                .args(["--redis-url", &hubs.cluster.url()])
                .output()
                .expect("run lula-hub fleet");
            assert!(out.status.success(), "{out:?}");
            let fleet: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            (fleet["devices"].as_array()?.len() == 4).then_some(fleet)
        },
    )
    .await;
    for d in fleet["devices"].as_array().unwrap() {
        let n: u64 = d["client"].as_str().unwrap()[4..].parse().unwrap();
        assert_eq!(d["state"], "connected", "{d}");
        // Each device's cursor, from the partition it hashes to.
        assert_eq!(d["upstreamCursor"], format!("{}-0", n + 1), "{d}");
        let port = hubs.hubs[n as usize % 2].0.port();
        assert!(
            d["hub"].as_str().unwrap().ends_with(&format!(":{port}")),
            "{d}"
        );
    }
    for (_, stop) in &hubs.hubs {
        stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_devices_on_every_hub_of_a_cluster_by_notification() {
    // Polling so slow that only notifications can deliver within the test.
    let hubs = ClusterHubs::start(2, |c| Config {
        downstream_poll: Duration::from_secs(3600),
        ..c
    })
    .await;
    let keys = HubKeys::default();
    let mut devices = Vec::new();
    for d in 0..4 {
        let mut ws = hubs
            .connect(d % 2, &format!("dev-{d}"), &format!("s-{d}"))
            .await;
        let r = ws
            .request("subscribe", json!({"id": "0-0", "broadcastAfter": "0-0"}))
            .await;
        assert_eq!(r["broadcastAfter"], "0-0", "{r}");
        devices.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent = Vec::new();
    for i in 0..3 {
        let id: String = redis::cmd("XADD")
            .arg(keys.broadcast_stream())
            .arg("*")
            .arg("n")
            .arg(i)
            .query_async(&mut hubs.conn.clone())
            .await
            .unwrap();
        sent.push(json!(id));
    }
    for ws in &mut devices {
        let mut got = Vec::new();
        while got.len() < sent.len() {
            // Ws::recv gives up after 10 s; the safety sweep is 30 s away.
            let push = ws.recv().await;
            assert_eq!(push["type"], "push", "{push}");
            assert_eq!(push["payload"]["stream"], "broadcast", "{push}");
            for e in push["payload"]["entries"].as_array().unwrap() {
                got.push(e["id"].clone());
            }
        }
        assert_eq!(got, sent);
    }
    // One stream for the fleet, no copies per device.
    let mut conn = hubs.conn.clone();
    for d in 0..4 {
        let out = keys.out_stream(&format!("dev-{d}").parse().unwrap());
        let exists: bool = redis::cmd("EXISTS")
            .arg(&out)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists, "{out} was created");
    }
    for (_, stop) in &hubs.hubs {
        stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_entries_in_parts_land_once_in_each_partition_of_a_cluster() {
    const PARTITIONS: u32 = 4;
    let hubs = ClusterHubs::start(2, |c| Config {
        ingest_partitions: PARTITIONS,
        one_connection_per_device: false,
        ..c
    })
    .await;
    let layout = IngestLayout::new(&HubKeys::default(), PARTITIONS, true);
    // 5,000 pairs: past the ingest script, appended with WATCH/MULTI on the
    // master of each device's partition (found by following MOVED). Both
    // hubs get every device's entry.
    let fields: Vec<Vec<u8>> = (0..10_000).map(|i| format!("f{i}").into_bytes()).collect();
    let wide = lula_protocol::Entry::new(lula_protocol::StreamId::new(1, 0), fields);
    let mut split = lula_protocol::parts::Splitter::new(wide, 64 * 1024);
    let parts: Vec<_> = std::iter::from_fn(|| split.next_part()).collect();
    let mut tasks = Vec::new();
    for d in 0..8 {
        for hub in 0..2 {
            let mut ws = hubs
                .connect(hub, &format!("dev-{d}"), &format!("s-{d}-{hub}"))
                .await;
            let parts = parts.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = serde_json::Value::Null;
                for part in &parts {
                    let payload = json!({"prev": "0-0", "entries": [], "part": part});
                    last = ws.request("xadds", payload).await;
                }
                last
            }));
        }
    }
    let mut added = 0;
    for t in tasks {
        let last = t.await.unwrap();
        assert_eq!(last["id"], "1-0", "{last}");
        added += last["added"].as_u64().unwrap();
    }
    assert_eq!(added, 8, "each device's entry once");
    let mut total = 0;
    for p in 0..PARTITIONS {
        let stored = hubs.stored(&layout.in_stream(p)).await;
        total += stored.len();
        let clients: BTreeSet<&String> = stored.iter().map(|(c, _)| c).collect();
        assert_eq!(clients.len(), stored.len(), "once per device");
    }
    assert_eq!(total, 8);
}
