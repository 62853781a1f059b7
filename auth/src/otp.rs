//! Provisioned TOTP secrets (RFC 6238: HMAC-SHA-1, 6 digits, 30 s steps), the
//! codes that prove a registration, and `otpauth://` URIs for operators.

use lula_protocol::ClientId;
use totp_rs::{Builder, Secret, Totp};

/// Random bytes in a generated OTP secret: 160 bits, RFC 4226's recommendation.
pub const OTP_SECRET_BYTES: usize = 20;
/// Digits of a code.
pub const DIGITS: u8 = 6;
/// Seconds per code.
pub const STEP_SECS: u64 = 30;
/// Steps of clock difference tolerated either way (a device clock off by up to
/// about 30 s, or a code typed at the end of its window, still registers).
pub const SKEW_STEPS: u16 = 1;

/// The secret is not base32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OTP secret is not base32")]
pub struct BadOtpSecret;

/// A new random OTP secret, base32 without padding (32 characters).
pub fn generate_secret() -> String {
    Secret::from(rand::random::<[u8; OTP_SECRET_BYTES]>().to_vec()).to_base32()
}

/// Normalizes what an operator may have typed: case, spaces and padding.
fn normalize(secret: &str) -> String {
    secret
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn totp(secret_b32: &str) -> Result<Totp, BadOtpSecret> {
    let secret = Secret::try_from_base32(normalize(secret_b32)).map_err(|_| BadOtpSecret)?;
    if secret.as_bytes().is_empty() {
        return Err(BadOtpSecret);
    }
    // Non-compliant build: operators may provision secrets shorter than the
    // 128 bits totp-rs insists on (the Node lula project generated such).
    Ok(Builder::new()
        .with_secret(secret)
        .with_digits(DIGITS)
        .with_skew(SKEW_STEPS)
        .with_step_duration(STEP_SECS)
        .build_noncompliant())
}

/// Whether `code` is valid for `secret_b32` at `now_secs`, within the skew.
pub fn check(secret_b32: &str, code: &str, now_secs: u64) -> Result<bool, BadOtpSecret> {
    Ok(totp(secret_b32)?.check(code, now_secs).is_some())
}

/// The code for `secret_b32` at `time_secs`.
pub fn code_at(secret_b32: &str, time_secs: u64) -> Result<String, BadOtpSecret> {
    Ok(totp(secret_b32)?.generate(time_secs).to_string())
}

/// An `otpauth://` URI for the secret, for authenticator apps and QR codes.
pub fn otpauth_uri(client: &ClientId, secret_b32: &str) -> String {
    // Client ids are limited to A-Z a-z 0-9 . _ -, all URI-safe.
    format!(
        "otpauth://totp/lula:{client}?secret={}&issuer=lula&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        normalize(secret_b32)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_hold_160_bits() {
        let s = generate_secret();
        assert_eq!(s.len(), 32);
        assert_eq!(
            Secret::try_from_base32(&s).unwrap().as_bytes().len(),
            OTP_SECRET_BYTES
        );
        assert_ne!(s, generate_secret());
    }

    #[test]
    fn codes_check_within_one_step_either_way_only() {
        let s = generate_secret();
        let t = 1_700_000_000;
        let code = code_at(&s, t).unwrap();
        assert!(check(&s, &code, t).unwrap());
        assert!(check(&s, &code, t + STEP_SECS).unwrap());
        assert!(check(&s, &code, t - STEP_SECS).unwrap());
        // Skew is one step: two steps (60 s) either way is refused.
        assert!(!check(&s, &code, t + 2 * STEP_SECS).unwrap());
        assert!(!check(&s, &code, t - 2 * STEP_SECS).unwrap());
        assert!(!check(&s, &code, t + 3 * STEP_SECS).unwrap());
        assert!(!check(&s, "abcdef", t).unwrap());
        assert!(!check(&s, "", t).unwrap());
    }

    #[test]
    fn rfc6238_vector_and_lenient_secret_spelling() {
        // RFC 6238 appendix B: ASCII "12345678901234567890", T = 59 -> 94287082.
        let b32 = Secret::from(b"12345678901234567890".to_vec()).to_base32();
        assert_eq!(code_at(&b32, 59).unwrap(), "287082");
        let spaced = b32
            .to_lowercase()
            .chars()
            .collect::<Vec<_>>()
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(code_at(&spaced, 59).unwrap(), "287082");
        assert_eq!(code_at("not base32!", 59), Err(BadOtpSecret));
        assert_eq!(code_at("", 59), Err(BadOtpSecret));
    }

    #[test]
    fn otpauth_uris_name_the_client_and_secret() {
        let c: ClientId = "dev-1".parse().unwrap();
        assert_eq!(
            otpauth_uri(&c, "abcd efgh"),
            "otpauth://totp/lula:dev-1?secret=ABCDEFGH&issuer=lula&algorithm=SHA1&digits=6&period=30"
        );
    }
}
