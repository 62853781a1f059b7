//! [`AuthError`]: every way a lula-auth request or command can fail, and the
//! HTTP answer each one gets. 4xx answers carry a safe message; a 500 is opaque
//! to the caller and its cause is logged.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use lula_protocol::token::TokenError;
use serde_json::json;

/// Why a request to lula-auth (or a `provision`) failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed request: unparseable body, missing or invalid fields.
    #[error("{0}")]
    BadRequest(String),
    /// The body is neither JSON nor form-urlencoded.
    #[error("send application/json or application/x-www-form-urlencoded")]
    UnsupportedMediaType,
    /// The body did not arrive in time.
    #[error("request body not received in time")]
    RequestTimeout,
    /// The body is larger than the limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// No such client has been provisioned.
    #[error("client is not provisioned")]
    NotProvisioned,
    /// The registration deadline has passed (or none was set).
    #[error("registration deadline has passed; re-provision the client")]
    DeadlinePassed,
    /// The OTP does not match the provisioned secret at this time.
    #[error("wrong OTP")]
    WrongOtp,
    /// The client registered already; registration is one-shot.
    #[error("client is already registered")]
    AlreadyRegistered,
    /// Login for a client that has not registered.
    #[error("client is not registered")]
    NotRegistered,
    /// Login with the wrong secret.
    #[error("wrong secret")]
    WrongSecret,
    /// A missing, invalid, expired or revoked session token.
    #[error("{0}")]
    Unauthorized(#[from] TokenError),
    /// No session token was given.
    #[error("missing session token")]
    MissingToken,
    /// No such route.
    #[error("not found")]
    NotFound,
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Too many failed attempts for this client or from this address.
    #[error("too many failed attempts; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until attempts are counted afresh.
        retry_after_secs: u64,
    },
    /// Every password-hashing slot stayed busy: too many logins at once.
    #[error("too many logins at once; retry shortly")]
    Busy,
    /// The service is stopping (`/readyz` while draining).
    #[error("draining: this instance is shutting down")]
    Draining,
    /// Redis could not be reached or failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Anything else; the detail is logged, never sent.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

impl AuthError {
    /// HTTP status and the stable machine-readable `code` of the JSON body.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AuthError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AuthError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            AuthError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            AuthError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AuthError::NotProvisioned => (StatusCode::FORBIDDEN, "not_provisioned"),
            AuthError::DeadlinePassed => (StatusCode::FORBIDDEN, "deadline_passed"),
            AuthError::WrongOtp => (StatusCode::FORBIDDEN, "wrong_otp"),
            AuthError::AlreadyRegistered => (StatusCode::CONFLICT, "already_registered"),
            AuthError::NotRegistered => (StatusCode::FORBIDDEN, "not_registered"),
            AuthError::WrongSecret => (StatusCode::UNAUTHORIZED, "wrong_secret"),
            AuthError::Unauthorized(_) | AuthError::MissingToken => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            AuthError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            AuthError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AuthError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AuthError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            AuthError::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            AuthError::Redis(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AuthError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            AuthError::Redis(e) => {
                tracing::warn!(error = %e, "redis unavailable");
                "redis unavailable, retry later".to_owned()
            }
            AuthError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let retry_after = match &self {
            AuthError::RateLimited { retry_after_secs } => Some((*retry_after_secs).max(1)),
            AuthError::Busy => Some(1),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(5),
            _ => None,
        };
        let mut response =
            (status, Json(json!({ "code": code, "message": message }))).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}
