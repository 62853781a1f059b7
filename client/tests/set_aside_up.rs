//! `Device::set_aside_up` against a real device Redis, for an entry too wide
//! for its script (5,000 field pairs): the record and its count are written
//! together, once, however often and however concurrently it is set aside.

use std::collections::BTreeMap;

use lula_client::device::{Device, status_fields};
use lula_protocol::keys::DeviceKeys;
use lula_protocol::redis_value::entries_from_range;
use lula_protocol::{Entry, StreamId};
use lula_testkit::RedisServer;
use redis::aio::MultiplexedConnection;

/// Every byte value in names and values, and an empty name and value.
fn wide_entry(id: StreamId) -> Entry {
    let mut fields = vec![Vec::new(), Vec::new(), (0..=255u8).collect(), vec![0xff, 0]];
    for i in 0..4_998usize {
        fields.push(format!("k{i}").into_bytes());
        fields.push(vec![i as u8, 0]);
    }
    Entry::new(id, fields)
}

async fn conn(redis: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn dead(conn: &mut MultiplexedConnection, keys: &DeviceKeys) -> Vec<Entry> {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(keys.dead_stream())
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    entries_from_range(v).unwrap()
}

async fn state(conn: &mut MultiplexedConnection, keys: &DeviceKeys) -> BTreeMap<String, String> {
    redis::cmd("HGETALL")
        .arg(keys.state())
        .query_async(conn)
        .await
        .unwrap()
}

/// The record of `entry`: `reason <reason>`, then its fields byte for byte.
fn assert_record(record: &Entry, entry: &Entry, reason: &str) {
    assert_eq!(record.id, entry.id, "under the original id");
    assert_eq!(record.fields[0], b"reason");
    assert_eq!(record.fields[1], reason.as_bytes());
    assert_eq!(&record.fields[2..], entry.fields, "byte for byte");
}

#[tokio::test]
async fn a_wide_entry_set_aside_twice_is_recorded_and_counted_once() {
    let redis = RedisServer::start();
    let keys = DeviceKeys::default();
    let mut device = Device::new(&redis.url(), keys.clone()).unwrap();
    let entry = wide_entry(StreamId::new(1_700_000_000_000, 3));
    assert!(device.set_aside_up(&entry, "too wide").await.unwrap());
    assert!(
        !device.set_aside_up(&entry, "too wide").await.unwrap(),
        "recorded before"
    );
    let mut conn = conn(&redis).await;
    let got = dead(&mut conn, &keys).await;
    assert_eq!(got.len(), 1, "one record");
    assert_record(&got[0], &entry, "too wide");
    let s = state(&mut conn, &keys).await;
    assert_eq!(s[status_fields::SET_ASIDE_UP], "1", "{s:?}");
    let last = &s[status_fields::LAST_SET_ASIDE_UP];
    assert!(last.starts_with("1700000000000-3: too wide"), "{last}");
}

#[tokio::test]
async fn a_wide_entry_set_aside_at_once_is_recorded_and_counted_once() {
    let redis = RedisServer::start();
    let keys = DeviceKeys::default();
    let device = Device::new(&redis.url(), keys.clone()).unwrap();
    let entry = wide_entry(StreamId::new(5, 0));
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let (mut device, entry) = (device.clone(), entry.clone());
            tokio::spawn(async move { device.set_aside_up(&entry, "too wide").await })
        })
        .collect();
    let mut counted = 0;
    for racer in racers {
        counted += usize::from(racer.await.unwrap().unwrap());
    }
    assert_eq!(counted, 1, "exactly one of the racers counts");
    let mut conn = conn(&redis).await;
    let got = dead(&mut conn, &keys).await;
    assert_eq!(got.len(), 1, "one record");
    assert_record(&got[0], &entry, "too wide");
    let s = state(&mut conn, &keys).await;
    assert_eq!(s[status_fields::SET_ASIDE_UP], "1", "{s:?}");
}

/// As the script does: an id the dead stream is already past cannot be
/// added, so it counts as recorded before, and nothing is counted.
#[tokio::test]
async fn a_wide_entry_behind_the_dead_stream_counts_as_recorded() {
    let redis = RedisServer::start();
    let keys = DeviceKeys::default();
    let mut device = Device::new(&redis.url(), keys.clone()).unwrap();
    let ahead = wide_entry(StreamId::new(9, 0));
    assert!(device.set_aside_up(&ahead, "too wide").await.unwrap());
    let behind = wide_entry(StreamId::new(8, 0));
    assert!(!device.set_aside_up(&behind, "too wide").await.unwrap());
    let mut conn = conn(&redis).await;
    assert_eq!(dead(&mut conn, &keys).await.len(), 1);
    let s = state(&mut conn, &keys).await;
    assert_eq!(s[status_fields::SET_ASIDE_UP], "1", "{s:?}");
}
