//! Session tokens: their claims, key ids and (feature `jwt`) verification.
//!
//! lula-auth signs tokens with an Ed25519 key (JWT `alg: EdDSA`) and names the key
//! in the `kid` header. It publishes each verification key in Redis at
//! [`crate::keys::AuthKeys::verify_key`]`(kid)` as [`encode_public_key`] text, so
//! hubs (and other auth replicas) verify without ever holding a signing key, and a
//! restarted or rotated auth keeps earlier tokens verifiable until they expire.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};

use crate::ClientId;

/// `iss` of every lula session token.
pub const ISSUER: &str = "lula-auth";
/// `aud` of every lula session token.
pub const AUDIENCE: &str = "lula-hub";
/// Length of a key id.
pub const KID_LEN: usize = 16;

/// Claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The device the session belongs to.
    pub sub: ClientId,
    /// Session id; `lula-auth:session:<sid>` exists while the session is valid.
    pub sid: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
    /// Always [`ISSUER`].
    pub iss: String,
    /// Always [`AUDIENCE`].
    pub aud: String,
}

/// The key id of an Ed25519 public key: the first [`KID_LEN`] characters of its
/// base64url encoding. Public keys are uniformly random, so this identifies them.
pub fn kid_for(public_key: &[u8; 32]) -> String {
    encode_public_key(public_key)[..KID_LEN].to_owned()
}

/// A raw Ed25519 public key as stored in Redis: base64url without padding.
pub fn encode_public_key(public_key: &[u8; 32]) -> String {
    B64URL.encode(public_key)
}

/// Parses [`encode_public_key`] text.
pub fn decode_public_key(text: &str) -> Result<[u8; 32], TokenError> {
    let bytes = B64URL.decode(text.trim()).map_err(|_| TokenError::BadKey)?;
    bytes.try_into().map_err(|_| TokenError::BadKey)
}

/// Why a token was refused. Every variant means HTTP 401 to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or its header is unreadable.
    #[error("token is malformed")]
    Malformed,
    /// The header names another algorithm than EdDSA (`none` included).
    #[error("token algorithm is not EdDSA")]
    WrongAlgorithm,
    /// The header has no usable `kid`.
    #[error("token has no key id")]
    MissingKid,
    /// No published key has this `kid`.
    #[error("token key is unknown")]
    UnknownKey,
    /// A published key is not a valid Ed25519 key.
    #[error("verification key is malformed")]
    BadKey,
    /// Past `exp`.
    #[error("token has expired")]
    Expired,
    /// Bad signature, wrong issuer or audience, missing or mistyped claims.
    #[error("token is invalid")]
    Invalid,
    /// The session was revoked or has ended.
    #[error("session has ended")]
    Revoked,
}

#[cfg(feature = "jwt")]
mod verify {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

    use super::*;

    /// The `kid` a token names, after checking it claims EdDSA. The caller looks
    /// the key up, then calls [`verify`].
    pub fn kid_of(token: &str) -> Result<String, TokenError> {
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::WrongAlgorithm);
        }
        match header.kid {
            Some(kid)
                if kid.len() == KID_LEN
                    && kid
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Ok(kid)
            }
            _ => Err(TokenError::MissingKid),
        }
    }

    /// Verifies signature, algorithm, issuer, audience and expiry (no leeway) and
    /// returns the claims. Does not check the session still exists in Redis.
    pub fn verify(token: &str, public_key: &[u8; 32]) -> Result<Claims, TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        verify_at(token, public_key, now)
    }

    /// [`verify`] with "now" given (epoch seconds), so a service whose clock
    /// tests drive judges expiry by that clock. A token is valid up to and
    /// including its `exp` second, as jsonwebtoken judges it.
    pub fn verify_at(token: &str, public_key: &[u8; 32], now: u64) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        // Checked below against `now` instead of jsonwebtoken's system clock.
        validation.validate_exp = false;
        validation.leeway = 0;
        let key = DecodingKey::from_ed_der(public_key);
        let claims = decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|_| TokenError::Invalid)?;
        if claims.exp < now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(feature = "jwt")]
pub use verify::{kid_of, verify, verify_at};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_round_trip_and_kids_are_prefixes() {
        let pk = [7u8; 32];
        let text = encode_public_key(&pk);
        assert_eq!(decode_public_key(&text).unwrap(), pk);
        assert!(text.starts_with(&kid_for(&pk)));
        assert_eq!(kid_for(&pk).len(), KID_LEN);
        assert_eq!(decode_public_key("short"), Err(TokenError::BadKey));
    }
}

#[cfg(all(test, feature = "jwt"))]
mod verify_tests {
    use base64::Engine as _;
    use ed25519_dalek::SigningKey;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn key(seed: u8) -> (SigningKey, [u8; 32]) {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let pk = sk.verifying_key().to_bytes();
        (sk, pk)
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "dev-1".parse().unwrap(),
            sid: "s1".into(),
            iat: now(),
            exp,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        }
    }

    fn sign(sk: &SigningKey, kid: &str, claims: &Claims) -> String {
        let der = sk.to_pkcs8_der().unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_and_names_its_kid() {
        let (sk, pk) = key(1);
        let token = sign(&sk, &kid_for(&pk), &claims(now() + 60));
        assert_eq!(kid_of(&token).unwrap(), kid_for(&pk));
        assert_eq!(verify(&token, &pk).unwrap().sub.as_str(), "dev-1");
    }

    #[test]
    fn expiry_is_judged_by_the_now_given() {
        let (sk, pk) = key(1);
        let token = sign(&sk, &kid_for(&pk), &claims(1_000));
        assert_eq!(verify_at(&token, &pk, 1_000).unwrap().exp, 1_000);
        assert_eq!(verify_at(&token, &pk, 1_001), Err(TokenError::Expired));
        assert_eq!(verify(&token, &pk), Err(TokenError::Expired));
    }

    #[test]
    fn forged_tampered_and_expired_tokens_are_refused() {
        let (sk, pk) = key(1);
        let (foreign, _) = key(2);
        let kid = kid_for(&pk);
        assert_eq!(
            verify(&sign(&foreign, &kid, &claims(now() + 60)), &pk),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            verify(&sign(&sk, &kid, &claims(now() - 1)), &pk),
            Err(TokenError::Expired)
        );

        // Change the subject and keep the old signature.
        let token = sign(&sk, &kid, &claims(now() + 60));
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims(now() + 60);
        c.sub = "dev-2".parse().unwrap();
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&c).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], body, parts[2]);
        assert_eq!(verify(&tampered, &pk), Err(TokenError::Invalid));

        // alg: none, no signature.
        let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#));
        let unsigned = format!("{none_header}.{body}.");
        assert!(kid_of(&unsigned).is_err());
        assert!(verify(&unsigned, &pk).is_err());

        assert_eq!(kid_of("garbage"), Err(TokenError::Malformed));
    }
}
