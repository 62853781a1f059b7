//! How many entries wait after a cursor: the backlog a push reports to the
//! device and the fleet view shows, counted inside Redis.

use lula_protocol::StreamId;
use lula_protocol::limits::BACKLOG_COUNT_CAP;
use lula_runtime::redis::RedisConn;

/// KEYS[1] a stream; ARGV[1] an id, ARGV[2] a cap. Counts the entries after
/// the id, up to the cap, inside Redis: only the number crosses the network.
static COUNT_AFTER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(&format!(
        "{}local from, to = range_after(ARGV[1])\n\
         return #redis.call('XRANGE', KEYS[1], from, to, 'COUNT', ARGV[2])",
        lula_protocol::lua::RANGE_AFTER
    ))
});

/// Entries of `key` after `after`, counted up to [`BACKLOG_COUNT_CAP`].
pub async fn count_after(
    redis: &mut RedisConn,
    key: &str,
    after: StreamId,
) -> Result<u64, redis::RedisError> {
    COUNT_AFTER
        .key(key)
        .arg(after.to_string())
        .arg(BACKLOG_COUNT_CAP)
        .invoke_async(redis)
        .await
}
