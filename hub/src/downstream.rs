//! Hub to device: entries cloud services append to `lula-hub:out:<client>:x`.
//!
//! Two ways out, both reading with `XREAD` on a connection of their own, so a
//! blocking read never holds up the shared connection other requests use:
//! - [`push`]: after `subscribe`, the hub pushes entries as they appear, keeping
//!   at most [`PUSH_WINDOW_ENTRIES`] unacknowledged. The device stores each push
//!   and its cursor atomically before acking, so a push lost with the connection
//!   is simply sent again after the device resubscribes from its own cursor.
//! - [`legacy_reader`]: the lula `xread` request, answered one at a time.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::Message;
use lula_protocol::limits::{
    PUSH_BATCH_ENTRIES, PUSH_WINDOW_ENTRIES, XREAD_MAX_BLOCK, XREAD_MAX_COUNT,
};
use lula_protocol::message::{ErrorReply, Frame, Push, XreadRequest, kind, status};
use lula_protocol::redis_value::entries_from_read;
use lula_protocol::{Entry, StreamId};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How long one push-side `XREAD` blocks before it is simply issued again.
const PUSH_BLOCK: Duration = Duration::from_secs(5);
/// Pause after a Redis failure before the reader reconnects.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Opens a connection used by one reader only, with a response timeout longer
/// than any block it will issue (redis-rs defaults to 500 ms).
async fn dedicated(
    client: &redis::Client,
    block: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let config =
        AsyncConnectionConfig::new().set_response_timeout(Some(block + Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn xread(
    conn: &mut MultiplexedConnection,
    key: &str,
    after: StreamId,
    count: usize,
    block: Option<Duration>,
) -> Result<Vec<Entry>, String> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(count);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS").arg(key).arg(after.to_string());
    let reply: redis::Value = cmd.query_async(conn).await.map_err(|e| e.to_string())?;
    entries_from_read(reply).map_err(|e| e.to_string())
}

/// Splits entries into frames of at most about `max_bytes` of payload each
/// (one oversized entry still goes alone), so a push never exceeds what the
/// device accepts.
fn frames_by_size(entries: Vec<Entry>, max_bytes: usize) -> Vec<Vec<Entry>> {
    let mut frames = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for entry in entries {
        let len = entry.payload_len() + 64;
        if !current.is_empty() && size + len > max_bytes {
            frames.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(entry);
    }
    if !current.is_empty() {
        frames.push(current);
    }
    frames
}

/// Pushes `key` after `start` to the device through `out` until `cancel`, the
/// connection closing, or `out` closing. `acks` carries the last id the device
/// stored.
pub async fn push(
    client: redis::Client,
    key: String,
    start: StreamId,
    out: mpsc::Sender<Message>,
    mut acks: watch::Receiver<StreamId>,
    max_frame_bytes: usize,
    cancel: CancellationToken,
) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut last = start;
    // (last id of a pushed frame, entries in it), oldest first.
    let mut inflight: VecDeque<(StreamId, usize)> = VecDeque::new();
    let mut unacked = 0usize;
    loop {
        let acked = *acks.borrow_and_update();
        while let Some(&(id, n)) = inflight.front() {
            if id > acked {
                break;
            }
            inflight.pop_front();
            unacked -= n;
        }
        if unacked >= PUSH_WINDOW_ENTRIES {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = acks.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match dedicated(&client, PUSH_BLOCK).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, "push: cannot connect to redis; retrying");
                    if pause(&cancel, RETRY_PAUSE).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let count = PUSH_BATCH_ENTRIES.min(PUSH_WINDOW_ENTRIES - unacked);
        let read = tokio::select! {
            _ = cancel.cancelled() => return,
            r = xread(c, &key, last, count, Some(PUSH_BLOCK)) => r,
        };
        let entries = match read {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "push: read failed; reconnecting");
                conn = None;
                if pause(&cancel, RETRY_PAUSE).await {
                    return;
                }
                continue;
            }
        };
        for frame in frames_by_size(entries, max_frame_bytes / 2) {
            let (frame_last, n) = (frame.last().map(|e| e.id).unwrap_or(last), frame.len());
            let text = match Frame::new(kind::PUSH, None, Push { entries: frame }).to_text() {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "push: cannot encode frame");
                    return;
                }
            };
            if out.send(Message::Text(text.into())).await.is_err() {
                return;
            }
            last = frame_last;
            inflight.push_back((frame_last, n));
            unacked += n;
        }
    }
}

