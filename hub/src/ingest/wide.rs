//! Appending an entry too wide for the ingest script (or large).
//!
//! The script builds each `XADD` from a Lua table, and Lua's `unpack` stops
//! near 8,000 values, so an entry of more than
//! [`SCRIPT_ENTRY_VALUES`] keys plus values (up to
//! `--max-entry-pairs`, 100,000 pairs by default) is appended with an
//! optimistic transaction instead, with the same guarantee: `WATCH` the
//! partition's cursor hash, read the device's cursor, and only if the entry
//! is past it `MULTI`, `XADD`, `HSET` the cursor, `EXEC`. If any hub moved a
//! cursor of the partition meanwhile, `EXEC` does nothing and the check runs
//! again, so the entry is appended once and the cursor moves with it.
//!
//! A watch belongs to a connection, and the shared multiplexed connection
//! carries everyone's commands, so this uses a connection of its own per
//! partition task ([`TxConn`]): to the server, or on a cluster to the
//! master of the partition's slot, found by following `MOVED`.

use lula_protocol::field_names::escaped;
use lula_protocol::keys::IngestLayout;
use lula_protocol::limits::SCRIPT_ENTRY_VALUES;
use lula_protocol::{Entry, StreamId};
use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult};

use super::{Appended, IngestError, Section};
use lula_runtime::redis_tx::TxConn;

/// How often a transaction is tried again when other appends to the same
/// partition keep moving its cursors first.
const TRIES: usize = 50;

/// Bytes of an entry past which it is appended by the transaction too,
/// though the script could: a script call holds its arguments about three
/// times over (the invocation, its command, the packed request), the
/// transaction twice (its pipeline and the packed request), which for a
/// 64 MiB entry is 128 MiB less (BENCHMARKS.md, "Entries in parts").
const TRANSACTION_BYTES: usize = 1 << 20;

/// Whether `section` holds an entry appended by the transaction: one the
/// script cannot append, or a large one.
pub(super) fn is_wide(section: &Section) -> bool {
    section
        .entries
        .iter()
        .any(|e| e.fields.len() > SCRIPT_ENTRY_VALUES || e.payload_len() > TRANSACTION_BYTES)
}

/// Appends a section of one wide entry exactly once (see the module), on
/// the partition task's own connection.
pub(super) async fn append(
    conn: &mut TxConn,
    layout: &IngestLayout,
    partition: u32,
    section: Section,
) -> Result<Appended, IngestError> {
    let [entry] = <[Entry; 1]>::try_from(section.entries).map_err(|_| {
        IngestError::Reply("a wide entry is appended in a section of its own".into())
    })?;
    let keys = (layout.cursors(partition), layout.in_stream(partition));
    let mut xadd = redis::cmd("XADD");
    xadd.arg(&keys.1)
        .arg("*")
        .arg(lula_protocol::FIELD_CLIENT)
        .arg(section.client.as_str())
        .arg(lula_protocol::FIELD_SEQ)
        .arg(entry.id.to_string());
    for arg in escaped(&entry.fields) {
        xadd.arg(arg.as_ref());
    }
    let guard = Guard {
        keys: &keys,
        client: section.client.as_str(),
        prev: section.prev,
        seq: entry.id,
    };
    // Only the command holds the entry's bytes from here on.
    drop(entry);
    let tx = guard.transaction(xadd);
    let appended = conn
        .run("wide append", TRIES, |mut c| {
            let (guard, tx) = (&guard, &tx);
            async move {
                match guard.check(&mut c).await? {
                    Some(settled) => Ok(Some(settled)),
                    None => guard.commit(&mut c, tx).await,
                }
            }
        })
        .await?;
    Ok(appended)
}

/// What one try of the transaction checks and writes.
struct Guard<'a> {
    /// The partition's cursor hash and in stream.
    keys: &'a (String, String),
    client: &'a str,
    prev: Option<StreamId>,
    seq: StreamId,
}

