//! `subscribe`, `ack` and lula's polling `xread`: the downstream side of a
//! connection, served by tasks of [`crate::downstream`] beside the loop.

use lula_protocol::StreamId;
use lula_protocol::message::{
    Ack, HubFrame, PushStream, SubscribeReply, SubscribeRequest, XreadRequest,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Closed, Connection};
use crate::downstream::{self, XreadJob};

/// lula `xread` requests queued per connection before the reader waits.
const XREAD_QUEUE: usize = 16;

impl Connection {
    /// `subscribe`: replies, then starts (or restarts) the pushes.
    pub(super) async fn subscribe(
        &mut self,
        id: Option<&Value>,
        request: SubscribeRequest,
    ) -> Result<(), Closed> {
        let reply = SubscribeReply {
            id: request.id,
            broadcast_after: request.broadcast_after,
        };
        // Reply first: pushes must not overtake the reply that starts them.
        self.reply(id, HubFrame::Subscribe(reply)).await?;
        self.set_aside = request.set_aside;
        // Parts need markers: what is past their limits is set aside.
        self.push_parts = request.parts.filter(|_| request.set_aside);
        self.start_pushes(request.id, request.broadcast_after);
        Ok(())
    }

    /// `ack`: moves the acknowledged cursor of one push forward.
    pub(super) fn ack(&mut self, ack: Ack) {
        let push = match ack.stream {
            PushStream::Direct => &self.push,
            PushStream::Broadcast => &self.broadcast,
        };
        if let Some((_, acks)) = push {
            acks.send_if_modified(|cur| {
                let newer = ack.id > *cur;
                if newer {
                    *cur = ack.id;
                }
                newer
            });
        }
    }

    /// `xread`: queued for this connection's polling reader, which answers
    /// non-blocking ones in order and lets blocking ones wait side by side.
    pub(super) async fn xread(
        &mut self,
        id: Option<&Value>,
        request: XreadRequest,
    ) -> Result<(), Closed> {
        let job = XreadJob {
            id: id.cloned(),
            request,
        };
        self.xread_jobs().send(job).await.map_err(|_| Closed)
    }

    fn xread_jobs(&mut self) -> mpsc::Sender<XreadJob> {
        self.xread
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel(XREAD_QUEUE);
                let key = self.state.keys.out_stream(&self.client);
                let waker = self.state.wakers.register(key.clone());
                let task = downstream::legacy_reader(
                    self.state.redis.clone(),
                    key,
                    waker,
                    rx,
                    self.out.clone(),
                    self.cancel.clone(),
                );
                self.state.tracker.spawn(task);
                tx
            })
            .clone()
    }

    /// Tells the fleet recorder how far the device has acknowledged its out
    /// stream.
    pub(super) fn note_downstream_cursor(&mut self) {
        if let Some((_, acks)) = &self.push {
            let acked = *acks.borrow();
            self.fleet.downstream(acked);
        }
    }

    /// Starts (or restarts from new cursors) the push of the out stream and,
    /// when `broadcast_after` is given, of the broadcast stream; a
    /// subscription without it stops pushing broadcasts.
    fn start_pushes(&mut self, from: StreamId, broadcast_after: Option<StreamId>) {
        let key = self.state.keys.out_stream(&self.client);
        self.push = Some(self.start_push(PushStream::Direct, key, from));
        if let Some((old, _)) = self.broadcast.take() {
            old.cancel();
        }
        if let Some(after) = broadcast_after {
            let key = self.state.keys.broadcast_stream();
            self.broadcast = Some(self.start_push(PushStream::Broadcast, key, after));
        }
    }

    /// How long the dead-letter guard of an entry of `stream` lives: at least
    /// as long as broadcasts are kept (no expiry when they are kept forever),
    /// a week for direct messages.
    fn guard_ttl(&self, stream: PushStream) -> std::time::Duration {
        let retention = self.state.config.broadcast_retention;
        match stream {
            PushStream::Broadcast if retention.is_zero() => std::time::Duration::ZERO,
            PushStream::Broadcast => retention.max(crate::dead::DEFAULT_GUARD_TTL),
            PushStream::Direct => crate::dead::DEFAULT_GUARD_TTL,
        }
    }

    /// Starts pushing `key` after `from`, stopping the push it replaces.
    fn start_push(
        &mut self,
        stream: PushStream,
        key: String,
        from: StreamId,
    ) -> (CancellationToken, watch::Sender<StreamId>) {
        let slot = match stream {
            PushStream::Direct => &mut self.push,
            PushStream::Broadcast => &mut self.broadcast,
        };
        if let Some((old, _)) = slot.take() {
            old.cancel();
        }
        let cancel = self.cancel.child_token();
        if stream == PushStream::Direct {
            self.fleet.downstream(from);
        }
        let (acks_tx, acks_rx) = watch::channel(from);
        let waker = self.state.wakers.register(key.clone());
        let task = downstream::push(
            self.state.redis.clone(),
            downstream::PushSource {
                stream,
                key,
                waker,
                start: from,
                expiry: downstream::Expiry {
                    max_age: self.state.config.downstream_max_age,
                    clock: self.state.config.clock.clone(),
                },
                set_aside: self.set_aside.then(|| downstream::SetAsideTo {
                    keys: self.state.keys.clone(),
                    client: self.client.clone(),
                    guard_ttl: self.guard_ttl(stream),
                    redis_target: self.state.redis_target.clone(),
                }),
                parts: self.push_parts.map(|limits| downstream::PartsTo {
                    limits,
                    budget: self.state.assembly.clone(),
                }),
            },
            self.out.clone(),
            acks_rx,
            self.state.config.max_frame_bytes,
            self.state.metrics.clone(),
            cancel.clone(),
        );
        self.state.tracker.spawn(task);
        (cancel, acks_tx)
    }
}
