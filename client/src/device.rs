//! The device Redis: the out stream producers write, the in stream hub messages
//! and broadcasts land in, and the state hash holding the downstream and
//! broadcast cursors and the daemon's published status (written as
//! [`crate::published::StatusUpdate`]s).

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use lula_protocol::field_names::escaped;
use lula_protocol::keys::DeviceKeys;
use lula_protocol::lua::RANGE_AFTER;
use lula_protocol::message::PushStream;
use lula_protocol::redis_value::entries_from_range;
use lula_protocol::{Entry, FIELD_BROADCAST, FIELD_SEQ, StreamId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncCommands, AsyncConnectionConfig, RedisError, Script, Value};

mod wide;

use crate::published::StatusUpdate;
pub use crate::published::status_fields;
use crate::retention::{KeepAcked, OutRetention};

/// Field of the state hash holding the last hub id stored in `in:x`.
pub const DOWNSTREAM_FIELD: &str = "downstream";
/// Field of the state hash holding the last broadcast id stored in `in:x`.
pub const BROADCAST_FIELD: &str = "broadcast";

/// What [`Device::store`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The stream's cursor after the store.
    pub cursor: StreamId,
    /// Entries that were new.
    pub added: u64,
    /// When the push reported a gap ahead of the cursor: the cursor before
    /// it (the device missed entries after this id up to the gap).
    pub missed_after: Option<StreamId>,
    /// Set-aside markers that were new (counted in the state hash).
    pub set_aside: u64,
}

/// KEYS[1] the state hash; ARGV[1] now (epoch ms), then field/value pairs.
/// Sets them and `updatedAt`; `connected` 0 sets `disconnectedSince` unless
/// it is set (1 deletes it); an `upstream` that differs from the stored one
/// sets `upstreamProgressAt`. One script, so the times agree with the fields.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local now = ARGV[1]
        for i = 2, #ARGV, 2 do
          local f, v = ARGV[i], ARGV[i + 1]
          if f == 'connected' then
            if v == '1' then
              redis.call('HDEL', KEYS[1], 'disconnectedSince')
            else
              redis.call('HSETNX', KEYS[1], 'disconnectedSince', now)
            end
          elseif f == 'upstream' and redis.call('HGET', KEYS[1], 'upstream') ~= v then
            redis.call('HSET', KEYS[1], 'upstreamProgressAt', now)
          end
          redis.call('HSET', KEYS[1], f, v)
        end
        redis.call('HSET', KEYS[1], 'updatedAt', now)
        return 1
        ",
    )
});

/// KEYS[1] in stream, KEYS[2] state hash.
/// ARGV[1] the cursor's field, ARGV[2] the marker field written first into
/// each entry (`seq` or `broadcast`), ARGV[3] a gap: the id the hub says
/// entries up to were deleted ('' when none), ARGV[4] the field counting
/// gaps, ARGV[5] the field describing the last one, ARGV[6] now (epoch ms),
/// ARGV[7] how many messages expired on the hub before these (0: none),
/// ARGV[8] the field counting them, ARGV[9] the field describing the last
/// report, ARGV[10] the field counting set-aside entries, ARGV[11] the field
/// describing the last, ARGV[12] the stream's name; then per entry: hub id,
/// number of values, values, or for a set-aside marker: hub id, -1, reason.
/// Moves the cursor to the gap if it is ahead (counting the gap), appends
/// the entries after the cursor with the marker = hub id first, moves the
/// cursor past markers after it (counting them, appending nothing),
/// atomically. Returns {cursor, added, cursor before a counted gap or '',
/// markers counted}.
const STORE_BODY: &str = r#"
local field, marker, gap = ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('HGET', KEYS[2], field) or '0-0'
local moved = false
local missed = ''
if gap ~= '' and id_gt(gap, cur) then
  missed = cur
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
  redis.call('HSET', KEYS[2], ARGV[5], 'after ' .. cur .. ' up to ' .. gap .. ' (at ' .. ARGV[6] .. ' ms)')
  cur = gap
  moved = true
end
local expired = tonumber(ARGV[7])
if expired > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[8], expired)
  redis.call('HSET', KEYS[2], ARGV[9], expired .. ' expired before delivery (at ' .. ARGV[6] .. ' ms)')
