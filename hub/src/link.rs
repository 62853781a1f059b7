//! Compressed frames on one device connection (issue 16, `PROTOCOL.md`,
//! "Compression"): what the hub agrees to at the upgrade, and the two halves a
//! connection keeps, [`Outbound`] in its writer (through [`compressing`]) and
//! [`Inbound`] in its reader. Both also count the link's bytes into the hub's
//! [`LinkMetrics`].

use axum::extract::ws::{Message, Utf8Bytes};
use axum::http::HeaderMap;
use axum::http::header::{HeaderName, HeaderValue};
use futures_util::{Sink, SinkExt as _};
use lula_protocol::compress::{self, Decoder, Encoder, FrameError, Params, ws_header_bytes};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// What the hub agrees to for this upgrade request: the client's offer from
/// the `lula-compression` header, else the `compression` query parameter,
/// its window capped at `max_window_bits`. `None` (no offer, no deflate
/// offer, or compression turned off with `max_window_bits` `None`) means
/// JSON text frames, as for every client before.
pub fn negotiate(
    headers: &HeaderMap,
    query: Option<&str>,
    max_window_bits: Option<u8>,
) -> Option<Params> {
    let max = max_window_bits?;
    let from_header = headers
        .get_all(compress::HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| Params::negotiate(v, max));
    from_header.or_else(|| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query?)
            .ok()?
            .into_iter()
            .filter(|(k, _)| k == compress::QUERY_PARAM)
            .find_map(|(_, v)| Params::negotiate(&v, max))
    })
}

/// The header the `101` response carries to say what was agreed.
pub fn response_header(params: Params) -> (HeaderName, HeaderValue) {
    // `deflate; window-bits=N` is always a valid header value.
    let value = HeaderValue::from_str(&params.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static(compress::DEFLATE));
    (HeaderName::from_static(compress::HEADER), value)
}

/// Bytes on the links of all devices of this hub, for `GET /metrics`. "Plain"
/// is the JSON the frames carry, so `sent_bytes / sent_plain_bytes` is the
/// compression ratio of what the hub sent (about 1 without compression: frame
/// headers and pings add a little). Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct LinkMetrics {
    /// Bytes sent on device links: frame headers and payloads.
    pub sent_bytes: Counter,
    /// JSON bytes those frames carried.
    pub sent_plain_bytes: Counter,
    /// Bytes received on device links: frame headers and payloads.
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
                "Bytes sent on device links (WebSocket frame headers and payloads)",
                &self.sent_bytes,
            ),
            (
                "link_sent_plain_bytes",
                "JSON bytes carried by the frames sent on device links",
                &self.sent_plain_bytes,
            ),
            (
                "link_received_bytes",
                "Bytes received on device links (WebSocket frame headers and payloads)",
                &self.received_bytes,
            ),
            (
                "link_received_plain_bytes",
                "JSON bytes carried by the frames received on device links",
                &self.received_plain_bytes,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }

    fn sent(&self, plain: usize, payload: usize) {
        // The hub's frames are not masked.
        self.sent_bytes
            .inc_by((payload + ws_header_bytes(payload, false)) as u64);
        self.sent_plain_bytes.inc_by(plain as u64);
    }

    fn received(&self, plain: usize, payload: usize) {
        // A device's frames are masked.
        self.received_bytes
            .inc_by((payload + ws_header_bytes(payload, true)) as u64);
        self.received_plain_bytes.inc_by(plain as u64);
    }
}

/// The writer's half: compresses text frames once agreed, counts what goes out.
#[derive(Debug)]
pub struct Outbound {
    encoder: Option<Encoder>,
    metrics: LinkMetrics,
}

impl Outbound {
    /// For a connection that agreed to `params` (or not).
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

    /// Bytes the compression context holds between frames.
    pub fn memory_bytes(&self) -> usize {
        self.encoder.as_ref().map_or(0, Encoder::memory_bytes)
    }
}

/// `sink` with every message passed through `outbound` on its way out: what
/// the connection's writer task sends on, so replies, pushes and broadcasts
/// are all compressed (and counted) in one place, in the order queued.
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
    /// For a connection that agreed to `params` (or not); no frame inflates
    /// past `max_frame_bytes`.
    pub fn new(params: Option<Params>, max_frame_bytes: usize, metrics: LinkMetrics) -> Self {
        Inbound {
            decoder: params.map(|p| Decoder::new(p, max_frame_bytes)),
            metrics,
        }
    }

    /// The frame as the connection handles it: a compressed binary frame
    /// becomes the text frame it carries. A binary frame on a connection
    /// without compression passes unchanged (and gets today's `err` reply).
    /// An error means the histories no longer agree: close with
    /// [`FrameError::close_code`], write nothing.
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

    /// Bytes the compression context holds between frames.
    pub fn memory_bytes(&self) -> usize {
        self.decoder.as_ref().map_or(0, Decoder::memory_bytes)
    }
}

