//! Taking over a device from the Node lula-client, by itself, at start.
//!
//! The Node lula-client keeps its state in the device Redis, in the hash
//! `lula-client:client:h` ([`node_state_key`]):
//! - `client`: the client id;
//! - `otpSecret`: the provisioned TOTP secret;
//! - `registered`: set (epoch ms) once lula-auth accepted its registration;
//! - `id`: its downstream cursor, the last hub id it stored in `in:x`.
//!
//! Its secret is not in Redis: it came from the `LULA_SECRET` environment
//! variable, which lula-client reads too ([`crate::Config::node_secret`]).
//! Its `in:x` and `out:x` are ours already (`lula-client:in:x`,
//! `lula-client:out:x`).
//!
//! What we take over, when our own identity file does not exist yet:
//! - the identity: the client id (it must match `--client-id`, or stands in
//!   for it when none is given), and whether it registered. A registered
//!   device keeps its secret (`LULA_SECRET`); one that never registered gets
//!   a fresh secret of ours and registers as a new device would.
//! - the downstream cursor: `id` becomes our `downstream` cursor, so nothing
//!   the Node client already stored is delivered again.
//!
//! Upstream needs nothing: the hub owns that cursor (it answers `id` with the
//! last device seq it holds, as the Node hub did), so entries the Node client
//! left unsynced in `out:x` are sent once, by us.
//!
//! When both exist, ours wins: our identity file (and our `downstream`
//! cursor) were written by lula-client, so they are at least as recent as the
//! Node state it took over or ignored; the Node state is logged and ignored.
//!
//! The Node keys are only read, never written or deleted, so rolling a device
//! back to the Node client (docs/MIGRATING.md) finds them as it left them
//! (its cursor then lags by what we stored; see the rollback section there).
//!
//! The order makes a crash at any point safe: the cursor is written first
//! (`HSETNX`, so a cursor of ours is never moved back), the identity file
//! last; a daemon killed in between finds no identity file and takes over
//! again, and the second `HSETNX` changes nothing.

use std::time::Duration;

use anyhow::{Context as _, bail};
use lula_protocol::keys::DeviceKeys;
use lula_protocol::{Redacted, StreamId};
use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::device::DOWNSTREAM_FIELD;
use crate::identity::{IDENTITY_FILE, Identity};

/// Fields of the Node lula-client's state hash.
pub mod node_fields {
    /// The client id.
    pub const CLIENT: &str = "client";
    /// The provisioned base32 TOTP secret.
    pub const OTP_SECRET: &str = "otpSecret";
    /// Epoch ms of its successful registration; absent before.
    pub const REGISTERED: &str = "registered";
    /// Its downstream cursor: the last hub id it stored in `in:x`.
    pub const ID: &str = "id";
}

/// Pause between attempts to read the device Redis at start.
const REDIS_RETRY: Duration = Duration::from_secs(1);

/// `lula-client:client:h`: the Node lula-client's state hash under `keys`'
/// prefix (the Node client's `redis.keyPrefix` `lula-client:` + `client:h`).
pub fn node_state_key(keys: &DeviceKeys) -> String {
    format!("{}:client:h", keys.prefix())
}

/// The Node lula-client's state as it left it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    /// `client`.
    pub client: Option<String>,
    /// `otpSecret`.
    pub otp_secret: Option<String>,
    /// `registered` (any non-empty value counts).
    pub registered: bool,
    /// `id`, parsed; `None` when absent.
    pub cursor: Option<StreamId>,
}

/// Reads the Node state hash; `None` when it does not exist. An `id` that is
/// not a stream id is an error: guessing would redeliver or skip messages.
pub async fn read_node_state<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &DeviceKeys,
) -> anyhow::Result<Option<NodeState>> {
    let key = node_state_key(keys);
    let map: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(conn)
        .await
        .with_context(|| format!("read {key}"))?;
    if map.is_empty() {
        return Ok(None);
    }
    let nonempty = |f: &str| map.get(f).filter(|v| !v.is_empty()).cloned();
    let cursor = match nonempty(node_fields::ID) {
        None => None,
        Some(id) => Some(id.parse::<StreamId>().map_err(|e| {
            anyhow::anyhow!("{key} field id {id:?} is not a stream id ({e}); fix or delete it")
        })?),
    };
    Ok(Some(NodeState {
        client: nonempty(node_fields::CLIENT),
        otp_secret: nonempty(node_fields::OTP_SECRET),
        registered: nonempty(node_fields::REGISTERED).is_some(),
        cursor,
    }))
}

/// The Node state, for a `lula-client run` started without `--client-id` /
/// `--otp-secret` on a Node device (they default to its `client` and
/// `otpSecret`). Waits for the device Redis like the daemon does; `None`
/// when there is no Node state.
pub async fn node_defaults(
    redis_url: &str,
    keys: &DeviceKeys,
) -> anyhow::Result<Option<NodeState>> {
    let mut conn = connect(redis_url, &CancellationToken::new()).await?;
    read_node_state(&mut conn, keys).await
}

