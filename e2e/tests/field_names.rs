//! Reserved field names through the real services: whatever names a source
//! writes (`client`, `_client`, `__seq`, `broadcast`, runs of `_`, bytes that
//! are not UTF-8), the entry lula stores reads back, with
//! `lula_protocol::unescape_fields`, exactly as written, up (device to
//! `lula-hub:in:x`), down (`lula-hub:out:<client>:x` to `lula-client:in:x`)
//! and in broadcasts; and no stored source name equals a name lula writes.
//! Timeouts are hang guards, never speed checks.

use std::time::Duration;

use lula_e2e::{Cloud, Device, field, read_all};
use lula_protocol::field_names::RESERVED;
use lula_protocol::{ClientId, Entry, unescape_fields};
use lula_testkit::eventually;

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(120);

/// Field lists that probe the rule: every reserved name with zero to three
/// `_` in front, near misses, empty and non-UTF-8 names, reserved words as
/// values, duplicates; then seeded random ones built from the same pieces.
fn field_lists() -> Vec<Vec<Vec<u8>>> {
    let mut lists: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut all = Vec::new();
    for reserved in RESERVED {
        for n in 0..4 {
            let name = [vec![b'_'; n], reserved.as_bytes().to_vec()].concat();
            lists.push(vec![name.clone(), reserved.as_bytes().to_vec()]);
            all.extend([name, format!("{reserved}-{n}").into_bytes()]);
        }
    }
    lists.push(all);
    lists.push(
        [
            &b""[..],
            b"",
            b"_",
            b"seq",
            b"clients",
            b"\xff_seq",
            b"_\xffclient",
            b"v",
            b"seq",
            b"again",
        ]
        .map(<[u8]>::to_vec)
        .to_vec(),
    );
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..40 {
        lists.push(random_list(&mut rng));
    }
    lists
}

/// xorshift64: reproducible, no dependency.
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

fn random_list(rng: &mut u64) -> Vec<Vec<u8>> {
    const PIECES: [&[u8]; 7] = [b"_", b"__", b"client", b"seq", b"broadcast", b"cli", b""];
    let pairs = 1 + next(rng) % 6;
    let mut fields = Vec::new();
    for _ in 0..pairs {
        let mut name = Vec::new();
        for _ in 0..next(rng) % 4 {
            match next(rng) % 9 {
                k @ 0..7 => name.extend_from_slice(PIECES[k as usize]),
                _ => name.push((next(rng) % 256) as u8),
            }
        }
        let value: Vec<u8> = (0..next(rng) % 5)
            .map(|_| (next(rng) % 256) as u8)
            .collect();
        fields.extend([name, value]);
    }
    fields
}

async fn xadd<C: redis::aio::ConnectionLike>(conn: &mut C, key: &str, fields: &[Vec<u8>]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for f in fields {
        cmd.arg(f.as_slice());
    }
    let _: String = cmd.query_async(conn).await.expect("XADD");
}

/// Checks that each stored entry is lula's `header` names then the escaped
/// source fields, which unescape to `sent`.
fn check(what: &str, header: &[&str], stored: &[&Entry], sent: &[Vec<Vec<u8>>]) {
    assert_eq!(stored.len(), sent.len(), "{what}: entry count");
    for (i, (entry, want)) in stored.iter().zip(sent).enumerate() {
        let skip = header.len() * 2;
        for (j, name) in header.iter().enumerate() {
            assert_eq!(entry.fields[j * 2], name.as_bytes(), "{what} {i}: header");
        }
        let source = &entry.fields[skip..];
        assert_eq!(&unescape_fields(source), want, "{what} {i}: round trip");
        for name in source.iter().step_by(2) {
            assert!(
                !RESERVED.iter().any(|r| name.as_slice() == r.as_bytes()),
                "{what} {i}: a source name shadows lula's: {entry:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_field_names_read_back_exactly_up_down_and_in_broadcasts() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    let lists = field_lists();
    let client: ClientId = "dev-1".parse().unwrap();

    let mut dev = device.conn().await;
    let mut hub = cloud.conn().await;
    for fields in &lists {
        xadd(&mut dev, &device.keys.out_stream(), fields).await;
        xadd(&mut hub, &cloud.keys.out_stream(&client), fields).await;
        xadd(&mut hub, &cloud.keys.broadcast_stream(), fields).await;
    }

    let n = lists.len();
    let up = eventually("every entry in lula-hub:in:x", WAIT, || async {
        let mine: Vec<Entry> = cloud
            .in_entries()
            .await
            .into_iter()
            .filter(|e| field(e, "client") == Some(b"dev-1".as_slice()))
            .collect();
        (mine.len() >= n).then_some(mine)
    })
    .await;
    check(
        "up",
        &["client", "seq"],
        &up.iter().collect::<Vec<_>>(),
        &lists,
    );

    let device_in = eventually("every push in lula-client:in:x", WAIT, || async {
        let all = device.in_entries().await;
        (all.len() >= 2 * n).then_some(all)
    })
    .await;
    let first_is =
        |e: &&Entry, name: &str| e.fields.first().map(Vec::as_slice) == Some(name.as_bytes());
    let direct: Vec<&Entry> = device_in.iter().filter(|e| first_is(e, "seq")).collect();
    let broadcast: Vec<&Entry> = device_in
        .iter()
        .filter(|e| first_is(e, "broadcast"))
        .collect();
    check("down", &["seq"], &direct, &lists);
    check("broadcast", &["broadcast"], &broadcast, &lists);

    // The ids lula wrote are the source entries' ids, in order.
    let sent_up = read_all(&mut dev, &device.keys.out_stream()).await;
    for (stored, sent) in up.iter().zip(&sent_up) {
        assert_eq!(field(stored, "seq"), Some(sent.id.to_string().as_bytes()));
    }
    device.stop().await.unwrap();
}
