//! Unit tests of the compressed frame codec: round trips, the shared history,
//! and hostile frames (bombs, truncation, corruption).

use super::*;

const LIMIT: usize = 1 << 20;

fn pair(bits: u8) -> (Encoder, Decoder) {
    let params = Params::new(bits).expect("valid bits");
    (Encoder::new(params), Decoder::new(params, LIMIT))
}

/// Deterministic incompressible bytes (xorshift64*), no RNG crate needed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// One `xadds` frame of small telemetry as lula-client sends it.
fn telemetry(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"type":"xadds","id":{seq},"payload":{{"prev":"1733300000000-{p}","entries":[{{"id":"1733300000000-{seq}","fields":["temp","{t}.{f}","humidity","{h}","pressure","{pr}","battery","{b}","rssi","-{r}"]}}]}}}}"#,
        p = seq.saturating_sub(1),
        t = 15 + seq % 17,
        f = seq * 7 % 10,
        h = 30 + seq * 13 % 50,
        pr = 990 + seq * 3 % 40,
        b = 100 - seq % 60,
        r = 40 + seq * 11 % 50,
    )
    .into_bytes()
}

#[test]
fn frames_round_trip_in_order_with_a_shared_history() {
    for bits in [MIN_WINDOW_BITS, DEFAULT_WINDOW_BITS, MAX_WINDOW_BITS] {
        let (mut enc, mut dec) = pair(bits);
        let mut frames: Vec<Vec<u8>> = vec![Vec::new(), b"{}".to_vec(), noise(70_000, 7)];
        frames.extend((0..50).map(telemetry));
        frames.push(vec![b'a'; 200_000]);
        frames.push(noise(3, 9));
        for plain in &frames {
            let wire = enc.encode(plain);
            assert_eq!(
                &dec.decode(&wire).expect("decodes"),
                plain,
                "window bits {bits}"
            );
        }
        assert_eq!(enc.stats().frames, frames.len() as u64);
        assert_eq!(enc.stats(), dec.stats());
    }
}

#[test]
fn repeated_field_names_cost_a_few_bytes_once_the_context_has_them() {
    let (mut enc, mut dec) = pair(DEFAULT_WINDOW_BITS);
    let first = telemetry(1);
    let wire = enc.encode(&first);
    dec.decode(&wire).expect("decodes");
    // The same frame again: one back reference.
    let again = enc.encode(&first);
    assert!(
        again.len() <= 12,
        "a repeated frame took {} bytes",
        again.len()
    );
    dec.decode(&again).expect("decodes");
    // A new entry: only what differs (the numbers) costs much.
    let next = telemetry(2);
    let with_context = enc.encode(&next);
    assert_eq!(dec.decode(&with_context).expect("decodes"), next);
    let alone = pair(DEFAULT_WINDOW_BITS).0.encode(&next);
    assert!(
        with_context.len() * 3 < alone.len() && with_context.len() * 4 < next.len(),
        "with context {} bytes, without {} bytes, plain {} bytes",
        with_context.len(),
        alone.len(),
        next.len()
    );
}

#[test]
fn incompressible_frames_never_cost_more_than_their_text() {
    let (mut enc, mut dec) = pair(DEFAULT_WINDOW_BITS);
    for len in [1, 100, 1_000, 16_384, 100_000] {
        let plain = noise(len, len as u64);
        // What `compress` would not send: small frames at level 3 grow by
        // half a percent at most, large ones at the fast level by an eighth
        // (fixed codes: 9 bits for a byte above 143).
        let wire = enc.encode(&plain);
        let bound = if len < LARGE_FRAME_BYTES {
            len / 200
        } else {
            len / 8
        };
        assert!(
            wire.len() <= len + 16 + bound,
            "{len} bytes became {}",
            wire.len()
        );
        assert_eq!(dec.decode(&wire).expect("decodes"), plain);
        // What is sent: the text frame, or a compressed frame smaller than it.
        if let Some(wire) = enc.compress(&plain) {
            assert!(wire.len() < len, "{len} bytes sent as {}", wire.len());
            assert_eq!(dec.decode(&wire).expect("decodes"), plain);
        }
    }
    // A dropped frame stayed out of the history: the two ends still agree.
    let text = telemetry(3);
    let wire = enc.compress(&text).expect("compressed");
    assert_eq!(dec.decode(&wire).expect("decodes"), text);
}

