//! The minimum device secret length as a setting (`--min-secret-len`): the
//! default keeps 16 bytes, a lower floor lets a fleet keep the short secrets it
//! already has, and every refusal says the limit.

mod common;

use common::{spawn_app, spawn_app_with};
use lula_auth::Config;
use lula_auth::routes::{MAX_SECRET_LEN, MIN_SECRET_FLOOR, MIN_SECRET_LEN};
use serde_json::json;

/// The secret the Node lula-client's own examples use (11 bytes).
const NODE_EXAMPLE_SECRET: &str = "lula-secret";

#[tokio::test]
async fn a_too_short_secret_at_register_gets_a_400_that_names_the_limit() {
    let app = spawn_app().await;
    let p = app.provision("dev-1").await;
    let reply = app
        .register(json!({
            "client": "dev-1",
            "otp": app.otp(&p.otp_secret),
            "secret": NODE_EXAMPLE_SECRET,
        }))
        .await;
    reply.assert_error(400, "bad_request");
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(&format!("{MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes"))
            && message.contains("got 11")
            && message.contains("--min-secret-len"),
        "{message}"
    );
    // Nothing was stored: the device is still unregistered.
    assert!(!app.client_record("dev-1").await.contains_key("secret"));
}

#[tokio::test]
async fn a_lower_minimum_lets_a_short_secret_register_and_log_in_and_still_refuses_shorter() {
    let app = spawn_app_with(|c| Config {
        min_secret_len: 11,
        ..c
    })
    .await;
    let p = app.provision("dev-1").await;
    let too_short = app
        .register(json!({
            "client": "dev-1",
            "otp": app.otp(&p.otp_secret),
            "secret": "ten-bytes!",
        }))
        .await;
    too_short.assert_error(400, "bad_request");
    let message = too_short.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("11 to 72 bytes, got 10"), "{message}");

    app.register_device("dev-1", NODE_EXAMPLE_SECRET).await;
    let login = app
        .login(json!({ "client": "dev-1", "secret": NODE_EXAMPLE_SECRET }))
        .await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert!(login.json()["accessToken"].is_string(), "{}", login.text);
}

#[test]
fn a_minimum_below_the_floor_or_above_bcrypts_limit_is_refused_at_start() {
    let config = |min| Config {
        min_secret_len: min,
        ..Config::new("redis://127.0.0.1:1")
    };
    assert!(config(MIN_SECRET_LEN).check().is_ok());
    assert!(config(MIN_SECRET_FLOOR).check().is_ok());
    let low = config(MIN_SECRET_FLOOR - 1)
        .check()
        .unwrap_err()
        .to_string();
    assert!(low.contains("--min-secret-len"), "{low}");
    assert!(config(MAX_SECRET_LEN + 1).check().is_err());
}

#[test]
fn the_binary_warns_at_start_when_the_minimum_is_below_the_default() {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    // Port 1 on 127.0.0.1: nothing listens, so lula-auth starts (it connects
    // lazily) and its start-up log is all this test reads.
    let mut child = Command::new(env!("CARGO_BIN_EXE_lula-auth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--min-secret-len", "8"])
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // The warning is the first thing written; read until it (or EOF).
    let mut log = String::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !log.contains("min-secret-len") && std::time::Instant::now() < deadline {
        match stderr.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => log.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        log.contains("WARN") && log.contains("--min-secret-len is below the default"),
        "{log}"
    );
}
