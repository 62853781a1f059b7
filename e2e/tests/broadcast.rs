//! Broadcasts: a cloud service appends once to `lula-hub:broadcast:x` and
//! every device stores each broadcast exactly once, in order, in its
//! `lula-client:in:x` as `broadcast <id> ...`, including devices that were
//! offline, within the hubs' retention. Timeouts are hang guards, never
//! speed checks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lula_e2e::{Cloud, CloudOptions, Device, check_broadcasts, check_downstream, read_all};
use lula_protocol::{ClientId, Entry, StreamId};
use lula_testkit::eventually;

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(120);

fn is_broadcast(e: &Entry) -> bool {
    e.fields.first().map(Vec::as_slice) == Some(b"broadcast".as_slice())
}

fn is_direct(e: &Entry) -> bool {
    e.fields.first().map(Vec::as_slice) == Some(b"seq".as_slice())
}

/// Waits until the device holds at least `n` broadcasts.
async fn wait_broadcasts(device: &Device, n: usize) {
    eventually(&format!("{n} broadcasts on the device"), WAIT, || async {
        let have = device
            .in_entries()
            .await
            .iter()
            .filter(|e| is_broadcast(e))
            .count();
        (have >= n).then_some(())
    })
    .await;
}

/// Waits until the daemon says it is connected.
async fn wait_connected(device: &Device) {
    eventually("the device to connect", WAIT, || async {
        device.status().await.connected.then_some(())
    })
    .await;
}

/// Asserts that the device's broadcasts are exactly `sent`, after giving any
/// stray duplicate a moment to show up.
async fn assert_broadcasts(device: &Device, sent: &[Entry]) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let name = device.config.client_id.to_string();
    check_broadcasts(sent, &device.in_entries().await).unwrap_or_else(|e| panic!("{name}: {e}"));
}

