//! Edges that must not be silent: entries deleted from the device's out stream
//! before they were synced, and either Redis going away and coming back.

use std::time::Duration;

use lula_e2e::{Cloud, CloudOptions, Device, check_downstream, check_upstream, field, read_all};
use lula_protocol::{ClientId, Entry};
use lula_testkit::{RedisOptions, RedisServer, eventually};

const WAIT: Duration = Duration::from_secs(120);

fn persistent() -> RedisServer {
    RedisServer::start_with(RedisOptions {
        appendonly: true,
        ..Default::default()
    })
}

async fn hub_entries_of(cloud: &Cloud, client: &str) -> Vec<Entry> {
    cloud
        .in_entries()
        .await
        .into_iter()
        .filter(|e| field(e, "client") == Some(client.as_bytes()))
        .collect()
}

async fn send_down(cloud: &Cloud, client: &str, from: u64, to: u64) {
    for i in from..to {
        cloud
            .send_down(client, &[("cmd", "set".into()), ("n", i.to_string())])
            .await;
    }
}

async fn wait_upstream(cloud: &Cloud, client: &str, n: usize) {
    eventually(&format!("{n} entries of {client}"), WAIT, || async {
        (hub_entries_of(cloud, client).await.len() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_before_sync_are_reported_and_the_rest_still_arrive() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    device.produce_capped(0, 100, 1_000).await;
    wait_upstream(&cloud, "dev-1", 100).await;
    // The daemon publishes where it is (and that position's ordinal) on stop.
    device.stop().await.unwrap();

    // Offline, producers add 500 more into a stream capped at 200: the 100
    // synced entries and the first 300 new ones are trimmed away.
    device.produce_capped(100, 600, 200).await;
    device.start();
    wait_upstream(&cloud, "dev-1", 300).await;
    let status = eventually("the gap in the status", WAIT, || async {
        let s = device.status().await;
        (s.gaps > 0).then_some(s)
    })
    .await;
    assert_eq!(status.gaps, 1, "{status:?}");
    let gap = status.last_gap.unwrap();
    assert!(gap.contains("300 entries"), "{gap}");
    assert!(gap.contains("trimmed"), "{gap}");

    // What is left arrived exactly once, after the 100 synced before.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ns: Vec<String> = hub_entries_of(&cloud, "dev-1")
        .await
        .iter()
        .map(|e| String::from_utf8_lossy(field(e, "n").unwrap()).into_owned())
        .collect();
    let want: Vec<String> = (0..100).chain(400..600).map(|i| i.to_string()).collect();
    assert_eq!(ns, want);
    eventually("the status backlog to drain", WAIT, || async {
        (device.status().await.upstream_backlog == 0).then_some(())
    })
    .await;

    // An XDEL of an entry not yet synced is reported too.
    device.stop().await.unwrap();
    device.produce_capped(600, 610, 1_000).await;
    let victim = device.out_entries().await[205].id;
    let _: u64 = redis::cmd("XDEL")
        .arg(device.keys.out_stream())
        .arg(victim.to_string())
        .query_async(&mut device.conn().await)
        .await
        .unwrap();
    device.start();
    wait_upstream(&cloud, "dev-1", 309).await;
    let status = eventually("the XDEL in the status", WAIT, || async {
        let s = device.status().await;
        (s.gaps > 1).then_some(s)
    })
    .await;
    assert!(status.last_gap.unwrap().contains("XDEL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_redis_down_and_back_loses_and_doubles_nothing() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::with_redis(&cloud, "dev-1", &otp, persistent());
    device.start();
    device.produce(0, 2_000).await;
    send_down(&cloud, "dev-1", 0, 100).await;
    wait_upstream(&cloud, "dev-1", 1).await;

    device.redis.kill();
    // Messages for the device pile up in the cloud meanwhile.
    send_down(&cloud, "dev-1", 100, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    device.redis.restart();
    device.produce(2_000, 3_000).await;

    wait_upstream(&cloud, "dev-1", 3_000).await;
    eventually("200 messages on the device", WAIT, || async {
        (device.in_entries().await.len() >= 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    check_upstream(
        "dev-1",
        &device.out_entries().await,
        &cloud.in_entries().await,
    )
    .unwrap();
    let client: ClientId = "dev-1".parse().unwrap();
    let sent = read_all(&mut cloud.conn().await, &cloud.keys.out_stream(&client)).await;
    check_downstream(&sent, &device.in_entries().await).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_redis_down_and_back_loses_and_doubles_nothing() {
    let mut cloud = Cloud::start_with(CloudOptions {
        persistent: true,
        ..Default::default()
    })
    .await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    device.produce(0, 2_000).await;
    wait_upstream(&cloud, "dev-1", 1).await;

    cloud.redis.kill();
    device.produce(2_000, 3_000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cloud.redis.restart();
    send_down(&cloud, "dev-1", 0, 100).await;

    wait_upstream(&cloud, "dev-1", 3_000).await;
    eventually("100 messages on the device", WAIT, || async {
        (device.in_entries().await.len() >= 100).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    check_upstream(
        "dev-1",
        &device.out_entries().await,
        &cloud.in_entries().await,
    )
    .unwrap();
    let client: ClientId = "dev-1".parse().unwrap();
    let sent = read_all(&mut cloud.conn().await, &cloud.keys.out_stream(&client)).await;
    check_downstream(&sent, &device.in_entries().await).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_device_redis_is_told_that_the_hub_cursor_is_ahead() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    device.produce(0, 10).await;
    wait_upstream(&cloud, "dev-1", 10).await;
    device.stop().await.unwrap();

    // The device's Redis loses everything (no persistence) and starts over.
    device.redis.restart();
    device.start();
    eventually("the warning in the status", WAIT, || async {
        let s = device.status().await;
        s.warning.filter(|e| e.contains("ahead")).map(|_| ())
    })
    .await;

    // The operator resets the cursor as told; new entries flow again.
    let _: u64 = redis::cmd("HDEL")
        .arg(cloud.keys.cursors())
        .arg("dev-1")
        .query_async(&mut cloud.conn().await)
        .await
        .unwrap();
    device.stop().await.unwrap();
    device.start();
    device.produce(10, 20).await;
    wait_upstream(&cloud, "dev-1", 20).await;
    eventually("the warning to clear", WAIT, || async {
        device.status().await.warning.is_none().then_some(())
    })
    .await;
}
