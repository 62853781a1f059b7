//! The hub's HTTP-level error: what a request gets before (or instead of) a
//! WebSocket upgrade. Errors inside a live connection are protocol replies
//! (`lula_protocol::message::ErrorReply`), not this type.

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lula_protocol::token::TokenError;
use serde_json::json;

/// Why an HTTP request to the hub was refused.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No token in `Authorization: Bearer`, `?sessionToken=` or `?accessToken=`.
    #[error("missing session token")]
    MissingToken,
    /// The token is invalid, expired, or its session was revoked.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Authenticated, but the request is not a WebSocket upgrade.
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(#[from] WebSocketUpgradeRejection),
    /// No such route (also `/fleet` when no admin token is configured).
    #[error("not found")]
    NotFound,
    /// `/fleet` without the admin token.
    #[error("admin token required")]
    NotAdmin,
    /// The hub is stopping (`/readyz` while draining).
    #[error("draining: this hub is shutting down")]
    Draining,
    /// A bad query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The hub cannot append (another ingest layout is recorded, or Redis
    /// failed): the ingest error, in words.
    #[error("ingest: {0}")]
    Ingest(String),
}

impl From<crate::session::AuthError> for HubError {
    fn from(e: crate::session::AuthError) -> Self {
        match e {
            crate::session::AuthError::Token(e) => HubError::Token(e),
            crate::session::AuthError::Redis(e) => HubError::Redis(e),
        }
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            HubError::MissingToken | HubError::Token(_) => {
                (StatusCode::UNAUTHORIZED, "unauthorized", self.to_string())
            }
            HubError::NotUpgrade(r) => (r.status(), "not_websocket", self.to_string()),
            HubError::NotFound => (StatusCode::NOT_FOUND, "not_found", self.to_string()),
            HubError::NotAdmin => (StatusCode::UNAUTHORIZED, "unauthorized", self.to_string()),
            HubError::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                self.to_string(),
            ),
            HubError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", self.to_string()),
            HubError::Redis(e) => {
                tracing::warn!(error = %e, "redis unavailable during upgrade");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "redis unavailable".to_owned(),
                )
            }
            HubError::Ingest(e) => {
                tracing::warn!(error = %e, "not ready to ingest");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "not ready to ingest".to_owned(),
                )
            }
        };
        (status, Json(json!({ "code": code, "message": message }))).into_response()
    }
}
