//! The end-of-run check, both ways, entry by entry.
//!
//! Upstream, for every device: every entry of its out stream must be in
//! `lula-hub:in:x` exactly once, as `client <device> seq <its id>` followed by
//! its original fields, and the device's entries must appear there in out-stream
//! order. Downstream, for every device: every entry of `lula-hub:out:<device>:x`
//! must be in the device's in stream exactly once, as `seq <hub id>` followed by
//! its fields, in order.
//!
//! `lula-hub:in:x` can hold millions of entries in a long run, so it is read
//! page by page and only each entry's seq and a hash of its fields are kept.
//!
//! Per direction it counts:
//! - **lost**: source entries found nowhere;
//! - **duplicated**: copies beyond the first;
//! - **reordered**: entries that arrived after an entry that follows them at
//!   the source;
//! - **mismatched**: entries whose fields differ from the source's, or that
//!   name a seq the source never had.
//!
//! It also checks the sources themselves: each stream must hold exactly the
//! producer's entries `n = 0..total`, in order.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};

use anyhow::Context as _;
use lula_protocol::redis_value::entries_from_range;
use lula_protocol::{Entry, StreamId};
use redis::aio::MultiplexedConnection;
use serde::Serialize;

use crate::cluster::{Cluster, connect};
use crate::events::Events;
use crate::workload::number_of;

/// Entries read per `XRANGE`.
const PAGE: usize = 10_000;
/// Problems described in full, per direction.
const EXAMPLES: usize = 10;

/// The result of one direction.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    /// Entries at the source.
    pub entries: u64,
    /// Source entries that arrived (at least once).
    pub delivered: u64,
    /// Source entries that never arrived.
    pub lost: u64,
    /// Copies beyond the first.
    pub duplicated: u64,
    /// Entries that arrived after an entry that follows them at the source.
    pub reordered: u64,
    /// Entries with other fields than at the source, or an unknown seq.
    pub mismatched: u64,
    /// Source streams not holding exactly `n = 0..total` in order (a harness problem).
    pub source_defects: u64,
    /// The first problems, described.
    pub examples: Vec<String>,
}

impl Tally {
    /// No loss, duplicate, reordering or mismatch, and intact sources.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.mismatched == 0
            && self.source_defects == 0
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(what);
        }
    }
}

/// Both directions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckOutcome {
    /// Devices to the hub.
    pub up: Tally,
    /// Hub to devices.
    pub down: Tally,
}

/// An arrived entry: the seq it claims, a hash of its original fields, and
/// whether its header (`client`, `seq` / `seq`) was well formed.
#[derive(Debug, Clone, Copy)]
struct Arrived {
    seq: StreamId,
    hash: u64,
    header_ok: bool,
}

/// A source entry, compact: its id, a hash of its fields, its producer number.
#[derive(Debug, Clone, Copy)]
struct Source {
    id: StreamId,
    hash: u64,
    n: Option<u64>,
}

impl Source {
    fn of(e: &Entry) -> Self {
        Source {
            id: e.id,
            hash: hash_fields(&e.fields),
            n: number_of(e),
        }
    }
}

/// One device's streams, read.
struct DeviceSides {
    client: String,
    out: Vec<Source>,
    hub_out: Vec<Source>,
    arrived_down: Vec<Arrived>,
}

/// `lula-hub:in:x`, bucketed by client.
#[derive(Default)]
struct HubIn {
    by_client: HashMap<String, Vec<Arrived>>,
    malformed: u64,
    examples: Vec<String>,
}

