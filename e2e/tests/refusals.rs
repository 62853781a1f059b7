//! A hub that keeps refusing never turns into a reconnect loop, and a
//! refusal of one direction does not stop the other (issue 13). The hub here
//! is a small WebSocket server of the test's own that answers as told (a real
//! lula-auth logs the device in), so the refusal is the same every time.
//!
//! The only timing assertions are upper bounds on how often something was
//! tried, i.e. lower bounds on waiting; timeouts are hang guards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lula_e2e::{Cloud, Device, field};
use lula_protocol::limits::MAX_ENTRY_VALUES;
use lula_testkit::eventually;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(120);

/// How the test's hub answers.
#[derive(Clone, Copy)]
enum Mode {
    /// Every `xadds` gets a 507; after `subscribe`, one direct message.
    RefuseXadds,
    /// After `subscribe`, a push with an entry of 1,025 pairs, which a
    /// client refuses ("bad push"), as a hub without set-aside does.
    WidePush,
    /// Takes markers; refuses (400, naming it) any entry with a field
    /// `poison`, takes the rest.
    RefuseEntry,
}

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    xadds: AtomicU64,
    ids: AtomicU64,
    acks: AtomicU64,
    /// (RefuseEntry) what was taken: (id, was a marker), and the cursor.
    taken: std::sync::Mutex<(Vec<(String, bool)>, String)>,
}

/// (RefuseEntry) the reply to a batch: a 400 naming a poisoned entry, or
/// the entries taken.
fn take_batch(counts: &Counts, id: &Value, entries: &[Value]) -> Value {
    let poisoned = entries.iter().find(|e| {
        e["fields"]
            .as_array()
            .is_some_and(|f| f.iter().any(|v| v == "poison"))
    });
    if let Some(e) = poisoned {
        return json!({"type": "xadds", "id": id, "payload": {
            "status": 400, "message": "poisoned entry", "entry": e["id"]}});
    }
    let mut taken = counts.taken.lock().unwrap();
    let markers = entries
        .iter()
        .filter(|e| e.get("setAside").is_some())
        .count();
    for e in entries {
        let id = e["id"].as_str().unwrap().to_owned();
        taken.0.push((id.clone(), e.get("setAside").is_some()));
        taken.1 = id;
    }
    json!({"type": "xadds", "id": id, "payload": {"id": taken.1,
        "added": entries.len() - markers, "duplicates": 0, "setAside": markers}})
}

/// Starts the test's hub; returns its ws:// URL and what it counts.
async fn fake_hub(mode: Mode) -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                c.connections.fetch_add(1, Ordering::SeqCst);
                serve(ws, mode, &c).await;
            });
        }
    });
    (url, counts)
}

