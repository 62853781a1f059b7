//! Compressed binary frames for metered links (issue 16).
//!
//! tungstenite 0.29/0.30 (and so axum 0.8's `ws`) has no permessage-deflate
//! (RFC 7692), so lula compresses above the WebSocket layer, the same way: raw
//! DEFLATE (RFC 1951), one sync-flushed message per frame with the `00 00 ff ff`
//! tail taken off, and *context takeover*, i.e. a frame may refer back to the
//! last `2^window_bits` bytes of plain text sent before it in the same
//! direction. Field names repeated across frames then cost a two- or
//! three-byte back reference. Within a frame, references may reach further
//! back when both ends agreed a wider frame window (`frame-window-bits`; see
//! [`Params`]). See `PROTOCOL.md`, "Compression", for the handshake and why
//! deflate rather than zstd.
//!
//! What a connection keeps between frames is only that history: at most
//! `2^window_bits` bytes per direction ([`Encoder::memory_bytes`],
//! [`Decoder::memory_bytes`]). The zlib state that does the work (measured as
//! resident memory over 500 contexts at 11 window bits: 190 KiB to compress,
//! 47 KiB to decompress) is one per thread, reused for every
//! frame and seeded from the connection's history as a preset dictionary, so it
//! does not grow with the number of connections. A receiver decoding with the
//! same history as dictionary sees exactly what a long-lived inflater would.
//!
//! Decoding is bounded: the frame states its plain length up front, a length
//! over the receiver's limit is refused before anything is inflated, and
//! inflating stops one byte past the stated length, so no hostile frame makes
//! the receiver allocate more than `limit + 1` bytes.

use std::cell::{Cell, RefCell};
use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// HTTP header a client sends on the upgrade request to ask for compressed
/// frames (`lula-compression: deflate; window-bits=10`), and the hub sends back
/// on its `101` response with what it accepted. No header back: no compression.
pub const HEADER: &str = "lula-compression";

/// Query parameter with the same value as [`HEADER`], for clients that cannot
/// set headers on the upgrade request (browsers).
pub const QUERY_PARAM: &str = "compression";

/// The one codec so far: raw deflate with context takeover.
pub const DEFLATE: &str = "deflate";

/// Smallest history window (512 bytes); zlib's raw deflate has no smaller one.
pub const MIN_WINDOW_BITS: u8 = 9;

/// Largest history window (32 KiB), DEFLATE's own maximum.
pub const MAX_WINDOW_BITS: u8 = 15;

/// Window lula-client asks for and lula-hub allows by default: 1 KiB per
/// direction holds the field names of the last several small entries, which
/// is all the cross-frame context telemetry needs (larger batches find their
/// repeats inside the frame; on the unit tests' telemetry 2 KiB and 512 B
/// windows compress no better), and keeps what an active connection holds
/// between frames to 2 KiB, inside the hub's 16 KiB per idle connection.
pub const DEFAULT_WINDOW_BITS: u8 = 10;

/// Parses a window setting as the `--compression-window-bits` flags take it:
/// `off` (or `0`) for no compression, which it returns as 0, else 9 to 15.
/// (A plain number rather than an `Option`, which clap would take for an
/// optional flag; [`window_setting`] turns it into one.)
pub fn parse_window_setting(s: &str) -> Result<u8, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") || s == "0" {
        return Ok(0);
    }
    s.parse()
        .ok()
        .and_then(Params::new)
        .map(Params::window_bits)
        .ok_or_else(|| format!("expected off or {MIN_WINDOW_BITS} to {MAX_WINDOW_BITS}, got {s:?}"))
}

/// A parsed `--compression-window-bits` as a setting: `None` for off (0).
pub fn window_setting(bits: u8) -> Option<u8> {
    (bits != 0).then_some(bits)
}

/// First byte of a compressed binary frame: raw deflate, context takeover.
/// Other values are reserved for other codecs and refused.
pub const FORMAT_DEFLATE: u8 = 0x01;

/// Compression level of small frames (replies, acks, a few entries). Level 1
/// in zlib-rs is `deflate_quick` (fixed Huffman codes only), which loses most
/// of the gain on small frames; 3 (`deflate_medium`) finds the repeats, and on
/// a small frame the per-frame setup costs more than the searching does.
const SMALL_FRAME_LEVEL: u32 = 3;

