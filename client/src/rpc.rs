//! Request/response on the device (conventions in `lula_protocol::rpc`).
//!
//! - [`request`]: the device asks the cloud: appends `rpc <method> ...` to
//!   `out:x` and waits, up to a timeout, for the entry in `in:x` whose `req` is
//!   the request's id.
//! - [`serve`]: the device answers the cloud: reads the requests arriving in
//!   `in:x`, calls a handler, and appends `req <id> ...` to `out:x`. The answer
//!   and the handler's cursor are written in one script, so each request is
//!   answered exactly once, across restarts.
//!
//! Both use a Redis connection of their own for their blocking reads.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use lula_protocol::keys::DeviceKeys;
use lula_protocol::redis_value::entries_from_read;
use lula_protocol::rpc::{self, FIELD_REQ};
use lula_protocol::{Entry, StreamId};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Script, Value};
use tokio_util::sync::CancellationToken;

/// Field of the state hash holding the last `in:x` id [`serve`] handled.
pub const RPC_CURSOR_FIELD: &str = "rpcCursor";
/// Longest single blocking read.
const BLOCK: Duration = Duration::from_secs(5);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Nothing answered in time. The request stays delivered; a late answer
    /// lands in `in:x` like any entry.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The device Redis failed.
    #[error("device redis: {0}")]
    Redis(#[from] RedisError),
}

/// A connection for blocking reads, with a reply timeout longer than the block.
pub async fn connect(redis_url: &str) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(10)));
    redis::Client::open(redis_url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn last_id(conn: &mut MultiplexedConnection, key: &str) -> Result<StreamId, RedisError> {
    let v: Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(lula_protocol::redis_value::entries_from_range(v)
        .map_err(bad)?
        .first()
        .map(|e| e.id)
        .unwrap_or(StreamId::ZERO))
}

fn bad(e: impl std::fmt::Display) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "bad stream reply",
        e.to_string(),
    ))
}

async fn read_after(
    conn: &mut MultiplexedConnection,
    key: &str,
    after: StreamId,
    block: Duration,
) -> Result<Vec<Entry>, RedisError> {
    let v: Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(1000)
        .arg("BLOCK")
        .arg(block.as_millis().max(1) as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(after.to_string())
        .query_async(conn)
        .await?;
    entries_from_read(v).map_err(bad)
}

/// Asks the cloud: appends a request for `method` with `args` to `out:x` and
/// returns the response (the `in:x` entry answering it) within `timeout`.
pub async fn request(
    conn: &mut MultiplexedConnection,
    keys: &DeviceKeys,
    method: &str,
    args: &[(Vec<u8>, Vec<u8>)],
    timeout: Duration,
) -> Result<Entry, RpcError> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Where to look from, taken before the request exists, so even an
    // immediate answer is after it.
    let mut after = last_id(conn, &keys.in_stream()).await?;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(keys.out_stream()).arg("*");
    for f in rpc::request_fields(method, args) {
        cmd.arg(f);
    }
    let id: String = cmd.query_async(conn).await?;
    let id: StreamId = id.parse().map_err(bad)?;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(RpcError::Timeout(timeout));
        }
        let entries = read_after(conn, &keys.in_stream(), after, left.min(BLOCK)).await?;
        if let Some(last) = entries.last() {
            after = last.id;
        }
        if let Some(response) = entries.into_iter().find(|e| rpc::answers(e) == Some(id)) {
            return Ok(response);
        }
    }
}

/// KEYS[1] out stream, KEYS[2] state hash. ARGV[1] the request's `in:x` id,
/// then the response's field/value pairs. Appends `req <id> ...` and moves the
/// handler's cursor in one step, unless the cursor is already there.
const ANSWER_BODY: &str = r#"
local cur = redis.call('HGET', KEYS[2], 'rpcCursor') or '0-0'
if not id_gt(ARGV[1], cur) then return 0 end
local args = {'XADD', KEYS[1], '*', 'req', ARGV[1]}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
redis.call(unpack(args))
redis.call('HSET', KEYS[2], 'rpcCursor', ARGV[1])
return 1
"#;

static ANSWER: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{}{}", lula_protocol::lua::ID_GT, ANSWER_BODY)));

/// Answers the cloud's requests arriving in `in:x` with `handler` (method and
/// arguments in, response fields out), each exactly once, until `shutdown`.
/// The first run starts at the end of `in:x`: requests older than the
/// handler are not answered.
pub async fn serve<H, F>(
    redis_url: &str,
    keys: &DeviceKeys,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), RpcError>
where
    H: Fn(String, Vec<(Vec<u8>, Vec<u8>)>) -> F,
    F: Future<Output = Vec<(Vec<u8>, Vec<u8>)>>,
{
    let mut conn = connect(redis_url).await?;
    let saved: Option<String> = redis::cmd("HGET")
        .arg(keys.state())
        .arg(RPC_CURSOR_FIELD)
        .query_async(&mut conn)
        .await?;
    let mut cursor = match saved.and_then(|s| s.parse().ok()) {
        Some(c) => c,
        None => {
            let end = last_id(&mut conn, &keys.in_stream()).await?;
            let _: () = redis::cmd("HSET")
                .arg(keys.state())
                .arg(RPC_CURSOR_FIELD)
                .arg(end.to_string())
                .query_async(&mut conn)
                .await?;
            end
        }
    };
    let in_stream = keys.in_stream();
    loop {
        let entries = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = read_after(&mut conn, &in_stream, cursor, BLOCK) => r?,
        };
        for entry in entries {
            cursor = entry.id;
            let Some(method) = rpc::method(&entry) else {
                continue;
            };
            // The request's id is its hub id, the `seq` the device stored it with.
            let Some(request) = rpc::field(&entry, lula_protocol::FIELD_SEQ)
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<StreamId>().ok())
            else {
                continue;
            };
            let fields = handler(method.to_owned(), rpc::payload(&entry)).await;
            let mut invocation = ANSWER.key(keys.out_stream());
            invocation.key(keys.state()).arg(request.to_string());
            for (k, v) in fields {
                if k == FIELD_REQ.as_bytes() {
                    continue;
                }
                invocation.arg(k).arg(v);
            }
            let _: i64 = invocation.invoke_async(&mut conn).await?;
        }
    }
}
