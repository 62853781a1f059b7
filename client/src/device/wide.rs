//! Storing a pushed entry too wide for the store script.
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

use lula_protocol::message::PushStream;
use lula_protocol::{Entry, FIELD_BROADCAST, FIELD_SEQ, StreamId, escape_field};
use redis::RedisError;

use super::{BROADCAST_FIELD, DOWNSTREAM_FIELD, Device, Stored, parse_id};

/// How often the transaction is tried when the state hash keeps changing.
const TRIES: usize = 100;

impl Device {
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
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.keys.in_stream())
            .arg("*")
            .arg(marker)
            .arg(entry.id.to_string());
        for (i, value) in entry.fields.iter().enumerate() {
            if i.is_multiple_of(2) {
                xadd.arg(escape_field(value).as_ref());
            } else {
                xadd.arg(value.as_slice());
            }
        }
        let state = self.keys.state();
        let mut conn = self.client.get_multiplexed_async_connection().await?;
        for _ in 0..TRIES {
            let () = redis::cmd("WATCH")
                .arg(&state)
                .query_async(&mut conn)
                .await?;
            let saved: Option<String> = redis::cmd("HGET")
                .arg(&state)
                .arg(field)
                .query_async(&mut conn)
                .await?;
            let cursor = parse_id(saved)?;
            if entry.id <= cursor {
                let () = redis::cmd("UNWATCH").query_async(&mut conn).await?;
                return Ok(stored(cursor, 0));
            }
            let mut tx = redis::pipe();
            tx.atomic()
                .add_command(xadd.clone())
                .cmd("HSET")
                .arg(&state)
                .arg(field)
                .arg(entry.id.to_string())
                .ignore();
            let done: Option<(String,)> = tx.query_async(&mut conn).await?;
            if done.is_some() {
                return Ok(stored(entry.id, 1));
            }
        }
        Err(RedisError::from((
            redis::ErrorKind::Io,
            "storing a wide message",
            "the state hash kept changing; retried".to_owned(),
        )))
    }
}

fn stored(cursor: StreamId, added: u64) -> Stored {
    Stored {
        cursor,
        added,
        missed_after: None,
        set_aside: 0,
    }
}