/// Compression level of large frames (batches and pushes of many entries),
/// where the deflate work per byte is what bounds a fast link. Level 1
/// (`deflate_quick`: one hash probe, fixed Huffman codes) still finds the
/// repeated field names and JSON around every entry, which is most of the
/// gain on batches (1,000 telemetry entries: 0.23 of the JSON, against 0.14
/// at level 3; log lines 0.54 against 0.38), for about 60 % of level 3's CPU
/// (0.5 against 0.8 µs per telemetry entry, 3.1 against 4.8 per log line).
/// With level 2 the upstream rate of log lines on loopback was about a third
/// of the JSON run's; with level 1, 0.54 to 1.75 of it, depending on how busy
/// the machine was (BENCHMARKS.md, issue 16).
const LARGE_FRAME_LEVEL: u32 = 1;

/// Frames from this size on are "large" (see [`LARGE_FRAME_LEVEL`]) and are
/// checked for whether compressing them pays ([`worth_compressing`]).
pub const LARGE_FRAME_BYTES: usize = 8 * 1024;

/// Bytes [`worth_compressing`] looks at, spread over the frame.
const SAMPLE_BYTES: usize = 4096;

/// Order-0 entropy, in bits per byte, above which a large frame is sent as
/// the text frame it is. Base64 of random bytes (what binary payloads travel
/// as, in `fields64`) measures about 6.0 with the JSON around it: there level
/// 3 saves a third, mostly through its Huffman codes, which the fast level 1
/// lacks (0.85 of the text), at the full cost per byte. JSON text measures 4
/// to 5 (telemetry 4.4, log lines 4.9), and deflate takes it to a half or
/// much less through its repeats.
const MAX_ENTROPY_BITS: f64 = 5.75;

/// What a sync flush appends and RFC 7692 senders strip: an empty stored block.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Longest LEB128 length prefix accepted (enough for any `u64`).
const MAX_VARINT_BYTES: usize = 10;

/// Agreed compression parameters of one connection (both directions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// The history carried from frame to frame: `2^window_bits` bytes.
    window_bits: u8,
    /// How far back a reference may reach within one frame (into the frame
    /// itself, or into the history before it): `2^frame_window_bits` bytes,
    /// never less than the history. It costs a connection nothing (the zlib
    /// state is the thread's, see the module doc), and a wider one lets the
    /// sender's zlib slide its window 32 times less often on large frames,
    /// which is most of deflate's CPU with a 1 KiB window (BENCHMARKS.md,
    /// issue 16). Equal to `window_bits` unless both ends said
    /// `frame-window-bits` in the handshake.
    frame_window_bits: u8,
}

