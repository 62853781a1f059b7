//! Storing a pushed entry too wide for the store script, and setting aside
//! an out-stream entry too wide for the set-aside script.
//!
//! The store script builds each `XADD` from a Lua table, and Lua's `unpack`
//! stops near 8,000 values, so a message of more (it arrived in parts, up to
//! 100,000 field pairs) is stored with an optimistic transaction with the
//! same guarantee: `WATCH` the state hash, read the stream's cursor, and only
//! if the entry is past it `MULTI`, `XADD` to `in:x`, `HSET` the cursor,
//! `EXEC`. If the state hash changed meanwhile (a status write), `EXEC` does
//! nothing and the check runs again. A watch belongs to a connection, so
//! this opens one of its own: such entries are rare and large, a connect is
//! nothing beside them.
//!
//! Setting aside works the same way: `WATCH` the dead stream, read its last
//! id, and only if the entry is past it `MULTI`, `XADD` the record under the
//! entry's id, count it in the state hash, `EXEC`. The record and its count
//! are written together, and a retry (after a crash) finds the record and
//! counts nothing.

use std::sync::LazyLock;

use lula_protocol::field_names::escaped;
use lula_protocol::message::PushStream;
use lula_protocol::{Entry, FIELD_BROADCAST, FIELD_SEQ, StreamId};
use lula_runtime::redis::RedisTarget;
use lula_runtime::redis_tx::TxConn;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Script};

use super::{BROADCAST_FIELD, DOWNSTREAM_FIELD, Device, Stored, parse_id, status_fields};

/// How often the transaction is tried when the state hash keeps changing.
const TRIES: usize = 100;

/// KEYS[1] a stream. Returns its last generated id (`0-0` when there is no
/// stream): an `XADD` with an explicit id succeeds only past it. A script,
/// because `XINFO STREAM` also sends the first and last entries, which in
/// the dead stream may be wide.
static LAST_ID: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then return '0-0' end
        local info = redis.call('XINFO', 'STREAM', KEYS[1])
        for i = 1, #info, 2 do
          if info[i] == 'last-generated-id' then return info[i + 1] end
        end
        return redis.error_reply('XINFO STREAM: no last-generated-id')
        ",
    )
});

impl Device {
    /// A connection of its own, for one transaction: commands of up to
    /// 100,000 pairs get 30 s each, not the half second of a plain one.
    fn transaction_connection(&self) -> TxConn {
        TxConn::new(RedisTarget::new(self.url.as_str(), false))
    }

    /// Stores one pushed entry of `stream` wider than the store script
    /// takes, with its cursor, once (see the module).
    pub(super) async fn store_wide(
        &mut self,
        stream: PushStream,
        entry: &Entry,
    ) -> Result<Stored, RedisError> {
        let (field, marker) = match stream {
            PushStream::Direct => (DOWNSTREAM_FIELD, FIELD_SEQ),
            PushStream::Broadcast => (BROADCAST_FIELD, FIELD_BROADCAST),
        };
        let state = self.keys.state();
        let mut tx = redis::pipe();
        tx.atomic()
            .cmd("XADD")
            .arg(self.keys.in_stream())
            .arg("*")
            .arg(marker)
            .arg(entry.id.to_string());
        for arg in escaped(&entry.fields) {
            tx.arg(arg.as_ref());
        }
        tx.cmd("HSET")
            .arg(&state)
            .arg(field)
            .arg(entry.id.to_string())
            .ignore();
        let (state, tx) = (&state, &tx);
        self.transaction_connection()
            .run("storing a wide message", TRIES, |mut conn| async move {
                let () = redis::cmd("WATCH")
                    .arg(state)
                    .query_async(&mut conn)
                    .await?;
                let saved: Option<String> = redis::cmd("HGET")
                    .arg(state)
                    .arg(field)
                    .query_async(&mut conn)
                    .await?;
                let cursor = parse_id(saved)?;
                if entry.id <= cursor {
                    let () = redis::cmd("UNWATCH").query_async(&mut conn).await?;
                    return Ok(Some(stored(cursor, 0)));
                }
                let done: Option<(String,)> = tx.query_async(&mut conn).await?;
                Ok(done.map(|_| stored(entry.id, 1)))
            })
            .await
    }

