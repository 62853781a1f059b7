//! Compressed frames on the connection to the hub (issue 16, `PROTOCOL.md`,
//! "Compression"): the offer on the upgrade request, the hub's answer, and the
//! two halves a session keeps: [`Outbound`] in its writer (through
//! [`compressing`]) and [`Inbound`] in its reader (through [`inflating`]).
//! Both count the link's bytes into [`LinkMetrics`], which `status` and the
//! metrics show.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use lula_protocol::compress::{self, Decoder, Encoder, FrameError, Params, ws_header_bytes};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

/// Asks the hub for compressed frames with `params` (a no-op for `None`).
pub fn offer(request: &mut Request, params: Option<Params>) {
    if let Some(params) = params
        && let Ok(value) = HeaderValue::from_str(&params.to_string())
    {
        request.headers_mut().insert(compress::HEADER, value);
    }
}

/// What the hub agreed to, from its `101` response: `None` when it did not
/// answer the offer (an older hub, or compression turned off there), and then
/// the session speaks JSON text frames only.
pub fn accepted(response: &Response) -> Option<Params> {
    response
        .headers()
        .get(compress::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Params::parse)
}

/// Bytes on the link to the hub since the daemon started, for the metrics and
/// `status`. "Plain" is the JSON the frames carry, so `sent_bytes /
/// sent_plain_bytes` is the compression ratio upstream. Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct LinkMetrics {
    /// Bytes sent to the hub: frame headers (with the client's mask) and payloads.
    pub sent_bytes: Counter,
    /// JSON bytes those frames carried.
    pub sent_plain_bytes: Counter,
    /// Bytes received from the hub: frame headers and payloads.
    pub received_bytes: Counter,
    /// JSON bytes those frames carried.
    pub received_plain_bytes: Counter,
}

impl LinkMetrics {
    /// Registers the four counters (`link_*_bytes_total` under the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "link_sent_bytes",
                "Bytes sent to the hub (WebSocket frame headers and payloads)",
                &self.sent_bytes,
            ),
            (
                "link_sent_plain_bytes",
                "JSON bytes carried by the frames sent to the hub",
                &self.sent_plain_bytes,
            ),
            (
                "link_received_bytes",
                "Bytes received from the hub (WebSocket frame headers and payloads)",
                &self.received_bytes,
            ),
            (
                "link_received_plain_bytes",
                "JSON bytes carried by the frames received from the hub",
                &self.received_plain_bytes,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }

    /// Wire bytes per JSON byte sent (1.0 before anything was sent).
    pub fn sent_ratio(&self) -> f64 {
        ratio(self.sent_bytes.get(), self.sent_plain_bytes.get())
    }

    /// Wire bytes per JSON byte received (1.0 before anything arrived).
    pub fn received_ratio(&self) -> f64 {
        ratio(self.received_bytes.get(), self.received_plain_bytes.get())
    }

    fn sent(&self, plain: usize, payload: usize) {
        // A client's frames are masked.
        self.sent_bytes
            .inc_by((payload + ws_header_bytes(payload, true)) as u64);
        self.sent_plain_bytes.inc_by(plain as u64);
    }

    fn received(&self, plain: usize, payload: usize) {
        self.received_bytes
            .inc_by((payload + ws_header_bytes(payload, false)) as u64);
        self.received_plain_bytes.inc_by(plain as u64);
    }
}

fn ratio(wire: u64, plain: u64) -> f64 {
    if plain == 0 {
        1.0
    } else {
        wire as f64 / plain as f64
    }
}

/// The writer's half: compresses text frames once agreed, counts what goes out.
#[derive(Debug)]
pub struct Outbound {
    encoder: Option<Encoder>,
    metrics: LinkMetrics,
}

impl Outbound {
    /// For a session that agreed to `params` (or not).
    pub fn new(params: Option<Params>, metrics: LinkMetrics) -> Self {
        Outbound {
            encoder: params.map(Encoder::new),
            metrics,
        }
    }

    /// The frame to put on the socket for `msg`: a text frame becomes a
    /// compressed binary frame when compression was agreed.
    pub fn prepare(&mut self, msg: Message) -> Message {
        match (msg, &mut self.encoder) {
            (Message::Text(text), Some(encoder)) => match encoder.compress(text.as_bytes()) {
                Some(frame) => {
                    self.metrics.sent(text.len(), frame.len());
                    Message::Binary(frame.into())
                }
                None => {
                    self.metrics.sent(text.len(), text.len());
                    Message::Text(text)
                }
            },
            (msg, _) => {
                let (plain, payload) = sizes(&msg);
                self.metrics.sent(plain, payload);
                msg
            }
        }
    }
}

/// `sink` with every message passed through `outbound` on its way out (the
/// session's writer task sends on it).
pub fn compressing<S: Sink<Message> + Unpin>(
    sink: S,
    mut outbound: Outbound,
) -> impl Sink<Message, Error = S::Error> + Unpin {
    sink.with(move |msg| std::future::ready(Ok(outbound.prepare(msg))))
}

/// The reader's half: inflates compressed frames once agreed, counts what comes in.
#[derive(Debug)]
pub struct Inbound {
    decoder: Option<Decoder>,
    metrics: LinkMetrics,
}

impl Inbound {
    /// For a session that agreed to `params` (or not); no frame inflates past
    /// `max_frame_bytes`.
    pub fn new(params: Option<Params>, max_frame_bytes: usize, metrics: LinkMetrics) -> Self {
        Inbound {
            decoder: params.map(|p| Decoder::new(p, max_frame_bytes)),
            metrics,
        }
    }