end
local n = #ARGV
local i = 13
local added, aside = 0, 0
while i <= n do
  local id = ARGV[i]
  local nv = tonumber(ARGV[i + 1])
  if nv < 0 then
    if id_gt(id, cur) then
      redis.call('HINCRBY', KEYS[2], ARGV[10], 1)
      redis.call('HSET', KEYS[2], ARGV[11], ARGV[12] .. ' ' .. id .. ': ' .. ARGV[i + 2] .. ' (at ' .. ARGV[6] .. ' ms)')
      cur = id
      aside = aside + 1
      moved = true
    end
    nv = 1
  elseif id_gt(id, cur) then
    local args = {'XADD', KEYS[1], '*', marker, id}
    for j = 1, nv do
      args[5 + j] = ARGV[i + 1 + j]
    end
    redis.call(unpack(args))
    cur = id
    added = added + 1
    moved = true
  end
  i = i + 2 + nv
end
if moved then
  redis.call('HSET', KEYS[2], field, cur)
end
return {cur, added, missed, aside}
"#;

/// Most values [`Device::set_aside_up`] passes through a script's `unpack`
/// (which stops at about 8,000).
const MAX_SCRIPT_VALUES: usize = 7_900;

/// KEYS[1] the dead stream, KEYS[2] the state hash; ARGV[1] the entry's id,
/// ARGV[2] the field counting set-aside entries, ARGV[3] the field holding
/// the last, ARGV[4] its text, then the record's fields (`reason <text>
/// <original fields...>`). Appends the record under the entry's own id and
/// counts it, atomically; an id already there (a retry after a crash)
/// appends and counts nothing. Returns 1 when it counted, else 0.
static SET_ASIDE_UP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local added = redis.pcall('XADD', KEYS[1], ARGV[1], unpack(ARGV, 5))
        if type(added) == 'table' and added.err then
          if string.find(added.err, 'equal or smaller', 1, true) then return 0 end
          return redis.error_reply(added.err)
        end
        redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
        redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
        return 1
        ",
    )
});

static STORE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{}{}", lula_protocol::lua::ID_GT, STORE_BODY)));

pub use lula_runtime::now_ms;

/// Whether `e` is the device Redis refusing a write because it is full
/// (`maxmemory` with `noeviction`): the daemon carries on with what needs no
/// memory (reading, acknowledging, trimming) and retries the writes later.
pub fn is_full(e: &RedisError) -> bool {
    e.code() == Some("OOM")
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == "OOM"))
}

/// Access to the device Redis for ordinary (non-blocking) commands.
#[derive(Clone)]
pub struct Device {
    redis: ConnectionManager,
    client: redis::Client,
    /// The device Redis's URL, for the connections of wide transactions.
    url: String,
    keys: DeviceKeys,
    /// Upstream retention, shared by clones (only the session trims).
    retention: Arc<Mutex<OutRetention>>,
}

