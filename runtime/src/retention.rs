//! Trimming a stream that consumer groups read, without removing anything a
//! group has not acknowledged.
//!
//! lula writes two streams that other programs consume: the cloud's
//! `lula-hub:in:x` (and its partitions), read by cloud services with
//! `XREADGROUP`, and the device's `lula-client:in:x`, read by programs on the
//! device. Both are theirs to trim, and both grow without bound until someone
//! does. [`trim_consumed`] is the safe way: in one Lua step it looks at every
//! consumer group of the stream and removes only entries that every group has
//! been given and has acknowledged. A stream with no group is never trimmed
//! (nobody says what has been consumed), and a group created or rewound in the
//! same moment cannot lose entries, since the script runs atomically.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};

/// KEYS[1]: the stream. Returns `{floor, trimmed}`: `floor` is the id below
/// which every entry is acknowledged by every group (`false` when the stream
/// does not exist or has no group), `trimmed` how many entries `XTRIM MINID
/// floor` removed.
///
/// For each group, the entries it has acknowledged are those it was given
/// (at or below its `last-delivered-id`) and that are not pending: everything
/// below its oldest pending entry when it has one (that entry stays), and up
/// to and including `last-delivered-id` when it has none. `XTRIM MINID` keeps
/// the id it is given, so for a group with nothing pending the floor is its
/// `last-delivered-id` itself: one acknowledged entry stays, which is cheaper
/// than computing the next id in Lua, whose numbers are doubles and cannot
/// hold a 64-bit sequence. Ids are compared as decimal strings (Redis prints
/// them without leading zeros): the longer number is the larger.
static TRIM_CONSUMED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function num_lt(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function id_lt(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if ams ~= bms then return num_lt(ams, bms) end
  return num_lt(aseq, bseq)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {false, 0} end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' is not a stream')
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return {false, 0} end
local floor = nil
for _, g in ipairs(groups) do
  local name, pending, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1]
    elseif g[i] == 'pending' then pending = g[i + 1]
    elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local bound = last
  if pending > 0 then
    bound = redis.call('XPENDING', KEYS[1], name)[2]
  end
  if floor == nil or id_lt(bound, floor) then floor = bound end
end
if floor == '0-0' then return {floor, 0} end
return {floor, redis.call('XTRIM', KEYS[1], 'MINID', floor)}
"#,
    )
});

/// What [`trim_consumed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    /// Every entry below this id was acknowledged by every group; `None` when
    /// the stream is missing or has no consumer group (nothing was trimmed).
    pub floor: Option<String>,
    /// Entries removed.
    pub entries: u64,
}

