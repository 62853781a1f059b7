//! One live connection per device: a new connection takes the device's next
//! connection generation and announces it to every replica
//! ([`crate::live::Live::connected`] closes the older ones with 4002).

use lula_protocol::ClientId;

use crate::AppState;

/// KEYS[1] the device's connection counter; ARGV[1] the announcement channel,
/// ARGV[2] the client. Takes the next generation and announces it, in one trip.
static TAKE_OVER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local g = redis.call('INCR', KEYS[1]) \
         redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. g) \
         return g",
    )
});

/// Makes the new connection of `client` its only one: takes the device's next
/// connection generation from Redis and announces it, so every replica closes
/// the device's older connections (see [`crate::live`]). Returns the generation, 0
/// when several connections per device are allowed.
pub(crate) async fn take_over(state: &AppState, client: &ClientId) -> redis::RedisResult<u64> {
    if !state.config.one_connection_per_device {
        return Ok(0);
    }
    let generation: u64 = TAKE_OVER
        .key(state.keys.connection_generation(client))
        .arg(state.keys.connected_channel())
        .arg(client.as_str())
        .invoke_async(&mut state.redis.clone())
        .await?;
    Ok(generation)
}