impl Device {
    /// Connects lazily, so the daemon starts while the device Redis is still down.
    pub fn new(redis_url: &str, keys: DeviceKeys) -> Result<Self, RedisError> {
        let client = redis::Client::open(redis_url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let redis = client.get_connection_manager_lazy(config)?;
        Ok(Device {
            redis,
            client,
            url: redis_url.to_owned(),
            keys,
            retention: Arc::new(Mutex::new(OutRetention::new(KeepAcked::All))),
        })
    }

    /// Sets how much acknowledged history `out:x` keeps (the default of a new
    /// `Device` is [`KeepAcked::All`]: it never trims).
    pub fn with_keep_acked(self, keep: KeepAcked) -> Self {
        Device {
            retention: Arc::new(Mutex::new(OutRetention::new(keep))),
            ..self
        }
    }

    /// Removes from `in:x` what every consumer group on it has acknowledged
    /// (never anything when it has no group); returns how many entries.
    pub async fn trim_in_consumed(&mut self) -> Result<u64, RedisError> {
        let key = self.keys.in_stream();
        Ok(
            lula_runtime::retention::trim_consumed(&mut self.redis, &key)
                .await?
                .entries,
        )
    }

    /// Reads and judges the device Redis's eviction and persistence settings.
    pub async fn redis_safety(
        &mut self,
    ) -> Result<lula_runtime::redis_check::RedisSafety, RedisError> {
        lula_runtime::redis_check::check(&mut self.redis).await
    }

    /// Records that the hub holds every entry of `out:x` up to `cursor`
    /// (`entries` of them newly acknowledged) and trims `out:x` below it as
    /// the retention setting allows. Returns how many entries were removed.
    /// `XTRIM` frees memory, so it works on a full Redis (`noeviction`
    /// refuses only commands that grow memory).
    pub async fn retire_acknowledged(
        &mut self,
        cursor: StreamId,
        entries: u64,
    ) -> Result<u64, RedisError> {
        let bound = self
            .retention
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acknowledged(cursor, entries, now_ms());
        let Some(bound) = bound else { return Ok(0) };
        redis::cmd("XTRIM")
            .arg(self.keys.out_stream())
            .arg("MINID")
            .arg(bound.to_string())
            .query_async(&mut self.redis)
            .await
    }

    /// Key names.
    pub fn keys(&self) -> &DeviceKeys {
        &self.keys
    }

    /// The last hub id stored in `in:x`, `0-0` at first.
    pub async fn downstream_cursor(&mut self) -> Result<StreamId, RedisError> {
        let v: Option<String> = self.redis.hget(self.keys.state(), DOWNSTREAM_FIELD).await?;
        parse_id(v)
    }

    /// The last broadcast id stored in `in:x`, `0-0` at first (a new device
    /// gets every broadcast the hub still keeps).
    pub async fn broadcast_cursor(&mut self) -> Result<StreamId, RedisError> {
        let v: Option<String> = self.redis.hget(self.keys.state(), BROADCAST_FIELD).await?;
        parse_id(v)
    }

    /// Appends hub entries (in hub order) to `in:x` and moves the downstream
    /// cursor in one script; entries at or below the cursor are skipped, so a
    /// push repeated after a reconnect is stored once. Returns the new cursor
    /// and how many entries were new.
    pub async fn store_downstream(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<(StreamId, u64), RedisError> {
        let stored = self.store(PushStream::Direct, &entries, None, 0).await?;
        Ok((stored.cursor, stored.added))
    }

    /// Stores pushed entries of `stream` in `in:x` with their cursor, in one
    /// script: direct messages as `seq <hub id> ...`, broadcasts as
    /// `broadcast <broadcast id> ...`, each after its own cursor. A `gap`
    /// (entries up to it deleted before they reached this device) moves the
    /// cursor there first and is counted in the state hash, in the same step,
    /// so a crash can neither lose nor double the count.
    pub async fn store(
        &mut self,
        stream: PushStream,
        entries: &[Entry],
        gap: Option<StreamId>,
        expired: u64,
    ) -> Result<Stored, RedisError> {
        // A message put together from parts comes alone in its push.
        if let [entry] = entries
            && entry.fields.len() + 4 > MAX_SCRIPT_VALUES
            && gap.is_none()
            && expired == 0
        {
            return self.store_wide(stream, entry).await;
        }
        let (field, marker) = match stream {
            PushStream::Direct => (DOWNSTREAM_FIELD, FIELD_SEQ),
            PushStream::Broadcast => (BROADCAST_FIELD, FIELD_BROADCAST),
        };
        let mut invocation = STORE.key(self.keys.in_stream());
        invocation
            .key(self.keys.state())
            .arg(field)
            .arg(marker)
            .arg(gap.map(|g| g.to_string()).unwrap_or_default())
            .arg(status_fields::BROADCAST_GAPS)
            .arg(status_fields::LAST_BROADCAST_GAP)
            .arg(now_ms())
            .arg(expired)
            .arg(status_fields::EXPIRED)
            .arg(status_fields::LAST_EXPIRED)
            .arg(status_fields::SET_ASIDE_DOWN)
            .arg(status_fields::LAST_SET_ASIDE_DOWN)
            .arg(stream.as_str());
        for entry in entries {
            if let Some(reason) = &entry.set_aside {
                invocation.arg(entry.id.to_string()).arg(-1).arg(reason);
                continue;
            }
            invocation.arg(entry.id.to_string()).arg(entry.fields.len());
            // Reserved names are escaped by the one rule of
            // `lula_protocol::field_names`, the same for direct messages and
            // broadcasts; the script stores what it is given.
            for arg in escaped(&entry.fields) {
                invocation.arg(arg.as_ref());
            }
        }
        let (cursor, added, missed, set_aside): (String, u64, String, u64) =
            invocation.invoke_async(&mut self.redis).await?;
        Ok(Stored {
            cursor: parse_id(Some(cursor))?,
            added,
            set_aside,
            missed_after: if missed.is_empty() {
                None
            } else {
                Some(parse_id(Some(missed))?)
            },
        })
    }

    /// Sets an out-stream entry aside: writes it to `lula-client:dead:x`
    /// under its original id as `reason <reason> <original fields...>`, and
    /// counts it in the state hash. The `XADD` carries the entry's own id, so
    /// it is idempotent: after a crash before the hub heard of it, the retry
    /// is refused as "equal or smaller" and counts as done (`false`: recorded
    /// before, not counted again). Write and count are atomic: one script
    /// while the entry fits a script's `unpack` (about 8,000 values), a
    /// transaction on a connection of its own for a wider one (see
    /// `device/wide.rs`).
    pub async fn set_aside_up(&mut self, entry: &Entry, reason: &str) -> Result<bool, RedisError> {
        let now = now_ms();
        let last = format!("{}: {reason} (at {now} ms)", entry.id);
        if entry.fields.len() + 2 <= MAX_SCRIPT_VALUES {
            let mut invocation = SET_ASIDE_UP.key(self.keys.dead_stream());
            invocation
                .key(self.keys.state())
                .arg(entry.id.to_string())
                .arg(status_fields::SET_ASIDE_UP)
                .arg(status_fields::LAST_SET_ASIDE_UP)
                .arg(&last)
                .arg("reason")
                .arg(reason);
            for v in &entry.fields {
                invocation.arg(v.as_slice());
            }
            let counted: i64 = invocation.invoke_async(&mut self.redis).await?;
            return Ok(counted == 1);
        }
        self.set_aside_up_wide(entry, reason, &last).await
    }

    /// Writes the fields `update` sets (and `updatedAt`) to the state hash,
    /// with the times `lula-client status --check` judges by: since when the
    /// daemon is disconnected, and when the upstream cursor last moved.
    pub async fn publish(&mut self, update: &StatusUpdate) -> Result<(), RedisError> {
        let mut script = PUBLISH.key(self.keys.state());
        script.arg(now_ms());
        for (field, value) in update.fields() {
            script.arg(field).arg(value);
        }
        let _: i64 = script.invoke_async(&mut self.redis).await?;
        Ok(())
    }

    /// The highest id `out:x` ever generated (`0-0` when it does not exist).
    pub async fn last_generated(&mut self) -> Result<StreamId, RedisError> {
        let info: redis::RedisResult<Value> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(self.keys.out_stream())
            .query_async(&mut self.redis)
            .await;
        let info = match info {
            Ok(v) => v,
            // No such key: nothing was ever produced here.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                return Ok(StreamId::ZERO);
            }
            Err(e) => return Err(e),
        };
        let pairs: Vec<(Value, Value)> = match info {
            Value::Array(items) => {
                let mut it = items.into_iter();
                std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
            }
            Value::Map(pairs) => pairs,
            _ => Vec::new(),
        };
        for (k, v) in pairs {
            if matches!(&k, Value::BulkString(b) if b == b"last-generated-id")
                && let Value::BulkString(id) = v
            {
                return parse_id(Some(String::from_utf8_lossy(&id).into_owned()));
            }
        }
        Ok(StreamId::ZERO)
    }

    /// The ordinal published with `cursor` as the upstream cursor, if the
    /// published cursor is that one; `Some(0)` for `0-0`.
    pub async fn saved_ordinal(&mut self, cursor: StreamId) -> Result<Option<u64>, RedisError> {
        if cursor == StreamId::ZERO {
            return Ok(Some(0));
        }
        let (upstream, ordinal): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.state())
            .arg(status_fields::UPSTREAM)
            .arg(status_fields::UPSTREAM_ORDINAL)
            .query_async(&mut self.redis)
            .await?;
        let same = upstream.and_then(|u| u.parse::<StreamId>().ok()) == Some(cursor);
        Ok(ordinal.filter(|_| same).and_then(|o| o.parse().ok()))
    }

