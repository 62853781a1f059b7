//! Device entries of any width and size up to the limits are carried (issue
//! 13): what does not fit a batch goes in parts, through the real daemon,
//! hub and Redis, byte for byte, once, in order, without a reconnect; a cut
//! in the middle of an entry (the hub or the daemon killed) resumes without
//! loss or duplicate. Timeouts are hang guards, never speed checks.

use std::time::Duration;

use lula_e2e::{Cloud, Device, check_upstream, read_all};
use lula_protocol::StreamId;
use lula_testkit::eventually;

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(180);

/// Writes one raw entry of byte fields to the device's `out:x`.
async fn produce(device: &Device, fields: &[Vec<u8>]) -> StreamId {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(device.keys.out_stream()).arg("*");
    for v in fields {
        cmd.arg(v.as_slice());
    }
    let id: String = cmd.query_async(&mut device.conn().await).await.unwrap();
    id.parse().unwrap()
}

fn note(i: u64) -> Vec<Vec<u8>> {
    vec![b"n".to_vec(), i.to_string().into_bytes()]
}

/// `pairs` short pairs.
fn wide(pairs: usize) -> Vec<Vec<u8>> {
    (0..pairs)
        .flat_map(|i| [format!("k{i}").into_bytes(), format!("v{i}").into_bytes()])
        .collect()
}

/// One value of `len` bytes that do not compress (a xorshift sequence).
fn blob(len: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let bytes = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    vec![b"blob".to_vec(), bytes]
}

