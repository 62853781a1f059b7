//! One device's WebSocket: read frames, answer each request in order, run the
//! downstream pushers beside it (the device's out stream and, when it asked,
//! the fleet's broadcast stream), ping, and close with a documented code.
//!
//! Requests on one connection are answered in the order they came. Batches
//! (`xadd`, `xadds`) are pipelined: each goes to the hub's [`Ingestor`] as it
//! arrives, up to [`MAX_PIPELINED`] waiting for their results, so a device's
//! next batch is already queued while Redis appends the one before; any other
//! request first waits for the batches before it. Replies and pushes share one
//! bounded queue to a writer task, which coalesces whatever is queued into one
//! flush; when the device stops reading, the queue fills and the hub stops
//! reading from it too, instead of buffering without bound.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use lula_protocol::limits::MAX_BATCH_ENTRIES;
use lula_protocol::message::{
    Ack, Envelope, ErrorReply, Frame, IdReply, PushStream, RenewReply, RenewRequest,
    SubscribeReply, SubscribeRequest, XaddReply, XaddsReply, XaddsRequest, XreadRequest, close,
    kind, status,
};
use lula_protocol::{ClientId, Entry, StreamId};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::downstream::{self, XreadJob};
use crate::fleet::{self, Recorder};
use crate::ingest::{self, Appended, IngestError, Ingestor};
use crate::live::Registration;
use crate::metrics::HubMetrics;
use lula_protocol::token::Claims;

/// Frames queued for the writer before the reader waits.
const OUT_QUEUE: usize = 64;
/// lula `xread` requests queued per connection before the reader waits.
const XREAD_QUEUE: usize = 16;
/// Batches of one connection waiting for their results before the hub stops
/// reading from it.
const MAX_PIPELINED: usize = 16;

/// The connection has ended; stop reading.
struct Closed;

struct Connection {
    state: Arc<AppState>,
    client: ClientId,
    redis: lula_runtime::redis::RedisConn,
    out: mpsc::Sender<Message>,
    /// Cancelled when the connection ends; stops its helper tasks.
    cancel: CancellationToken,
    /// The push of the device's out stream: stops it, and carries its acks.
    push: Option<(CancellationToken, watch::Sender<StreamId>)>,
    /// The push of the broadcast stream, when the device asked for it.
    broadcast: Option<(CancellationToken, watch::Sender<StreamId>)>,
    xread: Option<mpsc::Sender<XreadJob>>,
    /// Batches submitted and not answered yet, oldest first.
    pending: VecDeque<PendingAppend>,
    /// When the session ends unless renewed; the socket closes then
    /// (later for a client that never asks to renew, see `legacy_session`).
    session: crate::legacy_session::SessionClock,
    /// This connection in the hub's registry of live connections.
    registration: Registration,
    /// What the fleet view shows of this device.
    fleet: Recorder,
}

/// A batch submitted to the ingestor, answered when its result comes.
struct PendingAppend {
    /// `xadd` or `xadds`.
    kind: &'static str,
    /// Request id, echoed.
    id: Option<Value>,
    /// `xadd`: the entry's seq; `xadds`: the batch's `prev` (for messages).
    seq: Option<StreamId>,
    result: ingest::Pending,
}

/// The result of the oldest pending batch; never resolves when none is pending.
async fn next_done(pending: &mut VecDeque<PendingAppend>) -> Result<Appended, IngestError> {
    match pending.front_mut() {
        Some(p) => (&mut p.result)
            .await
            .unwrap_or_else(|_| Err(IngestError::Reply("ingest task stopped".into()))),
        None => std::future::pending().await,
    }
}

/// Looks at the session of a just registered connection once more, in the
/// background. Its token was checked before the upgrade, when a revocation
/// announced on pub/sub could not reach this connection yet; one announced
/// in between would otherwise leave it open until its token expires. lula-auth
/// deletes the record before it announces, so after this check every
/// revocation is either seen here or heard by [`crate::live::Live`].
fn recheck_session(state: &Arc<AppState>, claims: &Claims) {
    let (task_state, claims) = (state.clone(), claims.clone());
    state.tracker.spawn(async move {
        let state = task_state;
        let mut redis = state.auth_redis.clone();
        match state.auth.session_alive(&mut redis, &claims).await {
            Ok(true) => {}
            Ok(false) => {
                state.live.kick(
                    claims.sub.as_str(),
                    Some(&claims.sid),
                    crate::live::Kick::REVOKED,
                );
            }
            // The token was valid a moment ago, and a later revocation is
            // heard on pub/sub; nothing to do but note it.
            Err(e) => tracing::debug!(error = %e, "session recheck after connect failed"),
        }
    });
}