    /// Adds `by` to an integer status field.
    pub async fn count(&mut self, field: &str, by: i64) -> Result<(), RedisError> {
        self.redis.hincr(self.keys.state(), field, by).await
    }

    /// Opens a reader of `out:x` on a connection of its own.
    pub async fn out_reader(&self, block: Duration) -> Result<OutReader, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(block + Duration::from_secs(10)));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(OutReader {
            conn,
            key: self.keys.out_stream(),
            block,
            caught_up: false,
        })
    }
}

fn parse_id(v: Option<String>) -> Result<StreamId, RedisError> {
    match v {
        None => Ok(StreamId::ZERO),
        Some(s) => s
            .parse()
            .map_err(|e: lula_protocol::stream_id::StreamIdError| {
                RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "bad stream id",
                    e.to_string(),
                ))
            }),
    }
}

/// One read of the out stream with the stream's counters at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRead {
    /// Entries after the requested id, in order.
    pub entries: Vec<Entry>,
    /// Entries ever added to the stream (Redis 7 and later).
    pub added: Option<u64>,
    /// Entries in the stream now.
    pub length: u64,
    /// The oldest entry still in the stream.
    pub first: Option<StreamId>,
    /// The highest id removed with `XDEL` (trimming does not move it).
    pub max_deleted: StreamId,
}