/// One `xadds` frame of `n` entries, each 200 random bytes sent base64-encoded
/// in `fields64`, as lula-client sends binary payloads.
fn random_batch(n: u64) -> Vec<u8> {
    use base64::Engine as _;
    let entries: Vec<String> = (0..n)
        .map(|i| {
            let data = base64::engine::general_purpose::STANDARD.encode(noise(200, i + 1));
            format!(r#"{{"id":"1733300000000-{i}","fields64":["ZGF0YQ==","{data}"]}}"#)
        })
        .collect();
    format!(
        r#"{{"type":"xadds","id":1,"payload":{{"prev":"0-0","entries":[{}]}}}}"#,
        entries.join(",")
    )
    .into_bytes()
}

#[test]
fn large_frames_of_random_payloads_go_as_text_and_the_histories_stay_in_step() {
    let (mut enc, mut dec) = pair(DEFAULT_WINDOW_BITS);
    let random = random_batch(100);
    assert!(random.len() >= LARGE_FRAME_BYTES, "{} bytes", random.len());
    assert!(!worth_compressing(&random));
    assert_eq!(enc.compress(&random), None, "sent as the text frame it is");
    // JSON text of any size, and small frames of any kind, are compressed.
    let text: Vec<u8> = (0..200).flat_map(telemetry).collect();
    assert!(text.len() >= LARGE_FRAME_BYTES);
    let small_random = random_batch(1);
    for plain in [&text, &telemetry(7), &small_random] {
        assert!(worth_compressing(plain));
        let wire = enc.compress(plain).expect("compressed");
        // The skipped frame entered neither history, so these decode.
        assert_eq!(&dec.decode(&wire).expect("decodes"), plain);
    }
    let text_wire = enc.stats().wire_bytes as f64;
    assert!(text_wire / (enc.stats().plain_bytes as f64) < 0.5);
    assert_eq!(enc.stats().skipped, 1);
    assert_eq!(enc.stats().frames, 3);
    assert_eq!(dec.stats().frames, 3);
    // Forced through deflate, the random batch still round-trips.
    let wire = enc.encode(&random);
    assert_eq!(dec.decode(&wire).expect("decodes"), random);
}

/// Raw deflate of `gib` GiB of zeros with the stated length `declared`. Built
/// from a compressed MiB repeated: after the first MiB the compressor's state
/// (a window of zeros) is the same at every sync point, so every further MiB
/// compresses to the same bytes; `bomb_inflates_to_what_it_claims` checks it.
fn zero_bomb(bits: u8, gib: usize, declared: u64) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::best(), false, bits);
    let zeros = vec![0u8; 1 << 20];
    let chunk = |c: &mut Compress| {
        let mut out = Vec::with_capacity(4 << 10);
        let start = c.total_in();
        while ((c.total_in() - start) as usize) < zeros.len() || out.len() == out.capacity() {
            out.reserve(4 << 10);
            let consumed = (c.total_in() - start) as usize;
            c.compress_vec(&zeros[consumed..], &mut out, FlushCompress::Sync)
                .expect("deflate");
        }
        out
    };
    let first = chunk(&mut c);
    let second = chunk(&mut c);
    assert_eq!(second, chunk(&mut c), "zero MiBs compress alike");
    let mut frame = vec![FORMAT_DEFLATE];
    write_varint(&mut frame, declared);
    frame.extend_from_slice(&first);
    for _ in 1..(gib << 10) {
        frame.extend_from_slice(&second);
    }
    frame.truncate(frame.len() - SYNC_TAIL.len());
    frame
}

#[test]
fn bomb_inflates_to_what_it_claims() {
    // 64 MiB is enough to show the repetition holds; inflating a full GiB in a
    // debug build would take minutes. Counted, never stored.
    let frame = zero_bomb(DEFAULT_WINDOW_BITS, 1, 0);
    let (_, body) = read_varint(&frame[1..]).expect("length");
    let mut d = Decompress::new_with_window_bits(false, DEFAULT_WINDOW_BITS);
    let mut buf = vec![0u8; 1 << 16];
    let want_in = body.len() / 16;
    while (d.total_in() as usize) < want_in {
        let pos = d.total_in() as usize;
        d.decompress(&body[pos..want_in], &mut buf, FlushDecompress::Sync)
            .expect("inflates");
        assert!(buf.iter().all(|&b| b == 0));
    }
    assert!(
        d.total_out() >= 63 << 20,
        "1/16 of the bomb gave {} bytes",
        d.total_out()
    );
}