async fn hub_metric(cloud: &Cloud, name: &str) -> f64 {
    let text = cloud.hub_metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_large_and_odd_device_entries_are_carried_once_in_order_without_a_reconnect() {
    let cloud = Cloud::start().await;
    let mut device = Device::new(&cloud, "dev-1", &cloud.provision("dev-1").await);
    // Every byte value in names and values, an empty name and value,
    // duplicate names: all legal in Redis, all carried as they are.
    let every_byte: Vec<u8> = (0..=255).collect();
    let odd = vec![
        every_byte.clone(),
        every_byte.iter().rev().copied().collect(),
        Vec::new(),
        Vec::new(),
        b"dup".to_vec(),
        b"1".to_vec(),
        b"dup".to_vec(),
        b"2".to_vec(),
    ];
    produce(&device, &note(1)).await;
    produce(&device, &wide(1_025)).await;
    produce(&device, &note(2)).await;
    produce(&device, &blob(1_100_000, 1)).await;
    // The default limit: too wide for the hub's script, too.
    produce(&device, &wide(100_000)).await;
    produce(&device, &odd).await;
    produce(&device, &blob(16 << 20, 2)).await;
    let last = produce(&device, &note(3)).await;
    device.start();
    device.synced_to(last).await;
    let out = device.out_entries().await;
    check_upstream("dev-1", &out, &cloud.in_entries().await).unwrap();
    let dead = read_all(&mut device.conn().await, "lula-client:dead:x").await;
    assert!(dead.is_empty(), "nothing set aside: {dead:?}");
    assert_eq!(device.status().await.set_aside_up, 0);
    assert_eq!(cloud.connections("dev-1").await, 1, "no reconnect");
    assert_eq!(
        hub_metric(&cloud, "lula_hub_assembled_entries_total").await,
        4.0,
        "the wide, the 1.1 MB, the 100,000-pair and the 16 MiB entries came in parts"
    );
    assert_eq!(hub_metric(&cloud, "lula_hub_assembly_bytes").await, 0.0);
    device.stop().await.unwrap();
}

/// Waits until the hub holds part of an entry (its assembly budget is in
/// use) while the cloud has `synced` entries: the entry is mid-way.
async fn mid_entry(cloud: &Cloud, synced: u64) {
    eventually("the hub in the middle of an entry", WAIT, || async {
        let holding = hub_metric(cloud, "lula_hub_assembly_bytes").await > 0.0;
        (holding && cloud.in_len().await == synced).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_in_the_middle_of_an_entry_in_parts_resumes_without_loss_or_duplicate() {
    let mut cloud = Cloud::start().await;
    let mut device = Device::new(&cloud, "dev-1", &cloud.provision("dev-1").await);
    for i in 0..20 {
        produce(&device, &note(i)).await;
    }
    produce(&device, &blob(24 << 20, 3)).await;
    for i in 20..40 {
        produce(&device, &note(i)).await;
    }
    produce(&device, &blob(24 << 20, 4)).await;
    let last = produce(&device, &note(40)).await;
    device.start();
    // The hub is killed while it holds part of the first large entry...
    mid_entry(&cloud, 20).await;
    cloud.kill_hub();
    assert_eq!(cloud.in_len().await, 20, "the cut came before the entry");
    cloud.start_hub();
    // ...and the daemon while the hub holds part of the second.
    mid_entry(&cloud, 41).await;
    device.kill();
    assert_eq!(cloud.in_len().await, 41);
    device.start();
    device.synced_to(last).await;
    let out = device.out_entries().await;
    check_upstream("dev-1", &out, &cloud.in_entries().await).unwrap();
    eventually("the budget given back", WAIT, || async {
        (hub_metric(&cloud, "lula_hub_assembly_bytes").await == 0.0).then_some(())
    })
    .await;
    device.stop().await.unwrap();
}

/// Appends a raw entry of byte fields to `key` on the cloud's Redis.
async fn cloud_add(cloud: &Cloud, key: &str, fields: &[Vec<u8>]) -> StreamId {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for v in fields {
        cmd.arg(v.as_slice());
    }
    let id: String = cmd.query_async(&mut cloud.conn().await).await.unwrap();
    id.parse().unwrap()
}

fn first_field_is(e: &lula_protocol::Entry, name: &[u8]) -> bool {
    e.fields.first().map(Vec::as_slice) == Some(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_and_large_messages_and_broadcasts_arrive_once_in_order_without_a_reconnect() {
    let cloud = Cloud::start().await;
    let mut device = Device::new(&cloud, "dev-1", &cloud.provision("dev-1").await);
    let out = cloud.keys.out_stream(&"dev-1".parse().unwrap());
    let broadcasts = cloud.keys.broadcast_stream();
    cloud_add(&cloud, &out, &note(1)).await;
    cloud_add(&cloud, &out, &wide(1_025)).await;
    // Past what the device's store script takes: stored with WATCH/MULTI.
    cloud_add(&cloud, &out, &wide(5_000)).await;
    cloud_add(&cloud, &out, &wide(100_000)).await;
    cloud_add(&cloud, &out, &blob(3_000_000, 5)).await;
    let last_direct = cloud_add(&cloud, &out, &note(2)).await;
    cloud_add(&cloud, &broadcasts, &note(10)).await;
    cloud_add(&cloud, &broadcasts, &wide(20_000)).await;
    cloud_add(&cloud, &broadcasts, &blob(2_000_000, 6)).await;
    let last_broadcast = cloud_add(&cloud, &broadcasts, &note(11)).await;
    device.start();
    eventually("every message and broadcast stored", WAIT, || async {
        let status = device.status().await;
        (status.downstream_cursor == last_direct && status.broadcast_cursor == last_broadcast)
            .then_some(())
    })
    .await;
    let stored = device.in_entries().await;
    let direct: Vec<_> = stored
        .iter()
        .filter(|e| first_field_is(e, b"seq"))
        .cloned()
        .collect();
    let sent = read_all(&mut cloud.conn().await, &out).await;
    lula_e2e::check_downstream(&sent, &direct).unwrap();
    lula_e2e::check_broadcasts(&cloud.broadcast_entries().await, &stored).unwrap();
    let dead = read_all(&mut cloud.conn().await, "lula-hub:dead:x").await;
    assert!(dead.is_empty(), "nothing set aside: {}", dead.len());
    assert_eq!(device.status().await.set_aside_down, 0);
    assert_eq!(cloud.connections("dev-1").await, 1, "no reconnect");
    device.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_in_the_middle_of_a_message_in_parts_resumes_without_loss_or_duplicate() {
    let mut cloud = Cloud::start().await;
    let mut device = Device::new(&cloud, "dev-1", &cloud.provision("dev-1").await);
    let out = cloud.keys.out_stream(&"dev-1".parse().unwrap());
    for i in 0..10 {
        cloud_add(&cloud, &out, &note(i)).await;
    }
    cloud_add(&cloud, &out, &blob(24 << 20, 7)).await;
    let last = cloud_add(&cloud, &out, &note(10)).await;
    device.start();
    // The hub is killed while it cuts the large message into parts, after
    // the device stored the ten before it.
    eventually("the hub in the middle of the message", WAIT, || async {
        let cutting = hub_metric(&cloud, "lula_hub_assembly_bytes").await > 0.0;
        (cutting && device.in_entries().await.len() == 10).then_some(())
    })
    .await;
    cloud.kill_hub();
    assert_eq!(
        device.in_entries().await.len(),
        10,
        "the cut came before it"
    );
    cloud.start_hub();
    eventually("every message stored", WAIT, || async {
        (device.status().await.downstream_cursor == last).then_some(())
    })
    .await;
    let sent = read_all(&mut cloud.conn().await, &out).await;
    lula_e2e::check_downstream(&sent, &device.in_entries().await).unwrap();
    device.stop().await.unwrap();
}