/// KEYS[1] out stream. Returns the stream's counters compactly: entries-added
/// (-1 before Redis 7), length, first entry id ('' if empty) and
/// max-deleted-entry-id ('0-0' before Redis 7); all zero when the stream does
/// not exist. Run in one transaction with the `XRANGE` that reads the entries
/// (see [`OutReader::read_after`]).
const COUNTERS_FN: &str = r#"
local function stream_counters(key)
  if redis.call('EXISTS', key) == 0 then
    return {0, 0, '', '0-0'}
  end
  local info = redis.call('XINFO', 'STREAM', key)
  local f = {}
  for i = 1, #info, 2 do
    f[info[i]] = info[i + 1]
  end
  local first = ''
  if type(f['first-entry']) == 'table' then
    first = f['first-entry'][1]
  end
  return {f['entries-added'] or -1, f['length'], first, f['max-deleted-entry-id'] or '0-0'}
end
"#;

static COUNTERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{COUNTERS_FN}return stream_counters(KEYS[1])")));

/// KEYS[1] out stream, ARGV[1] the id to read after, ARGV[2] how many. The
/// counters and the entries in one read-only script (Redis 7 flags), for a
/// full device Redis: over `maxmemory` Redis refuses every command queued in
/// a `MULTI`, and any script not declared read-only, but still runs this.
/// Slower than the transaction (Lua builds every entry), so only then.
static READ_WHEN_FULL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "#!lua flags=no-writes\n{COUNTERS_FN}{RANGE_AFTER}\
         local from, to = range_after(ARGV[1])\n\
         return {{stream_counters(KEYS[1]), \
         redis.call('XRANGE', KEYS[1], from, to, 'COUNT', ARGV[2])}}"
    ))
});

/// A blocking `XREAD` of one entry after `after`, for at most `wait`: it only
/// waits (what it returns is read again with the stream's counters).
fn wait_for_entry(key: &str, after: StreamId, wait: Duration) -> redis::Cmd {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(wait.as_millis() as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(after.to_string());
    cmd
}

/// Reads the out stream on a connection of its own: entries and counters in
/// one script call, and, when there is nothing to read, a blocking `XREAD` that
/// only waits for the next entry. The block never delays other commands, since
/// nothing else uses the connection.
///
/// Once a read has reached the end of the stream, the next one waits first:
/// a steadily producing device is caught up after nearly every batch, and
/// reading again before waiting would cost the device Redis a script call that
/// finds nothing, per batch. Waiting first is always correct, since `XREAD`
/// after an id returns at once when entries after it already exist.
pub struct OutReader {
    conn: MultiplexedConnection,
    key: String,
    block: Duration,
    /// The last read returned fewer entries than asked: the end was reached.
    caught_up: bool,
}

impl OutReader {
    /// Up to `count` entries after `after` with the stream's counters, waiting up
    /// to the block time when there are none yet.
    pub async fn read(&mut self, after: StreamId, count: usize) -> Result<OutRead, RedisError> {
        if !self.caught_up {
            let read = self.read_after(after, count, None).await?;
            if !read.entries.is_empty() {
                return Ok(read);
            }
        }
        self.read_after(after, count, Some(self.block)).await
    }

    /// [`READ_WHEN_FULL`], after the wait (a plain blocking `XREAD`, which a
    /// full Redis still serves); the same `[counters, entries]` as the
    /// transaction.
    async fn read_when_full(
        &mut self,
        after: StreamId,
        count: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<Value>, RedisError> {
        if let Some(wait) = wait {
            let _: Value = wait_for_entry(&self.key, after, wait)
                .query_async(&mut self.conn)
                .await?;
        }
        // Loaded first: over maxmemory Redis refuses an EVALSHA of a script
        // it does not know (OOM, not NOSCRIPT), so the usual fallback to
        // EVAL would never happen.
        READ_WHEN_FULL
            .prepare_invoke()
            .load_async(&mut self.conn)
            .await?;
        READ_WHEN_FULL
            .key(&self.key)
            .arg(after.to_string())
            .arg(count)
            .invoke_async(&mut self.conn)
            .await
    }

    /// Entries after `after` and the stream's counters, read in one
    /// transaction (`MULTI`, the counters script, `XRANGE`, `EXEC`), so that
    /// they describe the same moment: that is what makes a trim detected from
    /// them exact. With `wait`, a blocking `XREAD` goes first in the same
    /// write: Redis runs the transaction as soon as the `XREAD` returns (an
    /// entry arrived, or the wait is over), so waiting and reading cost one
    /// round trip.
    ///
    /// The entries come from a plain `XRANGE` rather than from inside the
    /// script, which would build a Lua table of every entry and convert it
    /// back (that doubled the device Redis's time per read), and the script
    /// returns only the four counters, not the whole `XINFO` reply.
    async fn read_after(
        &mut self,
        after: StreamId,
        count: usize,
        wait: Option<Duration>,
    ) -> Result<OutRead, RedisError> {
        let mut pipe = redis::pipe();
        if let Some(wait) = wait {
            pipe.add_command(wait_for_entry(&self.key, after, wait))
                .ignore();
        }
        let (from, to) = after.range_after();
        pipe.cmd("MULTI")
            .ignore()
            .cmd("EVALSHA")
            .arg(COUNTERS.get_hash())
            .arg(1)
            .arg(&self.key)
            .ignore()
            .cmd("XRANGE")
            .arg(&self.key)
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(count)
            .ignore()
            .cmd("EXEC");
        let (exec,): (Vec<Value>,) = match pipe.query_async(&mut self.conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // A new, restarted or flushed device Redis: load the script
                // and run the whole pipeline again (its XREAD returns at once
                // if entries arrived meanwhile).
                COUNTERS.prepare_invoke().load_async(&mut self.conn).await?;
                pipe.query_async(&mut self.conn).await?
            }
            Err(e) if is_full(&e) => (self.read_when_full(after, count, wait).await?,),
            other => other?,
        };
        let mut exec = exec.into_iter();
        let (Some(counters), Some(range)) = (exec.next(), exec.next()) else {
            return Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "short transaction reply",
            )));
        };
        let read = parse_out_read(counters, range).map_err(|e| {
            RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "bad out stream read",
                e,
            ))
        })?;
        self.caught_up = read.entries.len() < count;
        Ok(read)
    }
}

