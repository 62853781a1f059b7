//! Legal but unusual entries through the real services (issue 13's hostile
//! cases): every byte value 0–255 in names and values, empty names and
//! values, duplicate names, and stream ids at both ends of the id space
//! (`0-1` and `18446744073709551615-18446744073709551615`), up (device to
//! `lula-hub:in:x`), down (`lula-hub:out:<client>:x` to `lula-client:in:x`)
//! and in broadcasts. Each is carried byte-exact, once, in order, and a
//! daemon restarted after the last possible id gets nothing twice.
//! Timeouts are hang guards, never speed checks.

use std::time::Duration;

use lula_e2e::{Cloud, Device, check_broadcasts, check_downstream, check_upstream, read_all};
use lula_protocol::{ClientId, Entry, StreamId};
use lula_testkit::eventually;

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(120);

/// The smallest id a stream takes (`0-0` is refused by `XADD`).
const FIRST: &str = "0-1";

/// The largest id there is: after it, a stream takes no entry at all.
const LAST: &str = "18446744073709551615-18446744073709551615";

/// The field lists, in the order they are added.
fn field_lists() -> Vec<Vec<Vec<u8>>> {
    let every_byte: Vec<u8> = (0..=255).collect();
    let reversed: Vec<u8> = every_byte.iter().rev().copied().collect();
    // Each byte value alone as a name and as a value: 256 pairs.
    let one_byte_each: Vec<Vec<u8>> = (0..=255u8).flat_map(|b| [vec![b], vec![b]]).collect();
    vec![
        // every byte in one name and one value
        vec![every_byte.clone(), reversed],
        one_byte_each,
        // empty name and empty value, twice (a duplicate empty name)
        vec![Vec::new(), Vec::new(), Vec::new(), b"v".to_vec()],
        // duplicate names keep both values, in order
        [&b"a"[..], b"1", b"a", b"2", b"b", b"", b"a", b"3"]
            .map(<[u8]>::to_vec)
            .to_vec(),
        // NUL and line breaks where text protocols break
        [
            &b"\0"[..],
            b"\r\n",
            b"\n",
            b"\0\0",
            b"\"\\",
            b"{\"json\":1}",
        ]
        .map(<[u8]>::to_vec)
        .to_vec(),
    ]
}

async fn xadd<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    key: &str,
    id: &str,
    fields: &[Vec<u8>],
) -> StreamId {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg(id);
    for f in fields {
        cmd.arg(f.as_slice());
    }
    let id: String = cmd.query_async(conn).await.expect("XADD");
    id.parse().expect("a stream id")
}

/// Adds the lists to `key`: the first at `0-1`, the last at the largest id,
/// the others in between with ids Redis picks.
async fn add_all<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    key: &str,
    lists: &[Vec<Vec<u8>>],
) -> Vec<Entry> {
    let mut sent = Vec::new();
    for (i, fields) in lists.iter().enumerate() {
        let id = match i {
            0 => FIRST,
            i if i + 1 == lists.len() => LAST,
            _ => "*",
        };
        let id = xadd(conn, key, id, fields).await;
        sent.push(Entry::new(id, fields.clone()));
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_duplicate_and_empty_names_and_the_ends_of_the_id_space_are_carried_once() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    let client: ClientId = "dev-1".parse().unwrap();
    let lists = field_lists();

    // Everything is in place before the daemon first starts, so its first
    // reads meet `0-1` and the last id at once.
    let mut dev = device.conn().await;
    let mut hub = cloud.conn().await;
    let up = add_all(&mut dev, &device.keys.out_stream(), &lists).await;
    let down = add_all(&mut hub, &cloud.keys.out_stream(&client), &lists).await;
    let broadcasts = add_all(&mut hub, &cloud.keys.broadcast_stream(), &lists).await;
    assert_eq!(up.first().unwrap().id, StreamId::new(0, 1));
    assert_eq!(up.last().unwrap().id, StreamId::new(u64::MAX, u64::MAX));
    device.start();

    let n = lists.len();
    eventually("every device entry in lula-hub:in:x", WAIT, || async {
        check_upstream("dev-1", &up, &cloud.in_entries().await).ok()
    })
    .await;
    let device_in = eventually("every push in lula-client:in:x", WAIT, || async {
        let all = device.in_entries().await;
        (all.len() >= 2 * n).then_some(all)
    })
    .await;
    let direct: Vec<Entry> = device_in
        .iter()
        .filter(|e| e.fields.first().map(Vec::as_slice) == Some(b"seq".as_slice()))
        .cloned()
        .collect();
    check_downstream(&down, &direct).unwrap();
    check_broadcasts(&broadcasts, &device_in).unwrap();

    // The cursors sit at the last possible id; a restarted daemon resumes
    // from them and gets nothing twice (nothing can follow them anyway).
    device.stop().await.unwrap();
    device.start();
    let status = eventually("the restarted daemon connected", WAIT, || async {
        let s = device.status().await;
        (s.connected && s.upstream_cursor.is_some()).then_some(s)
    })
    .await;
    let last = StreamId::new(u64::MAX, u64::MAX);
    assert_eq!(status.upstream_cursor, Some(last), "upstream cursor");
    assert_eq!(status.downstream_cursor, last, "downstream cursor");
    assert_eq!(status.broadcast_cursor, last, "broadcast cursor");
    // A graceful stop lets anything already pushed again be stored first.
    device.stop().await.unwrap();
    check_upstream("dev-1", &up, &cloud.in_entries().await).unwrap();
    let device_in = device.in_entries().await;
    assert_eq!(
        device_in.len(),
        2 * n,
        "nothing stored twice after a restart"
    );
    check_broadcasts(&broadcasts, &device_in).unwrap();
    assert_eq!(
        read_all(&mut dev, &device.keys.out_stream()).await.len(),
        n,
        "out:x untouched (the test keeps acknowledged entries)"
    );
}