/// (JSON bytes, payload bytes) of an uncompressed frame. Control frames
/// count on the wire but carry no JSON.
fn sizes(msg: &Message) -> (usize, usize) {
    match msg {
        Message::Text(t) => (t.len(), t.len()),
        Message::Binary(b) => (b.len(), b.len()),
        Message::Ping(b) | Message::Pong(b) => (0, b.len()),
        Message::Close(c) => (0, c.as_ref().map_or(0, |c| 2 + c.reason.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(compress::HEADER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn offers_are_taken_from_the_header_or_the_query_and_capped() {
        let p = |bits| Params::new(bits).unwrap();
        let none = HeaderMap::new();
        assert_eq!(
            negotiate(&headers("deflate; window-bits=15"), None, Some(11)),
            Some(p(11))
        );
        assert_eq!(
            negotiate(&headers("zstd, deflate"), None, Some(12)),
            Some(p(compress::DEFAULT_WINDOW_BITS))
        );
        let query = "sessionToken=x&compression=deflate%3B%20window-bits%3D9";
        assert_eq!(negotiate(&none, Some(query), Some(11)), Some(p(9)));
        assert_eq!(negotiate(&none, Some("sessionToken=x"), Some(11)), None);
        assert_eq!(negotiate(&none, None, Some(11)), None);
        assert_eq!(
            negotiate(&headers("deflate"), None, None),
            None,
            "turned off"
        );
        assert_eq!(negotiate(&headers("gzip"), None, Some(11)), None);
        let (name, value) = response_header(p(10));
        assert_eq!(name.as_str(), "lula-compression");
        assert_eq!(Params::parse(value.to_str().unwrap()), Some(p(10)));
        // lula-client's offer: the history capped, the frame window as asked,
        // and said back so the client knows it may use it.
        let offer = Params::offer(12).unwrap().to_string();
        let agreed = negotiate(&headers(&offer), None, Some(11)).unwrap();
        assert_eq!(
            agreed,
            Params::new(11).unwrap().with_frame_window(15).unwrap()
        );
        let (_, value) = response_header(agreed);
        assert_eq!(value, "deflate; window-bits=11; frame-window-bits=15");
    }

    #[test]
    fn frames_cross_compressed_and_are_counted() {
        let params = Params::new(compress::DEFAULT_WINDOW_BITS);
        let hub = LinkMetrics::default();
        let mut out = Outbound::new(params, hub.clone());
        let mut client_in = Inbound::new(params, 1 << 20, LinkMetrics::default());
        let text =
            r#"{"type":"push","payload":{"entries":[{"id":"1-0","fields":["temp","21.5"]}]}}"#;
        for _ in 0..3 {
            let wire = out.prepare(Message::Text(text.into()));
            assert!(matches!(wire, Message::Binary(_)));
            assert_eq!(client_in.accept(wire).unwrap(), Message::Text(text.into()));
        }
        assert_eq!(hub.sent_plain_bytes.get(), 3 * text.len() as u64);
        let ratio = hub.sent_bytes.get() as f64 / hub.sent_plain_bytes.get() as f64;
        assert!(ratio < 0.7, "{ratio}");
        assert!(out.memory_bytes() <= (1 << compress::DEFAULT_WINDOW_BITS) + 128);
    }

    #[test]
    fn without_compression_frames_pass_unchanged() {
        let metrics = LinkMetrics::default();
        let mut out = Outbound::new(None, metrics.clone());
        let mut inb = Inbound::new(None, 1 << 20, metrics.clone());
        assert_eq!(
            out.prepare(Message::Text("{}".into())),
            Message::Text("{}".into())
        );
        let binary = Message::Binary(vec![1, 2, 3].into());
        assert_eq!(inb.accept(binary.clone()).unwrap(), binary);
        assert_eq!(
            (metrics.sent_bytes.get(), metrics.sent_plain_bytes.get()),
            (4, 2)
        );
        assert_eq!(metrics.received_bytes.get(), 9);
    }

    #[tokio::test]
    async fn the_compressing_sink_sends_what_outbound_prepares() {
        let params = Params::new(compress::DEFAULT_WINDOW_BITS);
        let mut sent = Vec::new();
        let mut sink = compressing(&mut sent, Outbound::new(params, LinkMetrics::default()));
        sink.send(Message::Text("{}".into())).await.unwrap();
        sink.send(Message::Ping(Default::default())).await.unwrap();
        drop(sink);
        let mut inb = Inbound::new(params, 1 << 20, LinkMetrics::default());
        assert_eq!(
            inb.accept(sent[0].clone()).unwrap(),
            Message::Text("{}".into())
        );
        assert!(matches!(sent[1], Message::Ping(_)));
    }

    #[test]
    fn a_corrupt_frame_is_an_error_to_close_on() {
        let params = Params::new(compress::DEFAULT_WINDOW_BITS);
        let mut inb = Inbound::new(params, 1 << 20, LinkMetrics::default());
        let err = inb
            .accept(Message::Binary(vec![1, 5, 0xff, 0xff].into()))
            .unwrap_err();
        assert_eq!(err.close_code(), 1007);
    }
}