/// Parses the replies of [`OutReader::read_after`]'s transaction: the counters
/// script's and `XRANGE`'s.
fn parse_out_read(counters: Value, range: Value) -> Result<OutRead, String> {
    let items = match counters {
        Value::Array(items) => items,
        other => return Err(format!("counters: {other:?}")),
    };
    if let Value::ServerError(e) = &range {
        return Err(format!("XRANGE: {e:?}"));
    }
    let mut items = items.into_iter();
    let mut next = || {
        items
            .next()
            .ok_or_else(|| "short counters reply".to_string())
    };
    let int = |v: Value| match v {
        Value::Int(i) => Ok(i),
        other => Err(format!("expected an integer, got {other:?}")),
    };
    let text = |v: Value| match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|e| e.to_string()),
        Value::SimpleString(s) => Ok(s),
        other => Err(format!("expected a string, got {other:?}")),
    };
    let added = int(next()?)?;
    let length = int(next()?)?;
    let first = text(next()?)?;
    let max_deleted = text(next()?)?;
    let entries = entries_from_range(range).map_err(|e| e.to_string())?;
    let id = |s: &str| s.parse::<StreamId>().map_err(|e| e.to_string());
    Ok(OutRead {
        entries,
        added: u64::try_from(added).ok(),
        length: u64::try_from(length).unwrap_or(0),
        first: if first.is_empty() {
            None
        } else {
            Some(id(&first)?)
        },
        max_deleted: id(&max_deleted)?,
    })
}

/// Counts `out:x` entries after `after` (the upstream backlog), paging with
/// `XRANGE` so a large backlog never becomes one huge reply.
pub async fn count_after<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    key: &str,
    after: StreamId,
) -> Result<u64, RedisError> {
    const PAGE: usize = 10_000;
    let mut total = 0u64;
    let mut from = after;
    loop {
        let (start, end) = from.range_after();
        let reply: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let entries = entries_from_range(reply).map_err(|e| {
            RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "bad XRANGE reply",
                e.to_string(),
            ))
        })?;
        total += entries.len() as u64;
        match entries.last() {
            Some(last) if entries.len() == PAGE => from = last.id,
            _ => return Ok(total),
        }
    }
}
