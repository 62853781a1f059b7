//! Request bodies as JSON or form-urlencoded (what the Node lula-client sends),
//! with every failure an [`AuthError`] so it answers JSON, never axum's plain text.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::AppState;
use crate::error::AuthError;

/// A body decoded by its `Content-Type`: `application/json` (or `+json`) or
/// `application/x-www-form-urlencoded`. Without a content type, a body starting
/// with `{` is read as JSON and anything else as a form.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for Body<T> {
    type Rejection = AuthError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, AuthError> {
        let headers = req.headers().clone();
        let bytes = read(req, state).await?;
        decode(&headers, &bytes).map(Body)
    }
}

/// The whole body as bytes, within the same time a client has for its request
/// head (`serve.header_read_timeout`): the accept loop's timeout ends with the
/// head, and a client that announces a body and never sends it would
/// otherwise hold its connection, and a connection slot, for ever.
pub struct RawBody(pub Bytes);

impl FromRequest<Arc<AppState>> for RawBody {
    type Rejection = AuthError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, AuthError> {
        read(req, state).await.map(RawBody)
    }
}

async fn read(req: Request, state: &Arc<AppState>) -> Result<Bytes, AuthError> {
    let limit = state.config.serve.header_read_timeout;
    match tokio::time::timeout(limit, Bytes::from_request(req, state)).await {
        Ok(bytes) => bytes.map_err(read_error),
        Err(_) => Err(AuthError::RequestTimeout),
    }
}

/// Why a body could not be read, as an [`AuthError`] (a 413 when too large).
/// For handlers that take the raw [`Bytes`], whose own rejection is plain text.
pub fn read_error(e: BytesRejection) -> AuthError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AuthError::PayloadTooLarge
    } else {
        AuthError::BadRequest(format!("cannot read body: {}", e.body_text()))
    }
}

/// Decodes `bytes` as the `Content-Type` in `headers` says.
pub fn decode<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, AuthError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = match mime.as_str() {
        "application/json" => true,
        m if m.starts_with("application/") && m.ends_with("+json") => true,
        "application/x-www-form-urlencoded" => false,
        "" => bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        _ => return Err(AuthError::UnsupportedMediaType),
    };
    if json {
        // serde's derived `Deserialize` also reads a struct from a JSON array,
        // by position; request bodies are objects only.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(AuthError::BadRequest(
                "invalid JSON body: expected an object".into(),
            ));
        }
        serde_json::from_slice(bytes)
            .map_err(|e| AuthError::BadRequest(format!("invalid JSON body: {e}")))
    } else {
        serde_urlencoded::from_bytes(bytes)
            .map_err(|e| AuthError::BadRequest(format!("invalid form body: {e}")))
    }
}

/// An OTP code, sent as a string or (by some clients) a JSON number. A number
/// cannot carry the leading zeros of a code such as `012345` (it arrives as
/// `12345`), so it gets them back; a string is taken as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtpCode(pub String);

impl<'de> Deserialize<'de> for OtpCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(u64),
        }
        Ok(OtpCode(match Either::deserialize(d)? {
            Either::Text(s) => s,
            Either::Number(n) => format!("{n:0width$}", width = usize::from(crate::otp::DIGITS)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Req {
        client: String,
        otp: OtpCode,
    }

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if !ct.is_empty() {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        }
        h
    }

    #[test]
    fn json_and_form_bodies_decode_alike() {
        let want = Req {
            client: "d".into(),
            otp: OtpCode("123456".into()),
        };
        let j: Req = decode(
            &headers("application/json; charset=utf-8"),
            br#"{"client":"d","otp":123456}"#,
        )
        .unwrap();
        let f: Req = decode(
            &headers("application/x-www-form-urlencoded"),
            b"client=d&otp=123456",
        )
        .unwrap();
        let bare: Req = decode(&headers(""), b" {\"client\":\"d\",\"otp\":\"123456\"}").unwrap();
        assert_eq!((j, f), (want, bare));
    }

    #[test]
    fn other_types_and_bad_bodies_are_client_errors() {
        assert!(matches!(
            decode::<Req>(&headers("text/plain"), b"x"),
            Err(AuthError::UnsupportedMediaType)
        ));
        for (ct, body) in [
            ("application/json", &b"{"[..]),
            ("application/json", br#"{"client":"d"}"#),
            ("application/json", br#"{"client":1,"otp":"1"}"#),
            ("application/x-www-form-urlencoded", b"client=d"),
        ] {
            assert!(
                matches!(
                    decode::<Req>(&headers(ct), body),
                    Err(AuthError::BadRequest(_))
                ),
                "{body:?}"
            );
        }
    }
}
