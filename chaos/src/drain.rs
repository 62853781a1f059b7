//! After the faults: waiting, with a hang guard, until every device is in
//! sync both ways: the hub's upstream cursor of each device at the last entry
//! of its out stream, and each device's downstream cursor at the last entry of
//! its hub out stream.
//!
//! Drained is necessary, not sufficient: the checker still compares every
//! entry. A timeout here is a finding (a daemon or hub that never recovers).

use std::time::Duration;

use lula_protocol::StreamId;
use lula_protocol::redis_value::entries_from_range;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::{Cluster, connect};
use crate::events::Events;

/// How often the cursors are compared.
const POLL: Duration = Duration::from_millis(500);
/// How often progress is written to the timeline.
const PROGRESS: Duration = Duration::from_secs(10);

/// How the drain went.
#[derive(Debug, Clone, Serialize)]
pub struct DrainOutcome {
    /// Everything in sync before the timeout.
    pub drained: bool,
    /// How long it took (or the timeout).
    pub waited: Duration,
    /// Devices still behind upstream when it ended.
    pub behind_up: Vec<String>,
    /// Devices still behind downstream when it ended.
    pub behind_down: Vec<String>,
}

/// Waits up to `timeout` for every device to be in sync both ways.
pub async fn wait(cluster: &Cluster, timeout: Duration, events: &Events) -> DrainOutcome {
    let start = Instant::now();
    let mut last_note = start;
    loop {
        let (up, down) = behind(cluster).await;
        if up.is_empty() && down.is_empty() {
            return DrainOutcome {
                drained: true,
                waited: start.elapsed(),
                behind_up: up,
                behind_down: down,
            };
        }
        if start.elapsed() > timeout {
            events.note(format_args!(
                "drain: TIMED OUT after {timeout:?}; behind upstream: {up:?}; behind downstream: {down:?}"
            ));
            return DrainOutcome {
                drained: false,
                waited: start.elapsed(),
                behind_up: up,
                behind_down: down,
            };
        }
        if last_note.elapsed() >= PROGRESS {
            last_note = Instant::now();
            events.note(format_args!(
                "drain: {} devices behind upstream, {} behind downstream: {}",
                up.len(),
                down.len(),
                backlog(cluster).await
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Devices whose hub cursor lags their out stream, and devices whose own
/// cursor lags their hub out stream. A Redis that cannot be read counts as behind.
async fn behind(cluster: &Cluster) -> (Vec<String>, Vec<String>) {
    let mut up = Vec::new();
    let mut down = Vec::new();
    let mut cloud = connect(&cluster.cloud.url).await.ok();
    for d in &cluster.devices {
        let mut device = connect(&d.redis_url).await.ok();
        let in_sync_up = match (device.as_mut(), cloud.as_mut()) {
            (Some(dev), Some(cl)) => {
                let last = last_id(dev, &d.keys.out_stream()).await;
                let cursor = hget_id(cl, &cluster.hub_keys.cursors(), d.client.as_str()).await;
                last.is_some() && last == cursor.or(Some(StreamId::ZERO))
            }
            _ => false,
        };
        let in_sync_down = match (device.as_mut(), cloud.as_mut()) {
            (Some(dev), Some(cl)) => {
                let last = last_id(cl, &cluster.hub_keys.out_stream(&d.client)).await;
                let cursor = hget_id(dev, &d.keys.state(), "downstream").await;
                last.is_some() && last == cursor.or(Some(StreamId::ZERO))
            }
            _ => false,
        };
        if !in_sync_up {
            up.push(d.client.to_string());
        }
        if !in_sync_down {
            down.push(d.client.to_string());
        }
    }
    (up, down)
}

/// Entries still to go each way, for the timeline.
async fn backlog(cluster: &Cluster) -> String {
    let Ok(mut cloud) = connect(&cluster.cloud.url).await else {
        return "hub Redis unreachable".into();
    };
    let (mut up, mut down) = (0u64, 0u64);
    for d in &cluster.devices {
        let Ok(mut dev) = connect(&d.redis_url).await else {
            continue;
        };
        let hub_cursor = hget_id(&mut cloud, &cluster.hub_keys.cursors(), d.client.as_str())
            .await
            .unwrap_or_default();
        up += lula_client::device::count_after(&mut dev, &d.keys.out_stream(), hub_cursor)
            .await
            .unwrap_or(0);
        let dev_cursor = hget_id(&mut dev, &d.keys.state(), "downstream")
            .await
            .unwrap_or_default();
        down += lula_client::device::count_after(
            &mut cloud,
            &cluster.hub_keys.out_stream(&d.client),
            dev_cursor,
        )
        .await
        .unwrap_or(0);
    }
    format!("{up} entries to go up, {down} down")
}

/// The id of the last entry of `key` (`0-0` for an empty stream); `None` on error.
pub async fn last_id(conn: &mut MultiplexedConnection, key: &str) -> Option<StreamId> {
    let v: redis::Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .ok()?;
    let entries = entries_from_range(v).ok()?;
    Some(entries.first().map_or(StreamId::ZERO, |e| e.id))
}

/// A stream id kept in a hash field; `None` when missing or on error.
async fn hget_id(conn: &mut MultiplexedConnection, key: &str, field: &str) -> Option<StreamId> {
    let v: Option<String> = redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(conn)
        .await
        .ok()?;
    v?.parse().ok()
}
