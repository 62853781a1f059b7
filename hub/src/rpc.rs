//! The cloud side of request/response (conventions in `lula_protocol::rpc`):
//! [`call`] asks one device and waits for its answer; `lula-hub call` is the
//! same from the command line.
//!
//! The request goes down the device's out stream like any message; the device
//! (with `lula_client::rpc::serve`, or any consumer of its `in:x` that answers
//! by appending `req <id> ...` to its `out:x`) answers, and the answer comes up
//! through the in stream the device's entries land in. An offline device
//! yields [`CallError::Timeout`], never a hang; the request carries
//! `expiresAt` = its deadline, so the hub never delivers it after the caller
//! stopped waiting.

use std::time::Duration;

use lula_protocol::keys::AuthKeys;
use lula_protocol::redis_value::{entries_from_range, entries_from_read};
use lula_protocol::rpc;
use lula_protocol::{ClientId, Entry, FIELD_CLIENT, StreamId};
use redis::aio::ConnectionLike;
use redis::{RedisError, Value};

/// Longest single blocking read while waiting.
const BLOCK: Duration = Duration::from_secs(5);

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The device did not answer in time (offline, busy, or no handler).
    #[error("{client} did not answer within {timeout:?}")]
    Timeout {
        /// The device.
        client: ClientId,
        /// How long the call waited.
        timeout: Duration,
    },
    /// lula-auth has no record of the device: it was never provisioned (or was
    /// revoked), so a request would wait for it forever. Nothing was sent.
    #[error(
        "{client} is not provisioned in lula-auth (`lula-auth provision {client}`); nothing was sent"
    )]
    NotProvisioned {
        /// The device.
        client: ClientId,
    },
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// Redis answered something that is not a stream reply.
    #[error("unexpected reply: {0}")]
    Reply(String),
}

/// Fails with [`CallError::NotProvisioned`] unless lula-auth has a record of
/// `client` (`auth_keys` on `conn`, lula-auth's Redis): a request for a device
/// that does not exist would sit in its out stream until someone provisions
/// that id, and then arrive stale.
pub async fn ensure_provisioned<C: ConnectionLike>(
    conn: &mut C,
    auth_keys: &AuthKeys,
    client: &ClientId,
) -> Result<(), CallError> {
    let exists: bool = redis::cmd("EXISTS")
        .arg(auth_keys.client(client))
        .query_async(conn)
        .await?;
    if exists {
        Ok(())
    } else {
        Err(CallError::NotProvisioned {
            client: client.clone(),
        })
    }
}

/// Asks `client` to run `method` with `args`: appends the request to its out
/// stream `out_stream` and waits up to `timeout` for the answer in `in_stream`
/// (the in stream the device's entries land in). `conn` must be a connection
/// nothing else uses while this waits: it carries blocking reads.
pub async fn call<C: ConnectionLike>(
    conn: &mut C,
    out_stream: &str,
    in_stream: &str,
    client: &ClientId,
    method: &str,
    args: &[(Vec<u8>, Vec<u8>)],
    timeout: Duration,
) -> Result<Entry, CallError> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Taken before the request exists, so its answer is after it.
    let last: Value = redis::cmd("XREVRANGE")
        .arg(in_stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let mut after = entries_from_range(last)
        .map_err(|e| CallError::Reply(e.to_string()))?
        .first()
        .map(|e| e.id)
        .unwrap_or(StreamId::ZERO);
    let mut add = redis::cmd("XADD");
    add.arg(out_stream).arg("*");
    for f in rpc::request_fields(method, args) {
        add.arg(f);
    }
    // Never delivered after the caller stopped waiting: a device that comes
    // back later does not run a stale request.
    let expires_at = lula_runtime::now_ms() + timeout.as_millis() as u64;
    add.arg(lula_protocol::FIELD_EXPIRES_AT).arg(expires_at);
    let id: String = add.query_async(conn).await?;
    let id: StreamId = id.parse().map_err(|e| CallError::Reply(format!("{e}")))?;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(CallError::Timeout {
                client: client.clone(),
                timeout,
            });
        }
        let v: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(left.min(BLOCK).as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(in_stream)
            .arg(after.to_string())
            .query_async(conn)
            .await?;
        let entries = entries_from_read(v).map_err(|e| CallError::Reply(e.to_string()))?;
        if let Some(last) = entries.last() {
            after = last.id;
        }
        let answer = entries.into_iter().find(|e| {
            rpc::answers(e) == Some(id)
                && rpc::field(e, FIELD_CLIENT) == Some(client.as_str().as_bytes())
        });
        if let Some(answer) = answer {
            return Ok(answer);
        }
    }
}