impl Guard<'_> {
    /// Watches the cursors and reads the device's: the result when there is
    /// nothing to append (a duplicate, a gap), `None` when the entry is new.
    async fn check(&self, conn: &mut MultiplexedConnection) -> RedisResult<Option<Appended>> {
        let (cursors, _) = self.keys;
        let () = redis::cmd("WATCH").arg(cursors).query_async(conn).await?;
        let saved: Option<String> = redis::cmd("HGET")
            .arg(cursors)
            .arg(self.client)
            .query_async(conn)
            .await?;
        let cursor = match saved {
            None => StreamId::ZERO,
            Some(s) => s.parse().map_err(|_| {
                RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "saved cursor",
                    s.clone(),
                ))
            })?,
        };
        let settled = if self.prev.is_some_and(|p| p > cursor) {
            Some(Appended::Gap { cursor })
        } else if self.seq <= cursor {
            Some(Appended::Applied {
                cursor,
                added: 0,
                duplicates: 1,
                last: None,
                set_aside: None,
            })
        } else {
            None
        };
        if settled.is_some() {
            let () = redis::cmd("UNWATCH").query_async(conn).await?;
        }
        Ok(settled)
    }

    /// The transaction that appends the entry (`xadd`) and moves the
    /// cursor, built once for every try.
    fn transaction(&self, xadd: redis::Cmd) -> redis::Pipeline {
        let (cursors, _) = self.keys;
        let mut tx = redis::pipe();
        tx.atomic()
            .add_command(xadd)
            .cmd("HSET")
            .arg(cursors)
            .arg(self.client)
            .arg(self.seq.to_string())
            .ignore();
        tx
    }

    /// Runs the [`Guard::transaction`] after a [`Guard::check`] on the same
    /// connection: `None` when a watched cursor moved since, and nothing
    /// was written.
    async fn commit(
        &self,
        conn: &mut MultiplexedConnection,
        tx: &redis::Pipeline,
    ) -> RedisResult<Option<Appended>> {
        let done: Option<(String,)> = tx.query_async(conn).await?;
        let Some((hub_id,)) = done else {
            return Ok(None);
        };
        let last = hub_id.parse().map_err(|_| {
            RedisError::from((redis::ErrorKind::UnexpectedReturnType, "xadd id", hub_id))
        })?;
        Ok(Some(Appended::Applied {
            cursor: self.seq,
            added: 1,
            duplicates: 0,
            last: Some(last),
            set_aside: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lula_testkit::RedisServer;

    #[tokio::test]
    async fn a_cursor_moved_between_check_and_commit_writes_nothing() {
        let redis = RedisServer::start();
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut other = client.get_multiplexed_async_connection().await.unwrap();
        let keys = ("cursors".to_owned(), "in".to_owned());
        let guard = Guard {
            keys: &keys,
            client: "dev-1",
            prev: Some(StreamId::ZERO),
            seq: StreamId::new(5, 0),
        };
        let mut xadd = redis::cmd("XADD");
        xadd.arg("in").arg("*").arg("k").arg("v");
        assert_eq!(guard.check(&mut conn).await.unwrap(), None);
        // Another hub appends the same entry meanwhile.
        let () = redis::cmd("HSET")
            .arg("cursors")
            .arg("dev-1")
            .arg("5-0")
            .query_async(&mut other)
            .await
            .unwrap();
        let tx = guard.transaction(xadd.clone());
        assert_eq!(guard.commit(&mut conn, &tx).await.unwrap(), None);
        let len: u64 = redis::cmd("XLEN")
            .arg("in")
            .query_async(&mut other)
            .await
            .unwrap();
        assert_eq!(len, 0, "nothing written");
        // Checked again: a duplicate.
        let again = guard.check(&mut conn).await.unwrap();
        assert!(
            matches!(
                again,
                Some(Appended::Applied {
                    added: 0,
                    duplicates: 1,
                    ..
                })
            ),
            "{again:?}"
        );
        // A new seq goes through, cursor and entry together.
        let next = Guard {
            seq: StreamId::new(6, 0),
            prev: Some(StreamId::new(5, 0)),
            ..guard
        };
        assert_eq!(next.check(&mut conn).await.unwrap(), None);
        let done = next
            .commit(&mut conn, &next.transaction(xadd))
            .await
            .unwrap();
        assert!(
            matches!(done, Some(Appended::Applied { added: 1, .. })),
            "{done:?}"
        );
        let cursor: String = redis::cmd("HGET")
            .arg("cursors")
            .arg("dev-1")
            .query_async(&mut other)
            .await
            .unwrap();
        assert_eq!(cursor, "6-0");
        // A gap: prev ahead of the cursor.
        let gap = Guard {
            seq: StreamId::new(9, 0),
            prev: Some(StreamId::new(8, 0)),
            ..next
        };
        assert!(matches!(
            gap.check(&mut conn).await.unwrap(),
            Some(Appended::Gap { .. })
        ));
    }
}
