//! Credentials in HTTP requests: the one reading of `Authorization: Bearer`
//! that hub and auth share, and comparing secrets in constant time.

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

/// The token of an `Authorization: Bearer <token>` header, surrounding
/// whitespace trimmed. The scheme is matched case-insensitively (RFC 6750
/// §2.1, RFC 9110 §11.1). `None` when there is no such header, it names
/// another scheme, or the token is empty.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether two secrets are equal, in time that does not depend on where they
/// differ (so a guess cannot be refined byte by byte). Lengths may differ.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_trimmed() {
        for value in [
            "Bearer abc",
            "bearer abc",
            "BEARER  abc ",
            "BeArEr\u{20}abc",
        ] {
            assert_eq!(bearer_token(&headers(value)), Some("abc"), "{value:?}");
        }
        for value in ["Basic abc", "Bearer", "Bearer   ", "Bearerabc", "abc"] {
            assert_eq!(bearer_token(&headers(value)), None, "{value:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(secrets_equal(b"secret", b"secret"));
        assert!(!secrets_equal(b"secret", b"secreT"));
        assert!(!secrets_equal(b"secret", b"secret2"));
        assert!(!secrets_equal(b"", b"x"));
    }
}
