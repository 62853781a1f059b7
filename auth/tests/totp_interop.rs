//! lula's TOTP codes are the ones standard tools and authenticator apps
//! compute (RFC 6238: HMAC-SHA-1, 6 digits, 30 s steps), checked against
//! `oathtool`, an independent implementation (scripts/test.sh installs it).

use std::process::Command;

use lula_auth::otp;

fn oathtool(secret_b32: &str, epoch_secs: u64) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "--base32", "--digits=6", "--time-step-size=30s"])
        .arg(format!("--now=@{epoch_secs}"))
        .arg(secret_b32)
        .output()
        .expect("oathtool is needed for this test: `apt-get install oathtool` (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "oathtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn codes_match_oathtool_for_generated_secrets_at_many_times() {
    for _ in 0..5 {
        let secret = otp::generate_secret();
        for t in [
            0,
            59,
            1_111_111_109,
            1_234_567_890,
            2_000_000_000,
            1_795_400_000,
        ] {
            assert_eq!(
                otp::code_at(&secret, t).unwrap(),
                oathtool(&secret, t),
                "secret {secret} at {t}"
            );
            // And the code oathtool shows is accepted at that time.
            assert!(otp::check(&secret, &oathtool(&secret, t), t).unwrap());
        }
    }
}

#[test]
fn the_otpauth_uri_carries_what_an_authenticator_app_needs() {
    let client = "dev-4711".parse().unwrap();
    let secret = otp::generate_secret();
    let uri = otp::otpauth_uri(&client, &secret);
    assert!(uri.starts_with("otpauth://totp/lula:dev-4711?"));
    for part in [
        &format!("secret={secret}") as &str,
        "issuer=lula",
        "algorithm=SHA1",
        "digits=6",
        "period=30",
    ] {
        assert!(uri.contains(part), "{uri} lacks {part}");
    }
}