    /// Sets aside an out-stream entry wider than the set-aside script takes:
    /// the record and its count (`last` the text of the last set aside) in
    /// one transaction (see the module). Whether this call wrote them.
    pub(super) async fn set_aside_up_wide(
        &mut self,
        entry: &Entry,
        reason: &str,
        last: &str,
    ) -> Result<bool, RedisError> {
        let dead = self.keys.dead_stream();
        let tx = set_aside_tx(&dead, &self.keys.state(), entry, reason, last);
        let (dead, tx) = (&dead, &tx);
        self.transaction_connection()
            .run("setting a wide entry aside", TRIES, |mut conn| async move {
                if recorded_before(&mut conn, dead, entry.id).await? {
                    return Ok(Some(false));
                }
                let done: Option<(String,)> = tx.query_async(&mut conn).await?;
                Ok(done.map(|_| true))
            })
            .await
    }
}

/// The transaction of [`Device::set_aside_up_wide`]: the record under the
/// entry's own id, its count, the last set aside.
fn set_aside_tx(
    dead: &str,
    state: &str,
    entry: &Entry,
    reason: &str,
    last: &str,
) -> redis::Pipeline {
    let mut tx = redis::pipe();
    tx.atomic().cmd("XADD").arg(dead).arg(entry.id.to_string());
    tx.arg("reason").arg(reason);
    for v in &entry.fields {
        tx.arg(v.as_slice());
    }
    tx.cmd("HINCRBY")
        .arg(state)
        .arg(status_fields::SET_ASIDE_UP)
        .arg(1)
        .ignore()
        .cmd("HSET")
        .arg(state)
        .arg(status_fields::LAST_SET_ASIDE_UP)
        .arg(last)
        .ignore();
    tx
}

/// Watches the dead stream and reads whether a record under `id` cannot be
/// added: the stream is at `id` or past it, so it was recorded before (then
/// the watch is dropped).
async fn recorded_before(
    conn: &mut MultiplexedConnection,
    dead: &str,
    id: StreamId,
) -> Result<bool, RedisError> {
    let () = redis::cmd("WATCH").arg(dead).query_async(conn).await?;
    let last: String = LAST_ID.key(dead).invoke_async(conn).await?;
    let last = parse_id(Some(last))?;
    let before = id <= last;
    if before {
        let () = redis::cmd("UNWATCH").query_async(conn).await?;
    }
    Ok(before)
}

fn stored(cursor: StreamId, added: u64) -> Stored {
    Stored {
        cursor,
        added,
        missed_after: None,
        set_aside: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lula_testkit::RedisServer;

    #[tokio::test]
    async fn a_record_added_between_check_and_commit_counts_nothing() {
        let redis = RedisServer::start();
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut other = client.get_multiplexed_async_connection().await.unwrap();
        let entry = Entry::new(StreamId::new(5, 0), vec![b"k".to_vec(), b"v".to_vec()]);
        let tx = set_aside_tx("dead", "state", &entry, "why", "5-0: why");
        assert!(!recorded_before(&mut conn, "dead", entry.id).await.unwrap());
        // Another connection records the same entry meanwhile.
        let _: String = redis::cmd("XADD")
            .arg("dead")
            .arg("5-0")
            .arg("reason")
            .arg("why")
            .query_async(&mut other)
            .await
            .unwrap();
        let done: Option<(String,)> = tx.query_async(&mut conn).await.unwrap();
        assert_eq!(done, None, "EXEC did nothing");
        let count: Option<i64> = redis::cmd("HGET")
            .arg("state")
            .arg(status_fields::SET_ASIDE_UP)
            .query_async(&mut other)
            .await
            .unwrap();
        assert_eq!(count, None, "nothing counted");
        // Checked again: recorded before.
        assert!(recorded_before(&mut conn, "dead", entry.id).await.unwrap());
        // A later id goes through, record and count together.
        let next = Entry::new(StreamId::new(6, 0), entry.fields.clone());
        let tx = set_aside_tx("dead", "state", &next, "why", "6-0: why");
        assert!(!recorded_before(&mut conn, "dead", next.id).await.unwrap());
        let done: Option<(String,)> = tx.query_async(&mut conn).await.unwrap();
        assert_eq!(done, Some(("6-0".to_owned(),)));
        let count: i64 = redis::cmd("HGET")
            .arg("state")
            .arg(status_fields::SET_ASIDE_UP)
            .query_async(&mut other)
            .await
            .unwrap();
        assert_eq!(count, 1);
    }
}
