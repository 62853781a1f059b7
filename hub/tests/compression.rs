//! Compressed frames against a real hub (issue 16, `PROTOCOL.md`,
//! "Compression"): a client that asks gets batches up, replies and pushes down
//! as compressed binary frames; one that does not ask gets today's text
//! frames; and hostile compressed frames (a zip bomb, one that lies about its
//! size, a truncated one) get the documented close with nothing written.

mod common;

use std::collections::BTreeMap;

use common::{TestHub, Ws, entry, spawn_hub, spawn_hub_with};
use flate2::{Compress, Compression, FlushCompress};
use futures_util::{SinkExt, StreamExt};
use lula_protocol::compress::{self, Decoder, Encoder, FORMAT_DEFLATE, Params};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A connection that asked for compression, with both histories.
struct Compressed {
    ws: Ws,
    params: Option<Params>,
    enc: Encoder,
    dec: Decoder,
    next_id: u64,
}

async fn upgrade(hub: &TestHub, client: &str, offer: Option<&str>) -> (Ws, Option<Params>) {
    let token = hub.token(client).await;
    let mut req = hub.url().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(offer) = offer {
        req.headers_mut()
            .insert(compress::HEADER, offer.parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::connect_async(req).await.unwrap();
    let agreed = response
        .headers()
        .get(compress::HEADER)
        .map(|v| Params::parse(v.to_str().unwrap()).expect("a valid answer"));
    (Ws::from(ws), agreed)
}

impl Compressed {
    async fn connect(hub: &TestHub, client: &str) -> Self {
        Self::connect_offering(hub, client, "deflate; window-bits=11").await
    }

    async fn connect_offering(hub: &TestHub, client: &str, offer: &str) -> Self {
        let (ws, params) = upgrade(hub, client, Some(offer)).await;
        let p = params.unwrap_or(Params::new(11).unwrap());
        Compressed {
            ws,
            params,
            enc: Encoder::new(p),
            dec: Decoder::new(p, 1 << 20),
            next_id: 1,
        }
    }

    async fn send_raw(&mut self, frame: Vec<u8>) {
        self.ws
            .ws
            .send(Message::Binary(frame.into()))
            .await
            .unwrap();
    }

    async fn send(&mut self, frame: Value) {
        let frame = self.enc.encode(frame.to_string().as_bytes());
        self.send_raw(frame).await;
    }

    /// The next data frame, which must be compressed, as sent and inflated.
    async fn recv_wire(&mut self) -> (Vec<u8>, Vec<u8>) {
        loop {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(10), self.ws.ws.next())
                .await
                .expect("a frame within 10 s (hang guard)")
                .expect("socket open")
                .expect("no socket error");
            match msg {
                Message::Binary(b) => {
                    let plain = self.dec.decode(&b).expect("inflates");
                    return (b.to_vec(), plain);
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a compressed frame, got {other:?}"),
            }
        }
    }

    /// The next data frame, which must be compressed, as JSON.
    async fn recv(&mut self) -> Value {
        let (_, plain) = self.recv_wire().await;
        serde_json::from_slice(&plain).unwrap()
    }

    async fn request(&mut self, kind: &str, payload: Value) -> Value {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send(json!({"type": kind, "id": id, "payload": payload}))
            .await;
        loop {
            let reply = self.recv().await;
            if reply["id"] == json!(id) {
                return reply["payload"].clone();
            }
        }
    }
}

#[tokio::test]
async fn batches_up_replies_and_pushes_down_travel_compressed() {
    let hub = spawn_hub().await;
    let mut c = Compressed::connect(&hub, "dev-z").await;
    assert_eq!(
        c.params,
        Params::new(compress::DEFAULT_WINDOW_BITS),
        "the hub answers the offer of 11 bits, capped at its default maximum"
    );
    let entries: Vec<Value> = (1..=20)
        .map(|i| {
            entry(
                &format!("{i}-0"),
                &["temp", &format!("{}.5", 20 + i % 3), "unit", "C"],
            )
        })
        .collect();
    let reply = c
        .request("xadds", json!({"prev": "0-0", "entries": entries}))
        .await;
    assert_eq!(reply["added"], json!(20), "{reply}");
    assert_eq!(hub.range(&hub.keys.in_stream()).await.len(), 20);

    let mut redis = hub.redis().await;
    let _: String = redis::cmd("XADD")
        .arg(hub.keys.out_stream(&"dev-z".parse().unwrap()))
        .arg("*")
        .arg("cmd")
        .arg("reboot")
        .query_async(&mut redis)
        .await
        .unwrap();
    c.request("subscribe", json!({"id": "0-0"})).await;
    let push = loop {
        let frame = c.recv().await;
        if frame["type"] == "push" && frame["payload"]["stream"].is_null() {
            break frame;
        }
    };
    assert_eq!(
        push["payload"]["entries"][0]["fields"],
        json!(["cmd", "reboot"])
    );
}

/// `copies` times the same 4 KiB of hex digits: repeats 4 KiB apart, which
/// only a frame window wider than the default 1 KiB history can reach.
fn far_repeats(copies: usize) -> String {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let block: String = (0..256)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            format!("{seed:016x}")
        })
        .collect();
    block.repeat(copies)
}

