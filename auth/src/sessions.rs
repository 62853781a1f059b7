//! Session records: what makes a signed token revocable.
//!
//! Each login stores `lula-auth:session:<sid>` = client id, expiring with the
//! token, and adds the sid to the device's index
//! `lula-auth:client:<client>:sessions:z` (scored by expiry). The hub accepts a
//! token only while its session record exists and names the token's subject,
//! so deleting the record revokes the token at once, on every hub.
//!
//! Revocations are announced on `lula-auth:revoked` (pub/sub), which every
//! hub replica listens to, so live sockets close at once, not at expiry.
//!
//! The index is written before the record, so a failure between the two leaves
//! at worst an index entry without a session, never a session nobody can revoke.
//! The commands are pipelined, not one transaction, because record and index
//! hash to different Redis Cluster slots.

use std::time::Duration;

use lula_protocol::ClientId;
use lula_protocol::keys::AuthKeys;
use lula_protocol::token::{self, Claims, TokenError};
use redis::aio::ConnectionLike;

use crate::error::AuthError;
use crate::signing::Signer;

/// Records a new session of `client`, ending at `exp` (epoch seconds), `ttl`
/// from now.
pub async fn create<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    client: &ClientId,
    sid: &str,
    now_secs: u64,
    ttl: Duration,
) -> Result<(), AuthError> {
    let ttl_secs = ttl.as_secs().max(1);
    let index = keys.client_sessions(client);
    redis::pipe()
        .cmd("ZADD")
        .arg(&index)
        .arg(now_secs + ttl_secs)
        .arg(sid)
        .ignore()
        // Forget sessions that ended by themselves.
        .cmd("ZREMRANGEBYSCORE")
        .arg(&index)
        .arg("-inf")
        .arg(format!("({now_secs}"))
        .ignore()
        // The newest session ends last (every session lives `ttl`), so the index
        // may go when it does. (Not `EXPIRE GT`: that needs Redis 7.)
        .cmd("EXPIRE")
        .arg(&index)
        .arg(ttl_secs)
        .ignore()
        .cmd("SET")
        .arg(keys.session(sid))
        .arg(client.as_str())
        .arg("EX")
        .arg(ttl_secs)
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Revokes one session. Revoking a session that already ended is not an error.
pub async fn revoke<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    client: &ClientId,
    sid: &str,
) -> Result<(), AuthError> {
    redis::pipe()
        .cmd("DEL")
        .arg(keys.session(sid))
        .ignore()
        .cmd("ZREM")
        .arg(keys.client_sessions(client))
        .arg(sid)
        .ignore()
        // Every hub closes this session's sockets at once.
        .cmd("PUBLISH")
        .arg(keys.revocations())
        .arg(format!("{client} {sid}"))
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Revokes every session of `client`; returns how many were live.
pub async fn revoke_all<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    client: &ClientId,
) -> Result<u64, AuthError> {
    let index = keys.client_sessions(client);
    let sids: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let mut revoked = 0;
    for chunk in sids.chunks(500) {
        let mut pipe = redis::pipe();
        for sid in chunk {
            pipe.cmd("DEL").arg(keys.session(sid));
        }
        let deleted: Vec<u64> = pipe.query_async(conn).await?;
        revoked += deleted.iter().sum::<u64>();
    }
    redis::pipe()
        .cmd("DEL")
        .arg(&index)
        .ignore()
        // Every hub closes the device's sockets at once.
        .cmd("PUBLISH")
        .arg(keys.revocations())
        .arg(client.as_str())
        .ignore()
        .query_async::<()>(conn)
        .await?;
    Ok(revoked)
}

/// Cuts a device off: ends every session (hubs close its sockets) and forgets
/// its registered secret, so it cannot log in again until an operator
/// provisions it anew. Returns how many sessions were live.
pub async fn revoke_device<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    client: &ClientId,
) -> Result<u64, AuthError> {
    // The secret first, the listing after: a login or renewal racing this
    // creates its session before it reads the secret again
    // (`routes::login::issue`), so either the listing below sees that session
    // or that read sees the secret gone and ends the session itself.
    redis::cmd("HDEL")
        .arg(keys.client(client))
        .arg(lula_protocol::keys::fields::SECRET)
        .arg(lula_protocol::keys::fields::REG_DEADLINE)
        .query_async::<()>(conn)
        .await?;
    revoke_all(conn, keys, client).await
}

/// Verifies a session token the way hubs do: signature against the key its
/// `kid` names (this instance's own, or one another instance published), claims,
/// and a live session record naming its subject.
pub async fn verify<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    signer: &Signer,
    token_text: &str,
) -> Result<Claims, AuthError> {
    let kid = token::kid_of(token_text)?;
    let public = if kid == signer.kid() {
        signer.public_key()
    } else {
        let text: Option<String> = redis::cmd("GET")
            .arg(keys.verify_key(&kid))
            .query_async(conn)
            .await?;
        token::decode_public_key(&text.ok_or(TokenError::UnknownKey)?)?
    };
    let claims = token::verify(token_text, &public)?;
    let owner: Option<String> = redis::cmd("GET")
        .arg(keys.session(&claims.sid))
        .query_async(conn)
        .await?;
    if owner.as_deref() != Some(claims.sub.as_str()) {
        return Err(TokenError::Revoked.into());
    }
    Ok(claims)
}
