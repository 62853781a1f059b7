//! One device's WebSocket: read frames, answer each request in order, run the
//! downstream pusher beside it, ping, and close with a documented code.
//!
//! Requests on one connection are handled one after another, so a device's
//! batches reach Redis in the order it sent them. Replies and pushes share one
//! bounded queue to a writer task, which coalesces whatever is queued into one
//! flush; when the device stops reading, the queue fills and the hub stops
//! reading from it too, instead of buffering without bound.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use lula_protocol::limits::MAX_BATCH_ENTRIES;
use lula_protocol::message::{
    Ack, Envelope, ErrorReply, Frame, IdReply, SubscribeReply, SubscribeRequest, XaddReply,
    XaddsReply, XaddsRequest, XreadRequest, close, kind, status,
};
use lula_protocol::{ClientId, Entry, StreamId};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::downstream::{self, XreadJob};
use crate::ingest::{self, Appended};

/// Frames queued for the writer before the reader waits.
const OUT_QUEUE: usize = 64;
/// lula `xread` requests queued per connection before the reader waits.
const XREAD_QUEUE: usize = 16;

/// The connection has ended; stop reading.
struct Closed;

struct Connection {
    state: Arc<AppState>,
    client: ClientId,
    redis: redis::aio::ConnectionManager,
    out: mpsc::Sender<Message>,
    /// Cancelled when the connection ends; stops its helper tasks.
    cancel: CancellationToken,
    push: Option<(CancellationToken, watch::Sender<StreamId>)>,
    xread: Option<mpsc::Sender<XreadJob>>,
}

/// Serves one authenticated device until it disconnects, misbehaves past
/// recovery, falls silent, or the hub shuts down.
pub async fn serve(socket: WebSocket, client: ClientId, state: Arc<AppState>) {
    let (sink, mut stream) = socket.split();
    let (out, rx) = mpsc::channel(OUT_QUEUE);
    let writer = state.tracker.spawn(write_loop(sink, rx));
    let cancel = state.shutdown.child_token();
    let mut conn = Connection {
        redis: state.redis.clone(),
        state: state.clone(),
        client,
        out,
        cancel: cancel.clone(),
        push: None,
        xread: None,
    };
    tracing::info!("connected");

    let mut ping = tokio::time::interval(state.config.ping_interval);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let close_with = loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => break Some((close::GOING_AWAY, "hub shutting down")),
            _ = ping.tick() => {
                if last_heard.elapsed() > state.config.idle_timeout {
                    break Some((close::IDLE, "idle timeout"));
                }
                if conn.out.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Text(text))) => {
                        if conn.handle(text.as_str()).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let reply = ErrorReply::bad_request("binary frames are not supported; send JSON text frames");
                        if conn.send(kind::ERR, None, reply).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => break read_error_close(e),
                }
            }
        }
    };
    cancel.cancel();
    if let Some((code, reason)) = close_with {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = conn.out.send(Message::Close(Some(frame))).await;
    }
    drop(conn);
    let _ = writer.await;
    tracing::info!("disconnected");
}

/// Maps a read error to the close frame the device should see, if any.
fn read_error_close(e: axum::Error) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(ws) => match *ws {
            WsError::Capacity(_) => Some((close::TOO_BIG, "message too big")),
            WsError::Protocol(_) | WsError::Utf8(_) => Some((close::POLICY, "protocol error")),
            WsError::ConnectionClosed | WsError::AlreadyClosed => None,
            other => {
                tracing::debug!(error = %other, "read failed");
                None
            }
        },
        Err(other) => {
            tracing::debug!(error = %other, "read failed");
            None
        }
    }
}

