//! The lula `xread` request: polling the device's out stream, lula-compatible.
//!
//! One reader task per connection takes its `xread` requests in order. One
//! without `blockTimeout` is a single non-blocking read, answered by the
//! reader itself, so such replies keep their order. One with `blockTimeout`
//! waits for an entry in a task of its own, up to [`MAX_BLOCKING_XREADS`] at
//! once: blocking reads do not hold up each other, the reader, or (since the
//! reader is always ready for the next request) the connection's socket.
//! Past the limit a blocking `xread` is refused at once with 429. Every reply
//! carries its request's id; blocking replies may come in any order.
//!
//! Waiting costs no Redis connection: the reader owns the stream's [`Waker`]
//! and passes each wake on to every waiting read through a watch channel, and
//! each waiting read reads again (non-blocking) when woken.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use lula_protocol::limits::{MAX_BLOCKING_XREADS, XREAD_MAX_BLOCK, XREAD_MAX_COUNT};
use lula_protocol::message::{ErrorReply, HubFrame, XreadReply, XreadRequest, kind, status};
use lula_protocol::{Entry, StreamId};
use lula_runtime::redis::RedisConn;
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Waker, xread};

/// A lula `xread` request waiting for its turn.
pub struct XreadJob {
    /// Request id, echoed.
    pub id: Option<Value>,
    /// The request.
    pub request: XreadRequest,
}

/// What a reply is sent with: the connection's outgoing queue.
#[derive(Clone)]
struct Replies {
    out: mpsc::Sender<Message>,
}

impl Replies {
    /// Sends `frame` as the reply to `id`; false when the connection is gone.
    async fn send(&self, id: Option<&Value>, frame: HubFrame<'_>) -> bool {
        match frame.to_text(id) {
            Ok(t) => self.out.send(Message::Text(t.into())).await.is_ok(),
            Err(e) => {
                tracing::error!(error = %e, "xread: cannot encode reply");
                true
            }
        }
    }

    /// Sends the reply to a read that ended (`Ok`: found entries, or none
    /// before its deadline).
    async fn answer(&self, id: Option<&Value>, result: Result<Vec<Entry>, String>) -> bool {
        let frame = match result {
            Ok(entries) => {
                let items = entries.into_iter().map(legacy_item).collect();
                HubFrame::Xread(XreadReply { items })
            }
            Err(e) => {
                tracing::warn!(error = %e, "xread failed");
                HubFrame::error(kind::XREAD, ErrorReply::unavailable())
            }
        };
        self.send(id, frame).await
    }
}

/// Answers lula `xread` requests of one connection: non-blocking ones in
/// order, blocking ones concurrently (see the module doc).
pub async fn legacy_reader(
    mut redis: RedisConn,
    key: String,
    waker: Waker,
    mut jobs: mpsc::Receiver<XreadJob>,
    out: mpsc::Sender<Message>,
    cancel: CancellationToken,
) {
    let replies = Replies { out };
    // Each wake of the stream bumps this; every waiting read watches it.
    let (woken, _) = watch::channel(0u64);
    // Dropped when the reader ends, which aborts the reads still waiting.
    let mut waiting = JoinSet::new();
    // A read's slot is freed before its reply is sent, so a client that
    // waits for a reply before sending another blocking read is never refused.
    let slots = Arc::new(Semaphore::new(MAX_BLOCKING_XREADS));
    loop {
        let job = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = waker.changed() => {
                woken.send_modify(|n| *n = n.wrapping_add(1));
                continue;
            }
            Some(_) = waiting.join_next(), if !waiting.is_empty() => continue,
            job = jobs.recv() => match job { Some(j) => j, None => return },
        };
        let count = job
            .request
            .count
            .unwrap_or(XREAD_MAX_COUNT)
            .clamp(1, XREAD_MAX_COUNT);
        let block = job
            .request
            .block_timeout
            .filter(|&ms| ms > 0)
            .map(|ms| Duration::from_millis(ms).min(XREAD_MAX_BLOCK));
        let Some(block) = block else {
            let result = xread(&mut redis, &key, job.request.id, count).await;
            if !replies.answer(job.id.as_ref(), result).await {
                return;
            }
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                limit = MAX_BLOCKING_XREADS,
                "blocking xread refused: too many waiting"
            );
            if !replies.send(job.id.as_ref(), too_many()).await {
                return;
            }
            continue;
        };
        // Subscribed before its first read, so no wake after that read is missed.
        let read = BlockingRead {
            redis: redis.clone(),
            key: key.clone(),
            after: job.request.id,
            count,
            block,
            woken: woken.subscribe(),
        };
        let (replies, cancel) = (replies.clone(), cancel.clone());
        waiting.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                result = read.run() => {
                    drop(slot);
                    replies.answer(job.id.as_ref(), result).await;
                }
            }
        });
    }
}

/// The 429 a blocking `xread` past [`MAX_BLOCKING_XREADS`] gets.
fn too_many() -> HubFrame<'static> {
    HubFrame::error(
        kind::XREAD,
        ErrorReply::new(
            status::TOO_MANY_REQUESTS,
            format!("too many blocking xreads in flight, at most {MAX_BLOCKING_XREADS}"),
        ),
    )
}

/// One blocking `xread`, waiting for its first entry.
struct BlockingRead {
    redis: RedisConn,
    key: String,
    after: StreamId,
    count: usize,
    block: Duration,
    woken: watch::Receiver<u64>,
}

impl BlockingRead {
    /// Reads, and while nothing is there, waits for a wake and reads again,
    /// until entries come or the block time is over (then: none).
    async fn run(mut self) -> Result<Vec<Entry>, String> {
        let deadline = tokio::time::Instant::now() + self.block;
        loop {
            let entries = xread(&mut self.redis, &self.key, self.after, self.count).await?;
            if !entries.is_empty() {
                return Ok(entries);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(entries),
                changed = self.woken.changed() => {
                    // The reader is gone: so is the connection.
                    if changed.is_err() {
                        return Ok(entries);
                    }
                }
            }
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
    fn legacy_items_are_objects_with_the_hub_id() {
        let item = legacy_item(Entry::from_pairs(
            StreamId::new(9, 1),
            &[("topic", "t"), ("id", "x")],
        ));
        assert_eq!(item, serde_json::json!({"topic": "t", "id": "9-1"}));
    }
}
