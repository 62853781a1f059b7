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
//! device's acknowledgement. An entry too wide for the script (Lua's
//! `unpack` stops near 8,000 values) gets the same guarantee from an
//! optimistic transaction on a connection of its own (`WATCH` the guard,
//! check it, `MULTI`, set it, append, `EXEC`): guard and record are written
//! together or not at all. Nothing is deleted from the source stream: a
//! broadcast stays for the devices that can take it, and deleting from the
//! broadcast stream would look like a gap to every device.

use std::sync::LazyLock;
use std::time::Duration;

use lula_protocol::keys::HubKeys;
use lula_protocol::message::PushStream;
use lula_protocol::{ClientId, Entry};
use lula_runtime::redis::{RedisConn, RedisTarget};
use redis::Script;
use redis::aio::MultiplexedConnection;

use lula_runtime::redis_tx::TxConn;

/// How long a guard key lives when the stream keeps its entries longer than
/// that or forever is not known: a week, the default broadcast retention.
pub const DEFAULT_GUARD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What `client` holds in a broadcast's record: no client id contains `*`.
pub const BROADCAST_CLIENT: &str = "*";

/// Most values the script passes to one `XADD` through Lua's `unpack`, which
/// stops at about 8,000. Wider entries are recorded by a transaction (see
/// [`record`]).
const MAX_SCRIPT_VALUES: usize = 7_900;

/// How often the transaction of a wide record is tried when the guard keeps
/// changing under it (only another record of the same entry changes it, so
/// a second try finds it set).
const WIDE_TRIES: usize = 10;

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
/// Entries too wide for a script's `unpack` (over 3,946 field pairs) are
/// recorded just as atomically, by a transaction on a connection of its own
/// to `target` ([`record_wide`]): a crash never leaves the guard without the
/// record.
// Each argument is part of what is recorded or where; a struct gathering
// them for this one function would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    redis: &mut RedisConn,
    target: &RedisTarget,
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
    // Every device reading a broadcast sets it aside again: once the guard
    // is there, that costs one command on the shared connection, not a
    // connection of its own.
    let seen: bool = redis::cmd("EXISTS").arg(&guard).query_async(redis).await?;
    if seen {
        return Ok(false);
    }
    let mut set = redis::cmd("SET");
    set.arg(&guard).arg(1);
    if ttl > 0 {
        set.arg("EX").arg(ttl);
    }
    let mut xadd = redis::cmd("XADD");
    xadd.arg(&dead).arg("*");
    for v in head {
        xadd.arg(v);
    }
    for v in &entry.fields {
        xadd.arg(v.as_slice());
    }
    let tx = transaction(set, xadd);
    record_wide(&mut TxConn::new(target.clone()), &guard, &tx).await
}

/// Records a wide entry once: `WATCH` the guard; if it is set, the entry was
/// recorded before; else the [`transaction`] (`MULTI`, set the guard, append
/// the record, `EXEC`). When the guard changed meanwhile (another hub or connection
/// recording the same entry), `EXEC` does nothing and the check runs again.
/// Guard and dead stream share a slot, so on a cluster `conn` follows `MOVED`
/// to its master.
async fn record_wide(
    conn: &mut TxConn,
    guard: &str,
    tx: &redis::Pipeline,
) -> Result<bool, redis::RedisError> {
    conn.run(
        "recording a wide dead letter",
        WIDE_TRIES,
        |mut c| async move { record_wide_once(&mut c, guard, tx).await },
    )
    .await
}

/// One try of [`record_wide`]: whether it wrote the record, `None` when the
/// guard changed between the check and `EXEC`, and nothing was written.
async fn record_wide_once(
    conn: &mut MultiplexedConnection,
    guard: &str,
    tx: &redis::Pipeline,
) -> Result<Option<bool>, redis::RedisError> {
    if watch_seen(conn, guard).await? {
        return Ok(Some(false));
    }
    Ok(commit(conn, tx).await?.then_some(true))
}

/// Watches `guard` and reads whether it is set (then the watch is dropped:
/// there is nothing to write).
async fn watch_seen(conn: &mut MultiplexedConnection, guard: &str) -> redis::RedisResult<bool> {
    let () = redis::cmd("WATCH").arg(guard).query_async(conn).await?;
    let seen: bool = redis::cmd("EXISTS").arg(guard).query_async(conn).await?;
    if seen {
        let () = redis::cmd("UNWATCH").query_async(conn).await?;
    }
    Ok(seen)
}

/// The transaction that sets the guard (`set`) and appends the record
/// (`xadd`), built once for every try.
fn transaction(set: redis::Cmd, xadd: redis::Cmd) -> redis::Pipeline {
    let mut tx = redis::pipe();
    tx.atomic().add_command(set).ignore().add_command(xadd);
    tx
}

/// Runs the [`transaction`] after a [`watch_seen`] on the same connection:
/// false when the guard changed since, and nothing was written.
async fn commit(
    conn: &mut MultiplexedConnection,
    tx: &redis::Pipeline,
) -> redis::RedisResult<bool> {
    let done: Option<(String,)> = tx.query_async(conn).await?;
    Ok(done.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lula_testkit::RedisServer;

    #[tokio::test]
    async fn a_guard_set_between_check_and_commit_writes_nothing() {
        let redis = RedisServer::start();
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut other = client.get_multiplexed_async_connection().await.unwrap();
        let mut set = redis::cmd("SET");
        set.arg("guard").arg(1).arg("EX").arg(600);
        let mut xadd = redis::cmd("XADD");
        xadd.arg("dead").arg("*").arg("k").arg("v");
        let tx = transaction(set, xadd);
        assert!(!watch_seen(&mut conn, "guard").await.unwrap());
        // Another connection records the same entry meanwhile.
        let () = redis::cmd("SET")
            .arg("guard")
            .arg(1)
            .query_async(&mut other)
            .await
            .unwrap();
        assert!(!commit(&mut conn, &tx).await.unwrap());
        let len: u64 = redis::cmd("XLEN")
            .arg("dead")
            .query_async(&mut other)
            .await
            .unwrap();
        assert_eq!(len, 0, "nothing written");
        // Checked again: recorded before.
        assert_eq!(
            record_wide_once(&mut conn, "guard", &tx).await.unwrap(),
            Some(false)
        );
        // Without the guard, guard and record are written together.
        let () = redis::cmd("DEL")
            .arg("guard")
            .query_async(&mut other)
            .await
            .unwrap();
        assert_eq!(
            record_wide_once(&mut conn, "guard", &tx).await.unwrap(),
            Some(true)
        );
        let len: u64 = redis::cmd("XLEN")
            .arg("dead")
            .query_async(&mut other)
            .await
            .unwrap();
        assert_eq!(len, 1);
        let ttl: i64 = redis::cmd("TTL")
            .arg("guard")
            .query_async(&mut other)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 600, "{ttl}");
    }
}