async fn write_loop(mut sink: SplitSink<WebSocket, Message>, mut rx: mpsc::Receiver<Message>) {
    while let Some(msg) = rx.recv().await {
        let mut closing = matches!(msg, Message::Close(_));
        if sink.feed(msg).await.is_err() {
            return;
        }
        while !closing && let Ok(more) = rx.try_recv() {
            closing = matches!(more, Message::Close(_));
            if sink.feed(more).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() || closing {
            let _ = sink.close().await;
            return;
        }
    }
    let _ = sink.close().await;
}

impl Connection {
    async fn send<P: Serialize>(
        &self,
        kind: &str,
        id: Option<&Value>,
        payload: P,
    ) -> Result<(), Closed> {
        match Frame::new(kind, id, payload).to_text() {
            Ok(text) => self
                .out
                .send(Message::Text(text.into()))
                .await
                .map_err(|_| Closed),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode reply");
                Err(Closed)
            }
        }
    }

    async fn handle(&mut self, text: &str) -> Result<(), Closed> {
        let env = match Envelope::parse(text) {
            Ok(env) => env,
            Err(e) => {
                let reply = ErrorReply::bad_request(format!("unparseable frame: {e}"));
                return self.send(kind::ERR, None, reply).await;
            }
        };
        let id = env.id.as_ref();
        let kind = env.kind.as_ref();
        macro_rules! payload {
            ($t:ty) => {
                match env.payload::<$t>() {
                    Ok(p) => p,
                    Err(e) => {
                        let reply = ErrorReply::bad_request(format!("bad {kind} payload: {e}"));
                        return self.send(kind, id, reply).await;
                    }
                }
            };
        }
        match kind {
            kind::ECHO => {
                let payload = env.payload.map(|p| p.get()).unwrap_or("{}");
                let raw: &serde_json::value::RawValue =
                    serde_json::from_str(payload).map_err(|_| Closed)?;
                self.send(kind, id, raw).await
            }
            kind::ID => match ingest::cursor(&mut self.redis, &self.state.keys, &self.client).await
            {
                Ok(cursor) => {
                    let reply = IdReply {
                        id: cursor,
                        max_frame_bytes: Some(self.state.config.max_frame_bytes),
                        max_batch_entries: Some(MAX_BATCH_ENTRIES),
                    };
                    self.send(kind, id, reply).await
                }
                Err(e) => self.send(kind, id, self.failure(e)).await,
            },
            kind::XADD => {
                let entry: Entry = payload!(Entry);
                let seq = entry.id;
                match self.append(None, vec![entry]).await {
                    Ok(Appended::Applied {
                        last: Some(hub_id), ..
                    }) => self.send(kind, id, XaddReply { id: hub_id }).await,
                    Ok(Appended::Applied { cursor, .. } | Appended::Gap { cursor }) => {
                        let reply = ErrorReply {
                            id: Some(cursor),
                            ..ErrorReply::new(
                                status::CONFLICT,
                                format!("seq {seq} is at or below the saved {cursor}"),
                            )
                        };
                        self.send(kind, id, reply).await
                    }
                    Err(reply) => self.send(kind, id, reply).await,
                }
            }
            kind::XADDS => {
                let batch: XaddsRequest = payload!(XaddsRequest);
                match self.append(batch.prev, batch.entries).await {
                    Ok(Appended::Applied {
                        cursor,
                        added,
                        duplicates,
                        ..
                    }) => {
                        self.send(
                            kind,
                            id,
                            XaddsReply {
                                id: cursor,
                                added,
                                duplicates,
                            },
                        )
                        .await
                    }
                    Ok(Appended::Gap { cursor }) => {
                        let prev = batch.prev.unwrap_or_default();
                        let reply = ErrorReply {
                            id: Some(cursor),
                            ..ErrorReply::new(
                                status::CONFLICT,
                                format!(
                                    "gap: batch follows {prev} but the hub holds up to {cursor}"
                                ),
                            )
                        };
                        self.send(kind, id, reply).await
                    }
                    Err(reply) => self.send(kind, id, reply).await,
                }
            }
            kind::XREAD => {
                let request: XreadRequest = payload!(XreadRequest);
                let jobs = self.xread_jobs();
                jobs.send(XreadJob {
                    id: id.cloned(),
                    request,
                })
                .await
                .map_err(|_| Closed)
            }
            kind::SUBSCRIBE => {
                let request: SubscribeRequest = payload!(SubscribeRequest);
                // Reply first: pushes must not overtake the reply that starts them.
                self.send(kind, id, SubscribeReply { id: request.id })
                    .await?;
                self.subscribe(request.id);
                Ok(())
            }
            kind::ACK => {
                let ack: Ack = payload!(Ack);
                if let Some((_, acks)) = &self.push {
                    acks.send_if_modified(|cur| {
                        let newer = ack.id > *cur;
                        if newer {
                            *cur = ack.id;
                        }
                        newer
                    });
                }
                Ok(())
            }
            other => {
                let reply =
                    ErrorReply::bad_request(format!("unknown message type {:?}", truncate(other)));
                self.send(other, id, reply).await
            }
        }
    }

    async fn append(
        &mut self,
        prev: Option<StreamId>,
        entries: Vec<Entry>,
    ) -> Result<Appended, ErrorReply> {
        let result = ingest::append(
            &mut self.redis,
            &self.state.keys,
            &self.client,
            prev,
            entries,
        )
        .await;
        result.map_err(|e| self.failure(e))
    }

    fn failure(&self, e: ingest::IngestError) -> ErrorReply {
        match &e {
            ingest::IngestError::Redis(_) | ingest::IngestError::Reply(_) => {
                tracing::warn!(error = %e, "request failed")
            }
            _ => tracing::debug!(error = %e, "request refused"),
        }
        e.to_reply()
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

    /// Starts (or restarts from a new cursor) the push of the out stream.
    fn subscribe(&mut self, from: StreamId) {
        if let Some((old, _)) = self.push.take() {
            old.cancel();
        }
        let cancel = self.cancel.child_token();
        let (acks_tx, acks_rx) = watch::channel(from);
        let key = self.state.keys.out_stream(&self.client);
        let waker = self.state.wakers.register(key.clone());
        let task = downstream::push(
            self.state.redis.clone(),
            key,
            waker,
            from,
            self.out.clone(),
            acks_rx,
            self.state.config.max_frame_bytes,
            cancel.clone(),
        );
        self.state.tracker.spawn(task);
        self.push = Some((cancel, acks_tx));
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
