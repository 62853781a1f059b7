//! One device's WebSocket: read frames, answer each request in order, run the
//! downstream pushers beside it (the device's out stream and, when it asked,
//! the fleet's broadcast stream), ping, and close with a documented code.
//!
//! [`serve`] waits for the next [`Event`] and hands it to one method; each
//! [`Request`] kind has its own method, grouped by family:
//! - [`batches`]: `xadd`, `xadds` and `id` (the ingest pipeline);
//! - [`pushes`]: `subscribe`, `ack` and lula's polling `xread`;
//! - [`renewal`]: `renew` and the session's expiry.
//!
//! Requests on one connection are answered in the order they came. Batches
//! (`xadd`, `xadds`) are pipelined: each goes to the hub's
//! [`crate::ingest::Ingestor`] as it arrives, up to [`MAX_PIPELINED`] waiting
//! for their results, so a device's next batch is already queued while Redis
//! appends the one before; any other request first waits for the batches
//! before it. Replies and pushes share one bounded queue to a writer task,
//! which coalesces whatever is queued into one flush; when the device stops
//! reading, the queue fills and the hub stops reading from it too, instead of
//! buffering without bound.

mod batches;
mod parts;
mod pushes;
mod renewal;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use lula_protocol::compress::Params;
use lula_protocol::message::{ErrorReply, HubFrame, Incoming, Rejected, Request};
use lula_protocol::token::Claims;
use lula_protocol::{ClientId, CloseReason, StreamId};
use lula_runtime::writer::Outgoing;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::downstream::XreadJob;
use crate::fleet::{self, Recorder};
use crate::ingest::{Appended, IngestError};
use crate::link::{self, Inbound, Outbound};
use crate::live::Registration;
use crate::metrics::HubMetrics;
use batches::{PendingAppend, next_done};

/// Frames queued for the writer before the reader waits.
const OUT_QUEUE: usize = 64;
/// Batches of one connection waiting for their results before the hub stops
/// reading from it.
const MAX_PIPELINED: usize = 16;

/// The connection has ended; stop reading.
struct Closed;

/// What the connection loop waits for.
enum Event {
    /// The hub is shutting down.
    Shutdown,
    /// Revoked or taken over ([`crate::revocation`]).
    Kicked(CloseReason),
    /// The session token ran out without a renewal.
    Expired,
    /// Time to refresh what the fleet view shows.
    FleetTick,
    /// Time to ping (and to check the device is still heard).
    Ping,
    /// The oldest pending batch has its result.
    BatchDone(Result<Appended, IngestError>),
    /// A frame from the device, or the end of its stream.
    Frame(Option<Result<Message, axum::Error>>),
}

/// The timers and signals a connection waits on besides its socket.
struct Signals {
    ping: Interval,
    fleet_tick: Interval,
    kicked: watch::Receiver<Option<CloseReason>>,
}

struct Connection {
    state: Arc<AppState>,
    client: ClientId,
    redis: lula_runtime::redis::RedisConn,
    out: mpsc::Sender<Message>,
    /// Inflates compressed frames (when agreed) and counts what arrives.
    inbound: Inbound,
    /// Cancelled when the connection ends; stops its helper tasks.
    cancel: CancellationToken,
    /// The push of the device's out stream: stops it, and carries its acks.
    push: Option<(CancellationToken, watch::Sender<StreamId>)>,
    /// The push of the broadcast stream, when the device asked for it.
    broadcast: Option<(CancellationToken, watch::Sender<StreamId>)>,
    /// The device's `subscribe` said it understands set-aside markers.
    set_aside: bool,
    /// What the device's `subscribe` said it puts together from parts.
    push_parts: Option<lula_protocol::parts::PartLimits>,
    xread: Option<mpsc::Sender<XreadJob>>,
    /// Batches submitted and not answered yet, oldest first.
    pending: VecDeque<PendingAppend>,
    /// The entry being put together from parts, if one is.
    assembly: Option<parts::Assembling>,
    /// When the session ends unless renewed; the socket closes then
    /// (later for a client that never asks to renew, see `legacy_session`).
    session: crate::legacy_session::SessionClock,
    /// When the device was last heard from.
    last_heard: Instant,
    /// This connection in the hub's registry of live connections.
    registration: Registration,
    /// What the fleet view shows of this device.
    fleet: Recorder,
}