impl Params {
    /// Deflate with a history of `2^window_bits` bytes, if the bits are in
    /// [`MIN_WINDOW_BITS`]..=[`MAX_WINDOW_BITS`].
    /// References within a frame reach as far back as the history.
    pub fn new(window_bits: u8) -> Option<Self> {
        (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
            .contains(&window_bits)
            .then_some(Self {
                window_bits,
                frame_window_bits: window_bits,
            })
    }

    /// The same history, with references within a frame reaching up to
    /// `2^bits` bytes back (at least as far as the history; `None` past
    /// [`MAX_WINDOW_BITS`]).
    pub fn with_frame_window(self, bits: u8) -> Option<Self> {
        (bits <= MAX_WINDOW_BITS).then_some(Self {
            frame_window_bits: bits.max(self.window_bits),
            ..self
        })
    }

    /// What lula-client offers: `window_bits` of history, and references
    /// within a frame as far back as DEFLATE allows (32 KiB).
    pub fn offer(window_bits: u8) -> Option<Self> {
        Self::new(window_bits)?.with_frame_window(MAX_WINDOW_BITS)
    }

    /// The window size as a power of two.
    pub fn window_bits(self) -> u8 {
        self.window_bits
    }

    /// How far back a reference within a frame may reach, as a power of two.
    pub fn frame_window_bits(self) -> u8 {
        self.frame_window_bits
    }

    /// Bytes of history each direction keeps.
    pub fn window(self) -> usize {
        1 << self.window_bits
    }

    /// Parses one offer such as `deflate`, `deflate; window-bits=11` or
    /// `deflate; window-bits=10; frame-window-bits=15` (case-insensitive,
    /// spaces ignored, unknown parameters ignored so later versions can add
    /// some). `None` for another codec or a bad window.
    pub fn parse(offer: &str) -> Option<Self> {
        let mut parts = offer.split(';').map(str::trim);
        if !parts.next()?.eq_ignore_ascii_case(DEFLATE) {
            return None;
        }
        let mut window_bits = DEFAULT_WINDOW_BITS;
        let mut frame_window_bits = None;
        for part in parts {
            let Some((name, value)) = part.split_once('=') else {
                continue;
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("window-bits") {
                window_bits = value.trim().parse().ok()?;
            } else if name.eq_ignore_ascii_case("frame-window-bits") {
                frame_window_bits = Some(value.trim().parse().ok()?);
            }
        }
        let params = Self::new(window_bits)?;
        match frame_window_bits {
            Some(bits) => params.with_frame_window(bits),
            None => Some(params),
        }
    }

    /// What the receiving end (the hub) agrees to for a header value that may
    /// list several comma-separated offers in order of preference: the first
    /// deflate offer, its history capped at `max_window_bits` (what each
    /// connection keeps), and a frame window wider than that history only
    /// when the offer asked for one (`frame-window-bits`; lula's receivers
    /// inflate with the thread's 32 KiB window whatever was agreed, but a
    /// client that did not ask may inflate with the history's window only).
    /// `None` means no compression: the connection speaks JSON text frames
    /// as before.
    pub fn negotiate(header_value: &str, max_window_bits: u8) -> Option<Self> {
        let offer = header_value.split(',').find_map(Self::parse)?;
        let agreed = Self::new(offer.window_bits.min(max_window_bits))?;
        if offer.frame_window_bits > offer.window_bits {
            agreed.with_frame_window(offer.frame_window_bits)
        } else {
            Some(agreed)
        }
    }
}

impl fmt::Display for Params {
    /// The header value: `deflate; window-bits=11`, with
    /// `; frame-window-bits=15` when the frame window is wider than the history.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DEFLATE}; window-bits={}", self.window_bits)?;
        if self.frame_window_bits != self.window_bits {
            write!(f, "; frame-window-bits={}", self.frame_window_bits)?;
        }
        Ok(())
    }
}

/// Why a compressed frame was refused. After any of these the two ends no
/// longer share a history, so the receiver closes the connection
/// ([`FrameError::close_code`]) instead of replying and carrying on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The frame has no bytes at all.
    #[error("empty compressed frame")]
    Empty,
    /// The first byte names a codec this end does not know.
    #[error("unknown compressed frame format {0:#04x}")]
    UnknownFormat(u8),
    /// The length prefix is missing, too long or not a number.
    #[error("malformed length prefix")]
    BadLength,
    /// The stated plain length is over the receiver's frame limit.
    #[error("frame would inflate to {declared} bytes, over the limit of {limit}")]
    TooLarge {
        /// The length the frame states.
        declared: u64,
        /// The receiver's limit.
        limit: usize,
    },
    /// The deflate data ends before the stated length was produced.
    #[error("truncated compressed frame: {got} of {declared} bytes")]
    Truncated {
        /// The length the frame states.
        declared: usize,
        /// What the data inflated to.
        got: usize,
    },
    /// Not valid deflate data for this history, inflating past the stated
    /// length, or bytes after the end of the deflate stream.
    #[error("corrupt compressed frame: {0}")]
    Corrupt(String),
}

impl FrameError {
    /// Why the receiver closes: 1009 (message too big) when the frame would
    /// inflate past the limit, 1007 (invalid payload data) for everything else.
    pub fn close_reason(&self) -> crate::CloseReason {
        match self {
            Self::TooLarge { .. } => crate::CloseReason::TooBig,
            _ => crate::CloseReason::InvalidPayload,
        }
    }

    /// The close code of [`FrameError::close_reason`].
    pub fn close_code(&self) -> u16 {
        self.close_reason().code()
    }
}

/// Counters of one direction, for `status` and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Compressed frames.
    pub frames: u64,
    /// Plain (JSON) bytes they carry.
    pub plain_bytes: u64,
    /// Bytes of the compressed frames' payloads (WebSocket headers not included).
    pub wire_bytes: u64,
    /// Frames sent as text because compressing them would not pay
    /// ([`Encoder::compress`]); not in the counts above.
    pub skipped: u64,
}

