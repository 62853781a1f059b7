//! Exactly once, in order: every scenario that moves entries ends by comparing
//! both sides entry by entry, all fields included.
//!
//! Upstream, each hub entry must be `client <c> seq <device id>` followed by the
//! fields of the next not yet matched entry of device `c`'s out stream, and at
//! the end every device's out stream must be used up. Downstream, the device's
//! in stream must be `seq <hub id>` followed by the fields of the hub's out
//! stream, entry for entry. Both sides are read in pages of
//! [`PAGE`] entries, so a million entries never sit in memory at once.

use std::collections::{HashMap, VecDeque};

use anyhow::{Context as _, bail};
use lula_protocol::redis_value::entries_from_range;
use lula_protocol::{Entry, StreamId};
use redis::aio::MultiplexedConnection;

/// Entries per `XRANGE` page.
pub const PAGE: usize = 10_000;

/// A stream read page by page, oldest first.
pub struct Pages {
    conn: MultiplexedConnection,
    page: usize,
    key: String,
    after: Option<StreamId>,
    buf: VecDeque<Entry>,
    done: bool,
}

impl Pages {
    /// Reads `key` on `conn` from its start.
    pub fn new(conn: MultiplexedConnection, key: impl Into<String>) -> Self {
        Pages {
            conn,
            page: PAGE,
            key: key.into(),
            after: None,
            buf: VecDeque::new(),
            done: false,
        }
    }

    /// Reads `page` entries at a time instead of [`PAGE`] (large entries).
    pub fn page_size(mut self, page: usize) -> Self {
        self.page = page.max(1);
        self
    }

    /// The next entry, or `None` at the end of the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Entry>> {
        if self.buf.is_empty() && !self.done {
            let from = self
                .after
                .map_or_else(|| "-".to_owned(), |id| format!("({id}"));
            let reply: redis::Value = redis::cmd("XRANGE")
                .arg(&self.key)
                .arg(from)
                .arg("+")
                .arg("COUNT")
                .arg(self.page)
                .query_async(&mut self.conn)
                .await
                .with_context(|| format!("XRANGE {}", self.key))?;
            let page = entries_from_range(reply).context("XRANGE reply")?;
            self.done = page.len() < self.page;
            self.after = page.last().map(|e| e.id).or(self.after);
            self.buf.extend(page);
        }
        Ok(self.buf.pop_front())
    }
}

/// One device's out stream, for [`upstream`].
pub struct DeviceOut {
    /// The device's client id.
    pub client: String,
    /// A connection to the device's Redis.
    pub conn: MultiplexedConnection,
    /// Its out stream key.
    pub key: String,
}

/// Checks that `hub_in` holds every entry of every device's out stream exactly
/// once, in device order, as `client <c> seq <id> <fields...>`, and nothing
/// else. Returns the number of entries checked.
pub async fn upstream(
    hub: MultiplexedConnection,
    hub_in: &str,
    devices: Vec<DeviceOut>,
) -> anyhow::Result<u64> {
    upstream_in_pages(hub, hub_in, devices, PAGE).await
}

/// [`upstream`], reading both sides `page` entries at a time.
pub async fn upstream_in_pages(
    hub: MultiplexedConnection,
    hub_in: &str,
    devices: Vec<DeviceOut>,
    page: usize,
) -> anyhow::Result<u64> {
    struct Expected {
        pages: Pages,
        matched: u64,
    }
    let mut expected: HashMap<Vec<u8>, Expected> = devices
        .into_iter()
        .map(|d| {
            (
                d.client.into_bytes(),
                Expected {
                    pages: Pages::new(d.conn, d.key).page_size(page),
                    matched: 0,
                },
            )
        })
        .collect();
    let mut hub = Pages::new(hub, hub_in).page_size(page);
    let mut total = 0u64;
    while let Some(got) = hub.next().await? {
        let f = &got.fields;
        if f.len() < 4 || f[0] != b"client" || f[2] != b"seq" {
            bail!(
                "hub entry {} does not start with client and seq: {got:?}",
                got.id
            );
        }
        let client = String::from_utf8_lossy(&f[1]).into_owned();
        let Some(exp) = expected.get_mut(&f[1]) else {
            bail!("hub entry {} is from unknown client {client}", got.id);
        };
        let Some(want) = exp.pages.next().await? else {
            bail!(
                "{client}: hub entry {} is one too many: all {} device entries were already matched (duplicate of seq {}?)",
                got.id,
                exp.matched,
                String::from_utf8_lossy(&f[3])
            );
        };
        if f[3] != want.id.to_string().as_bytes() || f[4..] != want.fields[..] {
            bail!(
                "{client}: device entry #{} should be seq {} with {want:?}, the hub has {got:?} (lost, duplicated or reordered)",
                exp.matched,
                want.id
            );
        }
        exp.matched += 1;
        total += 1;
    }
    for (client, exp) in &mut expected {
        if let Some(missing) = exp.pages.next().await? {
            bail!(
                "{}: only {} entries reached the hub; device entry {} (and any after it) is missing",
                String::from_utf8_lossy(client),
                exp.matched,
                missing.id
            );
        }
    }
    Ok(total)
}

/// Checks that the device's in stream holds every entry of the hub's out
/// stream exactly once, in order, as `seq <hub id> <fields...>`, and nothing
/// else. Returns the number of entries checked.
pub async fn downstream(
    hub: MultiplexedConnection,
    hub_out: &str,
    device: MultiplexedConnection,
    device_in: &str,
) -> anyhow::Result<u64> {
    let sent = Pages::new(hub, hub_out);
    let got = Pages::new(device, device_in);
    relayed(sent, got, "seq", "entries").await
}

/// Checks that a device's in stream holds every entry of the broadcast stream
/// exactly once, in order, as `broadcast <hub id> <fields...>`, and nothing
/// else, reading `page` entries at a time. Returns the number checked.
pub async fn broadcasts(
    hub: MultiplexedConnection,
    broadcast: &str,
    device: MultiplexedConnection,
    device_in: &str,
    page: usize,
) -> anyhow::Result<u64> {
    let sent = Pages::new(hub, broadcast).page_size(page);
    let got = Pages::new(device, device_in).page_size(page);
    relayed(sent, got, "broadcast", "broadcasts").await
}

/// Walks what the hub sent and what the device stored side by side: each
/// stored entry must be `<marker> <hub id> <fields...>` of the sent entry at
/// the same place, with nothing missing or left over. `what` names the
/// entries in errors. Returns the number checked.
async fn relayed(mut sent: Pages, mut got: Pages, marker: &str, what: &str) -> anyhow::Result<u64> {
    let mut n = 0u64;
    loop {
        match (sent.next().await?, got.next().await?) {
            (None, None) => return Ok(n),
            (Some(want), None) => {
                bail!(
                    "only {n} {what} reached the device; hub entry {} is missing",
                    want.id
                )
            }
            (None, Some(extra)) => bail!(
                "the device holds more than the {n} {what} sent: entry {} (a duplicate?)",
                extra.id
            ),
            (Some(want), Some(got)) => {
                let f = &got.fields;
                if f.len() < 2
                    || f[0] != marker.as_bytes()
                    || f[1] != want.id.to_string().as_bytes()
                    || f[2..] != want.fields[..]
                {
                    bail!(
                        "device entry #{n} should be {marker} {} ({} fields), it is {} with {} fields (lost, duplicated or reordered)",
                        want.id,
                        want.fields.len(),
                        got.id,
                        f.len()
                    );
                }
                n += 1;
            }
        }
    }
}
