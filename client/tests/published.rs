//! `Device::publish` against a real device Redis: every field a typed
//! `StatusUpdate` sets is written as `fields()` formats it, together with the
//! times `lula-client status --check` judges by (`disconnectedSince`,
//! `upstreamProgressAt`), written by the same script.

use std::collections::BTreeMap;

use lula_client::device::{Device, status_fields};
use lula_client::published::StatusUpdate;
use lula_protocol::StreamId;
use lula_protocol::keys::DeviceKeys;
use lula_testkit::RedisServer;

async fn state(redis: &RedisServer, keys: &DeviceKeys) -> BTreeMap<String, String> {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("HGETALL")
        .arg(keys.state())
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_status_update_writes_its_fields_and_the_check_times() {
    let redis = RedisServer::start();
    let keys = DeviceKeys::default();
    let mut device = Device::new(&redis.url(), keys.clone()).unwrap();

    let up = StatusUpdate {
        pid: Some(42),
        last_error: Some(String::new()),
        ..StatusUpdate::connected(StreamId::new(5, 1), Some(7))
    };
    device.publish(&up).await.unwrap();
    let s = state(&redis, &keys).await;
    for (field, value) in up.fields() {
        assert_eq!(s.get(field), Some(&value), "{field}: {s:?}");
    }
    assert!(s.contains_key(status_fields::UPDATED_AT), "{s:?}");
    assert!(!s.contains_key(status_fields::DISCONNECTED_SINCE), "{s:?}");
    let moved_at = s[status_fields::UPSTREAM_PROGRESS_AT].clone();

    // The same cursor again: no progress, so its time stays.
    device
        .publish(&StatusUpdate::upstream(StreamId::new(5, 1), Some(7)))
        .await
        .unwrap();
    let s = state(&redis, &keys).await;
    assert_eq!(s[status_fields::UPSTREAM_PROGRESS_AT], moved_at, "{s:?}");

    // Disconnected: the time is set once and kept by later writes.
    let failed = StatusUpdate::failed("hub unreachable");
    device.publish(&failed).await.unwrap();
    let s = state(&redis, &keys).await;
    for (field, value) in failed.fields() {
        assert_eq!(s.get(field), Some(&value), "{field}: {s:?}");
    }
    let since = s[status_fields::DISCONNECTED_SINCE].clone();
    device.publish(&StatusUpdate::disconnected()).await.unwrap();
    let s = state(&redis, &keys).await;
    assert_eq!(s[status_fields::DISCONNECTED_SINCE], since, "{s:?}");

    // Connected again: the disconnection is over.
    device
        .publish(&StatusUpdate::connected(StreamId::new(6, 0), None))
        .await
        .unwrap();
    let s = state(&redis, &keys).await;
    assert!(!s.contains_key(status_fields::DISCONNECTED_SINCE), "{s:?}");
    assert_eq!(s[status_fields::UPSTREAM], "6-0", "{s:?}");
    assert_eq!(s[status_fields::UPSTREAM_ORDINAL], "", "{s:?}");
}
