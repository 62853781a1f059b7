//! Calls to lula-auth: one-time registration and login.

use std::path::Path;
use std::time::{Duration, SystemTime};

use lula_protocol::{ClientId, Redacted};
use serde::Deserialize;
use serde_json::json;

/// Timeout of one call to lula-auth.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a call to lula-auth failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthCallError {
    /// lula-auth answered with an error status.
    #[error("lula-auth answered {status} {code}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The `code` of the JSON error body.
        code: String,
        /// The `message` of the JSON error body.
        message: String,
        /// `Retry-After`, on 429.
        retry_after: Option<Duration>,
    },
    /// lula-auth could not be reached.
    #[error("cannot reach lula-auth: {0}")]
    Network(String),
    /// lula-auth answered 200 with a body we cannot read.
    #[error("unexpected answer from lula-auth: {0}")]
    Protocol(String),
    /// The provisioned OTP secret is not valid base32.
    #[error("the OTP secret is not valid base32")]
    OtpSecret,
    /// The trusted roots could not be loaded (an unreadable `--ca-file`).
    #[error("TLS setup: {0}")]
    Tls(#[from] lula_runtime::tls::TlsError),
}

impl AuthCallError {
    /// The HTTP status, when lula-auth answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            AuthCallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The bearer token for lula-hub.
    pub token: Redacted<String>,
    /// When the token stops being accepted.
    pub expires_at: SystemTime,
    /// The token's lifetime as lula-auth granted it.
    pub ttl: Duration,
}

impl Session {
    /// Whether the token is past, or within `margin` of, its expiry. The margin
    /// is capped at a quarter of the token's lifetime, so short-lived tokens are
    /// still used rather than renewed forever.
    pub fn expires_within(&self, margin: Duration) -> bool {
        SystemTime::now() + margin.min(self.ttl / 4) >= self.expires_at
    }
}

/// The current TOTP code (RFC 6238: SHA-1, 6 digits, 30 s) for a base32 secret.
pub fn current_otp(otp_secret: &str) -> Result<String, AuthCallError> {
    let secret = totp_rs::Secret::try_from_base32(otp_secret.trim())
        .map_err(|_| AuthCallError::OtpSecret)?;
    // Non-compliant build: accept provisioned secrets shorter than 128 bits too;
    // lula-auth decides what it accepts.
    let totp = totp_rs::Builder::new()
        .with_secret(secret)
        .build_noncompliant();
    Ok(totp.generate_current().to_string())
}

/// Client of lula-auth's HTTP API.
#[derive(Debug, Clone)]
pub struct AuthClient {
    http: reqwest::Client,
    base: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginBody {
    access_token: String,
    ttl_seconds: u64,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl AuthClient {
    /// A client of the lula-auth at `base` (e.g. `http://localhost:3001`),
    /// trusting the system roots for `https://`.
    pub fn new(base: &str) -> Result<Self, AuthCallError> {
        Self::with_ca_file(base, None)
    }

    /// A client of the lula-auth at `base`, trusting the system roots and the
    /// CA certificates in the PEM file `ca_file` for `https://`.
    pub fn with_ca_file(base: &str, ca_file: Option<&Path>) -> Result<Self, AuthCallError> {
        let tls = lula_runtime::tls::client_config(ca_file)?;
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| AuthCallError::Network(error_chain(&e)))?;
        Ok(AuthClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<reqwest::Response, AuthCallError> {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| AuthCallError::Network(error_chain(&e)))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body: ErrorBody = res.json().await.unwrap_or_default();
        Err(AuthCallError::Status {
            status,
            code: body.code,
            message: body.message,
            retry_after,
        })
    }

    /// Registers `client` with its `secret`, proven by the current OTP of `otp_secret`.
    pub async fn register(
        &self,
        client: &ClientId,
        otp_secret: &str,
        secret: &str,
    ) -> Result<(), AuthCallError> {
        let otp = current_otp(otp_secret)?;
        self.post(
            "/register",
            json!({ "client": client, "otp": otp, "secret": secret }),
        )
        .await?;
        Ok(())
    }

    /// Logs in and returns a session.
    pub async fn login(&self, client: &ClientId, secret: &str) -> Result<Session, AuthCallError> {
        let started = SystemTime::now();
        let res = self
            .post("/login", json!({ "client": client, "secret": secret }))
            .await?;
        session_from(res, started).await
    }

    /// A fresh session for a live one, without the secret (no bcrypt at
    /// lula-auth): what the daemon uses to renew its token while connected.
    pub async fn renew(&self, current: &Session) -> Result<Session, AuthCallError> {
        let started = SystemTime::now();
        let res = self
            .post("/renew", json!({ "sessionToken": current.token.expose() }))
            .await?;
        session_from(res, started).await
    }
}

/// The session of a successful `/login` or `/renew` answer.
async fn session_from(
    res: reqwest::Response,
    started: SystemTime,
) -> Result<Session, AuthCallError> {
    let body: LoginBody = res
        .json()
        .await
        .map_err(|e| AuthCallError::Protocol(e.to_string()))?;
    Ok(Session {
        token: Redacted::new(body.access_token),
        // Measured from before the request, so clock differences with
        // lula-auth cannot make us think the token lives longer than it does.
        expires_at: started + Duration::from_secs(body.ttl_seconds),
        ttl: Duration::from_secs(body.ttl_seconds),
    })
}

/// `e` and its causes: reqwest's own message ("error sending request for
/// url ...") hides why, e.g. an untrusted certificate.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otp_is_six_digits_and_bad_secrets_are_refused() {
        let otp = current_otp("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP").unwrap();
        assert_eq!(otp.len(), 6);
        assert!(otp.bytes().all(|b| b.is_ascii_digit()));
        assert!(matches!(
            current_otp("not base32 !"),
            Err(AuthCallError::OtpSecret)
        ));
    }

    #[test]
    fn otp_matches_rfc6238_test_vector() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", T = 59 s -> 94287082 (8 digits);
        // the 6-digit code is its last six digits.
        let secret = totp_rs::Secret::from(b"12345678901234567890".to_vec());
        let totp = totp_rs::Builder::new()
            .with_secret(secret)
            .build_noncompliant();
        assert_eq!(totp.generate(59).to_string(), "287082");
    }
}
