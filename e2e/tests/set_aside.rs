//! Entries past a limit are set aside, once, and the streams move on (issue
//! 13): a broadcast or direct message with more field pairs than a device
//! takes goes to `lula-hub:dead:x` and the device gets a marker; a device
//! entry with more pairs or bytes than the hub puts together from parts
//! goes to `lula-client:dead:x` and the hub gets a marker. Everything behind such an entry arrives once,
//! in order, without a reconnect loop. Timeouts are hang guards, never speed
//! checks.

use std::time::Duration;

use lula_e2e::{Cloud, CloudOptions, Device, check_downstream, field, read_all};
use lula_protocol::limits::MAX_ENTRY_VALUES;
use lula_protocol::{Entry, StreamId};
use lula_testkit::eventually;

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(120);

/// One pair past the limit: 1,025 pairs.
fn wide_fields() -> Vec<(&'static str, String)> {
    let pairs = MAX_ENTRY_VALUES / 2 + 1;
    (0..pairs).map(|i| ("k", format!("v{i}"))).collect()
}

/// A cloud whose hub puts together entries of at most 1,024 pairs and
/// 1,000,000 bytes from parts: `wide_fields` and a 1.1 MB field are past
/// it, so the device sets them aside (by default the hub takes 100,000
/// pairs and 64 MiB, and `e2e/tests/parts.rs` shows them carried).
async fn cloud_with_small_limits() -> Cloud {
    Cloud::start_with(CloudOptions {
        part_limits: Some(lula_protocol::parts::PartLimits {
            max_values: MAX_ENTRY_VALUES,
            max_bytes: 1_000_000,
        }),
        ..CloudOptions::default()
    })
    .await
}

/// One pair past what lula-client puts together from parts (100,000
/// pairs): a message the hub must set aside. Narrower ones are carried
/// (`e2e/tests/parts.rs`).
fn too_wide_fields() -> Vec<(&'static str, String)> {
    let pairs = lula_protocol::limits::DEFAULT_MAX_PART_VALUES / 2 + 1;
    (0..pairs).map(|i| ("k", format!("v{i}"))).collect()
}

fn note(i: u64) -> Vec<(&'static str, String)> {
    vec![("cmd", "note".into()), ("n", i.to_string())]
}

async fn wait_connected(device: &Device) {
    eventually("the device to connect", WAIT, || async {
        device.status().await.connected.then_some(())
    })
    .await;
}

async fn hub_dead(cloud: &Cloud) -> Vec<Entry> {
    read_all(&mut cloud.conn().await, "lula-hub:dead:x").await
}

