//! The fleet view (`GET /fleet`, `lula-hub fleet`) and readiness while
//! draining, against real hubs, a real Redis and real WebSocket devices.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{entry, spawn_hub, spawn_hub_with};
use lula_hub::Config;
use lula_testkit::eventually;
use serde_json::{Value, json};

const ADMIN: &str = "admin-s3cret";
const WAIT: Duration = Duration::from_secs(60);

async fn get_fleet(addr: std::net::SocketAddr, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("http://{addr}/fleet{query}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("GET /fleet");
    let status = res.status().as_u16();
    (status, res.json().await.expect("a JSON body"))
}

fn device<'a>(fleet: &'a Value, client: &str) -> Option<&'a Value> {
    fleet["devices"]
        .as_array()?
        .iter()
        .find(|d| d["client"] == client)
}

fn lula_hub(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lula-hub"))
        .args(args)
        .output()
        .expect("run lula-hub")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_shows_where_each_device_is_how_far_it_got_and_what_went_wrong() {
    let hub = spawn_hub_with(|c| Config {
        hub_id: Some("hub-a".into()),
        admin_token: Some(ADMIN.to_owned().into()),
        ..c
    })
    .await;
    let (replica, _stop) = hub
        .spawn_replica_with(|c| Config {
            hub_id: Some("hub-b".into()),
            ..c
        })
        .await;

    // dev-1 on hub-a: sends three entries, receives two messages and acks them.
    let mut dev1 = hub.connect("dev-1").await;
    let r = dev1
        .request(
            "xadds",
            json!({"prev": "0-0", "entries": [entry("1-0", &["k", "a"]), entry("2-0", &["k", "b"]), entry("3-0", &["k", "c"])]}),
        )
        .await;
    assert_eq!(r["id"], "3-0");
    dev1.request("subscribe", json!({"id": "0-0"})).await;
    let mut conn = hub.redis().await;
    for i in 0..2 {
        let _: String = redis::cmd("XADD")
            .arg("lula-hub:out:dev-1:x")
            .arg("*")
            .arg("n")
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut last = String::new();
    let mut got = 0;
    while got < 2 {
        let push = dev1.recv().await;
        for e in push["payload"]["entries"].as_array().unwrap() {
            last = e["id"].as_str().unwrap().to_owned();
            got += 1;
        }
    }
    dev1.send_text(json!({"type": "ack", "payload": {"id": last}}).to_string())
        .await;

    // dev-2 on the replica, idle.
    let _dev2 = hub.connect_to(replica, "dev-2").await;

    // dev-3 sends garbage, then leaves; four messages wait for it.
    let mut dev3 = hub.connect("dev-3").await;
    dev3.send_text("not json").await;
    let err = dev3.recv().await;
    assert_eq!(err["payload"]["status"], 400);
    dev3.ws.close(None).await.unwrap();
    for i in 0..4 {
        let _: String = redis::cmd("XADD")
            .arg("lula-hub:out:dev-3:x")
            .arg("*")
            .arg("n")
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    // Written in the background, the cursor within fleet::WRITE_EVERY.
    let fleet = eventually("the fleet view to show all three", WAIT, || async {
        let (status, fleet) = get_fleet(hub.admin, "", Some(ADMIN)).await;
        assert_eq!(status, 200, "{fleet}");
        let d1 = device(&fleet, "dev-1")?;
        let d3 = device(&fleet, "dev-3")?;
        device(&fleet, "dev-2")?;
        (d1["downstreamCursor"] == last.as_str() && d3["state"] == "disconnected")
            .then_some(fleet.clone())
    })
    .await;
    let d1 = device(&fleet, "dev-1").unwrap();
    assert_eq!(d1["state"], "connected");
    assert_eq!(d1["hub"], "hub-a");
    assert_eq!(d1["upstreamCursor"], "3-0");
    assert_eq!(d1["downstreamBacklog"], 0);
    assert_eq!(d1["lastError"], Value::Null);
    let d2 = device(&fleet, "dev-2").unwrap();
    assert_eq!(d2["state"], "connected");
    assert_eq!(
        d2["hub"], "hub-b",
        "the replica holding it, read from Redis"
    );
    assert_eq!(d2["upstreamCursor"], "0-0");
    let d3 = device(&fleet, "dev-3").unwrap();
    assert_eq!(d3["downstreamBacklog"], 4);
    assert_eq!(d3["downstreamCursor"], Value::Null);
    assert_eq!(d3["lastClose"], "closed by the device");
    assert!(
        d3["lastError"]
            .as_str()
            .unwrap()
            .contains("unparseable frame"),
        "{d3}"
    );
    assert!(d3["lastSeen"].as_u64().unwrap() > 0);

    // dev-3's connection ended all the way (its writer too): only dev-1 is
    // counted on hub-a.
    eventually("dev-3's connection to end", WAIT, || async {
        let text = reqwest::get(format!("http://{}/metrics", hub.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l == "lula_hub_connections 1")
            .then_some(())
    })
    .await;

    // One device; refusals with JSON bodies.
    let (status, one) = get_fleet(hub.admin, "?client=dev-2", Some(ADMIN)).await;
    assert_eq!(status, 200);
    assert_eq!(one["devices"].as_array().unwrap().len(), 1);
    let (status, body) = get_fleet(hub.admin, "", None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = get_fleet(hub.admin, "", Some("admin-s3creT")).await;
    assert_eq!(status, 401);
    let (status, body) = get_fleet(hub.admin, "?client=no%20such", Some(ADMIN)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
    let (status, body) = get_fleet(replica, "", Some(ADMIN)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "a hub without an admin token exposes no fleet"
    );

    // The command reads the same from Redis.
    let url = hub.redis.url();
    let out = lula_hub(&["fleet", "--redis-url", &url, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(device(&cli, "dev-3").unwrap()["downstreamBacklog"], 4);
    assert_eq!(device(&cli, "dev-2").unwrap()["hub"], "hub-b");
    let out = lula_hub(&["fleet", "--redis-url", &url]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("CLIENT"), "{table}");
    let row = table.lines().find(|l| l.starts_with("dev-3")).unwrap();
    assert!(row.contains("disconnected") && row.contains("4"), "{row}");
    let out = lula_hub(&["fleet", "--redis-url", &url, "dev-9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no hub has seen device dev-9"));

    // A device marked connected by a hub that stopped writing (killed) is lost.
    let old = lula_hub::fleet::now_ms() - 10 * 60 * 1000;
    let () = redis::cmd("HSET")
        .arg("lula-hub:device:dev-7:h")
        .arg("owner")
        .arg("hub-z/1")
        .arg("hub")
        .arg("hub-z")
        .arg("connected")
        .arg("1")
        .arg("heartbeat")
        .arg(old)
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = redis::cmd("ZADD")
        .arg("lula-hub:devices:z")
        .arg(old)
        .arg("dev-7")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (_, fleet) = get_fleet(hub.admin, "", Some(ADMIN)).await;
    assert_eq!(device(&fleet, "dev-7").unwrap()["state"], "lost");
    // Most recently seen first: the long-gone device is last.
    assert_eq!(
        fleet["devices"].as_array().unwrap().last().unwrap()["client"],
        "dev-7"
    );
    let (_, fleet) = get_fleet(hub.admin, "?limit=2", Some(ADMIN)).await;
    assert_eq!(fleet["devices"].as_array().unwrap().len(), 2);
}

/// `client`'s upstream backlog and its time, once the view shows `want`.
async fn wait_upstream_backlog(admin: std::net::SocketAddr, client: &str, want: Value) -> Value {
    let what = format!("{client}'s upstream backlog to show {want}");
    eventually(&what, WAIT, || {
        let want = want.clone();
        async move {
            let (_, fleet) = get_fleet(admin, &format!("?client={client}"), Some(ADMIN)).await;
            let d = device(&fleet, client)?.clone();
            (d["upstreamBacklog"] == want).then_some(d)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_shows_the_upstream_backlog_devices_report_and_unknown_for_the_rest() {
    let hub = spawn_hub_with(|c| Config {
        admin_token: Some(ADMIN.to_owned().into()),
        ..c
    })
    .await;
    let before = lula_hub::fleet::now_ms();
    let mut dev = hub.connect("dev-1").await;
    // Applied: the device's own figure.
    let r = dev
        .request(
            "xadds",
            json!({"prev": "0-0", "entries": [entry("1-0", &["k", "a"]), entry("2-0", &["k", "b"])], "backlog": 5}),
        )
        .await;
    assert_eq!(r["id"], "2-0");
    let d = wait_upstream_backlog(hub.admin, "dev-1", json!(5)).await;
    assert!(d["upstreamBacklogAt"].as_u64().unwrap() >= before, "{d}");
    // Refused (a gap: nothing of it written): its own entries wait too.
    let r = dev
        .request(
            "xadds",
            json!({"prev": "8-0", "entries": [entry("9-0", &["k", "x"]), entry("10-0", &["k", "y"])], "backlog": 7}),
        )
        .await;
    assert_eq!(r["status"], 409, "{r}");
    wait_upstream_backlog(hub.admin, "dev-1", json!(9)).await;
    // A batch without the field (an older client) leaves the last figure.
    dev.request(
        "xadds",
        json!({"prev": "2-0", "entries": [entry("3-0", &["k", "c"])]}),
    )
    .await;
    // The last batch of a drain says 0.
    let r = dev
        .request(
            "xadds",
            json!({"prev": "3-0", "entries": [entry("4-0", &["k", "d"])], "backlog": 0}),
        )
        .await;
    assert_eq!(r["id"], "4-0");
    wait_upstream_backlog(hub.admin, "dev-1", json!(0)).await;
    // A figure reported just before the device leaves is not lost: written
    // at once, when due, or with the close if that comes first.
    dev.request(
        "xadds",
        json!({"prev": "4-0", "entries": [entry("5-0", &["k", "e"])], "backlog": 12}),
    )
    .await;
    dev.ws.close(None).await.unwrap();
    let d = wait_upstream_backlog(hub.admin, "dev-1", json!(12)).await;
    // Not a guess of the hub's: a count is a count.
    let r = hub
        .connect("dev-3")
        .await
        .request(
            "xadds",
            json!({"entries": [entry("1-0", &["k", "a"])], "backlog": "lots"}),
        )
        .await;
    assert_eq!(r["status"], 400, "{r}");
    eventually("dev-1's close to be written", WAIT, || async {
        let (_, fleet) = get_fleet(hub.admin, "?client=dev-1", Some(ADMIN)).await;
        (device(&fleet, "dev-1")?["state"] == "disconnected").then_some(())
    })
    .await;
    assert!(d["upstreamBacklogAt"].as_u64().unwrap() >= before, "{d}");

    // A device that never reports it (the Node lula-client sends `xadd`):
    // unknown, not zero.
    let mut node = hub.connect("dev-2").await;
    let r = node.request("xadd", entry("1-0", &["k", "a"])).await;
    assert!(r["id"].is_string(), "{r}");
    let fleet = eventually("dev-2 in the fleet view", WAIT, || async {
        let (_, fleet) = get_fleet(hub.admin, "", Some(ADMIN)).await;
        device(&fleet, "dev-2")?;
        Some(fleet)
    })
    .await;
    let d2 = device(&fleet, "dev-2").unwrap();
    assert_eq!(d2["upstreamBacklog"], Value::Null, "{d2}");
    assert_eq!(d2["upstreamBacklogAt"], Value::Null, "{d2}");

    // The command shows the same: the figure, and `-` for unknown.
    let url = hub.redis.url();
    let out = lula_hub(&["fleet", "--redis-url", &url, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(device(&cli, "dev-1").unwrap()["upstreamBacklog"], 12);
    assert_eq!(
        device(&cli, "dev-2").unwrap()["upstreamBacklog"],
        Value::Null
    );
    let out = lula_hub(&["fleet", "--redis-url", &url]);
    let table = String::from_utf8(out.stdout).unwrap();
    let header = table.lines().next().unwrap();
    let column = header.find("UP BACKLOG").expect("an UP BACKLOG column");
    let cell = |client: &str| {
        let row = table.lines().find(|l| l.starts_with(client)).unwrap();
        row[column..].split_whitespace().next().unwrap().to_owned()
    };
    assert_eq!(cell("dev-1 "), "12", "{table}");
    assert_eq!(cell("dev-2 "), "-", "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_connection_closing_late_does_not_mark_its_device_gone() {
    let mut hub = spawn_hub().await;
    let (replica, _stop) = hub
        .spawn_replica_with(|c| Config {
            admin_token: Some(ADMIN.to_owned().into()),
            ..c
        })
        .await;
    let mut first = hub.connect("dev-1").await;
    let _second = hub.connect_to(replica, "dev-1").await;
    assert_eq!(first.closed().await, Some(4002));
    // The first connection's close is written after the second's connect.
    // Once its hub has stopped, every write it had in flight is done (it
    // waits for its tasks); the device must still show as connected, through
    // the replica.
    hub.shutdown.cancel();
    let task = std::mem::replace(&mut hub.task, tokio::spawn(async { Ok(()) }));
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the first hub to stop")
        .unwrap()
        .unwrap();
    let (_, fleet) = get_fleet(replica, "?client=dev-1", Some(ADMIN)).await;
    let d = device(&fleet, "dev-1").unwrap();
    assert_eq!(d["state"], "connected", "{d}");
    assert!(
        d["hub"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", replica.port())),
        "{d}"
    );
    assert_eq!(d["lastClose"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn told_to_stop_a_hub_reports_not_ready_while_it_drains_then_stops() {
    let hub = spawn_hub_with(|c| Config {
        serve: lula_runtime::ServeOptions {
            drain_delay: Duration::from_secs(2),
            ..c.serve
        },
        ..c
    })
    .await;
    let readyz = || async {
        let res = reqwest::get(format!("http://{}/readyz", hub.admin))
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap())
    };
    let ready = eventually("the hub ready", WAIT, || async {
        let (status, _) = readyz().await;
        (status == 200).then_some(())
    });
    ready.await;
    let mut device = hub.connect("dev-1").await;
    hub.shutdown.cancel();
    let (status, body) = readyz().await;
    assert_eq!((status, body["code"].as_str()), (503, Some("draining")));
    let health = reqwest::get(format!("http://{}/healthz", hub.admin))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "alive while draining");
    // Then it stops: devices are told to go elsewhere.
    assert_eq!(device.closed().await, Some(1001));
    tokio::time::timeout(WAIT, hub.task)
        .await
        .expect("stops after the drain delay")
        .unwrap()
        .unwrap();
}
