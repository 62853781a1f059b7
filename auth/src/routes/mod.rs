//! HTTP handlers, one module per endpoint.

pub mod health;
pub mod login;
pub mod logout;
pub mod register;
pub mod renew;

use axum::http::HeaderMap;
use lula_protocol::ClientId;
use serde::Deserialize;

use crate::body::decode;
use crate::error::AuthError;

/// Shortest device secret accepted by default (`--min-secret-len`).
/// lula-client sends 43 characters (256 bits).
pub const MIN_SECRET_LEN: usize = 16;
/// The lowest `--min-secret-len` lula-auth starts with: room for the short
/// secrets of Node lula fleets (`lula-secret`, 11 bytes), with a warning at
/// start below [`MIN_SECRET_LEN`]; anything shorter is refused as a setting.
pub const MIN_SECRET_FLOOR: usize = 8;
/// Longest device secret accepted: bcrypt reads no more than 72 bytes, so a
/// longer secret would be silently cut, and two secrets sharing a 72-byte
/// prefix would both log in.
pub const MAX_SECRET_LEN: usize = 72;

/// Parses a client id from a request, as a 400 when it is not one.
fn client_id(raw: &str) -> Result<ClientId, AuthError> {
    raw.parse()
        .map_err(|e| AuthError::BadRequest(format!("client: {e}")))
}

/// Checks a device secret's length against `min` (`--min-secret-len`) and
/// [`MAX_SECRET_LEN`], as a 400 whose message names both limits and the
/// length received, so a device's log says what to change.
fn check_secret(secret: &str, min: usize) -> Result<(), AuthError> {
    let len = secret.len();
    if (min..=MAX_SECRET_LEN).contains(&len) {
        Ok(())
    } else {
        Err(AuthError::BadRequest(format!(
            "secret must be {min} to {MAX_SECRET_LEN} bytes, got {len} (this lula-auth's --min-secret-len is {min})"
        )))
    }
}

/// The session token of a request: `Authorization: Bearer`, else the body's
/// `sessionToken`, `accessToken` or `token`.
fn session_token(headers: &HeaderMap, body: &[u8]) -> Result<String, AuthError> {
    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TokenBody {
        session_token: Option<String>,
        access_token: Option<String>,
        token: Option<String>,
    }
    match lula_runtime::bearer::bearer_token(headers).map(str::to_owned) {
        Some(t) => Ok(t),
        None if body.iter().all(u8::is_ascii_whitespace) => Err(AuthError::MissingToken),
        None => {
            let req: TokenBody = decode(headers, body)?;
            req.session_token
                .or(req.access_token)
                .or(req.token)
                .ok_or(AuthError::MissingToken)
        }
    }
}