/// The fields a dead letter of the hub must have: who, which stream, the
/// original id, a reason, then the original fields byte for byte.
fn assert_hub_record(record: &Entry, client: &str, stream: &str, original: &Entry) {
    let text = |k: &str| field(record, k).map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(text("client").as_deref(), Some(client));
    assert_eq!(text("stream").as_deref(), Some(stream));
    assert_eq!(text("id"), Some(original.id.to_string()));
    let reason = text("reason").unwrap();
    assert!(reason.contains("100001 fields"), "{reason}");
    assert_eq!(&record.fields[8..], original.fields.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_broadcast_is_set_aside_once_for_the_fleet_and_broadcasts_behind_it_arrive() {
    let mut cloud = Cloud::start().await;
    let mut a = Device::new(&cloud, "dev-a", &cloud.provision("dev-a").await);
    let mut b = Device::new(&cloud, "dev-b", &cloud.provision("dev-b").await);
    let first = cloud.broadcast(&note(1)).await;
    let wide = cloud.broadcast(&too_wide_fields()).await;
    let last = cloud.broadcast(&note(3)).await;
    a.start();
    wait_connected(&a).await;
    let is_broadcast = |e: &Entry| e.fields.first().map(Vec::as_slice) == Some(b"broadcast");
    eventually(
        "dev-a to store the broadcast behind the wide one",
        WAIT,
        || async {
            let got: Vec<Entry> = a
                .in_entries()
                .await
                .into_iter()
                .filter(is_broadcast)
                .collect();
            (got.len() == 2).then_some(())
        },
    )
    .await;
    eventually("the hub to count it", WAIT, || async {
        let metrics = cloud.hub_metrics().await;
        metrics
            .contains(r#"lula_hub_set_aside_entries_total{direction="broadcast"} 1"#)
            .then_some(())
    })
    .await;
    // The hub is restarted after recording it; dev-b, reading it later
    // through the new hub, finds it recorded and records nothing more.
    cloud.kill_hub();
    cloud.start_hub();
    b.start();
    wait_connected(&b).await;
    for (name, device) in [("dev-a", &a), ("dev-b", &b)] {
        eventually("the marker to be counted", WAIT, || async {
            (device.status().await.set_aside_down == 1).then_some(())
        })
        .await;
        let got: Vec<Entry> = device
            .in_entries()
            .await
            .into_iter()
            .filter(is_broadcast)
            .collect();
        let ids: Vec<StreamId> = got
            .iter()
            .map(|e| String::from_utf8_lossy(&e.fields[1]).parse().unwrap())
            .collect();
        assert_eq!(
            ids,
            [first, last],
            "exactly the carried broadcasts, in order"
        );
        let status = device.status().await;
        assert_eq!(status.broadcast_cursor, last);
        let why = status.last_set_aside_down.unwrap();
        assert!(
            why.contains(&wide.to_string()) && why.contains("100001 fields"),
            "{why}"
        );
        // dev-a lived through the hub's restart: a refused connect then is
        // its last error, which is fine; nothing may be about the entry.
        let about_the_entry = |e: &str| e.contains("100001") || e.contains("push");
        match status.last_error.as_deref() {
            None => {}
            Some(e) if name == "dev-a" && !about_the_entry(e) => {}
            Some(e) => panic!("{name}: {e}"),
        }
    }
    let dead = hub_dead(&cloud).await;
    assert_eq!(dead.len(), 1, "recorded once for the fleet: {dead:?}");
    let original = cloud
        .broadcast_entries()
        .await
        .into_iter()
        .find(|e| e.id == wide)
        .expect("a broadcast is never deleted by setting it aside");
    assert_hub_record(&dead[0], "*", "broadcast", &original);
    // No reconnect loop: dev-a connected once, or twice around the restart.
    assert!(cloud.connections("dev-a").await <= 2);
    assert_eq!(cloud.connections("dev-b").await, 1);
    // The restarted hub set it aside for dev-b without recording it again.
    let metrics = cloud.hub_metrics().await;
    assert!(!metrics.contains(r#"lula_hub_set_aside_entries_total{direction="broadcast"}"#));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_direct_message_is_set_aside_once_and_messages_behind_it_arrive() {
    let cloud = Cloud::start().await;
    let mut device = Device::new(&cloud, "dev-1", &cloud.provision("dev-1").await);
    device.start();
    wait_connected(&device).await;
    let before = cloud.send_down("dev-1", &note(1)).await;
    let wide = cloud.send_down("dev-1", &too_wide_fields()).await;
    let after = cloud.send_down("dev-1", &note(2)).await;
    eventually("the message behind the wide one", WAIT, || async {
        (device.status().await.downstream_cursor == after).then_some(())
    })
    .await;
    let out = read_all(
        &mut cloud.conn().await,
        &lula_protocol::keys::HubKeys::default().out_stream(&"dev-1".parse().unwrap()),
    )
    .await;
    let carried: Vec<Entry> = out.iter().filter(|e| e.id != wide).cloned().collect();
    assert_eq!(
        carried.iter().map(|e| e.id).collect::<Vec<_>>(),
        [before, after]
    );
    check_downstream(&carried, &device.in_entries().await).unwrap();
    let dead = hub_dead(&cloud).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let original = out.iter().find(|e| e.id == wide).unwrap();
    assert_hub_record(&dead[0], "dev-1", "out", original);
    let status = device.status().await;
    assert_eq!(status.set_aside_down, 1);
    assert_eq!(cloud.connections("dev-1").await, 1, "no reconnect");
    eventually("the hub's metric and fleet record", WAIT, || async {
        let metrics = cloud.hub_metrics().await;
        let counted = metrics.contains(r#"lula_hub_set_aside_entries_total{direction="down"} 1"#);
        let fleet: Option<String> = redis::cmd("HGET")
            .arg("lula-hub:device:dev-1:h")
            .arg("setAsideDown")
            .query_async(&mut cloud.conn().await)
            .await
            .unwrap();
        (counted && fleet.as_deref() == Some("1")).then_some(())
    })
    .await;
    device.stop().await.unwrap();
}

/// The device seqs the cloud's in stream holds, in order.
async fn cloud_seqs(cloud: &Cloud) -> Vec<String> {
    cloud
        .in_entries()
        .await
        .iter()
        .map(|e| String::from_utf8_lossy(field(e, "seq").unwrap()).into_owned())
        .collect()
}

/// Writes one raw entry to the device's `out:x` and returns its id.
async fn produce_raw(device: &Device, fields: &[(&str, String)]) -> StreamId {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(device.keys.out_stream()).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(v);
    }
    let id: String = cmd.query_async(&mut device.conn().await).await.unwrap();
    id.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_entries_past_a_limit_are_set_aside_and_the_rest_syncs_once_in_order() {
    let cloud = cloud_with_small_limits().await;
    let mut device = Device::new(&cloud, "dev-1", &cloud.provision("dev-1").await);
    let mut ids = vec![produce_raw(&device, &note(1)).await];
    let wide = produce_raw(&device, &wide_fields()).await;
    ids.push(produce_raw(&device, &note(2)).await);
    // One field larger than a frame (1 MiB by default).
    let big = produce_raw(&device, &[("blob", "x".repeat(1_100_000))]).await;
    ids.push(produce_raw(&device, &note(3)).await);
    device.start();
    eventually("the entries behind the set-aside ones", WAIT, || async {
        (cloud.in_len().await == 3).then_some(())
    })
    .await;
    let seqs: Vec<StreamId> = cloud
        .in_entries()
        .await
        .iter()
        .map(|e| {
            String::from_utf8_lossy(field(e, "seq").unwrap())
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, ids, "every other entry once, in order");
    let out = device.out_entries().await;
    let dead = read_all(&mut device.conn().await, "lula-client:dead:x").await;
    assert_eq!(dead.iter().map(|e| e.id).collect::<Vec<_>>(), [wide, big]);
    for record in &dead {
        let original = out.iter().find(|e| e.id == record.id).unwrap();
        assert_eq!(record.fields[0], b"reason");
        assert_eq!(
            &record.fields[2..],
            original.fields.as_slice(),
            "byte-exact"
        );
    }
    let why = String::from_utf8_lossy(&dead[1].fields[1]).into_owned();
    assert!(why.contains("bytes"), "{why}");
    eventually("status, fleet and metrics to show both", WAIT, || async {
        let status = device.status().await;
        let fleet: Option<String> = redis::cmd("HGET")
            .arg("lula-hub:device:dev-1:h")
            .arg("setAsideUp")
            .query_async(&mut cloud.conn().await)
            .await
            .unwrap();
        let metrics = cloud.hub_metrics().await;
        let hub_counted = metrics.contains(r#"lula_hub_set_aside_entries_total{direction="up"} 2"#);
        (status.set_aside_up == 2
            && status.upstream_cursor == Some(*ids.last().unwrap())
            && fleet.as_deref() == Some("2")
            && hub_counted)
            .then_some(())
    })
    .await;
    let status = device.status().await;
    let text = status.to_string();
    assert!(text.contains("set aside up:       2 "), "{text}");
    assert!(text.contains("set aside down:     none"), "{text}");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["setAsideUp"], 2);
    assert!(status.last_set_aside_up.unwrap().contains(&big.to_string()));
    assert_eq!(cloud.connections("dev-1").await, 1, "no reconnect");
    // A message for the device arrives meanwhile: downstream never stopped.
    let down = cloud.send_down("dev-1", &note(9)).await;
    eventually("a direct message", WAIT, || async {
        (device.status().await.downstream_cursor == down).then_some(())
    })
    .await;
    device.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_after_setting_an_entry_aside_leaves_one_dead_entry_and_no_loss() {
    let cloud = cloud_with_small_limits().await;
    let mut device = Device::new(&cloud, "dev-1", &cloud.provision("dev-1").await);
    let first = produce_raw(&device, &note(1)).await;
    let wide = produce_raw(&device, &wide_fields()).await;
    let last = produce_raw(&device, &note(2)).await;
    // As a daemon killed after writing the dead letter and before the hub
    // acknowledged the marker leaves it: the entry already in dead:x.
    let original = device
        .out_entries()
        .await
        .into_iter()
        .find(|e| e.id == wide)
        .unwrap();
    let mut xadd = redis::cmd("XADD");
    xadd.arg("lula-client:dead:x")
        .arg(wide.to_string())
        .arg("reason")
        .arg("written before a crash");
    for v in &original.fields {
        xadd.arg(v.as_slice());
    }
    let _: String = xadd.query_async(&mut device.conn().await).await.unwrap();
    device.start();
    device.synced_to(last).await;
    assert_eq!(
        cloud_seqs(&cloud).await,
        [first.to_string(), last.to_string()]
    );
    let dead = read_all(&mut device.conn().await, "lula-client:dead:x").await;
    assert_eq!(dead.len(), 1, "one dead entry: {dead:?}");
    assert_eq!(&dead[0].fields[2..], original.fields.as_slice());
    // Killed again with nothing in flight, then restarted: nothing moves twice.
    device.kill();
    device.start();
    wait_connected(&device).await;
    let extra = produce_raw(&device, &note(3)).await;
    device.synced_to(extra).await;
    assert_eq!(cloud.in_len().await, 3);
    assert_eq!(
        read_all(&mut device.conn().await, "lula-client:dead:x")
            .await
            .len(),
        1
    );
    device.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_wide_for_the_device_is_recorded_once_across_a_cursor_reset() {
    let cloud = Cloud::start().await;
    let mut device = Device::new(&cloud, "dev-1", &cloud.provision("dev-1").await);
    // Past the device's 100,000 pairs, and past what the hub's dead-letter
    // script can pass to one XADD.
    let fields = too_wide_fields();
    let wide = cloud.send_down("dev-1", &fields).await;
    let after = cloud.send_down("dev-1", &note(2)).await;
    device.start();
    eventually("the message behind it", WAIT, || async {
        (device.status().await.downstream_cursor == after).then_some(())
    })
    .await;
    let dead = hub_dead(&cloud).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(field(&dead[0], "id"), Some(wide.to_string().as_bytes()));
    assert_eq!(dead[0].fields.len(), 8 + 200_002, "every original field");
    // A reconnect reading it again (the device forgot its cursor) records
    // nothing more.
    device.stop().await.unwrap();
    let _: () = redis::cmd("HDEL")
        .arg(device.keys.state())
        .arg("downstream")
        .query_async(&mut device.conn().await)
        .await
        .unwrap();
    device.start();
    eventually("the marker counted again after the reset", WAIT, || async {
        (device.status().await.set_aside_down == 2).then_some(())
    })
    .await;
    assert_eq!(hub_dead(&cloud).await.len(), 1, "recorded once");
    device.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_as_it_sets_entries_aside_loses_and_doubles_nothing() {
    let cloud = cloud_with_small_limits().await;
    let mut device = Device::new(&cloud, "dev-1", &cloud.provision("dev-1").await);
    // Wide entries among ordinary ones; the daemon is killed as soon as the
    // first dead letter shows, wherever its marker is then (unsent, in
    // flight, acknowledged), three times.
    for round in 0..3u64 {
        device.produce(round * 100, round * 100 + 50).await;
        let _ = produce_raw(&device, &wide_fields()).await;
        device.produce(round * 100 + 50, round * 100 + 100).await;
        device.start();
        eventually("a dead letter of this round", WAIT, || async {
            let n = read_all(&mut device.conn().await, "lula-client:dead:x")
                .await
                .len();
            (n as u64 > round).then_some(())
        })
        .await;
        device.kill();
    }
    device.start();
    let out = device.out_entries().await;
    let last = out.last().unwrap().id;
    device.synced_to(last).await;
    let dead = read_all(&mut device.conn().await, "lula-client:dead:x").await;
    assert_eq!(dead.len(), 3, "one dead letter per wide entry: {dead:?}");
    let wide: Vec<StreamId> = dead.iter().map(|e| e.id).collect();
    let carried: Vec<Entry> = out.into_iter().filter(|e| !wide.contains(&e.id)).collect();
    assert_eq!(carried.len(), 300);
    lula_e2e::check_upstream("dev-1", &carried, &cloud.in_entries().await).unwrap();
    eventually("each counted once", WAIT, || async {
        (device.status().await.set_aside_up == 3).then_some(())
    })
    .await;
    device.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_entry_too_wide_for_a_lua_unpack_is_set_aside_and_counted_once() {
    let cloud = cloud_with_small_limits().await;
    let mut device = Device::new(&cloud, "dev-1", &cloud.provision("dev-1").await);
    let first = produce_raw(&device, &note(1)).await;
    let fields: Vec<(&str, String)> = (0..5_000).map(|i| ("k", i.to_string())).collect();
    let wide = produce_raw(&device, &fields).await;
    let last = produce_raw(&device, &note(2)).await;
    device.start();
    device.synced_to(last).await;
    assert_eq!(
        cloud_seqs(&cloud).await,
        [first.to_string(), last.to_string()]
    );
    let dead = read_all(&mut device.conn().await, "lula-client:dead:x").await;
    assert_eq!(dead.iter().map(|e| e.id).collect::<Vec<_>>(), [wide]);
    assert_eq!(dead[0].fields.len(), 2 + 10_000);
    assert_eq!(device.status().await.set_aside_up, 1);
    device.stop().await.unwrap();
}
