//! `lula-hub import-node`: carries the Node lula-hub's per-device upstream
//! cursors over, once, when a fleet switches hubs (docs/MIGRATING.md).
//!
//! The Node hub kept, in `lula:id:h` (its key prefix `lula:`), one field per
//! device: the last device id it appended to `lula:in:x`. Ours keeps the same
//! thing in `lula-hub:cursor:h` (or the partition's cursor hash). Without the
//! import our hub would answer `id` with `0-0` and take every entry still in
//! a device's `out:x` again: each would reach consumers twice.
//!
//! Each device's cursor moves only forward: a cursor of ours that is already
//! ahead (the device synced through our hub since) is kept. One script per
//! device compares and sets, so a hub serving meanwhile cannot be moved back.
//!
//! It also copies the messages the Node hub held for devices,
//! `lula:out:<client>:x`, into `lula-hub:out:<client>:x` with their ids
//! ([`import_out_streams`]). Keeping the ids is what makes this safe: a
//! device's downstream cursor (the Node client's `id`, or ours taken over
//! from it) is a hub id of that stream, so whatever it already stored is
//! skipped, and the rest is delivered once. Entries at or below the last id
//! of our stream are left out, so a second run adds nothing. Run it before
//! producers write to our out streams.
//!
//! The Node keys are only read.

use std::sync::LazyLock;

use lula_protocol::keys::{HubKeys, IngestLayout, escape_glob};
use lula_protocol::redis_value::entries_from_range;
use lula_protocol::{ClientId, StreamId};
use redis::Script;
use redis::aio::ConnectionLike;
use serde::Serialize;

/// KEYS[1] the partition's cursor hash. ARGV[1] client, ARGV[2] the Node
/// hub's cursor, ARGV[3] '1' for a dry run. Sets the cursor when ours is
/// missing or behind; returns {action, our cursor before ('' when none)}.
const IMPORT_BODY: &str = r#"
local ours = redis.call('HGET', KEYS[1], ARGV[1])
if ours and not id_gt(ARGV[2], ours) then
  return {'kept', ours}
end
if ARGV[3] ~= '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return {'set', ours or ''}
"#;

static IMPORT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{}{}", lula_protocol::lua::ID_GT, IMPORT_BODY)));

/// What the import did (or, in a dry run, would do) for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CursorImport {
    /// The device.
    pub client: String,
    /// The Node hub's cursor.
    pub node: String,
    /// Our cursor before (`None`: none).
    pub ours_before: Option<String>,
    /// `set`: ours is now the Node one; `kept`: ours was at or ahead of it;
    /// `skipped`: the field is not a usable client id or stream id.
    pub action: &'static str,
}

/// Imports every device cursor of the Node hub's `<node_prefix>:id:h` into
/// `layout`'s cursor hashes (`dry_run`: reports without writing).
pub async fn import_cursors<C: ConnectionLike>(
    conn: &mut C,
    layout: &IngestLayout,
    node_prefix: &str,
    dry_run: bool,
) -> redis::RedisResult<Vec<CursorImport>> {
    let key = format!("{node_prefix}:id:h");
    let node: Vec<(String, String)> = redis::cmd("HGETALL").arg(&key).query_async(conn).await?;
    let mut report = Vec::with_capacity(node.len());
    for (client, cursor) in node {
        let parsed = (client.parse::<ClientId>(), cursor.parse::<StreamId>());
        let (Ok(id), Ok(_)) = parsed else {
            report.push(CursorImport {
                client,
                node: cursor,
                ours_before: None,
                action: "skipped",
            });
            continue;
        };
        let (action, before): (String, String) = IMPORT
            .key(layout.cursors(layout.partition_of(&id)))
            .arg(id.as_str())
            .arg(&cursor)
            .arg(if dry_run { "1" } else { "0" })
            .invoke_async(conn)
            .await?;
        report.push(CursorImport {
            client,
            node: cursor,
            ours_before: (!before.is_empty()).then_some(before),
            action: if action == "set" { "set" } else { "kept" },
        });
    }
    Ok(report)
}

/// Entries read per `XRANGE` page.
const PAGE: usize = 500;

/// What [`import_out_streams`] did (or would do) for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutImport {
    /// The device (the middle of the Node key).
    pub client: String,
    /// Entries copied (or, in a dry run, to copy).
    pub copied: u64,
    /// Entries left out: at or below the last id of our stream.
    pub present: u64,
}

/// Copies every `<node_prefix>:out:<client>:x` into `keys`' out stream of
/// that client, keeping ids (`dry_run`: counts without writing).
pub async fn import_out_streams<C: ConnectionLike>(
    conn: &mut C,
    keys: &HubKeys,
    node_prefix: &str,
    dry_run: bool,
) -> redis::RedisResult<Vec<OutImport>> {
    let pattern = format!("{}:out:*:x", escape_glob(node_prefix));
    let node_keys = lula_runtime::redis::scan_keys(conn, &pattern).await?;
    let mut report = Vec::new();
    for key in node_keys {
        let raw = key
            .strip_prefix(&format!("{node_prefix}:out:"))
            .and_then(|k| k.strip_suffix(":x"))
            .unwrap_or(&key)
            .to_owned();
        let Ok(client) = raw.parse::<ClientId>() else {
            continue;
        };
        let ours = keys.out_stream(&client);
        let last: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
            .arg(&ours)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        let last = match last.first() {
            Some((id, _)) => id.parse::<StreamId>().unwrap_or(StreamId::ZERO),
            None => StreamId::ZERO,
        };
        let mut done = OutImport {
            client: raw,
            copied: 0,
            present: 0,
        };
        let (mut from, mut to) = ("-".to_owned(), "+");
        loop {
            let page: redis::Value = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&from)
                .arg(to)
                .arg("COUNT")
                .arg(PAGE)
                .query_async(conn)
                .await?;
            let entries = entries_from_range(page).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Parse, "XRANGE", e.to_string()))
            })?;
            let n = entries.len();
            for e in &entries {
                if e.id <= last {
                    done.present += 1;
                    continue;
                }
                if !dry_run {
                    let mut cmd = redis::cmd("XADD");
                    cmd.arg(&ours).arg(e.id.to_string());
                    for f in &e.fields {
                        cmd.arg(f.as_slice());
                    }
                    cmd.query_async::<String>(conn).await?;
                }
                done.copied += 1;
            }
            match entries.last() {
                Some(l) if n == PAGE => (from, to) = l.id.range_after(),
                _ => break,
            }
        }
        report.push(done);
    }
    Ok(report)
}
