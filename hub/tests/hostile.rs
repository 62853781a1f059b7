//! Hostile input against a real hub, as tables. Every row sends something a
//! broken or malicious peer might (a frame, a token, a half-sent upgrade, a
//! flood) and checks three things:
//!
//! 1. the answer `shared/PROTOCOL.md` documents: an error reply, an HTTP status
//!    or a close code;
//! 2. another device on the same hub (the witness) keeps syncing: it appends an
//!    entry after every row;
//! 3. nothing reached Redis for the refused request: every key's type,
//!    content and expiry are as before, except the witness's entry and cursor
//!    and the fleet bookkeeping every connection writes (see [`Snapshot`]).
//!
//! Some rows also have single tests in `protocol.rs`; here each gets all three
//! checks.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::{TestHub, Ws, entry, sign_with, spawn_hub, spawn_hub_with};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lula_protocol::message::close;
use lula_protocol::token::{encode_public_key, kid_for};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};

/// Hang guard for anything the hub must do by itself (close a socket).
const HANG_GUARD: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The three checks

/// Fields of a device's fleet hash (`hub/src/fleet.rs`) that the hub writes
/// for any connection, a refused request's included: on connect, at each
/// heartbeat, with the last error it answered, on close. They are left out of
/// [`Snapshot`]; every other field of the hash (the acknowledged
/// `downstreamCursor`, anything unknown) must not change.
const FLEET_BOOKKEEPING: [&str; 10] = [
    "owner",
    "hub",
    "connected",
    "connectedAt",
    "heartbeat",
    "lastSeen",
    "lastError",
    "lastErrorAt",
    "closedAt",
    "lastClose",
];

/// Everything in the hub's Redis, so that a refused request that wrote to any
/// key, new or existing, shows. The exclusions, each written for any
/// connection whatever it sends, so a refused request may cause them:
/// - [`FLEET_BOOKKEEPING`] fields of the fleet hashes;
/// - the scores of the fleet index (`lula-hub:devices:z`), which are the times
///   of those writes (its members are compared).
///
/// The in stream and the cursor hash are kept apart only to say exactly what
/// the witness may add to them.
#[derive(Debug, Clone, PartialEq, Default)]
struct Snapshot {
    /// The in stream's entries, (id, fields).
    in_stream: Vec<(String, Vec<String>)>,
    /// The cursor hash.
    cursors: BTreeMap<String, String>,
    /// Each device's fleet hash without [`FLEET_BOOKKEEPING`].
    fleet: BTreeMap<String, BTreeMap<String, String>>,
    /// The members of the fleet index.
    fleet_index: BTreeSet<String>,
    /// Every other key: its type, its `DUMP` (content byte for byte), whether
    /// it expires.
    others: BTreeMap<String, (String, Option<Vec<u8>>, bool)>,
}

