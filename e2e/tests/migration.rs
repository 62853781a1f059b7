//! Moving a Node lula fleet over (docs/MIGRATING.md), with real Redis
//! servers, lula-auth, lula-hub and the real lula-client binary:
//! - a device switched from the Node lula-client to ours: nothing already
//!   delivered arrives again, nothing is lost, up or down, with entries still
//!   unsynced in `out:x` at the switch;
//! - a Node device whose short secret our lula-auth refuses says why at warn;
//! - a cloud consumer reading a mixed fleet (devices on our client, one still
//!   speaking the Node wire format, and what a Node hub wrote before the
//!   switch) gets every entry exactly once.
//!
//! [`NodeWire`] is a test WebSocket client that frames exactly like the Node
//! lula-client (evanx/lula-client `lib/app.js`, `lib/poll`, `lib/publish`):
//! form-urlencoded `/register` and `/login` with `client`, `otp`, `secret`;
//! `?sessionToken=` on the WebSocket URL; `id` once, then `xread` and
//! `xadd` requests one at a time, each matched to its reply by `type` and
//! `id`; downstream items stored with `XADD in:x <hub id>` and the cursor in
//! `lula-client:client:h` field `id`, in one MULTI.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use lula_e2e::binary::{ClientProcess, client_binary};
use lula_e2e::{Cloud, Device, check_upstream, field, read_all};
use lula_protocol::{ClientId, Entry, StreamId};
use lula_testkit::eventually;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(120);

/// The Node lula-client's state hash.
const NODE_STATE: &str = "lula-client:client:h";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn otp(otp_secret: &str) -> String {
    lula_client::auth::current_otp(otp_secret).unwrap()
}

/// A device speaking the Node lula-client's wire format, with the device
/// Redis it stores into as the Node client does.
struct NodeWire {
    ws: Ws,
    device: redis::aio::MultiplexedConnection,
    /// Upstream: the last device id the hub holds (the Node client's `hid`).
    hid: String,
    /// Downstream: the last hub id stored (the Node client's `cid`).
    cid: String,
    next_id: u64,
}