#[tokio::test]
async fn a_wider_frame_window_is_agreed_when_asked_and_used_both_ways() {
    let hub = spawn_hub().await;
    let offer = Params::offer(compress::DEFAULT_WINDOW_BITS).unwrap();
    let mut c = Compressed::connect_offering(&hub, "dev-wide", &offer.to_string()).await;
    assert_eq!(c.params, Some(offer), "agreed as lula-client offers it");

    // Up: a batch whose repeats lie 4 KiB apart.
    let value = far_repeats(3);
    let entries = vec![entry("1-0", &["blob", &value])];
    let reply = c
        .request("xadds", json!({"prev": "0-0", "entries": entries}))
        .await;
    assert_eq!(reply["added"], json!(1), "{reply}");
    let stored = hub.range(&hub.keys.in_stream()).await;
    assert_eq!(stored.len(), 1);

    // Down: the hub's push reaches the same repeats (a 1 KiB window finds
    // none in this frame, and the frame would go as text).
    let mut redis = hub.redis().await;
    let _: String = redis::cmd("XADD")
        .arg(hub.keys.out_stream(&"dev-wide".parse().unwrap()))
        .arg("*")
        .arg("blob")
        .arg(&value)
        .query_async(&mut redis)
        .await
        .unwrap();
    let id = c.next_id.to_string();
    c.next_id += 1;
    let subscribe = json!({"type": "subscribe", "id": id, "payload": {"id": "0-0"}});
    c.send(subscribe).await;
    loop {
        // A push that did not shrink would come as text, and fail here.
        let (wire, plain) = c.recv_wire().await;
        let frame: Value = serde_json::from_slice(&plain).unwrap();
        if frame["type"] == "push" {
            assert_eq!(frame["payload"]["entries"][0]["fields"][1], json!(value));
            assert!(
                wire.len() * 2 < plain.len(),
                "the push used the far repeats: {} of {} bytes",
                wire.len(),
                plain.len()
            );
            break;
        }
    }
}

#[tokio::test]
async fn a_client_that_does_not_ask_gets_text_frames_as_before() {
    let hub = spawn_hub().await;
    let (mut ws, agreed) = upgrade(&hub, "dev-plain", None).await;
    assert_eq!(agreed, None);
    // `Ws::request` panics on anything but a text frame.
    let reply = ws
        .request(
            "xadds",
            json!({"prev": "0-0", "entries": [entry("1-0", &["a", "b"])]}),
        )
        .await;
    assert_eq!(reply["added"], json!(1));
    let (_, agreed) = upgrade(&hub, "dev-zstd", Some("zstd")).await;
    assert_eq!(agreed, None, "an offer of another codec is declined");
}

