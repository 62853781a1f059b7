//! Provisioning: the operator's step that lets one device register.
//!
//! It writes `lula-auth:client:<client>:h` with a fresh `otpSecret` and a
//! `regDeadline`, exactly what an operator could write with `redis-cli HSET`.
//! The device proves it holds the secret with a current TOTP code when it
//! registers, before the deadline, once.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lula_protocol::ClientId;
use lula_protocol::keys::{AuthKeys, fields};
use redis::Script;
use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::error::AuthError;
use crate::{otp, sessions};

/// KEYS[1] client hash. ARGV[1] otpSecret, ARGV[2] regDeadline, ARGV[3] '1' to
/// force. Refuses (0) to touch a registered client unless forced; otherwise
/// drops any registered secret and sets the new OTP secret and deadline (1).
const PROVISION: &str = r#"
if ARGV[3] ~= '1' and redis.call('HEXISTS', KEYS[1], 'secret') == 1 then
  return 0
end
redis.call('HDEL', KEYS[1], 'secret')
redis.call('HSET', KEYS[1], 'otpSecret', ARGV[1], 'regDeadline', ARGV[2])
return 1
"#;

static PROVISION_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PROVISION));

/// What provisioning produced: everything the device (or its installer) needs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Provisioned {
    /// The device.
    pub client: ClientId,
    /// Base32 TOTP secret, to be given to the device (`lula-client --otp-secret`).
    pub otp_secret: String,
    /// Registration deadline, epoch milliseconds.
    pub reg_deadline: u64,
    /// The secret as an `otpauth://` URI.
    pub otpauth_uri: String,
    /// Sessions revoked because the client was re-provisioned with `force`.
    pub revoked_sessions: u64,
}

/// Provisions `client` to register within `valid_for`. A client that already
/// registered is refused ([`AuthError::AlreadyRegistered`]) unless `force`,
/// which also forgets its secret and revokes its sessions, so the device (or
/// its replacement) must register again.
pub async fn provision<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    client: &ClientId,
    valid_for: Duration,
    force: bool,
) -> Result<Provisioned, AuthError> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let reg_deadline = now_ms.saturating_add(valid_for.as_millis() as u64);
    let otp_secret = otp::generate_secret();
    let applied: i64 = PROVISION_SCRIPT
        .key(keys.client(client))
        .arg(&otp_secret)
        .arg(reg_deadline)
        .arg(if force { "1" } else { "0" })
        .invoke_async(conn)
        .await?;
    if applied != 1 {
        return Err(AuthError::AlreadyRegistered);
    }
    let revoked_sessions = if force {
        sessions::revoke_all(conn, keys, client).await?
    } else {
        0
    };
    Ok(Provisioned {
        otpauth_uri: otp::otpauth_uri(client, &otp_secret),
        client: client.clone(),
        otp_secret,
        reg_deadline,
        revoked_sessions,
    })
}

/// The client hash as lula-auth reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRecord {
    /// Base32 TOTP secret, present once provisioned.
    pub otp_secret: Option<String>,
    /// Registration deadline, epoch ms; removed by registration.
    pub reg_deadline: Option<u64>,
    /// bcrypt hash of the device's secret, present once registered.
    pub secret_hash: Option<String>,
}

/// Reads `lula-auth:client:<client>:h`.
pub async fn record<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    client: &ClientId,
) -> Result<ClientRecord, AuthError> {
    let (otp_secret, deadline, secret_hash): (Option<String>, Option<String>, Option<String>) =
        redis::cmd("HMGET")
            .arg(keys.client(client))
            .arg(fields::OTP_SECRET)
            .arg(fields::REG_DEADLINE)
            .arg(fields::SECRET)
            .query_async(conn)
            .await?;
    Ok(ClientRecord {
        otp_secret: otp_secret.filter(|s| !s.is_empty()),
        // A deadline that is not a number counts as no deadline: closed.
        reg_deadline: deadline.and_then(|d| d.trim().parse().ok()),
        secret_hash: secret_hash.filter(|s| !s.is_empty()),
    })
}