fn note(i: u64) -> Vec<(&'static str, String)> {
    vec![("cmd", "note".into()), ("n", i.to_string())]
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_gets_each_broadcast_once_in_order_even_if_it_connects_later() {
    let cloud = Cloud::start().await;
    let mut devices = Vec::new();
    for i in 0..4 {
        let name = format!("dev-{i}");
        let otp = cloud.provision(&name).await;
        devices.push(Device::new(&cloud, &name, &otp));
    }
    // Three online, dev-3 offline.
    for device in &mut devices[..3] {
        device.start();
    }
    for device in &devices[..3] {
        wait_connected(device).await;
    }

    let mut direct = 0;
    for i in 0..200u64 {
        cloud.broadcast(&note(i)).await;
        if i % 10 == 0 {
            cloud
                .send_down("dev-0", &[("cmd", "direct".into()), ("n", i.to_string())])
                .await;
            direct += 1;
        }
    }
    // Names lula writes itself are escaped, as in direct messages.
    cloud
        .broadcast(&[("seq", "s".into()), ("broadcast", "b".into())])
        .await;
    let sent = cloud.broadcast_entries().await;
    assert_eq!(sent.len(), 201);

    for device in &devices[..3] {
        wait_broadcasts(device, sent.len()).await;
    }
    for device in &devices[..3] {
        assert_broadcasts(device, &sent).await;
    }
    // Direct messages are unchanged: `seq`-marked, only on their device.
    let dev0: ClientId = "dev-0".parse().unwrap();
    let sent_direct = read_all(&mut cloud.conn().await, &cloud.keys.out_stream(&dev0)).await;
    assert_eq!(sent_direct.len(), direct);
    let directs: Vec<Entry> = devices[0]
        .in_entries()
        .await
        .into_iter()
        .filter(is_direct)
        .collect();
    check_downstream(&sent_direct, &directs).unwrap();
    for device in &devices[1..3] {
        assert!(device.in_entries().await.iter().all(is_broadcast));
    }

    // The device that was offline gets every one when it comes.
    devices[3].start();
    wait_broadcasts(&devices[3], sent.len()).await;
    assert_broadcasts(&devices[3], &sent).await;

    // Nothing was copied into per-device streams: the only out stream is
    // the one direct messages went to.
    let out_keys: Vec<String> = redis::cmd("KEYS")
        .arg("lula-hub:out:*")
        .query_async(&mut cloud.conn().await)
        .await
        .unwrap();
    assert_eq!(out_keys, vec![cloud.keys.out_stream(&dev0)]);

    let last = sent.last().unwrap().id;
    for device in &devices {
        let status = eventually("the status to show the broadcast cursor", WAIT, || async {
            let s = device.status().await;
            (s.broadcast_cursor == last).then_some(s)
        })
        .await;
        assert_eq!(status.broadcast_gaps, 0, "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_survive_client_and_hub_kills_without_loss_or_duplicates() {
    let mut cloud = Cloud::start().await;
    let mut devices = Vec::new();
    for name in ["dev-1", "dev-2"] {
        let otp = cloud.provision(name).await;
        let mut device = Device::new(&cloud, name, &otp);
        device.start();
        devices.push(device);
    }
    for device in &devices {
        wait_connected(device).await;
    }

    // 2,000 broadcasts, 50 at a time, while the faults land.
    const TOTAL: u64 = 2_000;
    let (url, key) = (cloud.redis_url().to_owned(), cloud.keys.broadcast_stream());
    let broadcaster = tokio::spawn(async move {
        let mut conn = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for start in (0..TOTAL).step_by(50) {
            let mut pipe = redis::pipe();
            for i in start..start + 50 {
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("cmd")
                    .arg("note")
                    .arg("n")
                    .arg(i);
            }
            let _: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });

    // The client crashes mid-stream and comes back.
    wait_broadcasts(&devices[0], 300).await;
    devices[0].kill();
    eprintln!(
        "client killed with {} broadcasts sent",
        cloud.broadcast_entries().await.len()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    devices[0].start();

    // Then the hub does.
    wait_broadcasts(&devices[1], 900).await;
    cloud.kill_hub();
    eprintln!(
        "hub killed with {} broadcasts sent",
        cloud.broadcast_entries().await.len()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    cloud.start_hub();

    broadcaster.await.unwrap();
    let sent = cloud.broadcast_entries().await;
    assert_eq!(sent.len() as u64, TOTAL);
    for device in &devices {
        wait_broadcasts(device, sent.len()).await;
    }
    for device in &devices {
        assert_broadcasts(device, &sent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_past_the_retention_are_trimmed_and_a_late_device_reports_the_gap() {
    // Keep everything at first.
    let mut cloud = Cloud::start_with(CloudOptions {
        broadcast_retention: Some((Duration::ZERO, Duration::from_millis(100))),
        ..Default::default()
    })
    .await;
    let otp1 = cloud.provision("dev-1").await;
    let mut dev1 = Device::new(&cloud, "dev-1", &otp1);
    let otp2 = cloud.provision("dev-2").await;
    let mut dev2 = Device::new(&cloud, "dev-2", &otp2);

    // dev-1 receives 10 broadcasts from three hours ago, then goes offline.
    let now = epoch_ms();
    let hours_ago = |h: u64, i: u64| format!("{}-0", now - h * 3_600_000 + i);
    for i in 0..10 {
        cloud.broadcast_with_id(&hours_ago(3, i), &note(i)).await;
    }
    dev1.start();
    wait_broadcasts(&dev1, 10).await;
    dev1.stop().await.unwrap();
    let received = cloud.broadcast_entries().await;

    // While it is away: 20 from two hours ago, 15 from now.
    for i in 0..20 {
        cloud
            .broadcast_with_id(&hours_ago(2, i), &note(10 + i))
            .await;
    }
    let trimmed_up_to: StreamId = hours_ago(2, 19).parse().unwrap();
    for i in 0..15 {
        cloud.broadcast(&note(30 + i)).await;
    }
    let all = cloud.broadcast_entries().await;
    let retained: Vec<Entry> = all[30..].to_vec();

    // The hubs now keep one hour.
    cloud.kill_hub();
    cloud.set_broadcast_retention(Some((
        Duration::from_secs(3600),
        Duration::from_millis(100),
    )));
    cloud.start_hub();
    eventually("the old broadcasts to be trimmed", WAIT, || async {
        (cloud.broadcast_entries().await.len() == retained.len()).then_some(())
    })
    .await;

    // dev-1 comes back and dev-2 connects for the first time: both get the
    // retained ones, none of the trimmed, and both report what they missed.
    dev1.start();
    dev2.start();
    wait_broadcasts(&dev1, received.len() + retained.len()).await;
    wait_broadcasts(&dev2, retained.len()).await;
    let dev1_expected: Vec<Entry> = received.iter().chain(&retained).cloned().collect();
    assert_broadcasts(&dev1, &dev1_expected).await;
    assert_broadcasts(&dev2, &retained).await;

    for (device, after) in [
        (&dev1, received.last().unwrap().id),
        (&dev2, StreamId::ZERO),
    ] {
        let status = device.status().await;
        assert_eq!(status.broadcast_gaps, 1, "{status:?}");
        let gap = status.last_broadcast_gap.unwrap_or_default();
        assert!(
            gap.starts_with(&format!("after {after} up to {trimmed_up_to}")),
            "{gap}"
        );
        assert_eq!(status.broadcast_cursor, retained.last().unwrap().id);
    }

    // A reconnect does not report the same gap again.
    cloud.kill_hub();
    cloud.start_hub();
    let last = cloud.broadcast(&note(99)).await;
    for device in [&dev1, &dev2] {
        eventually("the new broadcast", WAIT, || async {
            (device.status().await.broadcast_cursor == last).then_some(())
        })
        .await;
        assert_eq!(device.status().await.broadcast_gaps, 1);
    }
}
