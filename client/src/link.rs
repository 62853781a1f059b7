//! Compressed frames on the connection to the hub (issue 16, `PROTOCOL.md`,
//! "Compression"): the offer on the upgrade request, the hub's answer, and the
//! two halves a session keeps, [`Outbound`] in its writer and [`Inbound`] in
//! its reader. Both also count the link's bytes into [`LinkCounters`], which
//! `status` and the metrics show.

use std::sync::Arc;

use lula_protocol::compress::{self, Decoder, Encoder, FrameError, LinkCounters, Params};
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

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

/// The writer's half: compresses text frames once agreed, counts what goes out.
#[derive(Debug)]
pub struct Outbound {
    encoder: Option<Encoder>,
    counters: Arc<LinkCounters>,
}

impl Outbound {
    /// For a session that agreed to `params` (or not).
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
                self.counters.sent(text.len(), frame.len(), true);
                Message::Binary(frame.into())
            }
            (msg, _) => {
                let (plain, payload) = sizes(&msg);
                self.counters.sent(plain, payload, true);
                msg
            }
        }
    }
}

/// The reader's half: inflates compressed frames once agreed, counts what comes in.
#[derive(Debug)]
pub struct Inbound {
    decoder: Option<Decoder>,
    counters: Arc<LinkCounters>,
}

impl Inbound {
    /// For a session that agreed to `params` (or not); no frame inflates past
    /// `max_frame_bytes`.
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

    /// The frame as the session handles it: a compressed binary frame becomes
    /// the text frame it carries. An error means the hub's frames can no
    /// longer be read: the session ends and reconnects (which starts fresh
    /// histories on both ends).
    pub fn accept(&mut self, msg: Message) -> Result<Message, FrameError> {
        match (msg, &mut self.decoder) {
            (Message::Binary(frame), Some(decoder)) => {
                let plain = decoder.decode(&frame)?;
                self.counters.received(plain.len(), frame.len(), false);
                let text = Utf8Bytes::try_from(plain)
                    .map_err(|_| FrameError::Corrupt("inflated frame is not UTF-8".into()))?;
                Ok(Message::Text(text))
            }
            (msg, _) => {
                let (plain, payload) = sizes(&msg);
                self.counters.received(plain, payload, false);
                Ok(msg)
            }
        }
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
    }

    #[test]
    fn frames_cross_compressed_and_are_counted_with_the_client_mask() {
        let params = Params::new(compress::DEFAULT_WINDOW_BITS);
        let counters = Arc::new(LinkCounters::default());
        let mut out = Outbound::new(params, counters.clone());
        let mut hub_in = Inbound::new(params, 1 << 20, Arc::new(LinkCounters::default()));
        let text = r#"{"type":"xadds","id":7,"payload":{"prev":"0-0","entries":[]}}"#;
        let wire = out.prepare(Message::Text(text.into()));
        let Message::Binary(frame) = &wire else {
            panic!("compressed: {wire:?}");
        };
        assert_eq!(counters.totals().sent_wire, (frame.len() + 6) as u64);
        assert_eq!(hub_in.accept(wire).unwrap(), Message::Text(text.into()));
        let plain = Outbound::new(None, counters.clone()).prepare(Message::Text(text.into()));
        assert_eq!(plain, Message::Text(text.into()));
    }
}