/// Loads our identity, taking over the Node lula-client's state first when
/// ours does not exist and the Node client's does (see the module docs).
/// Without either, a fresh identity is created, as always.
pub async fn load_identity(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Identity> {
    let keys = DeviceKeys::new(config.prefix.clone());
    let ours = config.state_dir.join(IDENTITY_FILE);
    if Identity::load(&ours)
        .context("load identity from --state-dir")?
        .is_some()
    {
        note_ignored_node_state(config, &keys).await;
        return Identity::load_or_create(&config.state_dir, &config.client_id)
            .context("load identity from --state-dir");
    }
    let mut conn = connect(&config.redis_url, shutdown).await?;
    match read_node_state(&mut conn, &keys).await? {
        None => Identity::load_or_create(&config.state_dir, &config.client_id)
            .context("create identity in --state-dir"),
        Some(node) => take_over(config, &keys, &mut conn, node).await,
    }
}

async fn take_over(
    config: &Config,
    keys: &DeviceKeys,
    conn: &mut redis::aio::MultiplexedConnection,
    node: NodeState,
) -> anyhow::Result<Identity> {
    let key = node_state_key(keys);
    if let Some(theirs) = &node.client
        && theirs != config.client_id.as_str()
    {
        bail!(
            "{key} belongs to client {theirs}, not --client-id {}; start with --client-id {theirs} to take the device over, or delete {key} if it is stale",
            config.client_id
        );
    }
    let secret = if node.registered {
        match &config.node_secret {
            Some(s) => s.clone(),
            None => bail!(
                "the Node lula-client registered {} with its LULA_SECRET; give the same LULA_SECRET to lula-client to keep it, or re-provision the device (lula-auth provision --force)",
                config.client_id
            ),
        }
    } else {
        // Never registered: a strong secret of ours, as for a new device.
        fresh_secret()
    };
    let cursor = node.cursor.unwrap_or(StreamId::ZERO);
    let ours_kept = if cursor > StreamId::ZERO {
        let set: bool = conn
            .hset_nx(keys.state(), DOWNSTREAM_FIELD, cursor.to_string())
            .await
            .with_context(|| format!("set the downstream cursor in {}", keys.state()))?;
        !set
    } else {
        false
    };
    if ours_kept {
        tracing::info!(
            node_cursor = %cursor,
            "a downstream cursor of ours already exists; ours wins, the Node cursor is ignored"
        );
    }
    if node.otp_secret.as_deref().is_some_and(|s| {
        config
            .otp_secret
            .as_ref()
            .is_some_and(|ours| s != ours.expose().as_str())
    }) && !node.registered
    {
        tracing::warn!(
            "the Node state's otpSecret differs from --otp-secret; registering with --otp-secret"
        );
    }
    let identity = Identity::create(
        &config.state_dir,
        &config.client_id,
        secret,
        node.registered,
    )
    .context("write identity to --state-dir")?;
    tracing::info!(
        client = %config.client_id,
        registered = node.registered,
        downstream_cursor = %cursor,
        node_state = %key,
        kept_secret = node.registered,
        "took over the Node lula-client's state (its keys are left as they were)"
    );
    Ok(identity)
}

/// With our identity in place, says so if a Node state exists too (best
/// effort: the daemon must start even while the device Redis is down).
async fn note_ignored_node_state(config: &Config, keys: &DeviceKeys) {
    let read = async {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        read_node_state(&mut conn, keys).await
    };
    if let Ok(Ok(Some(node))) = tokio::time::timeout(Duration::from_secs(2), read).await {
        tracing::info!(
            node_state = %node_state_key(keys),
            node_client = node.client.as_deref().unwrap_or(""),
            node_cursor = %node.cursor.unwrap_or(StreamId::ZERO),
            "both our identity and the Node lula-client's state exist; ours wins, the Node state is ignored"
        );
    }
}

fn fresh_secret() -> Redacted<String> {
    use base64::Engine as _;
    Redacted::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()),
    )
}

/// A connection to the device Redis, retried until it answers or shutdown:
/// without it we cannot know whether a Node state is there to take over.
async fn connect(
    url: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).context("parse --redis-url")?;
    let mut warned = false;
    loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => return Ok(c),
            Err(e) if !warned => {
                tracing::warn!(error = %e, "waiting for the device Redis (to check for a Node lula-client's state)");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => bail!("stopped while waiting for the device Redis"),
            _ = tokio::time::sleep(REDIS_RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_state_key_follows_the_prefix() {
        assert_eq!(
            node_state_key(&DeviceKeys::default()),
            "lula-client:client:h"
        );
        assert_eq!(node_state_key(&DeviceKeys::new("t1")), "t1:client:h");
    }
}