    /// The frame as the session handles it: a compressed binary frame becomes
    /// the text frame it carries.
    pub fn accept(&mut self, msg: Message) -> Result<Message, FrameError> {
        match (msg, &mut self.decoder) {
            (Message::Binary(frame), Some(decoder)) => {
                let plain = decoder.decode(&frame)?;
                self.metrics.received(plain.len(), frame.len());
                let text = Utf8Bytes::try_from(plain)
                    .map_err(|_| FrameError::Corrupt("inflated frame is not UTF-8".into()))?;
                Ok(Message::Text(text))
            }
            (msg, _) => {
                let (plain, payload) = sizes(&msg);
                self.metrics.received(plain, payload);
                Ok(msg)
            }
        }
    }
}

/// `stream` with every frame passed through `inbound`. A frame that cannot be
/// inflated ends the session like a broken socket (an `InvalidData` I/O
/// error); the reconnect starts both histories afresh.
pub fn inflating<S>(stream: S, inbound: Inbound) -> Inflating<S> {
    Inflating { stream, inbound }
}

/// The stream [`inflating`] returns.
#[derive(Debug)]
pub struct Inflating<S> {
    stream: S,
    inbound: Inbound,
}

impl<S> Stream for Inflating<S>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.stream.poll_next_unpin(cx).map(|item| {
            item.map(|r| {
                r.and_then(|msg| {
                    this.inbound.accept(msg).map_err(|e| {
                        tungstenite::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            e,
                        ))
                    })
                })
            })
        })
    }
}

/// (JSON bytes, payload bytes) of an uncompressed frame. Control frames count
/// on the wire but carry no JSON.
fn sizes(msg: &Message) -> (usize, usize) {
    match msg {
        Message::Text(t) => (t.len(), t.len()),
        Message::Binary(b) => (b.len(), b.len()),
        Message::Ping(b) | Message::Pong(b) => (0, b.len()),
        Message::Close(c) => (0, c.as_ref().map_or(0, |c| 2 + c.reason.len())),
        Message::Frame(f) => (0, f.payload().len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    #[test]
    fn the_offer_goes_on_the_request_and_the_answer_is_read_back() {
        let p = Params::new(10).unwrap();
        let mut request = "ws://127.0.0.1:1/".into_client_request().unwrap();
        offer(&mut request, None);
        assert!(request.headers().get(compress::HEADER).is_none());
        offer(&mut request, Some(p));
        assert_eq!(
            request.headers()[compress::HEADER],
            "deflate; window-bits=10"
        );
        let mut response = Response::new(None);
        assert_eq!(accepted(&response), None);
        response.headers_mut().insert(
            compress::HEADER,
            HeaderValue::from_static("deflate; window-bits=9"),
        );
        assert_eq!(accepted(&response), Params::new(9));
        // What the daemon offers, and a hub that takes the wider frame window.
        offer(&mut request, Params::offer(10));
        assert_eq!(
            request.headers()[compress::HEADER],
            "deflate; window-bits=10; frame-window-bits=15"
        );
        response.headers_mut().insert(
            compress::HEADER,
            HeaderValue::from_static("deflate; window-bits=10; frame-window-bits=15"),
        );
        assert_eq!(accepted(&response).map(Params::frame_window_bits), Some(15));
    }

    #[tokio::test]
    async fn frames_cross_compressed_and_are_counted_with_the_client_mask() {
        let params = Params::new(compress::DEFAULT_WINDOW_BITS);
        let metrics = LinkMetrics::default();
        let mut sent = Vec::new();
        let mut sink = compressing(&mut sent, Outbound::new(params, metrics.clone()));
        // Repeats, so it shrinks even without a history (a frame that would
        // not shrink goes as text).
        let text = r#"{"type":"xadds","id":7,"payload":{"prev":"0-0","entries":[{"id":"1-1","fields":["temp","21.5","humidity","40"]},{"id":"1-2","fields":["temp","21.5","humidity","40"]}]}}"#;
        sink.send(Message::Text(text.into())).await.unwrap();
        drop(sink);
        let Message::Binary(frame) = &sent[0] else {
            panic!("compressed: {sent:?}");
        };
        assert_eq!(metrics.sent_bytes.get(), (frame.len() + 6) as u64);
        let hub_side = LinkMetrics::default();
        let frames = futures_util::stream::iter(sent.into_iter().map(Ok));
        let mut stream = inflating(frames, Inbound::new(params, 1 << 20, hub_side.clone()));
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            Message::Text(text.into())
        );
        assert_eq!(hub_side.received_plain_bytes.get(), text.len() as u64);
    }

    #[tokio::test]
    async fn a_corrupt_frame_from_the_hub_is_an_invalid_data_error() {
        let params = Params::new(compress::DEFAULT_WINDOW_BITS);
        let bad = Message::Binary(vec![1, 5, 0xff, 0xff].into());
        let frames = futures_util::stream::iter([Ok(bad)]);
        let mut stream = inflating(
            frames,
            Inbound::new(params, 1 << 20, LinkMetrics::default()),
        );
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(
            matches!(err, tungstenite::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
        );
    }

    #[test]
    fn without_compression_frames_pass_unchanged() {
        let metrics = LinkMetrics::default();
        let text = Message::Text("{}".into());
        assert_eq!(
            Outbound::new(None, metrics.clone()).prepare(text.clone()),
            text
        );
        let mut inb = Inbound::new(None, 1 << 20, metrics.clone());
        assert_eq!(inb.accept(text.clone()).unwrap(), text);
        assert_eq!(
            metrics.sent_ratio(),
            4.0,
            "2 bytes of JSON in a frame of 8 (2 header, 4 mask)"
        );
    }
}