impl Stats {
    /// Wire bytes per plain byte (0.25 = a quarter of the JSON size); 1.0 before
    /// any frame.
    pub fn ratio(&self) -> f64 {
        if self.plain_bytes == 0 {
            1.0
        } else {
            self.wire_bytes as f64 / self.plain_bytes as f64
        }
    }

    fn count(&mut self, plain: usize, wire: usize) {
        self.frames += 1;
        self.plain_bytes += plain as u64;
        self.wire_bytes += wire as u64;
    }
}

/// Bytes of a WebSocket frame header (RFC 6455 section 5.2) for a payload of
/// `len` bytes: 2, 4 or 10, plus the 4-byte mask every client-to-server frame
/// carries. What the link carries beyond the payload, for link byte counts.
pub fn ws_header_bytes(len: usize, masked: bool) -> usize {
    let base = match len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    base + if masked { 4 } else { 0 }
}

/// The last `window` plain bytes of one direction: the context both ends share.
#[derive(Debug)]
struct History {
    bytes: Vec<u8>,
    window: usize,
}

impl History {
    fn new(window: usize) -> Self {
        // Allocated on the first frame: a connection that never sends a
        // compressed frame in this direction costs nothing.
        Self {
            bytes: Vec::new(),
            window,
        }
    }

    fn push(&mut self, data: &[u8]) {
        if self.bytes.capacity() == 0 {
            self.bytes.reserve_exact(self.window);
        }
        if data.len() >= self.window {
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&data[data.len() - self.window..]);
            return;
        }
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.window);
        self.bytes.drain(..overflow);
        self.bytes.extend_from_slice(data);
    }
}

/// Frame windows a thread keeps a compressor for ([`MIN_WINDOW_BITS`] up).
const WINDOW_SIZES: usize = (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1) as usize;

thread_local! {
    /// One zlib compressor per thread and frame window, reused for every frame
    /// (see module doc); a hub thread serving connections with different
    /// windows keeps one of each instead of building a new one per frame.
    static DEFLATERS: RefCell<[Option<Compress>; WINDOW_SIZES]> = const {
        RefCell::new([const { None }; WINDOW_SIZES])
    };
    /// One zlib decompressor per thread.
    static INFLATER: Cell<Option<(u8, Decompress)>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's compressor, reset, for `bits` at `level`. The
/// compressor is taken out of its slot while in use, so a panic in `f` only
/// loses it.
fn with_deflater<R>(bits: u8, level: u32, f: impl FnOnce(&mut Compress) -> R) -> R {
    let slot = usize::from(bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS) - MIN_WINDOW_BITS);
    let kept = DEFLATERS.with_borrow_mut(|slots| slots[slot].take());
    let mut c = match kept {
        Some(mut c) => {
            c.reset();
            // Right after a reset there is nothing to flush, so this cannot
            // fail; if it ever did, the frame is still valid at the old level.
            let set = c.set_level(Compression::new(level));
            debug_assert!(set.is_ok(), "deflate set_level: {set:?}");
            c
        }
        None => Compress::new_with_window_bits(Compression::new(level), false, bits),
    };
    let r = f(&mut c);
    DEFLATERS.with_borrow_mut(|slots| slots[slot] = Some(c));
    r
}

/// Whether deflating `plain` is worth its CPU: always for small frames (cheap,
/// and where the shared history gains the most); for a large one, unless a
/// sample of its bytes looks like random data (base64 of binary payloads),
/// which deflate shrinks by a third at most, at the full cost per byte.
/// Counting a byte histogram over [`SAMPLE_BYTES`] costs a few µs, against
/// the milliseconds of deflating a large frame.
pub fn worth_compressing(plain: &[u8]) -> bool {
    if plain.len() < LARGE_FRAME_BYTES {
        return true;
    }
    let step = plain.len() / SAMPLE_BYTES;
    let mut counts = [0u32; 256];
    let mut sampled = 0u32;
    for &b in plain.iter().step_by(step.max(1)) {
        counts[usize::from(b)] += 1;
        sampled += 1;
    }
    let n = f64::from(sampled);
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits <= MAX_ENTROPY_BITS
}