#[test]
fn a_gib_zip_bomb_is_refused_without_allocating_it() {
    let (_, mut dec) = pair(DEFAULT_WINDOW_BITS);
    // Stating its real size: refused before inflating anything.
    let honest = zero_bomb(DEFAULT_WINDOW_BITS, 1, 1 << 30);
    assert!(
        honest.len() < 2 << 20,
        "the bomb is {} bytes on the wire",
        honest.len()
    );
    let mut out = Vec::new();
    let err = dec.decode_into(&honest, &mut out).expect_err("refused");
    assert_eq!(
        err,
        FrameError::TooLarge {
            declared: 1 << 30,
            limit: LIMIT
        }
    );
    assert_eq!(err.close_code(), 1009);
    assert_eq!(out.capacity(), 0);
    // Lying about its size (the limit, or less): inflating stops one byte past it.
    for declared in [LIMIT as u64, 1_000, 0] {
        let liar = zero_bomb(DEFAULT_WINDOW_BITS, 1, declared);
        let mut out = Vec::new();
        let err = dec.decode_into(&liar, &mut out).expect_err("refused");
        assert!(matches!(err, FrameError::Corrupt(_)), "{err:?}");
        assert_eq!(err.close_code(), 1007);
        assert!(
            out.capacity() <= declared as usize + 1 + 64,
            "grew to {}",
            out.capacity()
        );
    }
    // The refused frames left no trace: the pair still works.
    let (mut enc, _) = pair(DEFAULT_WINDOW_BITS);
    assert_eq!(dec.decode(&enc.encode(b"fine")).expect("decodes"), b"fine");
}

#[test]
fn truncated_frames_are_refused_never_misread() {
    let (mut enc, mut dec) = pair(DEFAULT_WINDOW_BITS);
    let warmup = telemetry(1);
    dec.decode(&enc.encode(&warmup)).expect("decodes");
    let plain = [telemetry(2), noise(300, 3), telemetry(3)].concat();
    let wire = enc.encode(&plain);
    // Half a frame: short of its stated length.
    let mut probe = Decoder::new(dec.params, LIMIT);
    probe.history.push(&dec.history.bytes);
    let err = probe.decode(&wire[..wire.len() / 2]).expect_err("refused");
    assert!(
        matches!(err, FrameError::Truncated { declared, .. } if declared == plain.len()),
        "{err:?}"
    );
    assert_eq!(err.close_code(), 1007);
    // Any cut: refused, or (when only the end-of-block bits were cut) the exact text.
    for cut in 0..wire.len() {
        let mut probe = Decoder::new(dec.params, LIMIT);
        probe.history.push(&dec.history.bytes);
        if let Ok(got) = probe.decode(&wire[..cut]) {
            assert_eq!(got, plain, "cut at {cut} of {}", wire.len());
        }
    }
    assert_eq!(dec.decode(&wire).expect("the whole frame decodes"), plain);
}

#[test]
fn malformed_frames_get_typed_errors() {
    let (mut enc, mut dec) = pair(DEFAULT_WINDOW_BITS);
    assert_eq!(dec.decode(&[]), Err(FrameError::Empty));
    assert_eq!(
        dec.decode(b"{\"type\":\"echo\"}"),
        Err(FrameError::UnknownFormat(b'{'))
    );
    assert_eq!(dec.decode(&[FORMAT_DEFLATE]), Err(FrameError::BadLength));
    assert_eq!(
        dec.decode(&[FORMAT_DEFLATE, 0x80, 0x80]),
        Err(FrameError::BadLength)
    );
    assert_eq!(
        dec.decode(&[
            FORMAT_DEFLATE,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f
        ]),
        Err(FrameError::BadLength)
    );
    // Reserved block type 3: not deflate.
    assert!(matches!(
        dec.decode(&[FORMAT_DEFLATE, 4, 0xff, 0xff]),
        Err(FrameError::Corrupt(_))
    ));
    // A back reference before the start of an empty history.
    let mut other = Encoder::new(enc.params);
    other.encode(&telemetry(1));
    let refers_back = other.encode(&telemetry(1));
    assert!(matches!(
        dec.decode(&refers_back),
        Err(FrameError::Corrupt(_))
    ));
    // Bytes after a final block.
    let mut wire = enc.encode(b"x");
    wire.truncate(2);
    wire.extend_from_slice(&[0x4b, 0x04, 0x00, 0xde, 0xad]);
    let mut probe = Decoder::new(dec.params, LIMIT);
    assert!(
        matches!(probe.decode(&wire), Err(FrameError::Corrupt(_))),
        "{:?}",
        probe.decode(&wire)
    );
}

#[test]
fn a_context_holds_at_most_its_window_between_frames() {
    let (mut enc, mut dec) = pair(DEFAULT_WINDOW_BITS);
    let fresh = enc.memory_bytes();
    assert!(fresh <= 128, "an unused encoder holds {fresh} bytes");
    for seq in 0..200 {
        let plain = if seq % 50 == 0 {
            noise(100_000, seq)
        } else {
            telemetry(seq)
        };
        dec.decode(&enc.encode(&plain)).expect("decodes");
        let window = 1 << DEFAULT_WINDOW_BITS;
        assert!(
            enc.memory_bytes() <= window + 128,
            "encoder {}",
            enc.memory_bytes()
        );
        assert!(
            dec.memory_bytes() <= window + 128,
            "decoder {}",
            dec.memory_bytes()
        );
    }
}