/// `POST <path>` form-urlencoded as the Node client's `encodeParams` does.
async fn node_form(auth_url: &str, path: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let res = reqwest::Client::new()
        .post(format!("{auth_url}{path}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Accept", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// encodeURIComponent for the characters our test values hold.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'!' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl NodeWire {
    /// What the Node client's `app.start` does before its loop: register
    /// unless `registered` is set (then set it), log in, connect, ask `id`.
    async fn start(cloud: &Cloud, device_url: &str, secret: &str) -> NodeWire {
        let mut device = redis::Client::open(device_url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let (client, otp_secret): (String, String) = redis::cmd("HMGET")
            .arg(NODE_STATE)
            .arg("client")
            .arg("otpSecret")
            .query_async(&mut device)
            .await
            .unwrap();
        let registered: Option<String> = redis::cmd("HGET")
            .arg(NODE_STATE)
            .arg("registered")
            .query_async(&mut device)
            .await
            .unwrap();
        let auth = cloud.auth_url();
        if registered.is_none() {
            let (status, body) = node_form(
                &auth,
                "/register",
                &[
                    ("client", &client),
                    ("otp", &otp(&otp_secret)),
                    ("secret", secret),
                ],
            )
            .await;
            assert_eq!(status, 200, "register: {body}");
            let _: () = redis::cmd("HSET")
                .arg(NODE_STATE)
                .arg("registered")
                .arg(now_ms())
                .query_async(&mut device)
                .await
                .unwrap();
        }
        let (status, body) = node_form(
            &auth,
            "/login",
            &[
                ("client", &client),
                ("otp", &otp(&otp_secret)),
                ("secret", secret),
            ],
        )
        .await;
        assert_eq!(status, 200, "login: {body}");
        let token = body["sessionToken"].as_str().expect("sessionToken");
        let url = format!("{}/?sessionToken={token}", cloud.hub_url());
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let cid: Option<String> = redis::cmd("HGET")
            .arg(NODE_STATE)
            .arg("id")
            .query_async(&mut device)
            .await
            .unwrap();
        let mut node = NodeWire {
            ws,
            device,
            hid: String::new(),
            cid: cid.unwrap_or_else(|| "0-0".into()),
            next_id: 0,
        };
        let reply = node.exchange("id", None).await;
        node.hid = reply["id"].as_str().expect("id reply").to_owned();
        node
    }

    /// One request, answered by the next frame with the same type and id.
    async fn exchange(&mut self, kind: &str, payload: Option<Value>) -> Value {
        self.next_id += 1;
        let id = format!("node{}", self.next_id);
        let mut request = json!({ "type": kind, "id": id });
        if let Some(p) = payload {
            request["payload"] = p;
        }
        self.ws
            .send(Message::Text(request.to_string().into()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("hub answered in time")
                .expect("socket open")
                .expect("frame");
            let Message::Text(text) = msg else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).unwrap();
            assert_ne!(reply["type"], "err", "{reply}");
            assert_eq!(reply["type"], kind, "{reply}");
            assert_eq!(reply["id"], id, "{reply}");
            return reply["payload"].clone();
        }
    }

    /// `lib/poll`: one `xread` after `cid`; items stored with their hub id
    /// and the cursor moved in one MULTI. Returns how many were stored.
    async fn poll(&mut self) -> usize {
        let payload = json!({ "id": self.cid, "blockTimeout": 200 });
        let reply = self.exchange("xread", Some(payload)).await;
        let items = reply["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return 0;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for item in &items {
            let obj = item.as_object().unwrap();
            let mut cmd = redis::cmd("XADD");
            cmd.arg("lula-client:in:x").arg(obj["id"].as_str().unwrap());
            for (k, v) in obj.iter().filter(|(k, _)| *k != "id") {
                cmd.arg(k).arg(v.as_str().unwrap());
            }
            pipe.add_command(cmd).ignore();
        }
        let last = items.last().unwrap()["id"].as_str().unwrap().to_owned();
        pipe.cmd("HSET")
            .arg(NODE_STATE)
            .arg("id")
            .arg(&last)
            .ignore();
        let _: () = pipe.query_async(&mut self.device).await.unwrap();
        self.cid = last;
        items.len()
    }

    /// `lib/publish`: the one `out:x` entry after `hid`, sent as `xadd`.
    /// Returns whether there was one.
    async fn publish(&mut self) -> bool {
        let v: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg("lula-client:out:x")
            .arg(&self.hid)
            .query_async(&mut self.device)
            .await
            .unwrap();
        let Some(entry) = first_entry(v) else {
            return false;
        };
        let fields: Vec<String> = entry
            .fields
            .iter()
            .map(|f| String::from_utf8(f.clone()).unwrap())
            .collect();
        let id = entry.id.to_string();
        let reply = self
            .exchange("xadd", Some(json!({ "id": id, "fields": fields })))
            .await;
        assert!(reply["id"].is_string(), "xadd: {reply}");
        self.hid = id;
        true
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The first entry of an `XREAD` reply.
fn first_entry(v: redis::Value) -> Option<Entry> {
    lula_protocol::redis_value::entries_from_read(v)
        .unwrap()
        .into_iter()
        .next()
}

/// The entries per stream of an `XREAD` / `XREADGROUP` reply over several
/// streams (RESP2: `[[key, entries], ...]`; nil on timeout).
fn streams_of(v: redis::Value) -> Vec<(String, Vec<Entry>)> {
    let redis::Value::Array(streams) = v else {
        return Vec::new();
    };
    streams
        .into_iter()
        .map(|s| {
            let redis::Value::Array(mut kv) = s else {
                panic!("XREADGROUP stream: {s:?}")
            };
            let entries = kv.pop().unwrap();
            let key: String = redis::from_redis_value(kv.pop().unwrap()).unwrap();
            let entries = lula_protocol::redis_value::entries_from_range(entries).unwrap();
            (key, entries)
        })
        .collect()
}

async fn hgetall(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> BTreeMap<String, String> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// Sends `n` messages `n=<from..from+n>` down to `client`.
async fn send_down(cloud: &Cloud, client: &str, from: u64, n: u64) {
    for i in from..from + n {
        cloud.send_down(client, &[("n", i.to_string())]).await;
    }
}

/// `lula-client run` from the binary as a Node device's service would start
/// it after the switch: no --client-id, no --otp-secret (taken over), the
/// Node client's own LULA_SECRET in the environment.
fn our_client(device: &Device, node_secret: &str) -> ClientProcess {
    let c = &device.config;
    let mut cmd = std::process::Command::new(client_binary());
    cmd.arg("run")
        .args(["--auth-url", &c.auth_url, "--hub-url", &c.hub_url])
        .args(["--redis-url", &c.redis_url])
        .arg("--state-dir")
        .arg(device.state_dir())
        .args(["--register-retry", "500ms", "--max-backoff", "500ms"])
        // The checks compare the cloud with out:x: keep all of it.
        .args(["--keep-acked", "all"])
        .env("LULA_SECRET", node_secret)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("REDIS_URL")
        .env_remove("LULA_CLIENT_ID")
        .env_remove("LULA_OTP_SECRET")
        .stdin(std::process::Stdio::null());
    ClientProcess::spawn(cmd)
}

/// What the device holds downstream, as (hub id, fields): entries the Node
/// client stored carry the hub id as their own id; ours carry it in `seq`.
fn downstream_as_hub_entries(device_in: &[Entry]) -> Vec<(StreamId, Vec<Vec<u8>>)> {
    device_in
        .iter()
        .map(|e| match e.fields.first().map(Vec::as_slice) {
            Some(b"seq") => (
                std::str::from_utf8(&e.fields[1]).unwrap().parse().unwrap(),
                e.fields[2..].to_vec(),
            ),
            _ => (e.id, e.fields.clone()),
        })
        .collect()
}

#[tokio::test]
async fn a_device_switched_from_the_node_client_gets_nothing_twice_and_loses_nothing() {
    let cloud = Cloud::start().await;
    let client = "dev-node";
    let otp_secret = cloud.provision(client).await;
    let device = Device::new(&cloud, client, &otp_secret);
    let secret = "node-device-secret-0123456789";
    let mut conn = device.conn().await;
    let _: () = redis::cmd("HSET")
        .arg(NODE_STATE)
        .arg("client")
        .arg(client)
        .arg("otpSecret")
        .arg(&otp_secret)
        .query_async(&mut conn)
        .await
        .unwrap();

    // The Node client runs: 40 entries produced, 25 of them synced up; 20
    // messages sent down, all stored.
    device.produce(0, 40).await;
    send_down(&cloud, client, 0, 20).await;
    let mut node = NodeWire::start(&cloud, &device.redis.url(), secret).await;
    for _ in 0..25 {
        assert!(node.publish().await);
    }
    let mut stored = 0;
    while stored < 20 {
        stored += node.poll().await;
    }
    node.close().await;
    let node_state = hgetall(&mut conn, NODE_STATE).await;
    assert!(node_state.contains_key("registered") && node_state.contains_key("id"));

    // At the switch: 15 entries unsynced in out:x, 10 messages waiting on
    // the hub. Then our client starts, and more arrive both ways.
    send_down(&cloud, client, 20, 10).await;
    let ours = our_client(&device, secret);
    device.produce(40, 60).await;
    send_down(&cloud, client, 30, 10).await;

    let hub_out_key = cloud.keys.out_stream(&client.parse::<ClientId>().unwrap());
    eventually(
        "every entry on the hub and every message on the device",
        WAIT,
        || async {
            let up = cloud
                .in_entries()
                .await
                .iter()
                .filter(|e| field(e, "client") == Some(client.as_bytes()))
                .count();
            let down = device.in_entries().await.len();
            (up >= 60 && down >= 40).then_some(())
        },
    )
    .await;
    // Settle: nothing more arrives after everything did.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Up: each of the 60 out:x entries exactly once, in order.
    check_upstream(
        client,
        &device.out_entries().await,
        &cloud.in_entries().await,
    )
    .unwrap_or_else(|e| panic!("{e}\nclient log:\n{}", ours.log()));
    // Down: each of the 40 hub messages exactly once, in order: 20 stored
    // by the Node client, 20 by ours.
    let sent = read_all(&mut cloud.conn().await, &hub_out_key).await;
    let got = downstream_as_hub_entries(&device.in_entries().await);
    let want: Vec<(StreamId, Vec<Vec<u8>>)> =
        sent.iter().map(|e| (e.id, e.fields.clone())).collect();
    assert_eq!(got, want, "client log:\n{}", ours.log());

    // The Node keys are as the Node client left them; the log says what
    // was taken over.
    assert_eq!(hgetall(&mut conn, NODE_STATE).await, node_state);
    let log = ours.log();
    assert!(
        log.contains("took over the Node lula-client's state")
            && log.contains("registered=true")
            && log.contains(&format!("downstream_cursor={}", node_state["id"])),
        "{log}"
    );
    ours.terminate();
}

#[tokio::test]
async fn a_short_secret_refused_at_login_or_register_is_logged_at_warn_with_the_limit() {
    let cloud = Cloud::start().await;
    let client = "dev-short";
    let otp_secret = cloud.provision(client).await;
    let device = Device::new(&cloud, client, &otp_secret);
    // Registered with the Node lula-auth using the Node examples' secret;
    // our lula-auth keeps its default minimum of 16 bytes.
    let _: () = redis::cmd("HSET")
        .arg(NODE_STATE)
        .arg("client")
        .arg(client)
        .arg("otpSecret")
        .arg(&otp_secret)
        .arg("registered")
        .arg(now_ms())
        .query_async(&mut device.conn().await)
        .await
        .unwrap();
    let ours = our_client(&device, "lula-secret");
    eventually("the login refusal in the client's log", WAIT, || async {
        ours.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("secret must be 16 to 72 bytes, got 11"))
            .then_some(())
    })
    .await;
    ours.terminate();

    // The same at /register: a device whose identity holds the short secret
    // and is not registered yet.
    let client = "dev-short-2";
    let otp_secret = cloud.provision(client).await;
    let device = Device::new(&cloud, client, &otp_secret);
    lula_client::identity::Identity::create(
        device.state_dir(),
        &client.parse().unwrap(),
        lula_protocol::Redacted::new("lula-secret".to_owned()),
        false,
    )
    .unwrap();
    let ours = ClientProcess::run(&device, "info", &[]);
    eventually(
        "the registration refusal in the client's log",
        WAIT,
        || async {
            ours.log()
                .lines()
                .any(|l| {
                    l.contains("WARN")
                        && l.contains("registration refused")
                        && l.contains("secret must be 16 to 72 bytes, got 11")
                })
                .then_some(())
        },
    )
    .await;
    ours.terminate();
}

/// What a cloud consumer does during the switch (docs/MIGRATING.md): one
/// consumer group on both in streams, one XREADGROUP over both, XACK after
/// handling. Returns (stream, entry) in the order handled until `done`.
async fn consume_both(
    conn: &mut lula_runtime::redis::RedisConn,
    done: impl Fn(&[(String, Entry)]) -> bool,
) -> Vec<(String, Entry)> {
    let streams = ["lula:in:x", "lula-hub:in:x"];
    for s in streams {
        let _: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(s)
            .arg("consumers")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
    }
    let mut handled = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&handled) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer timed out with {} entries",
            handled.len()
        );
        let v: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("consumers")
            .arg("c1")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(200)
            .arg("STREAMS")
            .arg(streams[0])
            .arg(streams[1])
            .arg(">")
            .arg(">")
            .query_async(conn)
            .await
            .unwrap();
        let read = streams_of(v);
        for (stream, entries) in read {
            for e in entries {
                let _: u64 = redis::cmd("XACK")
                    .arg(&stream)
                    .arg("consumers")
                    .arg(e.id.to_string())
                    .query_async(conn)
                    .await
                    .unwrap();
                handled.push((stream.clone(), e));
            }
        }
    }
    handled
}

#[tokio::test]
async fn a_cloud_consumer_reads_a_mixed_fleet_exactly_once_during_the_switch() {
    let cloud = Cloud::start().await;
    let mut cloud_conn = cloud.conn().await;

    // Before the switch the Node hub took entries 0..10 of the Node device:
    // `lula:in:x` entries `id <seq> n <i>` (no client field) and its cursor
    // in `lula:id:h`. The cursor import carries it over to our hub.
    let node_device = "dev-node";
    let otp_secret = cloud.provision(node_device).await;
    let device = Device::new(&cloud, node_device, &otp_secret);
    let sent_ids = device.produce(0, 30).await;
    let out = device.out_entries().await;
    for e in &out[..10] {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("lula:in:x")
            .arg("*")
            .arg("id")
            .arg(e.id.to_string());
        for f in &e.fields {
            cmd.arg(f.as_slice());
        }
        let _: String = cmd.query_async(&mut cloud_conn).await.unwrap();
    }
    let _: () = redis::cmd("HSET")
        .arg("lula:id:h")
        .arg(node_device)
        .arg(sent_ids[9].to_string())
        .query_async(&mut cloud_conn)
        .await
        .unwrap();
    let report =
        lula_hub::import_node::import_cursors(&mut cloud_conn, &cloud.layout, "lula", false)
            .await
            .unwrap();
    assert_eq!(report.len(), 1, "{report:?}");

    // After the switch: the Node device still speaks the Node wire format to
    // our hub; two devices run our client.
    let _: () = redis::cmd("HSET")
        .arg(NODE_STATE)
        .arg("client")
        .arg(node_device)
        .arg("otpSecret")
        .arg(&otp_secret)
        .query_async(&mut device.conn().await)
        .await
        .unwrap();
    let mut node =
        NodeWire::start(&cloud, &device.redis.url(), "node-device-secret-0123456789").await;
    assert_eq!(
        node.hid,
        sent_ids[9].to_string(),
        "the hub resumes after the Node hub's cursor"
    );
    let mut ours = Vec::new();
    for name in ["dev-a", "dev-b"] {
        let otp = cloud.provision(name).await;
        let mut d = Device::new(&cloud, name, &otp);
        d.produce(0, 50).await;
        d.start();
        ours.push(d);
    }
    while node.publish().await {}

    let handled = consume_both(&mut cloud_conn, |h| h.len() >= 10 + 20 + 100).await;
    // Settle, then read once more: nothing further may arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let extra = consume_both(&mut cloud_conn, |_| true).await;
    assert!(extra.is_empty(), "more than each entry once: {extra:?}");

    // Every device entry exactly once: the Node device's 30 (10 through the
    // Node hub, by `id`; 20 through ours, by `client` + `seq`), 50 of each
    // of ours.
    let mut seen: HashMap<(String, String), u32> = HashMap::new();
    for (stream, e) in &handled {
        let key = if stream == "lula:in:x" {
            let seq = field(e, "id").unwrap();
            (
                node_device.to_owned(),
                String::from_utf8_lossy(seq).into_owned(),
            )
        } else {
            let c = field(e, "client").unwrap();
            let seq = field(e, "seq").unwrap();
            (
                String::from_utf8_lossy(c).into_owned(),
                String::from_utf8_lossy(seq).into_owned(),
            )
        };
        *seen.entry(key).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "duplicates: {seen:?}");
    for id in &sent_ids {
        assert!(
            seen.contains_key(&(node_device.to_owned(), id.to_string())),
            "missing {id}"
        );
    }
    for d in &ours {
        let name = d.config.client_id.to_string();
        for e in d.out_entries().await {
            assert!(
                seen.contains_key(&(name.clone(), e.id.to_string())),
                "{name} missing {}",
                e.id
            );
        }
    }
    assert_eq!(seen.len(), 30 + 100);
    node.close().await;
    for mut d in ours {
        d.stop().await.unwrap();
    }
}