/// Serves one authenticated device until it disconnects, misbehaves past
/// recovery, falls silent, or the hub shuts down.
pub async fn serve(
    socket: WebSocket,
    claims: Claims,
    generation: u64,
    conn_id: u64,
    compression: Option<Params>,
    state: Arc<AppState>,
) {
    let (sink, mut stream) = socket.split();
    // Compression (if agreed) sits between the queue and the socket, so every
    // frame queued (replies, pushes, broadcasts) is compressed in queue order.
    let link_metrics = state.metrics.link.clone();
    let sink = link::compressing(sink, Outbound::new(compression, link_metrics.clone()));
    let inbound = Inbound::new(compression, state.config.max_frame_bytes, link_metrics);
    let (out, rx) = mpsc::channel(OUT_QUEUE);
    let metrics = state.metrics.clone();
    let writer = state.tracker.spawn(lula_runtime::writer::coalesce(
        sink,
        rx,
        classify,
        move |texts| {
            metrics.frames_out.inc_by(texts);
        },
    ));
    state.metrics.connections.inc();
    let (mut conn, kicked) = Connection::open(&state, claims, generation, conn_id, out, inbound);
    tracing::info!("connected");
    let mut signals = Signals::start(&state, kicked).await;
    let close_with = loop {
        let event = conn.next_event(&mut signals, &mut stream).await;
        if let Err(stop) = conn.on_event(event).await {
            break stop;
        }
    };
    conn.finish(close_with).await;
    // Ends the writer (its queue's last sender) and the helper tasks' handles.
    drop(conn);
    let _ = writer.await;
    state.metrics.connections.dec();
    let label = close_with.map_or("device", CloseReason::label);
    HubMetrics::count(&state.metrics.closed, "reason", label);
    tracing::info!("disconnected");
}

/// What the writer counts (text frames) and where it stops (a close frame).
fn classify(msg: &Message) -> Outgoing {
    match msg {
        Message::Text(_) => Outgoing::Data,
        Message::Close(_) => Outgoing::Close,
        _ => Outgoing::Control,
    }
}

impl Signals {
    async fn start(state: &AppState, kicked: watch::Receiver<Option<CloseReason>>) -> Self {
        let mut ping = tokio::time::interval(state.config.ping_interval);
        ping.tick().await;
        let mut fleet_tick = tokio::time::interval(fleet::WRITE_EVERY);
        fleet_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        fleet_tick.tick().await;
        Signals {
            ping,
            fleet_tick,
            kicked,
        }
    }
}

impl Connection {
    /// Registers the connection (live registry, fleet view) and announces the
    /// take-over of older connections of the device.
    fn open(
        state: &Arc<AppState>,
        claims: Claims,
        generation: u64,
        conn_id: u64,
        out: mpsc::Sender<Message>,
        inbound: Inbound,
    ) -> (Self, watch::Receiver<Option<CloseReason>>) {
        let (registration, kicked) = state.live.register(&claims.sub, &claims.sid, generation);
        crate::revocation::recheck_session(state, &claims);
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
        let conn = Connection {
            fleet,
            redis: state.redis.clone(),
            state: state.clone(),
            client: claims.sub,
            out,
            inbound,
            cancel: state.shutdown.child_token(),
            push: None,
            broadcast: None,
            set_aside: false,
            xread: None,
            pending: VecDeque::new(),
            assembly: None,
            push_parts: None,
            session: crate::legacy_session::SessionClock::new(
                claims.exp,
                state.config.non_renewing_grace,
                state.config.clock.clone(),
            ),
            last_heard: Instant::now(),
            registration,
        };
        (conn, kicked)
    }

    /// Waits for the next thing to act on. Biased: shutdown and closes first,
    /// then results before new frames; no new frame is read while
    /// [`MAX_PIPELINED`] batches wait for theirs.
    async fn next_event(
        &mut self,
        signals: &mut Signals,
        stream: &mut SplitStream<WebSocket>,
    ) -> Event {
        let backlog_due = self.fleet.backlog_due();
        loop {
            return tokio::select! {
                biased;
                _ = self.state.shutdown.cancelled() => Event::Shutdown,
                _ = signals.kicked.changed() => match *signals.kicked.borrow() {
                    Some(reason) => Event::Kicked(reason),
                    None => continue,
                },
                _ = tokio::time::sleep_until(self.session.deadline()) => Event::Expired,
                _ = signals.fleet_tick.tick() => Event::FleetTick,
                _ = sleep_until_some(backlog_due) => Event::FleetTick,
                _ = signals.ping.tick() => Event::Ping,
                done = next_done(&mut self.pending) => Event::BatchDone(done),
                msg = stream.next(), if self.pending.len() < MAX_PIPELINED => Event::Frame(msg),
            };
        }
    }

    /// Acts on one event; `Err` stops the loop, with the close reason to send
    /// (none when the device is gone).
    async fn on_event(&mut self, event: Event) -> Result<(), Option<CloseReason>> {
        match event {
            Event::Shutdown => {
                // Drain: answer the batches already taken before going away,
                // so the device does not send them again to another replica.
                let _ = self.drain().await;
                Err(Some(CloseReason::GoingAway))
            }
            Event::Kicked(reason) => Err(Some(reason)),
            Event::Expired => Err(Some(CloseReason::SessionExpired)),
            Event::FleetTick => {
                self.note_downstream_cursor();
                self.fleet.tick(self.last_heard);
                Ok(())
            }
            Event::Ping => self.ping().await,
            Event::BatchDone(done) => match self.pending.pop_front() {
                Some(p) => self.answer(p, done).await.map_err(|Closed| None),
                None => Ok(()),
            },
            Event::Frame(msg) => {
                self.last_heard = Instant::now();
                self.on_frame(msg).await
            }
        }
    }