/// Removes from `stream` the entries every consumer group has acknowledged
/// (see the module docs); never trims a stream that has no group.
pub async fn trim_consumed<C: ConnectionLike>(conn: &mut C, stream: &str) -> RedisResult<Trimmed> {
    let (floor, entries): (Option<String>, u64) =
        TRIM_CONSUMED.key(stream).invoke_async(conn).await?;
    Ok(Trimmed { floor, entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lula_testkit::RedisServer;
    use redis::AsyncCommands;

    async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn add(c: &mut redis::aio::MultiplexedConnection, key: &str, ids: &[&str]) {
        for id in ids {
            let _: String = c.xadd(key, *id, &[("f", "v")]).await.unwrap();
        }
    }

    async fn ids(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
        let r: redis::streams::StreamRangeReply = c.xrange_all(key).await.unwrap();
        r.ids.into_iter().map(|e| e.id).collect()
    }

    async fn read(
        c: &mut redis::aio::MultiplexedConnection,
        key: &str,
        group: &str,
        n: usize,
    ) -> Vec<String> {
        let opts = redis::streams::StreamReadOptions::default()
            .group(group, "c1")
            .count(n);
        let r: redis::streams::StreamReadReply =
            c.xread_options(&[key], &[">"], &opts).await.unwrap();
        r.keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|e| e.id)
            .collect()
    }

    #[tokio::test]
    async fn a_stream_without_groups_or_missing_is_never_trimmed() {
        let server = RedisServer::start();
        let mut c = conn(&server).await;
        let t = trim_consumed(&mut c, "s").await.unwrap();
        assert_eq!(
            t,
            Trimmed {
                floor: None,
                entries: 0
            }
        );
        add(&mut c, "s", &["1-1", "2-1", "3-1"]).await;
        let t = trim_consumed(&mut c, "s").await.unwrap();
        assert_eq!(
            t,
            Trimmed {
                floor: None,
                entries: 0
            }
        );
        assert_eq!(ids(&mut c, "s").await.len(), 3);
    }

    #[tokio::test]
    async fn only_entries_every_group_acknowledged_are_removed() {
        let server = RedisServer::start();
        let mut c = conn(&server).await;
        add(&mut c, "s", &["1-1", "2-1", "3-1", "4-1", "5-1", "6-1"]).await;
        let _: () = c.xgroup_create("s", "fast", "0").await.unwrap();
        let _: () = c.xgroup_create("s", "slow", "0").await.unwrap();
        // fast: read and acked 5 entries.
        let got = read(&mut c, "s", "fast", 5).await;
        let _: u64 = c.xack("s", "fast", &got).await.unwrap();
        // slow: read 4, acked the first and the third; 2-1 and 4-1 pending.
        let got = read(&mut c, "s", "slow", 4).await;
        let _: u64 = c.xack("s", "slow", &[&got[0], &got[2]]).await.unwrap();
        let t = trim_consumed(&mut c, "s").await.unwrap();
        assert_eq!(t.floor.as_deref(), Some("2-1"));
        assert_eq!(t.entries, 1);
        assert_eq!(ids(&mut c, "s").await, ["2-1", "3-1", "4-1", "5-1", "6-1"]);
        // slow acks the rest it had: its floor moves to its last delivered, 4-1.
        let _: u64 = c.xack("s", "slow", &["2-1", "4-1"]).await.unwrap();
        let t = trim_consumed(&mut c, "s").await.unwrap();
        assert_eq!(t.floor.as_deref(), Some("4-1"));
        assert_eq!(ids(&mut c, "s").await, ["4-1", "5-1", "6-1"]);
        // A new group that starts at the beginning holds everything left.
        let _: () = c.xgroup_create("s", "late", "0").await.unwrap();
        let t = trim_consumed(&mut c, "s").await.unwrap();
        assert_eq!(
            t,
            Trimmed {
                floor: Some("0-0".into()),
                entries: 0
            }
        );
        assert_eq!(ids(&mut c, "s").await.len(), 3);
    }

    #[tokio::test]
    async fn ids_compare_as_numbers_at_the_ends_of_the_id_space() {
        let server = RedisServer::start();
        let mut c = conn(&server).await;
        let max = "18446744073709551615";
        let big = format!("{max}-5");
        add(
            &mut c,
            "s",
            &["9-9", "10-0", "99-18446744073709551614", &big],
        )
        .await;
        let _: () = c.xgroup_create("s", "a", "0").await.unwrap();
        let _: () = c.xgroup_create("s", "b", "0").await.unwrap();
        // a has everything acked; b was given and acked up to 99-..., so its
        // floor (99-...) is numerically below a's ({max}-5) though longer
        // strings would sort the other way as text.
        let got = read(&mut c, "s", "a", 10).await;
        let _: u64 = c.xack("s", "a", &got).await.unwrap();
        let got = read(&mut c, "s", "b", 3).await;
        let _: u64 = c.xack("s", "b", &got).await.unwrap();
        let t = trim_consumed(&mut c, "s").await.unwrap();
        assert_eq!(t.floor.as_deref(), Some("99-18446744073709551614"));
        assert_eq!(
            ids(&mut c, "s").await,
            ["99-18446744073709551614", big.as_str()]
        );
        // "10-0" against "9-9": 10 is the larger though "1" < "9" as text.
        add(&mut c, "t", &["9-9", "10-0", "11-0"]).await;
        let _: () = c.xgroup_create("t", "a", "10-0").await.unwrap();
        let _: () = c.xgroup_create("t", "b", "11-0").await.unwrap();
        let t = trim_consumed(&mut c, "t").await.unwrap();
        assert_eq!(t.floor.as_deref(), Some("10-0"));
        assert_eq!(ids(&mut c, "t").await, ["10-0", "11-0"]);
    }

    #[tokio::test]
    async fn a_key_of_another_type_is_an_error_and_untouched() {
        let server = RedisServer::start();
        let mut c = conn(&server).await;
        let _: () = c.set("s", "x").await.unwrap();
        let e = trim_consumed(&mut c, "s").await.unwrap_err();
        assert!(e.to_string().contains("not a stream"), "{e}");
        let v: String = c.get("s").await.unwrap();
        assert_eq!(v, "x");
    }
}