#[test]
fn offers_parse_and_negotiate() {
    let p = |bits| Params::new(bits).expect("valid");
    assert_eq!(Params::parse("deflate"), Some(p(DEFAULT_WINDOW_BITS)));
    assert_eq!(
        Params::parse(" Deflate ; window-bits = 9 ; future=1"),
        Some(p(9))
    );
    assert_eq!(Params::parse("deflate; window-bits=8"), None);
    assert_eq!(Params::parse("deflate; window-bits=16"), None);
    assert_eq!(Params::parse("deflate; window-bits=x"), None);
    assert_eq!(Params::parse("zstd"), None);
    assert_eq!(
        Params::negotiate("zstd, deflate; window-bits=15", 12),
        Some(p(12))
    );
    assert_eq!(
        Params::negotiate("deflate; window-bits=10", 12),
        Some(p(10))
    );
    assert_eq!(Params::negotiate("gzip", 12), None);
    assert_eq!(Params::negotiate("", 12), None);
    assert_eq!(p(11).to_string(), "deflate; window-bits=11");
    assert_eq!(Params::parse(&p(13).to_string()), Some(p(13)));
    assert_eq!(Params::new(8), None);
    assert_eq!(parse_window_setting("off").map(window_setting), Ok(None));
    assert_eq!(parse_window_setting("0").map(window_setting), Ok(None));
    assert_eq!(parse_window_setting("12").map(window_setting), Ok(Some(12)));
    assert!(parse_window_setting("8").is_err());
    assert!(parse_window_setting("deflate").is_err());
}

#[test]
fn a_wider_frame_window_is_offered_answered_and_kept_by_older_peers_as_before() {
    let p = |bits| Params::new(bits).expect("valid");
    let offer = Params::offer(DEFAULT_WINDOW_BITS).expect("valid");
    assert_eq!(offer.window_bits(), DEFAULT_WINDOW_BITS);
    assert_eq!(offer.frame_window_bits(), MAX_WINDOW_BITS);
    assert_eq!(
        offer.to_string(),
        "deflate; window-bits=10; frame-window-bits=15"
    );
    assert_eq!(Params::parse(&offer.to_string()), Some(offer));
    // The hub caps the history it keeps per connection, not the frame window.
    let agreed = Params::negotiate(&offer.to_string(), 9).expect("agreed");
    assert_eq!((agreed.window_bits(), agreed.frame_window_bits()), (9, 15));
    // An older client offers no frame window, an older hub answers none:
    // references then stay within the history, as before.
    assert_eq!(
        Params::negotiate("deflate; window-bits=10", 15),
        Some(p(10))
    );
    assert_eq!(p(10).frame_window_bits(), 10);
    assert_eq!(p(10).to_string(), "deflate; window-bits=10");
    // Never narrower than the history; never past DEFLATE's 32 KiB.
    assert_eq!(
        Params::parse("deflate; window-bits=12; frame-window-bits=9")
            .map(Params::frame_window_bits),
        Some(12)
    );
    assert_eq!(Params::parse("deflate; frame-window-bits=16"), None);
    assert_eq!(Params::parse("deflate; frame-window-bits=x"), None);
}

#[test]
fn a_wide_frame_window_reaches_repeats_past_the_history_and_keeps_only_the_history() {
    // Repeats 4 KiB apart: out of reach of a 1 KiB window, within a 32 KiB one.
    let block = noise(4096, 3);
    let plain: Vec<u8> = block.iter().chain(&block).chain(&block).copied().collect();
    let narrow = Params::new(DEFAULT_WINDOW_BITS).expect("valid");
    let wide = Params::offer(DEFAULT_WINDOW_BITS).expect("valid");
    let size = |params: Params| {
        let (mut enc, mut dec) = (Encoder::new(params), Decoder::new(params, LIMIT));
        let mut wire = 0;
        for round in 0..3 {
            let frame: Vec<u8> = plain.iter().map(|b| b ^ round).collect();
            let sent = enc.encode(&frame);
            assert_eq!(dec.decode(&sent).expect("decodes"), frame);
            wire += sent.len();
        }
        assert!(enc.memory_bytes() <= params.window() + 128);
        assert!(dec.memory_bytes() <= params.window() + 128);
        wire
    };
    let (narrow, wide) = (size(narrow), size(wide));
    assert!(
        wide * 2 < narrow,
        "the wide window found the repeats: {wide} against {narrow} bytes"
    );
}

#[test]
fn frame_headers_are_counted_as_rfc_6455_sizes_them() {
    assert_eq!(ws_header_bytes(0, false), 2);
    assert_eq!(ws_header_bytes(125, true), 6);
    assert_eq!(ws_header_bytes(126, false), 4);
    assert_eq!(ws_header_bytes(65_535, true), 8);
    assert_eq!(ws_header_bytes(65_536, false), 10);
}