/// Serves one authenticated device until it disconnects, misbehaves past
/// recovery, falls silent, or the hub shuts down.
pub async fn serve(
    socket: WebSocket,
    claims: Claims,
    generation: u64,
    conn_id: u64,
    state: Arc<AppState>,
) {
    let (sink, mut stream) = socket.split();
    let (out, rx) = mpsc::channel(OUT_QUEUE);
    let writer = state
        .tracker
        .spawn(write_loop(sink, rx, state.metrics.clone()));
    state.metrics.connections.inc();
    let cancel = state.shutdown.child_token();
    let (registration, mut kicked) = state.live.register(&claims.sub, &claims.sid, generation);
    recheck_session(&state, &claims);
    if generation > 0 {
        // At once on this hub; the announcement reaches the other replicas.
        state.live.replaced(claims.sub.as_str(), generation);
    }
    let fleet = Recorder::connected(
        state.redis.clone(),
        state.tracker.clone(),
        &state.keys,
        &claims.sub,
        &state.hub_id,
        conn_id,
    );
    let mut conn = Connection {
        fleet,
        redis: state.redis.clone(),
        state: state.clone(),
        client: claims.sub,
        out,
        cancel: cancel.clone(),
        push: None,
        broadcast: None,
        xread: None,
        pending: VecDeque::new(),
        session: crate::legacy_session::SessionClock::new(
            claims.exp,
            state.config.non_renewing_grace,
            state.config.clock.clone(),
        ),
        registration,
    };
    tracing::info!("connected");

    let mut ping = tokio::time::interval(state.config.ping_interval);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let mut fleet_tick = tokio::time::interval(fleet::WRITE_EVERY);
    fleet_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    fleet_tick.tick().await;
    let close_with = loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => {
                // Drain: answer the batches already taken before going away,
                // so the device does not send them again to another replica.
                let _ = conn.drain().await;
                break Some((close::GOING_AWAY, "hub shutting down"));
            }
            _ = kicked.changed() => match *kicked.borrow() {
                Some(kick) => break Some((kick.code, kick.reason)),
                None => continue,
            },
            _ = tokio::time::sleep_until(conn.session.deadline()) => {
                break Some((close::SESSION_EXPIRED, "session expired"));
            }
            _ = fleet_tick.tick() => {
                conn.note_downstream_cursor();
                conn.fleet.tick(last_heard);
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > state.config.idle_timeout {
                    break Some((close::IDLE, "idle timeout"));
                }
                if conn.out.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
            done = next_done(&mut conn.pending) => {
                if let Some(p) = conn.pending.pop_front()
                    && conn.answer(p, done).await.is_err()
                {
                    break None;
                }
            }
            msg = stream.next(), if conn.pending.len() < MAX_PIPELINED => {
                last_heard = Instant::now();
                match msg {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Text(text))) => {
                        state.metrics.frames_in.inc();
                        if conn.handle(text.as_str()).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        state.metrics.frames_in.inc();
                        conn.fleet.error("binary frame");
                        let reply = ErrorReply::bad_request("binary frames are not supported; send JSON text frames");
                        if conn.reply(kind::ERR, None, reply).await.is_err() {
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
    conn.note_downstream_cursor();
    let close_code = close_with.map(|(code, _)| code);
    let description = match close_with {
        Some((code, reason)) => format!("{code} {reason}"),
        None => "closed by the device".to_owned(),
    };
    let abnormal = match close_code {
        None | Some(close::GOING_AWAY) | Some(close::REPLACED) => None,
        Some(_) => Some(description.as_str()),
    };
    conn.fleet.closed(last_heard, &description, abnormal);
    // Ends the writer (its queue's last sender) and the helper tasks' handles.
    drop(conn);
    let _ = writer.await;
    state.metrics.connections.dec();
    HubMetrics::count(&state.metrics.closed, "reason", close_reason(close_code));
    tracing::info!("disconnected");
}

/// The `reason` label of a closed connection, from the close code the hub sent.
fn close_reason(code: Option<u16>) -> &'static str {
    match code {
        None => "device",
        Some(close::GOING_AWAY) => "shutdown",
        Some(close::IDLE) => "idle",
        Some(close::SESSION_EXPIRED) => "session_expired",
        Some(close::REPLACED) => "replaced",
        Some(close::SESSION_REVOKED) => "revoked",
        Some(close::TOO_BIG) => "too_big",
        Some(close::POLICY) => "protocol",
        Some(_) => "other",
    }
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

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    metrics: Arc<HubMetrics>,
) {
    while let Some(msg) = rx.recv().await {
        let mut closing = matches!(msg, Message::Close(_));
        let mut frames = u64::from(matches!(msg, Message::Text(_)));
        if sink.feed(msg).await.is_err() {
            return;
        }
        while !closing && let Ok(more) = rx.try_recv() {
            closing = matches!(more, Message::Close(_));
            frames += u64::from(matches!(more, Message::Text(_)));
            if sink.feed(more).await.is_err() {
                return;
            }
        }
        metrics.frames_out.inc_by(frames);
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

    /// Answers after every pending batch has been answered, keeping replies in
    /// request order.
    async fn reply<P: Serialize>(
        &mut self,
        kind: &str,
        id: Option<&Value>,
        payload: P,
    ) -> Result<(), Closed> {
        self.drain().await?;
        self.send(kind, id, payload).await
    }

    /// Waits for and answers every pending batch, oldest first.
    async fn drain(&mut self) -> Result<(), Closed> {
        while !self.pending.is_empty() {
            let result = next_done(&mut self.pending).await;
            if let Some(p) = self.pending.pop_front() {
                self.answer(p, result).await?;
            }
        }
        Ok(())
    }

    /// Sends the reply to a batch whose result came.
    async fn answer(
        &mut self,
        p: PendingAppend,
        result: Result<Appended, IngestError>,
    ) -> Result<(), Closed> {
        let id = p.id.as_ref();
        let result = result.map_err(|e| self.failure(e));
        match (p.kind, result) {
            (_, Err(reply)) => self.send(p.kind, id, reply).await,
            (
                kind::XADD,
                Ok(Appended::Applied {
                    last: Some(hub_id), ..
                }),
            ) => self.send(p.kind, id, XaddReply { id: hub_id }).await,
            (kind::XADD, Ok(Appended::Applied { cursor, .. } | Appended::Gap { cursor })) => {
                let seq = p.seq.unwrap_or_default();
                let reply = ErrorReply {
                    id: Some(cursor),
                    ..ErrorReply::new(
                        status::CONFLICT,
                        format!("seq {seq} is at or below the saved {cursor}"),
                    )
                };
                self.send(p.kind, id, reply).await
            }
            (
                _,
                Ok(Appended::Applied {
                    cursor,
                    added,
                    duplicates,
                    ..
                }),
            ) => {
                let reply = XaddsReply {
                    id: cursor,
                    added,
                    duplicates,
                };
                self.send(p.kind, id, reply).await
            }
            (_, Ok(Appended::Gap { cursor })) => {
                let prev = p.seq.unwrap_or_default();
                let reply = ErrorReply {
                    id: Some(cursor),
                    ..ErrorReply::new(
                        status::CONFLICT,
                        format!("gap: batch follows {prev} but the hub holds up to {cursor}"),
                    )
                };
                self.send(p.kind, id, reply).await
            }
        }
    }

    /// Submits a batch to the ingestor; its reply is sent when its result comes.
    async fn submit(
        &mut self,
        kind: &'static str,
        id: Option<&Value>,
        seq: Option<StreamId>,
        prev: Option<StreamId>,
        entries: Vec<Entry>,
    ) -> Result<(), Closed> {
        let ingestor: &Ingestor = &self.state.ingestor;
        match ingestor.submit(&self.client, prev, entries).await {
            Ok(result) => {
                self.pending.push_back(PendingAppend {
                    kind,
                    id: id.cloned(),
                    seq,
                    result,
                });
                Ok(())
            }
            Err(e) => {
                let reply = self.failure(e);
                self.reply(kind, id, reply).await
            }
        }
    }

    async fn handle(&mut self, text: &str) -> Result<(), Closed> {
        let env = match Envelope::parse(text) {
            Ok(env) => env,
            Err(e) => {
                self.fleet.error(format!("unparseable frame: {e}"));
                let reply = ErrorReply::bad_request(format!("unparseable frame: {e}"));
                return self.reply(kind::ERR, None, reply).await;
            }
        };
        let id = env.id.as_ref();
        let kind = env.kind.as_ref();
        self.session.saw(kind);
        macro_rules! payload {
            ($t:ty) => {
                match env.payload::<$t>() {
                    Ok(p) => p,
                    Err(e) => {
                        self.fleet.error(format!("bad {kind} payload: {e}"));
                        let reply = ErrorReply::bad_request(format!("bad {kind} payload: {e}"));
                        return self.reply(kind, id, reply).await;
                    }
                }
            };
        }
        match kind {
            kind::ECHO => {
                let payload = env.payload.map(|p| p.get()).unwrap_or("{}");
                let raw: &serde_json::value::RawValue =
                    serde_json::from_str(payload).map_err(|_| Closed)?;
                self.reply(kind, id, raw).await
            }
            kind::ID => {
                // The cursor must reflect the batches sent before this request.
                self.drain().await?;
                self.cursor_reply(id).await
            }
            kind::XADD => {
                let entry: Entry = payload!(Entry);
                let seq = entry.id;
                self.submit(kind::XADD, id, Some(seq), None, vec![entry])
                    .await
            }
            kind::XADDS => {
                let batch: XaddsRequest = payload!(XaddsRequest);
                self.submit(kind::XADDS, id, batch.prev, batch.prev, batch.entries)
                    .await
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
                let reply = SubscribeReply {
                    id: request.id,
                    broadcast_after: request.broadcast_after,
                };
                // Reply first: pushes must not overtake the reply that starts them.
                self.reply(kind, id, reply).await?;
                self.subscribe(request.id, request.broadcast_after);
                Ok(())
            }
            kind::RENEW => {
                let request: RenewRequest = payload!(RenewRequest);
                self.drain().await?;
                let renewed = self
                    .state
                    .auth
                    .authenticate(&mut self.state.auth_redis.clone(), &request.token)
                    .await;
                match renewed {
                    Ok(claims) if claims.sub == self.client => {
                        HubMetrics::count(&self.state.metrics.renewals, "outcome", "ok");
                        self.session.renewed(claims.exp);
                        self.registration.set_sid(&claims.sid);
                        tracing::debug!(sid = %claims.sid, exp = claims.exp, "session renewed");
                        self.send(kind, id, RenewReply { exp: claims.exp }).await
                    }
                    Ok(_) => {
                        HubMetrics::count(&self.state.metrics.renewals, "outcome", "refused");
                        let reply =
                            ErrorReply::new(status::UNAUTHORIZED, "token is for another device");
                        self.send(kind, id, reply).await
                    }
                    Err(crate::HubError::Redis(_)) => {
                        HubMetrics::count(&self.state.metrics.renewals, "outcome", "unavailable");
                        let reply =
                            ErrorReply::new(status::UNAVAILABLE, "redis unavailable, retry later");
                        self.send(kind, id, reply).await
                    }
                    Err(e) => {
                        HubMetrics::count(&self.state.metrics.renewals, "outcome", "refused");
                        let reply = ErrorReply::new(status::UNAUTHORIZED, e.to_string());
                        self.send(kind, id, reply).await
                    }
                }
            }
            kind::ACK => {
                let ack: Ack = payload!(Ack);
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
                Ok(())
            }
            other => {
                self.fleet
                    .error(format!("unknown message type {:?}", truncate(other)));
                let reply =
                    ErrorReply::bad_request(format!("unknown message type {:?}", truncate(other)));
                self.reply(other, id, reply).await
            }
        }
    }

    async fn cursor_reply(&mut self, id: Option<&Value>) -> Result<(), Closed> {
        match ingest::cursor(&mut self.redis, self.state.ingestor.layout(), &self.client).await {
            Ok(cursor) => {
                let reply = IdReply {
                    id: cursor,
                    max_frame_bytes: Some(self.state.config.max_frame_bytes),
                    max_batch_entries: Some(MAX_BATCH_ENTRIES),
                };
                self.send(kind::ID, id, reply).await
            }
            Err(e) => {
                let reply = self.failure(e);
                self.send(kind::ID, id, reply).await
            }
        }
    }

    fn failure(&mut self, e: ingest::IngestError) -> ErrorReply {
        self.fleet.error(e.to_string());
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

    /// Tells the fleet recorder how far the device has acknowledged its out
    /// stream.
    fn note_downstream_cursor(&mut self) {
        if let Some((_, acks)) = &self.push {
            let acked = *acks.borrow();
            self.fleet.downstream(acked);
        }
    }

    /// Starts (or restarts from new cursors) the push of the out stream and,
    /// when `broadcast_after` is given, of the broadcast stream; a
    /// subscription without it stops pushing broadcasts.
    fn subscribe(&mut self, from: StreamId, broadcast_after: Option<StreamId>) {
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

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
