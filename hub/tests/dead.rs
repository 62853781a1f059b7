//! The cloud's dead letters (`hub/src/dead.rs`) against a real Redis and a
//! real Redis Cluster: an entry is recorded once however often it is set
//! aside, byte for byte, also when it is too wide for a script.

use std::time::Duration;

use lula_hub::dead;
use lula_protocol::keys::HubKeys;
use lula_protocol::message::PushStream;
use lula_protocol::redis_value::entries_from_range;
use lula_protocol::{ClientId, Entry, StreamId};
use lula_runtime::redis::{RedisConn, RedisTarget};
use lula_testkit::{RedisCluster, RedisServer};

/// Every byte value in names and values, and an empty name and value.
fn odd_entry(id: StreamId, pairs: usize) -> Entry {
    let mut fields = vec![Vec::new(), Vec::new(), (0..=255u8).collect(), vec![0xff, 0]];
    for i in 0..pairs.saturating_sub(2) {
        fields.push(format!("k{i}").into_bytes());
        fields.push(vec![i as u8]);
    }
    Entry::new(id, fields)
}

/// Records `entry` for `dev-1` as set aside for `why`, the guard for 600 s.
async fn record(
    conn: &mut RedisConn,
    target: &RedisTarget,
    keys: &HubKeys,
    stream: PushStream,
    entry: &Entry,
) -> Result<bool, redis::RedisError> {
    let client: ClientId = "dev-1".parse().unwrap();
    let ttl = Duration::from_secs(600);
    dead::record(conn, target, keys, stream, &client, entry, "why", ttl).await
}

async fn records(conn: &mut RedisConn, keys: &HubKeys) -> Vec<Entry> {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(keys.dead_stream())
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    entries_from_range(v).unwrap()
}

async fn records_once(target: RedisTarget) {
    let mut conn = target.connect().await.unwrap();
    let keys = HubKeys::default();
    // One within a script's reach, one past it (5,000 pairs).
    for (n, pairs) in [(1, 3), (2, 5_000)] {
        let entry = odd_entry(StreamId::new(n, 0), pairs);
        for stream in [PushStream::Direct, PushStream::Broadcast] {
            let first = record(&mut conn, &target, &keys, stream, &entry);
            assert!(first.await.unwrap(), "the first time records");
            let again = record(&mut conn, &target, &keys, stream, &entry);
            assert!(!again.await.unwrap(), "a second time records nothing");
        }
    }
    let got = records(&mut conn, &keys).await;
    assert_eq!(got.len(), 4, "once per entry and stream");
    for (record, (n, pairs, who, stream)) in got.iter().zip([
        (1, 3, "dev-1", "out"),
        (1, 3, "*", "broadcast"),
        (2, 5_000, "dev-1", "out"),
        (2, 5_000, "*", "broadcast"),
    ]) {
        let id = StreamId::new(n, 0).to_string();
        let head: Vec<&[u8]> = vec![
            b"client",
            who.as_bytes(),
            b"stream",
            stream.as_bytes(),
            b"id",
            id.as_bytes(),
            b"reason",
            b"why",
        ];
        let fields: Vec<&[u8]> = record.fields.iter().map(Vec::as_slice).collect();
        assert_eq!(&fields[..8], head.as_slice());
        assert_eq!(
            &record.fields[8..],
            odd_entry(StreamId::new(n, 0), pairs).fields
        );
    }
    let guard = keys.dead_seen("out:dev-1:1-0");
    let ttl_left: i64 = redis::cmd("TTL")
        .arg(&guard)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl_left > 0 && ttl_left <= 600, "{ttl_left}");
}

/// Connections of several hubs (or several devices' pushes of one
/// broadcast) set the same wide entry aside at once: the transaction writes
/// guard and record together, once.
async fn wide_records_race(target: RedisTarget) {
    let keys = HubKeys::default();
    let entry = odd_entry(StreamId::new(7, 0), 5_000);
    let racers = (0..4).map(|_| {
        let (target, keys, entry) = (target.clone(), keys.clone(), entry.clone());
        tokio::spawn(async move {
            let mut conn = target.connect().await.unwrap();
            record(&mut conn, &target, &keys, PushStream::Broadcast, &entry).await
        })
    });
    let mut wrote = 0;
    for racer in racers.collect::<Vec<_>>() {
        wrote += usize::from(racer.await.unwrap().unwrap());
    }
    assert_eq!(wrote, 1, "exactly one of the racers records");
    let mut conn = target.connect().await.unwrap();
    let again = record(&mut conn, &target, &keys, PushStream::Broadcast, &entry);
    assert!(!again.await.unwrap(), "recorded before");
    let got = records(&mut conn, &keys).await;
    assert_eq!(got.len(), 1, "one record");
    let head: Vec<&[u8]> = vec![
        b"client",
        b"*",
        b"stream",
        b"broadcast",
        b"id",
        b"7-0",
        b"reason",
        b"why",
    ];
    let fields: Vec<&[u8]> = got[0].fields.iter().map(Vec::as_slice).collect();
    assert_eq!(&fields[..8], head.as_slice());
    assert_eq!(&got[0].fields[8..], entry.fields, "byte for byte");
    let ttl_left: i64 = redis::cmd("TTL")
        .arg(keys.dead_seen("broadcast:7-0"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl_left > 0 && ttl_left <= 600, "{ttl_left}");
}

#[tokio::test]
async fn a_dead_letter_is_recorded_once_byte_for_byte() {
    let redis = RedisServer::start();
    records_once(RedisTarget::new(redis.url(), false)).await;
}

#[tokio::test]
async fn a_dead_letter_is_recorded_once_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    records_once(RedisTarget::new(cluster.url(), true)).await;
}

#[tokio::test]
async fn a_wide_dead_letter_set_aside_at_once_is_recorded_once() {
    let redis = RedisServer::start();
    wide_records_race(RedisTarget::new(redis.url(), false)).await;
}

#[tokio::test]
async fn a_wide_dead_letter_set_aside_at_once_is_recorded_once_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    wide_records_race(RedisTarget::new(cluster.url(), true)).await;
    let holders = cluster.holders(&HubKeys::default().dead_stream());
    let seed = cluster.nodes()[0].port();
    assert!(
        holders.len() == 1 && holders[0] != seed,
        "the record is on another master than the seed, so the transaction followed MOVED: {holders:?}"
    );
}