/// Runs `f` with this thread's decompressor, reset. It always has the
/// largest window: an inflater with a 32 KiB window reads any raw deflate
/// stream made with a smaller one, and the history it is given (never more
/// than the agreed window) still bounds how far back into earlier frames a
/// frame may refer (within one frame a sender could refer up to 32 KiB back,
/// which costs this end nothing: the window is this thread's). With
/// the default window flate2 resets the zlib-rs state in place; with any
/// other it allocates a new one on every reset, i.e. on every frame.
fn with_inflater<R>(f: impl FnOnce(&mut Decompress) -> R) -> R {
    let mut d = match INFLATER.take() {
        Some((_, mut d)) => {
            d.reset(false);
            d
        }
        None => Decompress::new(false),
    };
    let r = f(&mut d);
    INFLATER.set(Some((MAX_WINDOW_BITS, d)));
    r
}

/// The sending half of a compressing connection.
#[derive(Debug)]
pub struct Encoder {
    params: Params,
    history: History,
    stats: Stats,
}

impl Encoder {
    /// A fresh context (empty history) for the agreed parameters.
    pub fn new(params: Params) -> Self {
        Self {
            params,
            history: History::new(params.window()),
            stats: Stats::default(),
        }
    }

    /// The frame to send for `plain`: a compressed binary frame
    /// ([`Encoder::encode`]), or `None` when compressing it does not pay
    /// ([`worth_compressing`]) and the caller sends the text frame as it is.
    /// Text frames are allowed at any time and do not enter the history.
    ///
    /// A frame that deflated to more bytes than its text (the fast level's
    /// fixed codes spend 9 bits on a byte above 143 it finds no repeat for)
    /// is dropped before it enters the history, and `None` returned too: a
    /// compressed frame never costs more than the text frame would.
    pub fn compress(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        if worth_compressing(plain) {
            let frame = self.deflated(plain);
            if frame.len() < plain.len() {
                self.commit(plain, frame.len());
                return Some(frame);
            }
        }
        self.stats.skipped += 1;
        None
    }

    /// One binary frame carrying `plain`: [`FORMAT_DEFLATE`], the plain length
    /// as LEB128, then the raw deflate data, sync-flushed, tail stripped.
    pub fn encode(&mut self, plain: &[u8]) -> Vec<u8> {
        let frame = self.deflated(plain);
        self.commit(plain, frame.len());
        frame
    }

    /// The frame for `plain`, not yet in the history (nor counted).
    fn deflated(&self, plain: &[u8]) -> Vec<u8> {
        let level = if plain.len() < LARGE_FRAME_BYTES {
            SMALL_FRAME_LEVEL
        } else {
            LARGE_FRAME_LEVEL
        };
        // Room for what a large frame of JSON usually deflates to; `deflate`
        // grows it when that is not enough.
        let mut out = Vec::with_capacity(plain.len() / 2 + 64);
        out.push(FORMAT_DEFLATE);
        write_varint(&mut out, plain.len() as u64);
        let dictionary = &self.history.bytes;
        with_deflater(self.params.frame_window_bits, level, |c| {
            deflate(c, dictionary, plain, &mut out)
        });
        out
    }

    /// `plain` was sent compressed as `wire` bytes: it joins the history.
    fn commit(&mut self, plain: &[u8], wire: usize) {
        self.history.push(plain);
        self.stats.count(plain.len(), wire);
    }

    /// What this direction has sent so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes this context holds between frames (struct plus history buffer).
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>() + self.history.bytes.capacity()
    }
}

/// Compresses `plain` after `dictionary` into `out`, sync-flushed, tail stripped.
fn deflate(c: &mut Compress, dictionary: &[u8], plain: &[u8], out: &mut Vec<u8>) {
    // Neither call can fail on a freshly reset raw stream with sane buffers;
    // if zlib-rs ever disagreed, sending uncompressible garbage would desync
    // the peer, so fail loudly in tests and degrade to an empty dictionary.
    if !dictionary.is_empty() {
        let set = c.set_dictionary(dictionary);
        debug_assert!(set.is_ok(), "deflate set_dictionary: {set:?}");
    }
    let start = c.total_in();
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(plain.len() / 8 + 64);
        }
        let consumed = (c.total_in() - start) as usize;
        let status = c.compress_vec(&plain[consumed..], out, FlushCompress::Sync);
        debug_assert!(status.is_ok(), "deflate: {status:?}");
        let done = (c.total_in() - start) as usize == plain.len();
        // zlib's rule: a sync flush is complete once output space is left over.
        if status.is_err() || (done && out.len() < out.capacity()) {
            break;
        }
    }
    if out.ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
    }
}