/// Sleeps unless cancelled first; true when cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// A lula `xread` request waiting for its turn.
pub struct XreadJob {
    /// Request id, echoed.
    pub id: Option<Value>,
    /// The request.
    pub request: XreadRequest,
}

/// Answers lula `xread` requests of one connection, in order, on a connection
/// of its own (opened at the first request).
pub async fn legacy_reader(
    client: redis::Client,
    key: String,
    mut jobs: mpsc::Receiver<XreadJob>,
    out: mpsc::Sender<Message>,
    cancel: CancellationToken,
) {
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        let job = tokio::select! {
            _ = cancel.cancelled() => return,
            job = jobs.recv() => match job { Some(j) => j, None => return },
        };
        let block = job
            .request
            .block_timeout
            .filter(|&ms| ms > 0)
            .map(|ms| Duration::from_millis(ms).min(XREAD_MAX_BLOCK));
        let count = job
            .request
            .count
            .unwrap_or(XREAD_MAX_COUNT)
            .clamp(1, XREAD_MAX_COUNT);
        let result = match &mut conn {
            Some(c) => Ok(c),
            None => dedicated(&client, XREAD_MAX_BLOCK)
                .await
                .map(|c| conn.insert(c))
                .map_err(|e| e.to_string()),
        };
        let result = match result {
            Ok(c) => tokio::select! {
                _ = cancel.cancelled() => return,
                r = xread(c, &key, job.request.id, count, block) => r,
            },
            Err(e) => Err(e),
        };
        let text = match result {
            Ok(entries) => {
                let items: Vec<Value> = entries.into_iter().map(legacy_item).collect();
                Frame::new(
                    kind::XREAD,
                    job.id.as_ref(),
                    serde_json::json!({ "items": items }),
                )
                .to_text()
            }
            Err(e) => {
                tracing::warn!(error = %e, "xread failed");
                conn = None;
                Frame::new(
                    kind::XREAD,
                    job.id.as_ref(),
                    ErrorReply::new(status::UNAVAILABLE, "redis unavailable, retry later"),
                )
                .to_text()
            }
        };
        match text {
            Ok(t) => {
                if out.send(Message::Text(t.into())).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::error!(error = %e, "xread: cannot encode reply"),
        }
    }
}

/// A lula `xread` item: the entry's fields as an object plus `id`, the hub id
/// (which wins over a field also named `id`, as in lula). Non-UTF-8 bytes are
/// replaced (U+FFFD): lula's format has no binary representation; `subscribe`
/// carries bytes intact.
fn legacy_item(entry: Entry) -> Value {
    let mut item = Map::new();
    for (k, v) in entry.pairs() {
        item.insert(
            String::from_utf8_lossy(k).into_owned(),
            Value::String(String::from_utf8_lossy(v).into_owned()),
        );
    }
    item.insert("id".into(), Value::String(entry.id.to_string()));
    Value::Object(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_by_size_and_keep_order() {
        let e = |ms, size| Entry {
            id: StreamId::new(ms, 0),
            fields: vec![b"k".to_vec(), vec![b'x'; size]],
        };
        let frames = frames_by_size(vec![e(1, 100), e(2, 100), e(3, 1000), e(4, 10)], 400);
        let ids: Vec<Vec<u64>> = frames
            .iter()
            .map(|f| f.iter().map(|e| e.id.ms).collect())
            .collect();
        assert_eq!(ids, vec![vec![1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn legacy_items_are_objects_with_the_hub_id() {
        let item = legacy_item(Entry::from_pairs(
            StreamId::new(9, 1),
            &[("topic", "t"), ("id", "x")],
        ));
        assert_eq!(item, serde_json::json!({"topic": "t", "id": "9-1"}));
    }
}