    /// Closes a silent device, else pings it.
    async fn ping(&mut self) -> Result<(), Option<CloseReason>> {
        if self.last_heard.elapsed() > self.state.config.idle_timeout {
            return Err(Some(CloseReason::Idle));
        }
        self.out
            .send(Message::Ping(Default::default()))
            .await
            .map_err(|_| None)
    }

    async fn on_frame(
        &mut self,
        msg: Option<Result<Message, axum::Error>>,
    ) -> Result<(), Option<CloseReason>> {
        let msg = match msg {
            Some(Ok(m)) => match self.inbound.accept(m) {
                Ok(m) => Some(Ok(m)),
                // The histories no longer agree: close, handle nothing.
                Err(e) => {
                    self.fleet.error(e.to_string());
                    return Err(Some(e.close_reason()));
                }
            },
            other => other,
        };
        let handled = match msg {
            None | Some(Ok(Message::Close(_))) => return Err(None),
            Some(Ok(Message::Text(text))) => {
                self.state.metrics.frames_in.inc();
                self.on_text(text.as_str()).await
            }
            Some(Ok(Message::Binary(_))) => {
                self.state.metrics.frames_in.inc();
                self.fleet.error("binary frame");
                let reply = ErrorReply::bad_request(
                    "binary frames are not supported; send JSON text frames",
                );
                self.reply(
                    None,
                    HubFrame::error(lula_protocol::message::kind::ERR, reply),
                )
                .await
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            Some(Err(e)) => return Err(read_error_close(e)),
        };
        handled.map_err(|Closed| None)
    }

    /// Answers one text frame: one method per request kind.
    async fn on_text(&mut self, text: &str) -> Result<(), Closed> {
        let Incoming { id, request } = match Request::parse(text) {
            Ok(incoming) => incoming,
            Err(rejected) => return self.reject(rejected).await,
        };
        let id = id.as_ref();
        self.session.saw(request.kind());
        match request {
            Request::Echo(payload) => self.reply(id, HubFrame::echo(payload)).await,
            Request::Id => self.id(id).await,
            Request::Xadd(entry) => self.xadd(id, entry).await,
            Request::Xadds(batch) => self.xadds(id, batch).await,
            Request::Xread(request) => self.xread(id, request).await,
            Request::Subscribe(request) => self.subscribe(id, request).await,
            Request::Ack(ack) => {
                self.ack(ack);
                Ok(())
            }
            Request::Renew(request) => self.renew(id, request).await,
        }
    }

    /// Answers a frame that is not a valid request with its error reply.
    async fn reject(&mut self, rejected: Rejected<'_>) -> Result<(), Closed> {
        let Rejected { kind, id, reply } = rejected;
        self.fleet.error(reply.message.clone());
        self.reply(id.as_ref(), HubFrame::Error { kind, reply })
            .await
    }

    /// Sends the close frame (if any) and records how the connection ended.
    async fn finish(&mut self, close_with: Option<CloseReason>) {
        self.cancel.cancel();
        if let Some(reason) = close_with {
            let frame = CloseFrame {
                code: reason.code(),
                reason: Utf8Bytes::from_static(reason.text()),
            };
            let _ = self.out.send(Message::Close(Some(frame))).await;
        }
        self.note_downstream_cursor();
        let description = match close_with {
            Some(reason) => format!("{} {}", reason.code(), reason.text()),
            None => "closed by the device".to_owned(),
        };
        let abnormal = match close_with {
            Some(reason) if !reason.is_expected() => Some(description.as_str()),
            _ => None,
        };
        self.fleet.closed(self.last_heard, &description, abnormal);
    }

    /// Sends a frame at once.
    async fn send(&self, id: Option<&Value>, frame: HubFrame<'_>) -> Result<(), Closed> {
        match frame.to_text(id) {
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
    async fn reply(&mut self, id: Option<&Value>, frame: HubFrame<'_>) -> Result<(), Closed> {
        self.drain().await?;
        self.send(id, frame).await
    }
}

/// Maps a read error to the close the device should see, if any.
fn read_error_close(e: axum::Error) -> Option<CloseReason> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(ws) => match *ws {
            WsError::Capacity(_) => Some(CloseReason::TooBig),
            WsError::Protocol(_) | WsError::Utf8(_) => Some(CloseReason::Policy),
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

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