async fn snapshot(hub: &TestHub) -> Snapshot {
    let mut c = hub.redis().await;
    // A test's own small Redis: KEYS is fine here.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    let fleet_prefix = format!("{}:device:", hub.keys.prefix());
    let mut snap = Snapshot::default();
    for key in keys {
        if key == hub.keys.in_stream() {
            snap.in_stream = hub.range(&key).await;
        } else if key == hub.keys.cursors() {
            snap.cursors = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
        } else if key.starts_with(&fleet_prefix) && key.ends_with(":h") {
            let mut hash: BTreeMap<String, String> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            hash.retain(|field, _| !FLEET_BOOKKEEPING.contains(&field.as_str()));
            snap.fleet.insert(key, hash);
        } else if key == hub.keys.devices() {
            snap.fleet_index = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .unwrap();
        } else {
            let (kind, dump, pttl): (String, Option<Vec<u8>>, i64) = redis::pipe()
                .cmd("TYPE")
                .arg(&key)
                .cmd("DUMP")
                .arg(&key)
                .cmd("PTTL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            snap.others.insert(key, (kind, dump, pttl >= 0));
        }
    }
    snap
}

/// How `after` differs from `before` beyond the witness appending `seqs`
/// (in order) and moving its cursor to the last; empty when it does not.
fn changes(before: &Snapshot, after: &Snapshot, seqs: &[String]) -> Vec<String> {
    let mut changes = Vec::new();
    let n = before.in_stream.len();
    let added = after.in_stream.get(n..).unwrap_or_default();
    if after.in_stream.get(..n) != Some(&before.in_stream[..]) {
        changes.push("in stream: entries before the row changed".to_owned());
    } else if added.len() != seqs.len()
        || added
            .iter()
            .zip(seqs)
            .any(|((_, fields), seq)| fields[..4] != ["client", "witness", "seq", seq.as_str()])
    {
        changes.push(format!(
            "in stream: added {added:?}, the witness appended {seqs:?}"
        ));
    }
    let mut want_cursors = before.cursors.clone();
    if let Some(last) = seqs.last() {
        want_cursors.insert("witness".into(), last.clone());
    }
    if after.cursors != want_cursors {
        changes.push(format!(
            "cursors: {:?} -> {:?}",
            before.cursors, after.cursors
        ));
    }
    let fleet_keys: BTreeSet<&String> = before.fleet.keys().chain(after.fleet.keys()).collect();
    for key in fleet_keys {
        // A hash the hub created meanwhile holds bookkeeping only: compare as empty.
        let (b, a) = (before.fleet.get(key), after.fleet.get(key));
        if b.cloned().unwrap_or_default() != a.cloned().unwrap_or_default() {
            changes.push(format!("{key}: {b:?} -> {a:?}"));
        }
    }
    if before.fleet_index != after.fleet_index {
        changes.push(format!(
            "fleet index members: {:?} -> {:?}",
            before.fleet_index, after.fleet_index
        ));
    }
    let other_keys: BTreeSet<&String> = before.others.keys().chain(after.others.keys()).collect();
    for key in other_keys {
        let (b, a) = (before.others.get(key), after.others.get(key));
        if b != a {
            let describe = |v: Option<&(String, Option<Vec<u8>>, bool)>| match v {
                None => "absent".to_owned(),
                Some((kind, _, expires)) => format!("{kind}, expires: {expires}"),
            };
            changes.push(format!(
                "{key}: {} -> {} (or its content changed)",
                describe(b),
                describe(a)
            ));
        }
    }
    changes
}

/// Waits until the hub has recorded `client`'s connection in the fleet view
/// (written in the background), so that write does not land inside a row.
async fn wait_recorded(hub: &TestHub, client: &str) {
    let mut c = hub.redis().await;
    let id: lula_protocol::ClientId = client.parse().unwrap();
    for _ in 0..500 {
        let (hash, score): (u64, Option<f64>) = redis::pipe()
            .cmd("EXISTS")
            .arg(hub.keys.device(&id))
            .cmd("ZSCORE")
            .arg(hub.keys.devices())
            .arg(client)
            .query_async(&mut c)
            .await
            .unwrap();
        if hash == 1 && score.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{client}: the hub never recorded the connection");
}

/// Another device on the same hub, appending one entry after each row.
struct Witness {
    ws: Ws,
    /// Entries appended so far; the last seq is `<n>-0`.
    n: u64,
    /// `n` when the row's snapshot was taken.
    mark: u64,
}

impl Witness {
    /// Connects and appends a first entry, so the in stream and the cursor
    /// hash exist before any row is snapshotted.
    async fn start(hub: &TestHub) -> Witness {
        let mut w = Witness {
            ws: hub.connect("witness").await,
            n: 0,
            mark: 0,
        };
        w.sync("start").await;
        wait_recorded(hub, "witness").await;
        w
    }

    /// Appends the next entry; panics unless the hub appended it.
    async fn sync(&mut self, row: &str) -> String {
        self.n += 1;
        let seq = format!("{}-0", self.n);
        let reply = self
            .ws
            .request("xadd", entry(&seq, &["n", &self.n.to_string()]))
            .await;
        assert!(
            reply["id"].is_string() && reply.get("status").is_none(),
            "{row}: the witness could not sync: {reply}"
        );
        seq
    }

    /// What the hub has written, before a row.
    async fn snapshot(&mut self, hub: &TestHub) -> Snapshot {
        self.mark = self.n;
        snapshot(hub).await
    }

    /// Checks 2 and 3 after a refused request: the witness syncs once more,
    /// and Redis holds exactly `before` plus the witness's entries since.
    async fn assert_only_witness_wrote(&mut self, hub: &TestHub, before: &Snapshot, row: &str) {
        self.sync(row).await;
        let after = snapshot(hub).await;
        let seqs: Vec<String> = (self.mark + 1..=self.n).map(|n| format!("{n}-0")).collect();
        let changes = changes(before, &after, &seqs);
        assert!(
            changes.is_empty(),
            "{row}: Redis changed beyond the witness's entries:\n{}",
            changes.join("\n")
        );
    }
}

/// The check itself: each write a refused request must not make, to a key
/// that already exists, is seen (the witness's own entry is not).
#[tokio::test]
async fn the_redis_check_sees_writes_to_existing_keys() {
    let hub = spawn_hub().await;
    let mut witness = Witness::start(&hub).await;
    let _row_device = hub.connect("hostile-0").await;
    wait_recorded(&hub, "hostile-0").await;
    let mut c = hub.redis().await;
    let sessions: Vec<String> = redis::cmd("KEYS")
        .arg(hub.auth_keys.session("*"))
        .query_async(&mut c)
        .await
        .unwrap();
    let session = sessions[0].clone();
    let hostile: lula_protocol::ClientId = "hostile-0".parse().unwrap();

    // Nothing but the witness's entry: no change.
    let before = witness.snapshot(&hub).await;
    witness
        .assert_only_witness_wrote(&hub, &before, "control")
        .await;

    let writes: Vec<(&str, redis::Cmd)> = vec![
        ("the device's own acknowledged downstream cursor", {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(hub.keys.device(&hostile))
                .arg("downstreamCursor")
                .arg("9-0");
            cmd
        }),
        ("another device's cursor", {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(hub.keys.cursors()).arg("hostile-0").arg("1-0");
            cmd
        }),
        ("a session record rewritten", {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&session).arg("tampered").arg("KEEPTTL");
            cmd
        }),
        ("a session record made permanent", {
            let mut cmd = redis::cmd("PERSIST");
            cmd.arg(&session);
            cmd
        }),
        ("a verification key replaced", {
            let mut cmd = redis::cmd("SET");
            cmd.arg(hub.auth_keys.verify_key(&hub.kid())).arg("x");
            cmd
        }),
        ("an entry in the in stream", {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(hub.keys.in_stream())
                .arg("*")
                .arg("client")
                .arg("hostile-0");
            cmd
        }),
        ("a device added to the fleet index", {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(hub.keys.devices()).arg(1).arg("ghost");
            cmd
        }),
        ("a connection counter bumped", {
            let mut cmd = redis::cmd("INCR");
            cmd.arg(hub.keys.connection_generation(&hostile));
            cmd
        }),
    ];
    for (name, write) in writes {
        let before = snapshot(&hub).await;
        let _: redis::Value = write.query_async(&mut c).await.unwrap();
        let after = snapshot(&hub).await;
        assert!(
            !changes(&before, &after, &[]).is_empty(),
            "the check missed {name}"
        );
    }
}

// ---------------------------------------------------------------------------
// Frames

/// What a row sends on an authenticated socket.
enum Send {
    Text(String),
    Binary(Vec<u8>),
    /// Raw WebSocket frames, for what the client library would refuse to make.
    Frames(Vec<Frame>),
}

/// What the hub must answer.
enum Expect {
    /// `{"type":"err","payload":{"status":400,"message":...}}` without an id;
    /// the socket keeps serving.
    Err400,
    /// A reply echoing `kind` and `id` (`Null`: no id) whose payload has this
    /// `status`, and on a 409 the saved cursor as `id`; the socket keeps serving.
    Status {
        kind: String,
        id: Value,
        status: u16,
        cursor: Option<&'static str>,
    },
    /// A successful reply with exactly this payload (a batch of duplicates:
    /// answered, nothing written); the socket keeps serving.
    Payload {
        kind: String,
        id: Value,
        payload: Value,
    },
    /// The hub closes the socket with this code.
    Close(u16),
}

struct Row {
    name: String,
    /// Entries (seqs) the row's device appends before the snapshot, so it has
    /// a cursor to regress below.
    setup: Vec<&'static str>,
    send: Send,
    expect: Expect,
}

fn row(name: impl Into<String>, send: Send, expect: Expect) -> Row {
    Row {
        name: name.into(),
        setup: Vec::new(),
        send,
        expect,
    }
}

fn text(t: impl Into<String>) -> Send {
    Send::Text(t.into())
}

/// A request frame `{"type", "id", "payload"}`.
fn request(kind: &str, id: &str, payload: Value) -> Send {
    text(json!({"type": kind, "id": id, "payload": payload}).to_string())
}

fn status(kind: &str, id: &str, status: u16) -> Expect {
    Expect::Status {
        kind: kind.into(),
        id: json!(id),
        status,
        cursor: None,
    }
}

fn conflict(kind: &str, id: &str, cursor: &'static str) -> Expect {
    Expect::Status {
        kind: kind.into(),
        id: json!(id),
        status: 409,
        cursor: Some(cursor),
    }
}

/// A text frame of exactly `len` bytes: an xadd whose value is padded.
fn xadd_of_len(len: usize) -> String {
    let head = r#"{"type":"xadd","id":"big","payload":{"id":"1-0","fields":["k",""#;
    let tail = r#""]}}"#;
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

/// Rows that must be refused with a reply, a close code or nothing at all.
fn frame_rows() -> Vec<Row> {
    let limit = lula_protocol::limits::DEFAULT_MAX_FRAME_BYTES;
    let mut rows = vec![
        // Not JSON.
        row("not json", text("this is not json"), Expect::Err400),
        row("empty text frame", text(""), Expect::Err400),
        row("whitespace only", text(" \n\t "), Expect::Err400),
        row(
            "truncated object",
            text(r#"{"type":"xadd","id":"1""#),
            Expect::Err400,
        ),
        row("a NUL byte", text("\u{0}"), Expect::Err400),
        row(
            "trailing garbage after the object",
            text(r#"{"type":"echo","id":"1"} x"#),
            Expect::Err400,
        ),
        // JSON, but not an object.
        row("json null", text("null"), Expect::Err400),
        row("json number", text("42"), Expect::Err400),
        row("json string", text(r#""xadd""#), Expect::Err400),
        row("json bool", text("true"), Expect::Err400),
        row("empty json array", text("[]"), Expect::Err400),
        // Wrong types for type and id.
        row(
            "type is a number",
            text(r#"{"type":5,"id":"1"}"#),
            Expect::Err400,
        ),
        row(
            "type is null",
            text(r#"{"type":null,"id":"1"}"#),
            Expect::Err400,
        ),
        row(
            "type is an array",
            text(r#"{"type":["xadd"],"id":"1"}"#),
            Expect::Err400,
        ),
        row(
            "type is an object",
            text(r#"{"type":{"xadd":1},"id":"1"}"#),
            Expect::Err400,
        ),
        row(
            "type missing",
            text(r#"{"id":"1","payload":{"id":"1-0","fields":["k","v"]}}"#),
            Expect::Err400,
        ),
        row(
            "type given twice",
            text(
                r#"{"type":"echo","type":"xadd","id":"1","payload":{"id":"1-0","fields":["k","v"]}}"#,
            ),
            Expect::Err400,
        ),
        row(
            "id is an object",
            text(r#"{"type":"id","id":{"x":1}}"#),
            Expect::Err400,
        ),
        row(
            "id is an array",
            text(r#"{"type":"id","id":[1]}"#),
            Expect::Err400,
        ),
        row(
            "id is a bool",
            text(r#"{"type":"id","id":true}"#),
            Expect::Err400,
        ),
        row(
            "id is a number beyond f64",
            text(r#"{"type":"id","id":1e400}"#),
            Expect::Err400,
        ),
        row(
            "id nested past the recursion limit",
            text(format!(
                r#"{{"type":"xadd","id":{}1{},"payload":{{"id":"1-0","fields":["k","v"]}}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )),
            Expect::Err400,
        ),
        // Wrong types for the payload and its fields.
        row(
            "xadd payload is a string",
            request("xadd", "p", json!("1-0 k v")),
            status("xadd", "p", 400),
        ),
        row(
            "xadd payload is a number",
            request("xadd", "p", json!(5)),
            status("xadd", "p", 400),
        ),
        row(
            "xadd payload is null",
            request("xadd", "p", Value::Null),
            status("xadd", "p", 400),
        ),
        row(
            "xadd payload missing",
            text(r#"{"type":"xadd","id":"p"}"#),
            status("xadd", "p", 400),
        ),
        row(
            "xadd payload nested past the recursion limit",
            text(format!(
                r#"{{"type":"xadd","id":"p","payload":{}{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            )),
            status("xadd", "p", 400),
        ),
        row(
            "fields is a string",
            request("xadd", "p", json!({"id": "1-0", "fields": "k=v"})),
            status("xadd", "p", 400),
        ),
        row(
            "fields holds numbers",
            request("xadd", "p", json!({"id": "1-0", "fields": [1, 2]})),
            status("xadd", "p", 400),
        ),
        row(
            "fields holds objects",
            request("xadd", "p", json!({"id": "1-0", "fields": [{}, {}]})),
            status("xadd", "p", 400),
        ),
        row(
            "fields unpaired",
            request("xadd", "p", json!({"id": "1-0", "fields": ["k"]})),
            status("xadd", "p", 400),
        ),
        row(
            "fields and fields64 both",
            request(
                "xadd",
                "p",
                json!({"id": "1-0", "fields": ["k", "v"], "fields64": ["aw==", "dg=="]}),
            ),
            status("xadd", "p", 400),
        ),
        row(
            "fields given twice",
            text(
                r#"{"type":"xadd","id":"p","payload":{"id":"1-0","fields":["k","v"],"fields":["a","b"]}}"#,
            ),
            status("xadd", "p", 400),
        ),
        row(
            "fields64 not base64",
            request("xadd", "p", json!({"id": "1-0", "fields64": ["!!", "??"]})),
            status("xadd", "p", 400),
        ),
        row(
            "entry without fields",
            request("xadd", "p", json!({"id": "1-0"})),
            status("xadd", "p", 400),
        ),
        row(
            "xadds entries is an object",
            request("xadds", "p", json!({"entries": {"id": "1-0"}})),
            status("xadds", "p", 400),
        ),
        row(
            "xadds entries missing",
            request("xadds", "p", json!({"prev": "0-0"})),
            status("xadds", "p", 400),
        ),
        row(
            "xadds prev is a number",
            request(
                "xadds",
                "p",
                json!({"prev": 0, "entries": [entry("1-0", &["k", "v"])]}),
            ),
            status("xadds", "p", 400),
        ),
        row(
            "xadds with one bad entry among good ones",
            request(
                "xadds",
                "p",
                json!({"entries": [entry("1-0", &["k", "v"]), {"id": "2-0", "fields": ["odd"]}, entry("3-0", &["k", "v"])]}),
            ),
            status("xadds", "p", 400),
        ),
        row(
            "subscribe id is a number",
            request("subscribe", "p", json!({"id": 0})),
            status("subscribe", "p", 400),
        ),
        row(
            "xread id is an object",
            request("xread", "p", json!({"id": {"ms": 0}})),
            status("xread", "p", 400),
        ),
        row(
            "xread count is a string",
            request("xread", "p", json!({"id": "0-0", "count": "all"})),
            status("xread", "p", 400),
        ),
        row(
            "xread count is negative",
            request("xread", "p", json!({"id": "0-0", "count": -1})),
            status("xread", "p", 400),
        ),
        row(
            "xread blockTimeout is negative",
            request("xread", "p", json!({"id": "0-0", "blockTimeout": -5})),
            status("xread", "p", 400),
        ),
        // A notification with a bad payload: PROTOCOL.md does not say; the hub
        // answers a 400 of its type, without an id.
        row(
            "ack id malformed",
            text(r#"{"type":"ack","payload":{"id":"x"}}"#),
            Expect::Status {
                kind: "ack".into(),
                id: Value::Null,
                status: 400,
                cursor: None,
            },
        ),
        // Too many fields, too many entries, too many bytes.
        row(
            "entry with 100,000 fields",
            request(
                "xadd",
                "p",
                json!({"id": "1-0", "fields": vec!["k"; 100_000]}),
            ),
            status("xadd", "p", 400),
        ),
        row(
            "entry with 100,000 fields64 values",
            request(
                "xadd",
                "p",
                json!({"id": "1-0", "fields64": vec!["aw=="; 100_000]}),
            ),
            status("xadd", "p", 400),
        ),
        row(
            "xadds entry with 100,000 fields",
            request(
                "xadds",
                "p",
                json!({"entries": [{"id": "1-0", "fields": vec!["k"; 100_000]}]}),
            ),
            status("xadds", "p", 400),
        ),
        row(
            "xadds with 10,001 entries",
            request(
                "xadds",
                "p",
                json!({"entries": (1..=10_001).map(|i| json!({"id": format!("{i}-0"), "fields": []})).collect::<Vec<_>>()}),
            ),
            status("xadds", "p", 413),
        ),
        row(
            "frame one byte over 1 MiB",
            text(xadd_of_len(limit + 1)),
            Expect::Close(close::TOO_BIG),
        ),
        row(
            "binary frame over 1 MiB",
            Send::Binary(vec![b'x'; limit + 1]),
            Expect::Close(close::TOO_BIG),
        ),
        row(
            "message over 1 MiB in two fragments",
            Send::Frames(vec![
                Frame::message(
                    xadd_of_len(limit + 1).into_bytes()[..limit / 2].to_vec(),
                    OpCode::Data(Data::Text),
                    false,
                ),
                Frame::message(
                    xadd_of_len(limit + 1).into_bytes()[limit / 2..].to_vec(),
                    OpCode::Data(Data::Continue),
                    true,
                ),
            ]),
            Expect::Close(close::TOO_BIG),
        ),
        // Unknown types.
        row(
            "unknown type",
            request("nonsense", "u", json!({})),
            status("nonsense", "u", 400),
        ),
        row(
            "empty type",
            request("", "u", json!({})),
            status("", "u", 400),
        ),
        row(
            "type in the wrong case",
            request("XADD", "u", entry("1-0", &["k", "v"])),
            status("XADD", "u", 400),
        ),
        row(
            "push sent by a device",
            request("push", "u", json!({"entries": [entry("1-0", &["k", "v"])]})),
            status("push", "u", 400),
        ),
        row(
            "err sent by a device",
            request("err", "u", json!({"status": 400})),
            status("err", "u", 400),
        ),
        row(
            "a 100,000-character type",
            request(&"t".repeat(100_000), "u", json!({})),
            status(&"t".repeat(100_000), "u", 400),
        ),
        row(
            "unknown type without an id",
            text(r#"{"type":"nonsense"}"#),
            Expect::Status {
                kind: "nonsense".into(),
                id: Value::Null,
                status: 400,
                cursor: None,
            },
        ),
        // Binary frames, even ones holding a valid request.
        row("binary frame", Send::Binary(vec![1, 2, 3]), Expect::Err400),
        row("empty binary frame", Send::Binary(vec![]), Expect::Err400),
        row(
            "binary frame holding a valid xadd",
            Send::Binary(
                json!({"type": "xadd", "id": "b", "payload": entry("1-0", &["k", "v"])})
                    .to_string()
                    .into_bytes(),
            ),
            Expect::Err400,
        ),
        // WebSocket protocol violations.
        row(
            "text frame that is not UTF-8",
            Send::Frames(vec![Frame::message(
                vec![b'{', 0xff, 0xfe, b'}'],
                OpCode::Data(Data::Text),
                true,
            )]),
            Expect::Close(close::POLICY),
        ),
        row(
            "reserved data opcode",
            Send::Frames(vec![Frame::message(
                b"x".to_vec(),
                OpCode::Data(Data::Reserved(3)),
                true,
            )]),
            Expect::Close(close::POLICY),
        ),
        row(
            "continuation without a first fragment",
            Send::Frames(vec![Frame::message(
                b"x".to_vec(),
                OpCode::Data(Data::Continue),
                true,
            )]),
            Expect::Close(close::POLICY),
        ),
        row(
            "ping longer than 125 bytes",
            Send::Frames(vec![Frame::ping(vec![0u8; 126])]),
            Expect::Close(close::POLICY),
        ),
    ];

    // Stream ids that are not `<u64>-<u64>`, wherever an id goes.
    let bad_ids = [
        json!("abc"),
        json!("1-"),
        json!("-1-0"),
        json!("18446744073709551616-0"),
        json!("0-18446744073709551616"),
        json!(5),
        json!(""),
        json!(" 1-0"),
        json!("1-0-0"),
        json!("+1-0"),
        json!("0x10-0"),
        json!("1.5-0"),
        json!(format!("{}1-0", "0".repeat(50))),
        json!(null),
    ];
    for id in bad_ids {
        rows.push(row(
            format!("xadd id {id}"),
            request("xadd", "i", json!({"id": id, "fields": ["k", "v"]})),
            status("xadd", "i", 400),
        ));
        rows.push(row(
            format!("xadds entry id {id}"),
            request(
                "xadds",
                "i",
                json!({"entries": [entry("1-0", &["k", "v"]), {"id": id, "fields": ["k", "v"]}]}),
            ),
            status("xadds", "i", 400),
        ));
        if !id.is_null() {
            rows.push(row(
                format!("xadds prev {id}"),
                request(
                    "xadds",
                    "i",
                    json!({"prev": id, "entries": [entry("1-0", &["k", "v"])]}),
                ),
                status("xadds", "i", 400),
            ));
        }
        rows.push(row(
            format!("subscribe id {id}"),
            request("subscribe", "i", json!({"id": id})),
            status("subscribe", "i", 400),
        ));
        rows.push(row(
            format!("xread id {id}"),
            request("xread", "i", json!({"id": id})),
            status("xread", "i", 400),
        ));
    }

    // Seq regressions: at or below the cursor, or out of order in a batch.
    let with_setup = |setup: &[&'static str], mut r: Row| {
        r.setup = setup.to_vec();
        r
    };
    rows.extend([
        with_setup(
            &["100-0"],
            row(
                "xadd at the cursor",
                request("xadd", "s", entry("100-0", &["k", "again"])),
                conflict("xadd", "s", "100-0"),
            ),
        ),
        with_setup(
            &["100-0"],
            row(
                "xadd below the cursor",
                request("xadd", "s", entry("99-9", &["k", "v"])),
                conflict("xadd", "s", "100-0"),
            ),
        ),
        row(
            "xadd 0-0 on a fresh cursor",
            request("xadd", "s", entry("0-0", &["k", "v"])),
            conflict("xadd", "s", "0-0"),
        ),
        // Ids past 2^53 that doubles cannot tell apart, and at u64::MAX.
        with_setup(
            &["9007199254740993-0"],
            row(
                "xadd below a cursor past 2^53",
                request("xadd", "s", entry("9007199254740992-0", &["k", "v"])),
                conflict("xadd", "s", "9007199254740993-0"),
            ),
        ),
        with_setup(
            &["18446744073709551615-5"],
            row(
                "xadd below a cursor at u64::MAX",
                request("xadd", "s", entry("18446744073709551615-4", &["k", "v"])),
                conflict("xadd", "s", "18446744073709551615-5"),
            ),
        ),
        with_setup(
            &["18446744073709551615-5"],
            row(
                "xadd with a smaller ms at u64::MAX",
                request("xadd", "s", entry("18446744073709551614-99", &["k", "v"])),
                conflict("xadd", "s", "18446744073709551615-5"),
            ),
        ),
        row(
            "xadds with a repeated id",
            request(
                "xadds",
                "s",
                json!({"entries": [entry("5-0", &["k", "v"]), entry("5-0", &["k", "v"])]}),
            ),
            status("xadds", "s", 400),
        ),
        row(
            "xadds with decreasing ids",
            request(
                "xadds",
                "s",
                json!({"entries": [entry("200-0", &["k", "v"]), entry("150-0", &["k", "v"])]}),
            ),
            status("xadds", "s", 400),
        ),
        with_setup(
            &["100-0"],
            row(
                "xadds out of order after new ones",
                request(
                    "xadds",
                    "s",
                    json!({"prev": "100-0", "entries": [entry("101-0", &["k", "v"]), entry("103-0", &["k", "v"]), entry("102-0", &["k", "v"])]}),
                ),
                status("xadds", "s", 400),
            ),
        ),
        with_setup(
            &["100-0"],
            row(
                "xadds after a gap",
                request(
                    "xadds",
                    "s",
                    json!({"prev": "150-0", "entries": [entry("151-0", &["k", "v"])]}),
                ),
                conflict("xadds", "s", "100-0"),
            ),
        ),
        with_setup(
            &["100-0"],
            row(
                "xadds of duplicates only",
                request(
                    "xadds",
                    "s",
                    json!({"prev": "0-0", "entries": [entry("50-0", &["k", "v"]), entry("100-0", &["k", "v"])]}),
                ),
                Expect::Payload {
                    kind: "xadds".into(),
                    id: json!("s"),
                    payload: json!({"id": "100-0", "added": 0, "duplicates": 2}),
                },
            ),
        ),
        // Set-aside markers (issue 13) are for xadds batches only, and carry
        // a short reason and no fields; an entry needs fields.
        row(
            "a set-aside marker in xadd",
            request("xadd", "m", json!({"id": "1-0", "setAside": "too big"})),
            status("xadd", "m", 400),
        ),
        row(
            "a set-aside marker with fields",
            request(
                "xadds",
                "m",
                json!({"entries": [{"id": "1-0", "setAside": "x", "fields": ["k", "v"]}]}),
            ),
            status("xadds", "m", 400),
        ),
        row(
            "a set-aside marker whose reason is not a string",
            request("xadds", "m", json!({"entries": [{"id": "1-0", "setAside": 5}]})),
            status("xadds", "m", 400),
        ),
        row(
            "a set-aside marker with a reason over 1 KiB",
            request(
                "xadds",
                "m",
                json!({"entries": [{"id": "1-0", "setAside": "r".repeat(1025)}]}),
            ),
            status("xadds", "m", 400),
        ),
        row(
            "an entry with no fields",
            request("xadds", "m", json!({"entries": [{"id": "1-0", "fields": []}]})),
            status("xadds", "m", 400),
        ),
    ]);
    rows
}

/// Sends `send` on `ws`, ignoring a send that fails because the hub already
/// closed (an oversized frame may be cut off mid-write).
async fn send(ws: &mut Ws, send: Send) {
    match send {
        Send::Text(t) => {
            let _ = ws.ws.send(Message::text(t)).await;
        }
        Send::Binary(b) => {
            let _ = ws.ws.send(Message::binary(b)).await;
        }
        Send::Frames(frames) => {
            for f in frames {
                if ws.ws.send(Message::Frame(f)).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Checks the answer to one row; `row` names it in failures.
async fn check_answer(ws: &mut Ws, expect: Expect, row: &str) {
    match expect {
        Expect::Close(code) => {
            assert_eq!(ws.closed().await, Some(code), "{row}: close code");
            return;
        }
        Expect::Err400 => {
            let reply = ws.recv().await;
            assert_eq!(reply["type"], "err", "{row}: {reply}");
            assert!(reply.get("id").is_none(), "{row}: {reply}");
            assert_eq!(reply["payload"]["status"], 400, "{row}: {reply}");
            assert!(reply["payload"]["message"].is_string(), "{row}: {reply}");
        }
        Expect::Status {
            kind,
            id,
            status,
            cursor,
        } => {
            let reply = ws.recv().await;
            assert_eq!(reply["type"], json!(kind), "{row}: {reply}");
            assert_eq!(
                reply.get("id").cloned().unwrap_or(Value::Null),
                id,
                "{row}: {reply}"
            );
            assert_eq!(reply["payload"]["status"], status, "{row}: {reply}");
            assert!(reply["payload"]["message"].is_string(), "{row}: {reply}");
            if let Some(cursor) = cursor {
                assert_eq!(reply["payload"]["id"], cursor, "{row}: {reply}");
            }
        }
        Expect::Payload { kind, id, payload } => {
            let reply = ws.recv().await;
            assert_eq!(reply["type"], json!(kind), "{row}: {reply}");
            assert_eq!(reply["id"], id, "{row}: {reply}");
            assert_eq!(reply["payload"], payload, "{row}: {reply}");
        }
    }
    // Documented: the connection keeps serving.
    assert_eq!(
        ws.request("echo", json!({"still": "here"})).await,
        json!({"still": "here"}),
        "{row}: the socket stopped serving"
    );
}

/// Runs `rows`, each on its own device and connection, with the three checks.
async fn run_frame_rows(hub: &TestHub, rows: Vec<Row>) {
    let mut witness = Witness::start(hub).await;
    for (i, r) in rows.into_iter().enumerate() {
        let name = format!("row {i} ({})", r.name);
        let client = format!("hostile-{i}");
        let mut ws = hub.connect(&client).await;
        wait_recorded(hub, &client).await;
        for seq in &r.setup {
            let reply = ws.request("xadd", entry(seq, &["setup", "1"])).await;
            assert!(reply["id"].is_string(), "{name}: setup {seq}: {reply}");
        }
        let before = witness.snapshot(hub).await;
        send(&mut ws, r.send).await;
        check_answer(&mut ws, r.expect, &name).await;
        witness.assert_only_witness_wrote(hub, &before, &name).await;
    }
}

#[tokio::test]
async fn hostile_frames_get_their_documented_answer_and_change_nothing() {
    let hub = spawn_hub().await;
    run_frame_rows(&hub, frame_rows()).await;
}

/// serde's derived `Deserialize` also reads a struct from a JSON array,
/// positionally, so without a guard a frame `["xadd", "1", {...}]` would be
/// taken as an xadd request and appended, where PROTOCOL.md says a frame that
/// has no string `type` gets an `err` 400. The same goes for payloads and
/// entries.
#[tokio::test]
async fn json_arrays_are_not_frames_payloads_or_entries() {
    let hub = spawn_hub().await;
    run_frame_rows(
        &hub,
        vec![
            row(
                "a request written as an array",
                text(r#"["xadd","1",{"id":"1-0","fields":["k","v"]}]"#),
                Expect::Err400,
            ),
            row(
                "an xadd payload written as an array",
                request("xadd", "p", json!(["1-0", ["k", "v"]])),
                status("xadd", "p", 400),
            ),
            row(
                "an xadds entry written as an array",
                request("xadds", "p", json!({"entries": [["1-0", ["k", "v"]]]})),
                status("xadds", "p", 400),
            ),
            row(
                "a subscribe payload written as an array",
                request("subscribe", "p", json!(["0-0"])),
                status("subscribe", "p", 400),
            ),
        ],
    )
    .await;
}

/// The limit is 1 MiB, not less: a frame of exactly that size is appended.
#[tokio::test]
async fn a_frame_of_exactly_the_limit_is_accepted() {
    let hub = spawn_hub().await;
    let mut ws = hub.connect("dev-1").await;
    let frame = xadd_of_len(lula_protocol::limits::DEFAULT_MAX_FRAME_BYTES);
    ws.send_text(frame).await;
    let reply = ws.recv().await;
    assert_eq!(reply["id"], "big");
    assert!(reply["payload"]["id"].is_string(), "{reply}");
    assert_eq!(hub.range(&hub.keys.in_stream()).await.len(), 1);
}

// ---------------------------------------------------------------------------
// Ping flood

#[tokio::test]
async fn a_ping_flood_neither_stops_the_socket_nor_disturbs_other_devices() {
    /// Control frames each flooder sends at least.
    const PINGS: usize = 10_000;
    /// Entries the witness appends during the flood.
    const SYNCS: u64 = 30;
    let hub = spawn_hub().await;
    let mut witness = Witness::start(&hub).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut flooders = Vec::new();
    for f in 0..3 {
        let client = format!("hostile-pings-{f}");
        let mut ws = hub.connect(&client).await;
        wait_recorded(&hub, &client).await;
        let stop = stop.clone();
        flooders.push(tokio::spawn(async move {
            // Until the witness is done, and at least PINGS frames: the largest
            // control payloads, with unsolicited pongs among them.
            let mut sent = 0usize;
            while sent < PINGS || !stop.load(Ordering::Relaxed) {
                let payload = vec![(sent % 251) as u8; 125];
                let msg = if sent % 10 == 9 {
                    Message::Pong(payload.into())
                } else {
                    Message::Ping(payload.into())
                };
                ws.ws.feed(msg).await.unwrap();
                sent += 1;
                if sent.is_multiple_of(100) {
                    ws.ws.flush().await.unwrap();
                }
            }
            ws.ws.flush().await.unwrap();
            ws
        }));
    }
    let before = witness.snapshot(&hub).await;
    for _ in 0..SYNCS {
        witness.sync("during the ping flood").await;
    }
    stop.store(true, Ordering::Relaxed);
    for flood in flooders {
        let mut ws = flood.await.unwrap();
        // The flooded socket still answers, after the pongs it owes.
        ws.send_text(json!({"type": "echo", "id": "e", "payload": {"after": "flood"}}).to_string())
            .await;
        let mut pongs = 0;
        let reply = loop {
            let msg = tokio::time::timeout(HANG_GUARD, ws.ws.next())
                .await
                .expect("no reply after the flood")
                .expect("socket ended")
                .expect("socket error");
            match msg {
                Message::Pong(_) => pongs += 1,
                Message::Ping(_) => {}
                Message::Text(t) => break serde_json::from_str::<Value>(t.as_str()).unwrap(),
                other => panic!("unexpected frame {other:?}"),
            }
        };
        assert_eq!(reply["payload"], json!({"after": "flood"}), "{reply}");
        assert!(pongs > 0, "the hub answered no ping");
        assert_eq!(ws.request("id", json!({})).await["id"], "0-0");
    }
    witness
        .assert_only_witness_wrote(&hub, &before, "ping flood")
        .await;
}

// ---------------------------------------------------------------------------
// A device that never reads its replies

#[tokio::test]
async fn a_device_that_never_reads_its_replies_disturbs_no_one() {
    /// Malformed frames sent before reading a single reply: about 2 MB of
    /// `err` replies, more than the socket buffers hold, so the hub must stop
    /// reading from this device while serving the others.
    const FRAMES: usize = 20_000;
    let hub = spawn_hub().await;
    let mut witness = Witness::start(&hub).await;
    let hostile = hub.connect("hostile-deaf").await;
    wait_recorded(&hub, "hostile-deaf").await;
    let before = witness.snapshot(&hub).await;
    let (mut sink, mut stream) = hostile.ws.split();
    let sender = tokio::spawn(async move {
        for _ in 0..FRAMES {
            sink.feed(Message::text("not json")).await.unwrap();
        }
        sink.flush().await.unwrap();
    });
    for _ in 0..30 {
        witness.sync("while a device does not read").await;
    }
    // Every frame is answered, in order, once the device reads.
    let mut replies = 0;
    while replies < FRAMES {
        let msg = tokio::time::timeout(HANG_GUARD, stream.next())
            .await
            .expect("the replies stopped")
            .expect("socket ended")
            .expect("socket error");
        if let Message::Text(t) = msg {
            let reply: Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(reply["type"], "err", "{reply}");
            assert_eq!(reply["payload"]["status"], 400, "{reply}");
            replies += 1;
        }
    }
    sender.await.unwrap();
    witness
        .assert_only_witness_wrote(&hub, &before, "a device that does not read")
        .await;
}

// ---------------------------------------------------------------------------
// Slow upgrades

/// How a slow client starts its upgrade and never finishes it.
enum Slow {
    /// Sends these bytes, then nothing.
    Partial(Vec<u8>),
    /// Sends a request head one byte at a time, without ever ending it.
    Trickle,
}

#[tokio::test]
async fn upgrades_that_never_finish_are_cut_off_by_the_hub() {
    let hub = spawn_hub_with(|mut c| {
        // Short, so the test is quick; the default is 10 s.
        c.serve.header_read_timeout = Duration::from_millis(500);
        c
    })
    .await;
    let mut witness = Witness::start(&hub).await;
    let token = hub.token("hostile-slow").await;
    let rows = [
        ("connects and sends nothing", Slow::Partial(Vec::new())),
        ("half a request line", Slow::Partial(b"GET / HT".to_vec())),
        (
            "a request head without its blank line",
            Slow::Partial(b"GET / HTTP/1.1\r\nHost: hub\r\n".to_vec()),
        ),
        (
            "an upgrade with a valid token, never finished",
            Slow::Partial(
                format!(
                    "GET / HTTP/1.1\r\nHost: hub\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Authorization: Bearer {token}\r\n"
                )
                .into_bytes(),
            ),
        ),
        ("a head trickled one byte at a time", Slow::Trickle),
    ];
    for (name, slow) in rows {
        let before = witness.snapshot(&hub).await;
        let socket = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
        let (mut rd, mut wr) = socket.into_split();
        let writer = tokio::spawn(async move {
            match slow {
                Slow::Partial(bytes) => {
                    let _ = wr.write_all(&bytes).await;
                    // Holds the write half open: never finishes, never closes.
                    std::future::pending::<()>().await;
                }
                Slow::Trickle => {
                    let head = b"GET / HTTP/1.1\r\nHost: hub\r\nX-Slow: ";
                    for b in head.iter().chain(std::iter::repeat(&b'a')) {
                        if wr.write_all(&[*b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        // Other devices keep syncing while the slow upgrade holds its socket.
        witness.sync(name).await;
        // The hub hangs up by itself (with or without a 408 first), never upgrading.
        let mut answer = Vec::new();
        let read = tokio::time::timeout(HANG_GUARD, rd.read_to_end(&mut answer)).await;
        writer.abort();
        assert!(
            read.is_ok(),
            "{name}: the hub kept a half-sent upgrade open"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            !answer.starts_with("HTTP/1.1 101"),
            "{name}: upgraded: {answer}"
        );
        witness.assert_only_witness_wrote(&hub, &before, name).await;
    }
}

// ---------------------------------------------------------------------------
// Tokens

/// Base64url JSON, as in a JWT.
fn b64json(v: &Value) -> String {
    B64URL.encode(v.to_string())
}

/// Replaces the claims of `token`, keeping its header and signature.
fn with_claims(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64json(claims), parts[2])
}

/// How the token of a row is given.
enum Given {
    Bearer(String),
    Query(&'static str, String),
    Header(&'static str),
}

/// Tokens a hostile client might try, each with a live session record for
/// the sid it names (unless the row is about the session), so only the flaw
/// named stands between it and an upgrade.
async fn token_rows(hub: &TestHub) -> Vec<(&'static str, Given)> {
    let kid = hub.kid();
    let claims = |sub: &str, sid: &str| serde_json::to_value(hub.claims(sub, sid, 3600)).unwrap();
    let mut rows = Vec::new();

    hub.session("s-none", "hostile-t").await;
    for (alg, name) in [
        ("none", "alg none, no signature"),
        ("None", "alg None, no signature"),
        ("NONE", "alg NONE, no signature"),
    ] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
        let unsigned = format!(
            "{}.{}.",
            b64json(&header),
            b64json(&claims("hostile-t", "s-none"))
        );
        rows.push((name, Given::Bearer(unsigned)));
    }
    {
        // alg none with the original signature kept.
        let good = sign_with(
            hub.signing_key(),
            &kid,
            &hub.claims("hostile-t", "s-none", 3600),
        );
        let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
        let parts: Vec<&str> = good.split('.').collect();
        rows.push((
            "alg none with a signature",
            Given::Bearer(format!("{}.{}.{}", b64json(&header), parts[1], parts[2])),
        ));
    }
    {
        // Algorithm confusion: HS256 keyed with the published public key.
        let public = encode_public_key(&hub.signing_key().verifying_key().to_bytes());
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let claims = hub.claims("hostile-t", "s-none", 3600);
        let t = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        rows.push((
            "HS256 keyed with the published public key",
            Given::Bearer(t),
        ));
        let raw = hub.signing_key().verifying_key().to_bytes();
        let t = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&raw)).unwrap();
        rows.push(("HS256 keyed with the raw public key", Given::Bearer(t)));
    }
    {
        // A changed subject under the original signature; the session record
        // names the new subject, so only the signature can refuse it.
        hub.session("s-victim", "victim").await;
        let good = sign_with(
            hub.signing_key(),
            &kid,
            &hub.claims("hostile-t", "s-victim", 3600),
        );
        rows.push((
            "changed subject, original signature",
            Given::Bearer(with_claims(&good, &claims("victim", "s-victim"))),
        ));
        // An expired token with its expiry pushed forward.
        hub.session("s-old", "hostile-t").await;
        let expired = sign_with(
            hub.signing_key(),
            &kid,
            &hub.claims("hostile-t", "s-old", -60),
        );
        rows.push((
            "expiry pushed forward, original signature",
            Given::Bearer(with_claims(&expired, &claims("hostile-t", "s-old"))),
        ));
        rows.push(("expired", Given::Bearer(expired)));
        // A signature of another key and of no key at all.
        let unsigned = format!("{}.", good.rsplit_once('.').unwrap().0);
        rows.push(("signature removed", Given::Bearer(unsigned)));
        let mut flipped = good.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        rows.push((
            "signature with a changed byte",
            Given::Bearer(String::from_utf8(flipped).unwrap()),
        ));
    }
    {
        hub.session("s-foreign", "hostile-t").await;
        let foreign = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
        let c = hub.claims("hostile-t", "s-foreign", 3600);
        rows.push((
            "foreign signature under the published kid",
            Given::Bearer(sign_with(&foreign, &kid, &c)),
        ));
        let own = kid_for(&foreign.verifying_key().to_bytes());
        rows.push((
            "foreign signature under its own kid",
            Given::Bearer(sign_with(&foreign, &own, &c)),
        ));
        rows.push((
            "kid that is a path",
            Given::Bearer(sign_with(hub.signing_key(), "../../../etc/pwd", &c)),
        ));
        // A kid whose published key is not a key.
        let mut r = hub.redis().await;
        let _: () = redis::cmd("SET")
            .arg(hub.auth_keys.verify_key("broken-key-00000"))
            .arg("not a key")
            .query_async(&mut r)
            .await
            .unwrap();
        rows.push((
            "kid of a malformed published key",
            Given::Bearer(sign_with(hub.signing_key(), "broken-key-00000", &c)),
        ));
    }
    {
        // Right key, wrong claims.
        hub.session("s-claims", "hostile-t").await;
        let mut c = hub.claims("hostile-t", "s-claims", 3600);
        c.aud = "someone-else".into();
        rows.push((
            "wrong audience",
            Given::Bearer(sign_with(hub.signing_key(), &kid, &c)),
        ));
        let mut c = hub.claims("hostile-t", "s-claims", 3600);
        c.iss = "not-lula-auth".into();
        rows.push((
            "wrong issuer",
            Given::Bearer(sign_with(hub.signing_key(), &kid, &c)),
        ));
        let mut no_sub = claims("hostile-t", "s-claims");
        no_sub.as_object_mut().unwrap().remove("sub");
        let der = {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            hub.signing_key().to_pkcs8_der().unwrap()
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        let t = jsonwebtoken::encode(&header, &no_sub, &EncodingKey::from_ed_der(der.as_bytes()))
            .unwrap();
        rows.push(("no subject", Given::Bearer(t)));
        let mut bad_sub = claims("hostile-t", "s-claims");
        bad_sub["sub"] = json!("a:b{c}");
        let t = jsonwebtoken::encode(&header, &bad_sub, &EncodingKey::from_ed_der(der.as_bytes()))
            .unwrap();
        rows.push(("subject that is no client id", Given::Bearer(t)));
    }
    {
        // Sessions: revoked (logged out), never created, another device's.
        let revoked = hub.token("hostile-t").await;
        assert!(hub.connect_with_token(&revoked).await.is_ok());
        let claims: Value =
            serde_json::from_slice(&B64URL.decode(revoked.split('.').nth(1).unwrap()).unwrap())
                .unwrap();
        let sid = claims["sid"].as_str().unwrap();
        let mut r = hub.redis().await;
        let _: () = redis::cmd("DEL")
            .arg(hub.auth_keys.session(sid))
            .query_async(&mut r)
            .await
            .unwrap();
        rows.push(("revoked", Given::Bearer(revoked.clone())));
        rows.push((
            "revoked, as ?sessionToken=",
            Given::Query("sessionToken", revoked.clone()),
        ));
        rows.push((
            "revoked, as ?accessToken=",
            Given::Query("accessToken", revoked),
        ));
        rows.push((
            "no session record",
            Given::Bearer(sign_with(
                hub.signing_key(),
                &kid,
                &hub.claims("hostile-t", "s-never", 3600),
            )),
        ));
        hub.session("s-theirs", "other-device").await;
        rows.push((
            "another device's session",
            Given::Bearer(sign_with(
                hub.signing_key(),
                &kid,
                &hub.claims("hostile-t", "s-theirs", 3600),
            )),
        ));
    }
    // Not tokens at all.
    rows.push(("garbage", Given::Bearer("not.a.token".into())));
    rows.push(("one segment", Given::Bearer("abc".into())));
    rows.push(("empty segments", Given::Bearer("..".into())));
    rows.push(("100 KB of garbage", Given::Bearer("x".repeat(100_000))));
    rows.push((
        "garbage ?sessionToken=",
        Given::Query("sessionToken", "x".into()),
    ));
    rows.push(("empty bearer", Given::Header("Bearer ")));
    rows.push(("basic auth", Given::Header("Basic aGk6dGhlcmU=")));
    rows.push(("no token", Given::Header("")));
    rows
}

/// The hub's answer to an upgrade with `given`: its HTTP status and body.
async fn upgrade_with(hub: &TestHub, given: &Given) -> (u16, Option<Value>) {
    let url = match given {
        Given::Query(name, t) => format!("{}?{name}={t}", hub.url()),
        _ => hub.url(),
    };
    let mut req = url.into_client_request().unwrap();
    let auth = match given {
        Given::Bearer(t) => Some(format!("Bearer {t}")),
        Given::Header(h) if !h.is_empty() => Some((*h).to_owned()),
        _ => None,
    };
    if let Some(auth) = auth {
        req.headers_mut()
            .insert("authorization", auth.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => (101, None),
        Err(tungstenite::Error::Http(res)) => {
            let body = res
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok());
            (res.status().as_u16(), body)
        }
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

#[tokio::test]
async fn hostile_tokens_get_401_before_any_upgrade_and_change_nothing() {
    let hub = spawn_hub().await;
    let mut witness = Witness::start(&hub).await;
    let rows = token_rows(&hub).await;
    for (i, (name, given)) in rows.iter().enumerate() {
        let name = format!("row {i} ({name})");
        let before = witness.snapshot(&hub).await;
        let (status, body) = upgrade_with(&hub, given).await;
        assert_eq!(status, 401, "{name}");
        let body = body.unwrap_or_else(|| panic!("{name}: 401 without a JSON body"));
        assert_eq!(body["code"], "unauthorized", "{name}: {body}");
        assert!(body["message"].is_string(), "{name}: {body}");
        witness
            .assert_only_witness_wrote(&hub, &before, &name)
            .await;
    }
    // And the hub still lets a good token in.
    let good = hub.token("hostile-t").await;
    assert_eq!(upgrade_with(&hub, &Given::Bearer(good)).await.0, 101);
}
