//! Bounded storage on the device: acknowledged entries leave `out:x` (the
//! daemon's upstream retention), `in:x` is trimmed below what every consumer
//! group acknowledged when asked, and none of it costs an entry, a duplicate
//! or a false gap, through hub and daemon kills.
//!
//! The device's `out:x` cannot be the record of what was produced here (the
//! daemon trims it), so producers number their entries (`n`) and the checks
//! compare the cloud with those numbers.

use std::time::Duration;

use lula_client::retention::{DEFAULT_KEEP_ACKED, KeepAcked};
use lula_e2e::{Cloud, Device, field};
use lula_protocol::Entry;
use lula_testkit::eventually;
use redis::AsyncCommands;

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(300);

async fn out_len(device: &Device) -> u64 {
    device
        .conn()
        .await
        .xlen(device.keys.out_stream())
        .await
        .unwrap()
}

/// Waits until the cloud holds `n` entries (every device together).
async fn wait_in_len(cloud: &Cloud, n: u64) {
    eventually(&format!("{n} entries in the hub"), WAIT, || async {
        (cloud.in_len().await >= n).then_some(())
    })
    .await;
}

/// The producer numbers of `client`'s entries in the cloud, in cloud order.
fn numbers(client: &str, entries: &[Entry]) -> Vec<u64> {
    entries
        .iter()
        .filter(|e| field(e, "client") == Some(client.as_bytes()))
        .map(|e| {
            std::str::from_utf8(field(e, "n").expect("n"))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Asserts the cloud holds `from..to` of `client` exactly once, in order.
fn assert_exactly_once(client: &str, entries: &[Entry], to: u64) {
    let got = numbers(client, entries);
    assert_eq!(got.len() as u64, to, "entries of {client} in the cloud");
    if let Some((i, n)) = got.iter().enumerate().find(|(i, n)| **n != *i as u64) {
        panic!("entry {i} of {client} in the cloud is number {n}: lost, doubled or reordered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_entries_leave_the_device_once_synced_through_hub_and_daemon_kills() {
    const N: u64 = 1_000_000;
    let mut cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.config.keep_acked = DEFAULT_KEEP_ACKED;
    let KeepAcked::Count(keep) = DEFAULT_KEEP_ACKED else {
        panic!("the default is a count")
    };
    device.start();
    let producer = device.produce_paced(0, N, 5_000, Duration::from_millis(5));

    wait_in_len(&cloud, N / 5).await;
    cloud.kill_hub();
    eprintln!("hub killed with {} entries in", cloud.in_len().await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cloud.start_hub();

    wait_in_len(&cloud, N / 2).await;
    device.kill();
    eprintln!("daemon killed with {} entries in", cloud.in_len().await);
    device.start();

    producer.await.unwrap();
    wait_in_len(&cloud, N).await;
    let len = eventually("out:x trimmed to the setting", WAIT, || async {
        let len = out_len(&device).await;
        (len <= keep).then_some(len)
    })
    .await;
    eprintln!("out:x holds {len} entries after {N} synced (keep {keep})");
    // Some acknowledged history is kept, as the setting asks.
    assert!(len > 0);
    assert_exactly_once("dev-1", &cloud.in_entries().await, N);
    let status = device.status().await;
    assert_eq!(
        status.gaps, 0,
        "the daemon's own trims are no gaps: {status:?}"
    );
    assert_eq!(status.upstream_backlog, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_none_empties_out_x_and_a_producers_trim_is_still_a_gap() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.config.keep_acked = KeepAcked::Nothing;
    device.produce(0, 3_000).await;
    device.start();
    device.produce(3_000, 5_000).await;
    wait_in_len(&cloud, 5_000).await;
    eventually("out:x empty", WAIT, || async {
        (out_len(&device).await == 0).then_some(())
    })
    .await;
    device.stop().await.unwrap();

    // While the daemon is away a producer caps the stream at 100: 400 of the
    // 500 new entries are gone before they were synced. That is a gap, and
    // the daemon's own trims before it are not counted in it.
    device.produce_capped(5_000, 5_500, 100).await;
    device.start();
    wait_in_len(&cloud, 5_100).await;
    let status = eventually("the gap in the status", WAIT, || async {
        let s = device.status().await;
        (s.gaps > 0 && s.upstream_backlog == 0).then_some(s)
    })
    .await;
    assert_eq!(status.gaps, 1, "{status:?}");
    let gap = status.last_gap.unwrap_or_default();
    assert!(gap.contains("400"), "the gap counts the 400 lost: {gap}");
    let got = numbers("dev-1", &cloud.in_entries().await);
    let expected: Vec<u64> = (0..5_000).chain(5_400..5_500).collect();
    assert_eq!(got, expected);
    eventually("out:x empty again", WAIT, || async {
        (out_len(&device).await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_x_is_trimmed_only_below_what_every_consumer_group_acknowledged() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.config.trim_in_consumed = Some(Duration::from_millis(50));
    device.start();
    for i in 0..100 {
        cloud.send_down("dev-1", &[("n", i.to_string())]).await;
    }
    eventually("100 messages on the device", WAIT, || async {
        (device.in_entries().await.len() == 100).then_some(())
    })
    .await;
    let mut conn = device.conn().await;
    let key = device.keys.in_stream();
    // No group: nobody has said what was consumed; nothing goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(device.in_entries().await.len(), 100);

    // Two groups: one consumed and acknowledged 80, the other was given 60
    // and acknowledged the first 50.
    let _: () = conn.xgroup_create(&key, "a", "0").await.unwrap();
    let _: () = conn.xgroup_create(&key, "b", "0").await.unwrap();
    let reader = conn.clone();
    let given = |group: &'static str, count: usize| {
        let key = key.clone();
        let mut conn = reader.clone();
        async move {
            let opts = redis::streams::StreamReadOptions::default()
                .group(group, "c")
                .count(count);
            let r: redis::streams::StreamReadReply =
                conn.xread_options(&[&key], &[">"], &opts).await.unwrap();
            r.keys
                .into_iter()
                .flat_map(|k| k.ids)
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    let a = given("a", 80).await;
    let _: u64 = conn.xack(&key, "a", &a).await.unwrap();
    let b = given("b", 60).await;
    let _: u64 = conn.xack(&key, "b", &b[..50]).await.unwrap();
    let left = eventually("in:x trimmed below b's oldest pending", WAIT, || async {
        let left = device.in_entries().await;
        (left.len() == 50).then_some(left)
    })
    .await;
    assert_eq!(
        left[0].id.to_string(),
        b[50],
        "the oldest unacknowledged entry stays"
    );
    // Nothing more goes while b holds it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(device.in_entries().await.len(), 50);
    let status = device.status().await;
    assert_eq!(status.downstream_backlog.unwrap_or(0), 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hub_redis_is_refused_clearly_and_nothing_is_lost_when_room_returns() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.config.keep_acked = KeepAcked::Nothing;
    device.start();
    device.produce(0, 1_000).await;
    wait_in_len(&cloud, 1_000).await;

    // The hub's Redis fills up: room for a little more, then OOM.
    let mut redis = cloud.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut redis)
        .await
        .unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 256 * 1024)
        .query_async(&mut redis)
        .await
        .unwrap();
    device.produce(1_000, 21_000).await;
    let status = eventually("the device to report the hub's refusal", WAIT, || async {
        let s = device.status().await;
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("full") || e.contains("OOM") || e.contains("507"))
            .then_some(s)
    })
    .await;
    eprintln!("while full: {status:?}");
    let stuck = cloud.in_len().await;
    assert!(stuck < 21_000, "the hub Redis filled up before the end");
    // The device keeps what it could not send.
    assert!(out_len(&device).await >= 21_000 - stuck);

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut redis)
        .await
        .unwrap();
    wait_in_len(&cloud, 21_000).await;
    assert_exactly_once("dev-1", &cloud.in_entries().await, 21_000);
}

/// Fills `out:x` until the device Redis refuses with OOM, or `most` entries
/// were written (a running daemon may free room as fast as one producer
/// writes); returns the next producer number (entries `from..` that number
/// were written).
async fn produce_until_full(device: &Device, from: u64, most: u64) -> u64 {
    let mut conn = device.conn().await;
    let payload = "p".repeat(200);
    let mut n = from;
    while n < from + most {
        let r: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(device.keys.out_stream())
            .arg("*")
            .arg("n")
            .arg(n)
            .arg("payload")
            .arg(&payload)
            .query_async(&mut conn)
            .await;
        match r {
            Ok(_) => n += 1,
            Err(e) => {
                assert_eq!(e.code(), Some("OOM"), "{e}");
                return n;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_device_redis_is_survived_and_synced_entries_make_room() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let redis = lula_testkit::RedisServer::start_with(lula_testkit::RedisOptions {
        extra_args: ["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let mut device = Device::with_redis(&cloud, "dev-1", &otp, redis);
    device.config.keep_acked = KeepAcked::Nothing;
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", lula_testkit::free_port())
        .parse()
        .unwrap();
    device.config.metrics_listen = Some(metrics_addr);
    // Full before the daemon ever ran: producers get OOM, and so would the
    // daemon's status writes and the messages it stores.
    let first = produce_until_full(&device, 0, 1_000_000).await;
    eprintln!("{first} entries filled the device Redis");
    assert!(first > 1_000);
    for i in 0..50 {
        cloud.send_down("dev-1", &[("m", i.to_string())]).await;
    }
    device.start();
    wait_in_len(&cloud, first).await;
    // What was synced left, so producers can write again, and that syncs
    // too; the messages that waited for room are stored, once each.
    // Numbering goes on from where the last attempt stopped, so no number
    // is written twice.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut more = first;
    while more < first + 1_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no room came back on the device"
        );
        more = produce_until_full(&device, more, first + 2_000 - more).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_in_len(&cloud, more).await;
    assert_exactly_once("dev-1", &cloud.in_entries().await, more);
    let got = eventually("the 50 messages on the device", WAIT, || async {
        let got = device.in_entries().await;
        (got.len() >= 50).then_some(got)
    })
    .await;
    let numbers: Vec<&[u8]> = got.iter().map(|e| field(e, "m").unwrap()).collect();
    let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(
        numbers,
        expected.iter().map(|s| s.as_bytes()).collect::<Vec<_>>()
    );
    // One session did it all: a full Redis ended none.
    assert_eq!(sessions(metrics_addr).await, 1);
}

/// `lula_client_sessions_total` from the daemon's metrics endpoint.
async fn sessions(addr: std::net::SocketAddr) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("lula_client_sessions_total "))
        .unwrap_or_else(|| panic!("no session count in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_not_delivered_and_the_device_is_told() {
    let mut cloud = Cloud::start().await;
    // The hubs drop anything older than a minute by its id's time.
    cloud.set_downstream_max_age(Some(Duration::from_secs(60)));
    cloud.kill_hub();
    cloud.start_hub();
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    let client: lula_protocol::ClientId = "dev-1".parse().unwrap();
    let out = cloud.keys.out_stream(&client);
    let now = lula_runtime::now_ms();
    // While the device is offline: a message two minutes old, one past its
    // own expiresAt, one that expires in an hour, a plain one, another
    // expired one, and a last plain one.
    let _: String = redis::cmd("XADD")
        .arg(&out)
        .arg(format!("{}-0", now - 120_000))
        .arg("m")
        .arg("ancient")
        .query_async(&mut cloud.conn().await)
        .await
        .unwrap();
    let stale = cloud
        .send_down(
            "dev-1",
            &[("m", "stale".into()), ("expiresAt", (now - 1).to_string())],
        )
        .await;
    cloud
        .send_down(
            "dev-1",
            &[
                ("m", "fresh".into()),
                ("expiresAt", (now + 3_600_000).to_string()),
            ],
        )
        .await;
    cloud.send_down("dev-1", &[("m", "plain".into())]).await;
    cloud
        .send_down(
            "dev-1",
            &[("m", "stale2".into()), ("expiresAt", "1".into())],
        )
        .await;
    cloud.send_down("dev-1", &[("m", "last".into())]).await;
    device.start();
    let got = eventually("the live messages on the device", WAIT, || async {
        let got = device.in_entries().await;
        (got.len() >= 3).then_some(got)
    })
    .await;
    let names: Vec<&[u8]> = got.iter().map(|e| field(e, "m").unwrap()).collect();
    assert_eq!(names, [&b"fresh"[..], b"plain", b"last"]);
    let status = eventually("the expired count in the status", WAIT, || async {
        let s = device.status().await;
        (s.expired == 3).then_some(s)
    })
    .await;
    assert!(status.last_expired.is_some(), "{status:?}");
    // Deleted on the hub, not just skipped.
    let left = lula_e2e::read_all(&mut cloud.conn().await, &out).await;
    assert!(
        left.iter().all(|e| e.id != stale),
        "the stale message is deleted"
    );
    assert_eq!(left.len(), 3, "{left:?}");
    // Nothing more arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(device.in_entries().await.len(), 3);
}
