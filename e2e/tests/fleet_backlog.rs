//! The upstream backlog in the fleet view, reported by a real lula-client:
//! a device with entries waiting in its `out:x` shows how many while the
//! cloud is not taking them, and 0 once they are all in the cloud.

use std::time::Duration;

use lula_e2e::{Cloud, CloudOptions, Device};
use lula_testkit::eventually;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
const TOKEN: &str = "fleet-backlog-admin-token";

/// The fleet view's entry for `client`, once it has one.
async fn fleet_device(cloud: &Cloud, client: &str) -> Option<Value> {
    let fleet: Value = reqwest::Client::new()
        .get(format!("{}/fleet?client={client}", cloud.admin_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    fleet["devices"].as_array()?.first().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_device_shows_its_upstream_backlog_then_zero() {
    let cloud = Cloud::start_with(CloudOptions {
        admin_token: Some(TOKEN.into()),
        ..CloudOptions::default()
    })
    .await;
    let mut redis = cloud.conn().await;
    // Hold the drain deterministically: a hub finding another ingest layout
    // recorded on its Redis appends nothing (503) and checks again at every
    // batch, so the device's first batch is refused at each attempt until
    // the record is put right. Nothing has been appended yet, so the hub has
    // not confirmed its layout.
    let () = redis::cmd("SET")
        .arg(cloud.keys.ingest_layout())
        .arg("another layout")
        .query_async(&mut redis)
        .await
        .unwrap();

    let otp = cloud.provision("meter-7").await;
    let mut device = Device::new(&cloud, "meter-7", &otp);
    device.config.batch_entries = 10;
    let ids = device.produce(0, 100).await;
    device.start();

    // Its first batch says 90 follow it; refused, its own 10 wait too.
    let held = eventually("the fleet to show 100 waiting upstream", WAIT, || async {
        let d = fleet_device(&cloud, "meter-7").await?;
        (d["upstreamBacklog"] == 100).then_some(d)
    })
    .await;
    assert_eq!(held["upstreamCursor"], "0-0", "{held}");
    assert!(held["upstreamBacklogAt"].as_u64().is_some(), "{held}");
    assert_eq!(cloud.in_len().await, 0, "nothing was appended while held");

    // Put right: the device drains, and its last batch says 0.
    let () = redis::cmd("SET")
        .arg(cloud.keys.ingest_layout())
        .arg(cloud.layout.description())
        .query_async(&mut redis)
        .await
        .unwrap();
    let last = ids.last().unwrap().to_string();
    let drained = eventually("the fleet to show the backlog drained", WAIT, || async {
        let d = fleet_device(&cloud, "meter-7").await?;
        (d["upstreamBacklog"] == 0 && d["upstreamCursor"] == last.as_str()).then_some(d)
    })
    .await;
    assert_eq!(drained["state"], "connected", "{drained}");
    assert!(
        drained["upstreamBacklogAt"].as_u64() >= held["upstreamBacklogAt"].as_u64(),
        "{drained}"
    );
    assert_eq!(cloud.in_len().await, 100);
    device.stop().await.unwrap();
}
