//! Compressed frames on one device connection (issue 16, `PROTOCOL.md`,
//! "Compression"): what the hub agrees to at the upgrade, and the two halves a
//! connection keeps, [`Outbound`] in its writer and [`Inbound`] in its reader.
//! Both also count the link's bytes into the connection's [`LinkCounters`].

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use axum::http::HeaderMap;
use axum::http::header::{HeaderName, HeaderValue};
use lula_protocol::compress::{self, Decoder, Encoder, FrameError, LinkCounters, Params};

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
    let value = HeaderValue::from_str(&params.to_string()).expect("an ASCII header value");
    (HeaderName::from_static(compress::HEADER), value)
}

/// The writer's half: compresses text frames once agreed, counts what goes out.
#[derive(Debug)]
pub struct Outbound {
    encoder: Option<Encoder>,
    counters: Arc<LinkCounters>,
}

impl Outbound {
    /// For a connection that agreed to `params` (or not).
    pub fn new(params: Option<Params>, counters: Arc<LinkCounters>) -> Self {
        Outbound {
            encoder: params.map(Encoder::new),
            counters,
        }
    }

    /// The frame to put on the socket for `msg`: a text frame becomes a
    /// compressed binary frame when compression was agreed.
    pub fn prepare(&mut self, msg: Message) -> Message {
        match (msg, &mut self.encoder) {
            (Message::Text(text), Some(encoder)) => {
                let frame = encoder.encode(text.as_bytes());
                self.counters.sent(text.len(), frame.len(), false);
                Message::Binary(frame.into())
            }
            (msg, _) => {
                let (plain, payload) = sizes(&msg);
                self.counters.sent(plain, payload, false);
                msg
            }
        }
    }

    /// Bytes the compression context holds between frames.
    pub fn memory_bytes(&self) -> usize {
        self.encoder.as_ref().map_or(0, Encoder::memory_bytes)
    }
}

/// The reader's half: inflates compressed frames once agreed, counts what comes in.
#[derive(Debug)]
pub struct Inbound {
    decoder: Option<Decoder>,
    counters: Arc<LinkCounters>,
}

impl Inbound {
    /// For a connection that agreed to `params` (or not); no frame inflates
    /// past `max_frame_bytes`.
    pub fn new(
        params: Option<Params>,
        max_frame_bytes: usize,
        counters: Arc<LinkCounters>,
    ) -> Self {
        Inbound {
            decoder: params.map(|p| Decoder::new(p, max_frame_bytes)),
            counters,
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
                self.counters.received(plain.len(), frame.len(), true);
                let text = Utf8Bytes::try_from(plain)
                    .map_err(|_| FrameError::Corrupt("inflated frame is not UTF-8".into()))?;
                Ok(Message::Text(text))
            }
            (msg, _) => {
                let (plain, payload) = sizes(&msg);
                self.counters.received(plain, payload, true);
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
        assert_eq!(
            negotiate(&headers("deflate; window-bits=15"), None, Some(11)),
            Some(p(11))
        );
        assert_eq!(
            negotiate(&headers("zstd, deflate"), None, Some(12)),
            Some(p(11))
        );
        assert_eq!(
            negotiate(
                &HeaderMap::new(),
                Some("sessionToken=x&compression=deflate%3B%20window-bits%3D9"),
                Some(11)
            ),
            Some(p(9))
        );
        assert_eq!(
            negotiate(&HeaderMap::new(), Some("sessionToken=x"), Some(11)),
            None
        );
        assert_eq!(negotiate(&HeaderMap::new(), None, Some(11)), None);
        assert_eq!(
            negotiate(&headers("deflate"), None, None),
            None,
            "turned off"
        );
        assert_eq!(negotiate(&headers("gzip"), None, Some(11)), None);
        let (name, value) = response_header(p(10));
        assert_eq!(name.as_str(), "lula-compression");
        assert_eq!(Params::parse(value.to_str().unwrap()), Some(p(10)));
    }

    #[test]
    fn frames_cross_compressed_both_ways_and_are_counted() {
        let params = Params::new(compress::DEFAULT_WINDOW_BITS);
        let hub = Arc::new(LinkCounters::default());
        let mut out = Outbound::new(params, hub.clone());
        let mut client_in = Inbound::new(params, 1 << 20, Arc::new(LinkCounters::default()));
        let text =
            r#"{"type":"push","payload":{"entries":[{"id":"1-0","fields":["temp","21.5"]}]}}"#;
        for _ in 0..3 {
            let wire = out.prepare(Message::Text(text.into()));
            assert!(matches!(wire, Message::Binary(_)));
            assert_eq!(client_in.accept(wire).unwrap(), Message::Text(text.into()));
        }
        let totals = hub.totals();
        assert_eq!(totals.sent_plain, 3 * text.len() as u64);
        assert!(totals.sent_ratio() < 0.7, "{totals:?}");
        assert!(out.memory_bytes() <= (1 << compress::DEFAULT_WINDOW_BITS) + 128);
    }

    #[test]
    fn without_compression_frames_pass_unchanged() {
        let counters = Arc::new(LinkCounters::default());
        let mut out = Outbound::new(None, counters.clone());
        let mut inb = Inbound::new(None, 1 << 20, counters.clone());
        assert_eq!(
            out.prepare(Message::Text("{}".into())),
            Message::Text("{}".into())
        );
        let binary = Message::Binary(vec![1, 2, 3].into());
        assert_eq!(inb.accept(binary.clone()).unwrap(), binary);
        let t = counters.totals();
        assert_eq!((t.sent_wire, t.sent_plain, t.received_wire), (4, 2, 9));
    }

    #[test]
    fn a_corrupt_frame_is_an_error_to_close_on() {
        let params = Params::new(compress::DEFAULT_WINDOW_BITS);
        let mut inb = Inbound::new(params, 1 << 20, Arc::new(LinkCounters::default()));
        let err = inb
            .accept(Message::Binary(vec![1, 5, 0xff, 0xff].into()))
            .unwrap_err();
        assert_eq!(err.close_code(), 1007);
    }
}
