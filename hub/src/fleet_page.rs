//! The fleet page: one self-contained HTML file (`fleet_page.html`, compiled
//! into the binary) at `GET /fleet/` on the admin listener, which shows
//! `GET /fleet` as a table an operator can filter, sort and leave open (it
//! refreshes itself), on a desk or a phone.
//!
//! Both are behind the admin token. A browser cannot add an `Authorization:
//! Bearer` header to a page it navigates to, so the token is also accepted as
//! the password of HTTP Basic authentication (any user name): the browser
//! asks once and sends it with the page's own requests to `/fleet`. Tools
//! keep using `Bearer`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use lula_runtime::bearer::{bearer_token, secrets_equal};

use crate::{AppState, HubError};

/// The page.
const PAGE: &str = include_str!("fleet_page.html");

/// What the browser may do with the page: run its own inline script and
/// style, fetch from this origin, nothing else; never inside a frame.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Whether `headers` carry the admin token, as `Bearer <token>` or as the
/// password of `Basic`. `NotFound` when the hub has no admin token (nothing
/// admin-only exists then), `NotAdmin` otherwise.
pub fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), HubError> {
    let Some(admin) = &state.config.admin_token else {
        return Err(HubError::NotFound);
    };
    let given = presented_token(headers).unwrap_or_default();
    if secrets_equal(given.as_bytes(), admin.expose().as_bytes()) {
        Ok(())
    } else {
        Err(HubError::NotAdmin)
    }
}

/// The token in `Authorization`: `Bearer <token>` (read as everywhere else,
/// [`bearer_token`]), or the password of `Basic base64(<user>:<token>)`.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = bearer_token(headers) {
        return Some(token.to_owned());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    decoded
        .split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// `GET /fleet/`: the page, or 401 with a Basic challenge (so a browser asks
/// for the token), or 404 without an admin token.
pub async fn page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match authorize(&state, &headers) {
        Ok(()) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::CACHE_CONTROL, "no-store"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            PAGE,
        )
            .into_response(),
        Err(HubError::NotAdmin) => {
            let mut refused = HubError::NotAdmin.into_response();
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="lula fleet (password: the hub's admin token)", charset="UTF-8""#),
            );
            *refused.status_mut() = StatusCode::UNAUTHORIZED;
            refused
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Authorization: <value>`.
    fn authorization(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_token_comes_as_bearer_or_as_the_basic_password() {
        let token = |value: &str| presented_token(&authorization(value));
        assert_eq!(token("Bearer abc").as_deref(), Some("abc"));
        // base64("admin:s3cret:x") — a password may hold colons.
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:s3cret:x");
        assert_eq!(
            token(&format!("Basic {basic}")).as_deref(),
            Some("s3cret:x")
        );
        assert_eq!(token("Basic !!!"), None);
        assert_eq!(token("Token abc"), None);
        assert_eq!(presented_token(&HeaderMap::new()), None);
    }
}
