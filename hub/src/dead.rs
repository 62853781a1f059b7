//! The cloud's dead letters: a direct message or a broadcast a device cannot
//! take (past a limit) is recorded once in `lula-hub:dead:x`, and the device
//! gets a set-aside marker in its place, so nothing behind it waits.
//!
//! Recording is idempotent: the same entry is read again after every
//! reconnect until the device acknowledges its marker, by every connection
//! for a broadcast, and by every hub replica. One script checks a guard key
//! (`lula-hub:dead-seen:{lula-hub:dead:x}:<stream>:<id>`, in the dead
//! stream's cluster slot) and appends only when it sets it, so the record is
//! written once whatever crashes or reconnects between the record and the
//! device's acknowledgement. Nothing is deleted from the source stream: a
//! broadcast stays for the devices that can take it, and deleting from the
//! broadcast stream would look like a gap to every device.

use std::sync::LazyLock;
use std::time::Duration;

use lula_protocol::keys::HubKeys;
use lula_protocol::message::PushStream;
use lula_protocol::{ClientId, Entry};
use lula_runtime::redis::RedisConn;
use redis::Script;

/// How long a guard key lives when the stream keeps its entries longer than
/// that or forever is not known: a week, the default broadcast retention.
pub const DEFAULT_GUARD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What `client` holds in a broadcast's record: no client id contains `*`.
pub const BROADCAST_CLIENT: &str = "*";

/// Most values the script passes to one `XADD` through Lua's `unpack`, which
/// stops at about 8,000. Wider entries are recorded without the script (see
/// [`record`]).
const MAX_SCRIPT_VALUES: usize = 7_900;

/// KEYS[1] the guard key, KEYS[2] the dead stream; ARGV[1] the guard's TTL
/// in seconds (0: none), then the record's fields. Appends the record only
/// when it sets the guard. Returns 1 when it appended, 0 when the entry was
/// recorded before.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local set
        if ARGV[1] == '0' then
          set = redis.call('SET', KEYS[1], '1', 'NX')
        else
          set = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])
        end
        if not set then return 0 end
        redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
        return 1
        ",
    )
});

/// Records `entry` of `stream` (for `client`, or the fleet's broadcast) as
/// set aside for `reason`, once: returns whether this call wrote the record.
///
/// Entries too wide for a script's `unpack` are recorded with plain
/// commands (`SET NX`, then `XADD`, removing the guard again if the `XADD`
/// fails): a crash between the two leaves the guard without the record,
/// so for those (over 3,950 field pairs) the record is at most once.
pub async fn record(
    redis: &mut RedisConn,
    keys: &HubKeys,
    stream: PushStream,
    client: &ClientId,
    entry: &Entry,
    reason: &str,
    guard_ttl: Duration,
) -> Result<bool, redis::RedisError> {
    let (who, name, key_part) = match stream {
        PushStream::Direct => (client.as_str(), "out", format!("out:{client}")),
        PushStream::Broadcast => (BROADCAST_CLIENT, "broadcast", "broadcast".to_owned()),
    };
    let guard = keys.dead_seen(&format!("{key_part}:{}", entry.id));
    let dead = keys.dead_stream();
    let id = entry.id.to_string();
    let head: [&[u8]; 8] = [
        b"client",
        who.as_bytes(),
        b"stream",
        name.as_bytes(),
        b"id",
        id.as_bytes(),
        b"reason",
        reason.as_bytes(),
    ];
    let ttl = guard_ttl.as_secs();
    if entry.fields.len() + head.len() <= MAX_SCRIPT_VALUES {
        let mut invocation = RECORD.key(&guard);
        invocation.key(&dead).arg(ttl);
        for v in head {
            invocation.arg(v);
        }
        for v in &entry.fields {
            invocation.arg(v.as_slice());
        }
        let wrote: i64 = invocation.invoke_async(redis).await?;
        return Ok(wrote == 1);
    }
    let mut set = redis::cmd("SET");
    set.arg(&guard).arg(1).arg("NX");
    if ttl > 0 {
        set.arg("EX").arg(ttl);
    }
    let set: Option<String> = set.query_async(redis).await?;
    if set.is_none() {
        return Ok(false);
    }
    let mut xadd = redis::cmd("XADD");
    xadd.arg(&dead).arg("*");
    for v in head {
        xadd.arg(v);
    }
    for v in &entry.fields {
        xadd.arg(v.as_slice());
    }
    if let Err(e) = xadd.query_async::<String>(redis).await {
        let _: Result<i64, _> = redis::cmd("DEL").arg(&guard).query_async(redis).await;
        return Err(e);
    }
    Ok(true)
}
