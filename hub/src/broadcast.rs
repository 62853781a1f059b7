//! The fleet's broadcast stream, `lula-hub:broadcast:x`: one stream every
//! device reads, never copied per device.
//!
//! - [`read`]: what a connection's broadcast push reads: entries after the
//!   device's position together with the stream's `max-deleted-entry-id`,
//!   in one script call, so a gap (entries deleted before the device got
//!   them) is seen exactly.
//! - [`retain`]: trims entries older than the retention, on every hub
//!   (idempotent: replicas trimming at once remove each entry once), and
//!   records the highest id it removed as the stream's
//!   `max-deleted-entry-id`, which `XTRIM` itself leaves alone (only `XDEL`
//!   moves it). That record is what [`read`] compares with.
//!
//! Redis 6 has no `max-deleted-entry-id`: trimming works there, gaps are not
//! reported.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lula_protocol::redis_value::entries_from_range;
use lula_protocol::{Entry, StreamId};
use lula_runtime::redis::RedisConn;
use redis::{Script, Value};
use tokio_util::sync::CancellationToken;

/// KEYS[1] the broadcast stream. ARGV[1] read after this id, ARGV[2] count.
/// Returns {max-deleted-entry-id ('0-0' when none or before Redis 7),
/// entries after ARGV[1]}, read in one atomic step.
const READ_BODY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'0-0', {}}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local deleted = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then
    deleted = info[i + 1]
  end
end
local from, to = range_after(ARGV[1])
local entries = redis.call('XRANGE', KEYS[1], from, to, 'COUNT', ARGV[2])
return {deleted, entries}
"#;

/// KEYS[1] the broadcast stream. ARGV[1] the oldest id to keep (`<ms>-0`).
/// Trims everything before it and records the highest id removed as the
/// stream's max-deleted-entry-id (`XSETID ... MAXDELETEDID`, Redis 7; on
/// older servers the trim still happens). Returns the number removed.
const TRIM_BODY: &str = r#"
local last = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[1], '-', 'COUNT', 1)
if #last == 0 then
  return 0
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local generated, deleted = nil, '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then generated = info[i + 1] end
  if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
end
if generated and id_gt(last[1][1], deleted) then
  redis.pcall('XSETID', KEYS[1], generated, 'MAXDELETEDID', last[1][1])
end
return removed
"#;

static READ: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{}{}", lula_protocol::lua::RANGE_AFTER, READ_BODY)));
static TRIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{}{}", lula_protocol::lua::ID_GT, TRIM_BODY)));

/// One read of the broadcast stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Up to `count` entries after the requested id, in order.
    pub entries: Vec<Entry>,
    /// The highest id ever deleted from the stream (`0-0`: none known).
    pub max_deleted: StreamId,
}

impl Read {
    /// The id up to which entries after `after` were deleted before this
    /// read could return them, if any were: the device reading after `after`
    /// missed them. Reported only once the read has reached them (its first
    /// entry is past the deleted one, or there is none), so every entry a
    /// push carries with the gap is after it and the device's cursor can
    /// safely jump there.
    pub fn gap(&self, after: StreamId) -> Option<StreamId> {
        let past = self.entries.first().is_none_or(|e| e.id > self.max_deleted);
        (self.max_deleted > after && past).then_some(self.max_deleted)
    }
}

/// Reads up to `count` entries of `key` after `after`, with the stream's
/// max-deleted-entry-id.
pub async fn read(
    redis: &mut RedisConn,
    key: &str,
    after: StreamId,
    count: usize,
) -> Result<Read, String> {
    let reply: Value = READ
        .key(key)
        .arg(after.to_string())
        .arg(count)
        .invoke_async(redis)
        .await
        .map_err(|e| e.to_string())?;
    let Value::Array(items) = reply else {
        return Err("broadcast read: not an array".into());
    };
    let mut items = items.into_iter();
    let max_deleted = match items.next() {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(&b)
            .parse::<StreamId>()
            .map_err(|e| format!("broadcast read: {e}"))?,
        other => return Err(format!("broadcast read: unexpected {other:?}")),
    };
    let entries = match items.next() {
        Some(v) => entries_from_range(v).map_err(|e| e.to_string())?,
        None => return Err("broadcast read: short reply".into()),
    };
    Ok(Read {
        entries,
        max_deleted,
    })
}

/// Trims `key` to the entries of the last `retention` once. Returns how many
/// entries went.
pub async fn trim(
    redis: &mut RedisConn,
    key: &str,
    retention: Duration,
) -> Result<u64, redis::RedisError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let horizon = now.saturating_sub(retention).as_millis() as u64;
    if horizon == 0 {
        return Ok(0);
    }
    TRIM.key(key)
        .arg(StreamId::new(horizon, 0).to_string())
        .invoke_async(redis)
        .await
}

/// Trims the broadcast stream `key` to `retention` at start and every
/// `every`, until `shutdown`. Every hub runs it; trimming is idempotent.
pub async fn retain(
    mut redis: RedisConn,
    key: String,
    retention: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match trim(&mut redis, &key, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, ?retention, "trimmed the broadcast stream"),
            Err(e) => tracing::warn!(error = %e, "cannot trim the broadcast stream; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ids: &[u64], max_deleted: u64) -> Read {
        Read {
            entries: ids
                .iter()
                .map(|&ms| Entry::from_pairs(StreamId::new(ms, 0), &[("k", "v")]))
                .collect(),
            max_deleted: StreamId::new(max_deleted, 0),
        }
    }

    #[test]
    fn a_gap_is_what_was_deleted_after_the_cursor() {
        let at = |ms| StreamId::new(ms, 0);
        // Nothing deleted.
        assert_eq!(read(&[1, 2], 0).gap(StreamId::ZERO), None);
        // Trimmed up to 5, the device is at 3: it missed 4 and 5.
        assert_eq!(read(&[6, 7], 5).gap(at(3)), Some(at(5)));
        // Trimmed up to 5, nothing left after it.
        assert_eq!(read(&[], 5).gap(at(3)), Some(at(5)));
        // The device already had everything deleted.
        assert_eq!(read(&[6], 5).gap(at(5)), None);
        assert_eq!(read(&[6], 5).gap(at(6)), None);
        // Deleted from the middle, not reached yet: entries before it come first.
        assert_eq!(read(&[4, 6], 5).gap(at(3)), None);
    }
}