/// The receiving half of a compressing connection.
#[derive(Debug)]
pub struct Decoder {
    params: Params,
    limit: usize,
    history: History,
    stats: Stats,
}

impl Decoder {
    /// A fresh context that refuses frames inflating past `limit` bytes (the
    /// receiver's frame limit).
    pub fn new(params: Params, limit: usize) -> Self {
        Self {
            params,
            limit,
            history: History::new(params.window()),
            stats: Stats::default(),
        }
    }

    /// The plain bytes of one compressed frame.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.decode_into(frame, &mut out)?;
        Ok(out)
    }

    /// Like [`Decoder::decode`], into a caller's buffer (cleared first). The
    /// buffer never grows past `limit + 1` bytes, whatever the frame holds.
    pub fn decode_into(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let (&format, rest) = frame.split_first().ok_or(FrameError::Empty)?;
        if format != FORMAT_DEFLATE {
            return Err(FrameError::UnknownFormat(format));
        }
        let (declared, body) = read_varint(rest)?;
        if declared > self.limit as u64 {
            return Err(FrameError::TooLarge {
                declared,
                limit: self.limit,
            });
        }
        let declared = declared as usize;
        out.clear();
        // One spare byte, so a frame inflating past its stated length is seen
        // doing so and refused, at most one byte late.
        out.resize(declared + 1, 0);
        let dictionary = &self.history.bytes;
        let got = with_inflater(|d| inflate(d, dictionary, body, out))?;
        if got > declared {
            return Err(FrameError::Corrupt(format!(
                "inflates past its stated {declared} bytes"
            )));
        }
        if got < declared {
            return Err(FrameError::Truncated { declared, got });
        }
        out.truncate(declared);
        self.history.push(out);
        self.stats.count(declared, frame.len());
        Ok(())
    }

    /// The parameters agreed for this connection.
    pub fn params(&self) -> Params {
        self.params
    }

    /// What this direction has received so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes this context holds between frames (struct plus history buffer).
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>() + self.history.bytes.capacity()
    }
}

/// Inflates `body` then the stripped sync tail into `out` (whose length is the
/// most it may produce) after `dictionary`; returns the bytes produced.
fn inflate(
    d: &mut Decompress,
    dictionary: &[u8],
    body: &[u8],
    out: &mut [u8],
) -> Result<usize, FrameError> {
    let corrupt = |e: flate2::DecompressError| FrameError::Corrupt(e.to_string());
    if !dictionary.is_empty() {
        d.set_dictionary(dictionary).map_err(corrupt)?;
    }
    let (start_in, start_out) = (d.total_in(), d.total_out());
    let mut ended = false;
    for part in [body, &SYNC_TAIL[..]] {
        let part_start = d.total_in();
        while !ended {
            let pos = (d.total_in() - part_start) as usize;
            let produced = (d.total_out() - start_out) as usize;
            if pos == part.len() || produced == out.len() {
                break;
            }
            let before = (d.total_in(), d.total_out());
            let status = d
                .decompress(&part[pos..], &mut out[produced..], FlushDecompress::Sync)
                .map_err(corrupt)?;
            ended = status == Status::StreamEnd;
            if !ended && before == (d.total_in(), d.total_out()) {
                return Err(FrameError::Corrupt("deflate data makes no progress".into()));
            }
        }
    }
    let produced = (d.total_out() - start_out) as usize;
    // A final block may end the stream early, but only the tail may follow it.
    if ended && d.total_in() - start_in < body.len() as u64 {
        return Err(FrameError::Corrupt(
            "bytes after the end of the deflate stream".into(),
        ));
    }
    Ok(produced)
}

fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(bytes: &[u8]) -> Result<(u64, &[u8]), FrameError> {
    let mut n: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(MAX_VARINT_BYTES) {
        let bits = u64::from(b & 0x7f);
        let shift = 7 * i as u32;
        if shift == 63 && bits > 1 {
            return Err(FrameError::BadLength);
        }
        n |= bits << shift;
        if b & 0x80 == 0 {
            return Ok((n, &bytes[i + 1..]));
        }
    }
    Err(FrameError::BadLength)
}

#[cfg(test)]
#[path = "compress_tests.rs"]
mod tests;