/// Reads both sides of every device and compares them. The hub's in stream
/// and the device streams are read at the same time, on connections of their own.
pub async fn check(
    cluster: &Cluster,
    entries_up: u64,
    entries_down: u64,
    events: &Events,
) -> anyhow::Result<CheckOutcome> {
    let start = std::time::Instant::now();
    let hub_in = tokio::spawn(read_hub_in(
        cluster.cloud.url.clone(),
        cluster.hub_keys.in_stream(),
    ));
    let mut sides = Vec::new();
    let mut cloud = connect(&cluster.cloud.url)
        .await
        .context("connect to hub Redis")?;
    for d in &cluster.devices {
        let mut dev = connect(&d.redis_url)
            .await
            .with_context(|| format!("connect to the Redis of {}", d.client))?;
        sides.push(DeviceSides {
            client: d.client.to_string(),
            out: read_all(&mut dev, &d.keys.out_stream(), Source::of).await?,
            hub_out: read_all(
                &mut cloud,
                &cluster.hub_keys.out_stream(&d.client),
                Source::of,
            )
            .await?,
            arrived_down: read_all(&mut dev, &d.keys.in_stream(), split_device_entry).await?,
        });
    }
    events.note(format_args!(
        "check: read the device streams in {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    let mut hub_in = hub_in.await.context("hub reader")??;
    events.note(format_args!(
        "check: read {} hub entries in {:.1}s",
        hub_in.by_client.values().map(Vec::len).sum::<usize>(),
        start.elapsed().as_secs_f64()
    ));

    let mut out = CheckOutcome::default();
    out.up.mismatched += hub_in.malformed;
    for m in hub_in.examples {
        out.up.note(m);
    }
    for d in sides {
        check_source(&mut out.up, &d.client, "out stream", &d.out, entries_up);
        let arrived = hub_in.by_client.remove(&d.client).unwrap_or_default();
        compare(&mut out.up, &format!("{} up", d.client), &d.out, &arrived);
        check_source(
            &mut out.down,
            &d.client,
            "hub out stream",
            &d.hub_out,
            entries_down,
        );
        compare(
            &mut out.down,
            &format!("{} down", d.client),
            &d.hub_out,
            &d.arrived_down,
        );
    }
    for (client, arrived) in hub_in.by_client {
        out.up.mismatched += arrived.len() as u64;
        out.up.note(format!(
            "{} entries in the hub from unknown client {client:?}",
            arrived.len()
        ));
    }
    events.note(format_args!(
        "check: compared in {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    Ok(out)
}

async fn read_hub_in(url: String, key: String) -> anyhow::Result<HubIn> {
    let mut conn = connect(&url).await.context("connect to hub Redis")?;
    let mut hub_in = HubIn::default();
    let mut from = "-".to_owned();
    loop {
        let page = range(&mut conn, &key, &from).await?;
        for e in &page {
            match split_hub_entry(e) {
                (Some(c), arrived) => match hub_in.by_client.get_mut(c) {
                    Some(list) => list.push(arrived),
                    None => {
                        hub_in.by_client.insert(c.to_owned(), vec![arrived]);
                    }
                },
                (None, _) => {
                    hub_in.malformed += 1;
                    if hub_in.examples.len() < EXAMPLES {
                        hub_in
                            .examples
                            .push(format!("hub entry {} has no client header: {e:?}", e.id));
                    }
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => from = format!("({}", last.id),
            _ => return Ok(hub_in),
        }
    }
}

/// `client <c> seq <s> <fields...>`: the client, and the entry as arrived.
fn split_hub_entry(e: &Entry) -> (Option<&str>, Arrived) {
    let f = &e.fields;
    let client = (f.len() >= 4 && f[0] == b"client")
        .then(|| std::str::from_utf8(&f[1]).ok())
        .flatten();
    let seq = (f.len() >= 4 && f[2] == b"seq")
        .then(|| std::str::from_utf8(&f[3]).ok()?.parse().ok())
        .flatten();
    let arrived = Arrived {
        seq: seq.unwrap_or_default(),
        hash: hash_fields(f.get(4..).unwrap_or_default()),
        header_ok: seq.is_some(),
    };
    (client, arrived)
}

/// `seq <hub id> <fields...>`.
fn split_device_entry(e: &Entry) -> Arrived {
    let f = &e.fields;
    let seq = (f.len() >= 2 && f[0] == b"seq")
        .then(|| std::str::from_utf8(&f[1]).ok()?.parse().ok())
        .flatten();
    Arrived {
        seq: seq.unwrap_or_default(),
        hash: hash_fields(f.get(2..).unwrap_or_default()),
        header_ok: seq.is_some(),
    }
}

fn hash_fields(fields: &[Vec<u8>]) -> u64 {
    // DefaultHasher::new() has fixed keys: equal fields hash equal in one run.
    let mut h = DefaultHasher::new();
    fields.hash(&mut h);
    h.finish()
}

/// Compares what arrived with the source, adding to `tally`.
fn compare(tally: &mut Tally, what: &str, source: &[Source], arrived: &[Arrived]) {
    let index: HashMap<StreamId, (usize, u64)> = source
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id, (i, e.hash)))
        .collect();
    let mut seen = vec![false; source.len()];
    let mut furthest: Option<usize> = None;
    for (pos, a) in arrived.iter().enumerate() {
        let Some(&(i, hash)) = index.get(&a.seq).filter(|_| a.header_ok) else {
            tally.mismatched += 1;
            tally.note(format!(
                "{what}: arrived entry #{pos} names seq {} the source never had",
                a.seq
            ));
            continue;
        };
        if hash != a.hash {
            tally.mismatched += 1;
            tally.note(format!("{what}: seq {} arrived with other fields", a.seq));
        }
        if seen[i] {
            tally.duplicated += 1;
            tally.note(format!("{what}: seq {} arrived again (#{pos})", a.seq));
            continue;
        }
        seen[i] = true;
        if let Some(f) = furthest
            && i < f
        {
            tally.reordered += 1;
            tally.note(format!(
                "{what}: seq {} arrived after seq {}",
                a.seq, source[f].id
            ));
        }
        furthest = Some(furthest.map_or(i, |f| f.max(i)));
    }
    tally.entries += source.len() as u64;
    let delivered = seen.iter().filter(|s| **s).count() as u64;
    tally.delivered += delivered;
    let lost = source.len() as u64 - delivered;
    if lost > 0 {
        tally.lost += lost;
        let first = seen.iter().position(|s| !*s).map(|i| source[i].id);
        tally.note(format!(
            "{what}: {lost} entries lost, the first seq {}",
            first.unwrap_or_default()
        ));
    }
}

/// The source must hold the producer's entries `0..total`, in order.
fn check_source(tally: &mut Tally, client: &str, what: &str, source: &[Source], total: u64) {
    let intact = source.len() as u64 == total
        && source
            .iter()
            .enumerate()
            .all(|(i, e)| e.n == Some(i as u64));
    if !intact {
        tally.source_defects += 1;
        tally.note(format!(
            "{client}: the {what} holds {} entries, not exactly n = 0..{total}",
            source.len()
        ));
    }
}

async fn range(
    conn: &mut MultiplexedConnection,
    key: &str,
    from: &str,
) -> anyhow::Result<Vec<Entry>> {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(key)
        .arg(from)
        .arg("+")
        .arg("COUNT")
        .arg(PAGE)
        .query_async(conn)
        .await
        .with_context(|| format!("XRANGE {key}"))?;
    entries_from_range(v).with_context(|| format!("parse XRANGE {key}"))
}

/// Every entry of a stream, each turned into a `T` as its page arrives.
async fn read_all<T>(
    conn: &mut MultiplexedConnection,
    key: &str,
    f: impl Fn(&Entry) -> T,
) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::new();
    let mut from = "-".to_owned();
    loop {
        let page = range(conn, key, &from).await?;
        if let Some(last) = page.last() {
            from = format!("({}", last.id);
        }
        all.extend(page.iter().map(&f));
        if page.len() < PAGE {
            return Ok(all);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(n: u64) -> Vec<Source> {
        (0..n)
            .map(|i| {
                Source::of(&Entry::from_pairs(
                    StreamId::new(i + 1, 0),
                    &[("n", i.to_string())],
                ))
            })
            .collect()
    }

    fn arrived(source: &[Source], order: &[usize]) -> Vec<Arrived> {
        order
            .iter()
            .map(|&i| Arrived {
                seq: source[i].id,
                hash: source[i].hash,
                header_ok: true,
            })
            .collect()
    }

    #[test]
    fn exact_delivery_is_clean() {
        let s = src(5);
        let mut t = Tally::default();
        compare(&mut t, "x", &s, &arrived(&s, &[0, 1, 2, 3, 4]));
        assert!(t.clean(), "{t:?}");
        assert_eq!((t.entries, t.delivered), (5, 5));
    }

    #[test]
    fn loss_duplication_and_reordering_are_each_counted() {
        let s = src(6);
        let mut t = Tally::default();
        // 3 lost, 1 duplicated, 2 arrives after 4.
        compare(&mut t, "x", &s, &arrived(&s, &[0, 1, 4, 2, 1, 5]));
        assert_eq!(t.lost, 1);
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.mismatched, 0);
        assert!(!t.clean());
    }

    #[test]
    fn other_fields_or_unknown_seqs_are_mismatches() {
        let s = src(2);
        let mut a = arrived(&s, &[0, 1]);
        a[1].hash ^= 1;
        a.push(Arrived {
            seq: StreamId::new(99, 0),
            hash: 0,
            header_ok: true,
        });
        let mut t = Tally::default();
        compare(&mut t, "x", &s, &a);
        assert_eq!(t.mismatched, 2);
        assert_eq!(t.lost, 0);
    }

    #[test]
    fn hub_and_device_entries_are_split_into_header_and_fields() {
        let hub = Entry::from_pairs(
            StreamId::new(9, 0),
            &[("client", "dev-01"), ("seq", "5-1"), ("n", "0")],
        );
        let (client, a) = split_hub_entry(&hub);
        assert_eq!(client, Some("dev-01"));
        assert_eq!(a.seq, StreamId::new(5, 1));
        assert!(a.header_ok);
        assert_eq!(a.hash, hash_fields(&[b"n".to_vec(), b"0".to_vec()]));
        let dev = Entry::from_pairs(StreamId::new(9, 0), &[("seq", "7-0"), ("n", "0")]);
        assert_eq!(split_device_entry(&dev).seq, StreamId::new(7, 0));
        let bad = Entry::from_pairs(StreamId::new(9, 0), &[("n", "0")]);
        assert!(!split_device_entry(&bad).header_ok);
    }

    #[test]
    fn sources_must_hold_exactly_the_produced_numbers() {
        let good = src(3);
        let mut t = Tally::default();
        check_source(&mut t, "d", "out", &good, 3);
        assert_eq!(t.source_defects, 0);
        check_source(&mut t, "d", "out", &good[..2], 3);
        assert_eq!(t.source_defects, 1);
    }
}