async fn serve(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    mode: Mode,
    counts: &Counts,
) {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        let id = frame["id"].clone();
        let mut replies = Vec::new();
        match frame["type"].as_str().unwrap() {
            "id" => {
                counts.ids.fetch_add(1, Ordering::SeqCst);
                let cursor = counts.taken.lock().unwrap().1.clone();
                let cursor = if cursor.is_empty() {
                    "0-0".into()
                } else {
                    cursor
                };
                replies.push(json!({"type": "id", "id": id, "payload": {
                    "id": cursor, "maxFrameBytes": 1 << 20, "maxBatchEntries": 1000,
                    "maxEntryValues": MAX_ENTRY_VALUES,
                    "setAside": matches!(mode, Mode::RefuseEntry)}}));
            }
            "subscribe" => {
                replies.push(json!({"type": "subscribe", "id": id,
                    "payload": {"id": frame["payload"]["id"]}}));
                let fields: Vec<String> = match mode {
                    Mode::RefuseXadds | Mode::RefuseEntry => vec!["cmd".into(), "hello".into()],
                    Mode::WidePush => (0..MAX_ENTRY_VALUES + 2).map(|i| i.to_string()).collect(),
                };
                replies.push(json!({"type": "push", "payload": {
                    "entries": [{"id": "5-0", "fields": fields}]}}));
            }
            "xadds" if matches!(mode, Mode::RefuseEntry) => {
                counts.xadds.fetch_add(1, Ordering::SeqCst);
                let entries = frame["payload"]["entries"].as_array().unwrap();
                replies.push(take_batch(counts, &id, entries));
            }
            "xadds" => {
                counts.xadds.fetch_add(1, Ordering::SeqCst);
                replies.push(json!({"type": "xadds", "id": id,
                    "payload": {"status": 507, "message": "full"}}));
            }
            "ack" => {
                counts.acks.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        for r in replies {
            if ws.send(Message::text(r.to_string())).await.is_err() {
                return;
            }
        }
    }
}

async fn device_on(cloud: &Cloud, hub_url: String) -> Device {
    let mut device = Device::new(cloud, "dev-1", &cloud.provision("dev-1").await);
    device.config.hub_url = hub_url;
    device.config.min_backoff = Duration::from_millis(100);
    device.config.max_backoff = Duration::from_secs(5);
    device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_pauses_on_the_same_connection_while_messages_still_arrive() {
    let cloud = Cloud::start().await;
    let (url, counts) = fake_hub(Mode::RefuseXadds).await;
    let mut device = device_on(&cloud, url).await;
    device.produce(0, 5).await;
    device.start();
    eventually(
        "the direct message, stored and acknowledged",
        WAIT,
        || async {
            let stored = device.in_entries().await.iter().any(|e| {
                field(e, "seq") == Some(b"5-0".as_slice()) && field(e, "cmd") == Some(b"hello")
            });
            (stored && counts.acks.load(Ordering::SeqCst) >= 1).then_some(())
        },
    )
    .await;
    // Upstream is refused again and again, resuming from `id` each time...
    eventually("three refused attempts", WAIT, || async {
        (counts.xadds.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    // ...on the one connection it opened,
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
    assert!(
        counts.ids.load(Ordering::SeqCst) >= 3,
        "resumes ask for the cursor"
    );
    // with a backoff (100 ms doubling to 5 s): a handful of tries, not
    // hundreds. Without one, a 507 round trip takes a few milliseconds.
    let tries = counts.xadds.load(Ordering::SeqCst);
    assert!(tries <= 15, "{tries} refused batches in {elapsed:?}");
    let status = device.status().await;
    assert!(status.connected);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("507")),
        "{:?}",
        status.last_error
    );
    device.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_client_refuses_is_retried_with_a_growing_backoff_not_a_reconnect_loop() {
    let cloud = Cloud::start().await;
    let (url, counts) = fake_hub(Mode::WidePush).await;
    let device = device_on(&cloud, url).await;
    let mut device = device;
    device.start();
    eventually("the first connection", WAIT, || async {
        (counts.connections.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let elapsed = started.elapsed();
    // The issue saw 8-10 connects a second (40 in 4 s) because each connect
    // reset the backoff; delays from 100 ms doubling to 5 s allow a handful.
    let n = counts.connections.load(Ordering::SeqCst);
    assert!(n <= 12, "{n} connections in {elapsed:?}");
    // The status names the problem. Waited for, not read once: each new
    // session clears `lastError` until its push is refused again.
    eventually("the refusal named in the status", WAIT, || async {
        let error = device.status().await.last_error;
        error.filter(|e| e.contains("1025 fields"))
    })
    .await;
    device.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_hub_refuses_by_id_is_set_aside_and_the_rest_goes_on() {
    let cloud = Cloud::start().await;
    let (url, counts) = fake_hub(Mode::RefuseEntry).await;
    let mut device = device_on(&cloud, url).await;
    let mut ids = Vec::new();
    let mut conn = device.conn().await;
    for fields in [["n", "1"], ["poison", "1"], ["n", "3"]] {
        let id: String = redis::cmd("XADD")
            .arg(device.keys.out_stream())
            .arg("*")
            .arg(&fields[..])
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.push(id);
    }
    device.start();
    eventually(
        "the three entries, the refused one as a marker",
        WAIT,
        || async { (counts.taken.lock().unwrap().0.len() == 3).then_some(()) },
    )
    .await;
    let taken = counts.taken.lock().unwrap().0.clone();
    let want: Vec<(String, bool)> = vec![
        (ids[0].clone(), false),
        (ids[1].clone(), true),
        (ids[2].clone(), false),
    ];
    assert_eq!(taken, want);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
    let dead = lula_e2e::read_all(&mut conn, "lula-client:dead:x").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id.to_string(), ids[1]);
    let reason = String::from_utf8_lossy(&dead[0].fields[1]).into_owned();
    assert!(reason.contains("poisoned entry"), "{reason}");
    assert_eq!(&dead[0].fields[2..], [b"poison".to_vec(), b"1".to_vec()]);
    eventually("the status to count it", WAIT, || async {
        (device.status().await.set_aside_up == 1).then_some(())
    })
    .await;
    device.stop().await.unwrap();
}