#[tokio::test]
async fn compression_turned_off_on_the_hub_answers_no_offer() {
    let hub = spawn_hub_with(|mut c| {
        c.compression_window_bits = None;
        c
    })
    .await;
    let (mut ws, agreed) = upgrade(&hub, "dev-off", Some("deflate")).await;
    assert_eq!(agreed, None);
    let reply = ws.request("id", Value::Null).await;
    assert_eq!(reply["id"], json!("0-0"));
}

/// Raw deflate of `mib` MiB of zeros as a compressed frame stating `declared`
/// bytes: one compressed MiB, then the same bytes for every further MiB (after
/// the first, the compressor's state is the same at every sync point).
fn zero_bomb(mib: usize, declared: u64) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::best(), false, 11);
    let zeros = vec![0u8; 1 << 20];
    let mut chunk = || {
        let mut out = Vec::with_capacity(4 << 10);
        let start = c.total_in();
        while ((c.total_in() - start) as usize) < zeros.len() || out.len() == out.capacity() {
            out.reserve(4 << 10);
            let done = (c.total_in() - start) as usize;
            c.compress_vec(&zeros[done..], &mut out, FlushCompress::Sync)
                .unwrap();
        }
        out
    };
    let first = chunk();
    let rest = chunk();
    let mut frame = vec![FORMAT_DEFLATE];
    let mut n = declared;
    while n >= 0x80 {
        frame.push((n as u8) | 0x80);
        n >>= 7;
    }
    frame.push(n as u8);
    frame.extend_from_slice(&first);
    for _ in 1..mib {
        frame.extend_from_slice(&rest);
    }
    frame
}

/// Everything in the hub's Redis but the fleet hashes and index, which every
/// connection writes (`hostile.rs` explains them): key, type and `DUMP`.
async fn snapshot(hub: &TestHub) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut c = hub.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    let fleet = format!("{}:device:", hub.keys.prefix());
    let mut snap = BTreeMap::new();
    for key in keys {
        if key.starts_with(&fleet) || key == hub.keys.devices() {
            continue;
        }
        let dump: Option<Vec<u8>> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        snap.insert(key, dump);
    }
    snap
}

/// Sends `frame` after a good compressed batch, expects the socket closed with
/// `code`, and Redis as it was after the good batch.
async fn refused(
    hub: &TestHub,
    client: &str,
    frame: impl FnOnce(&mut Encoder) -> Vec<u8>,
    code: u16,
) {
    let mut c = Compressed::connect(hub, client).await;
    let good = c
        .request(
            "xadds",
            json!({"prev": "0-0", "entries": [entry("1-0", &["k", "v"])]}),
        )
        .await;
    assert_eq!(good["added"], json!(1));
    let before = snapshot(hub).await;
    let frame = frame(&mut c.enc);
    c.send_raw(frame).await;
    assert_eq!(c.ws.closed().await, Some(code), "{client}");
    assert_eq!(snapshot(hub).await, before, "{client}: nothing written");
}

#[tokio::test]
async fn a_zip_bomb_is_refused_with_1009_and_nothing_written() {
    // A frame limit of 2 MiB lets the 1 GiB bomb (about 1 MB compressed)
    // reach the inflater, which must refuse it by its stated size.
    let hub = spawn_hub_with(|mut c| {
        c.max_frame_bytes = 2 << 20;
        c
    })
    .await;
    refused(&hub, "dev-bomb", |_| zero_bomb(1024, 1 << 30), 1009).await;
}

#[tokio::test]
async fn a_lying_bomb_and_a_truncated_frame_close_with_1007_and_write_nothing() {
    let hub = spawn_hub().await;
    // Says 1,000 bytes, inflates to 64 MiB: stopped one byte past 1,000.
    refused(&hub, "dev-liar", |_| zero_bomb(64, 1_000), 1007).await;
    // A real batch, cut in half.
    let batch = json!({"type": "xadds", "id": "9", "payload": {"prev": "1-0", "entries": [
        entry("2-0", &["k", "v2"]), entry("3-0", &["k", "v3"])]}});
    refused(
        &hub,
        "dev-cut",
        |enc| {
            let frame = enc.encode(batch.to_string().as_bytes());
            frame[..frame.len() / 2].to_vec()
        },
        1007,
    )
    .await;
}
