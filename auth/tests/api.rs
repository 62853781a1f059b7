//! lula-auth over real HTTP against a real Redis: provisioning, one-shot
//! registration, login tokens hubs can verify, logout, re-provisioning, the
//! error contract, and what survives Redis or the instance going away.

mod common;

use std::time::Duration;

use common::{DrivenClock, TestApp, client_id, secret, spawn_app, spawn_app_on, spawn_app_with};
use lula_auth::routes::{MAX_SECRET_LEN, MIN_SECRET_LEN};
use lula_auth::{AuthError, Config, otp};
use lula_protocol::keys::fields;
use lula_protocol::token::kid_of;
use lula_testkit::eventually;
use serde_json::json;

/// A base32 OTP secret as an operator would paste it (the README's example).
const OPERATOR_OTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
/// A fixed instant for tests that drive the clock and want fixed codes.
const T0: u64 = 1_700_000_000;

fn form_content_type() -> Option<&'static str> {
    Some("application/x-www-form-urlencoded")
}

/// Provisions `client` the way an operator with `redis-cli` would.
async fn operator_provision(app: &TestApp, client: &str, otp_secret: &str, deadline_ms: u64) {
    app.hset(
        &app.keys.client(&client_id(client)),
        &[
            (fields::OTP_SECRET, otp_secret),
            (fields::REG_DEADLINE, &deadline_ms.to_string()),
        ],
    )
    .await;
}

/// The first step at or after `from` whose code for `otp_secret` satisfies `want`.
fn first_time_whose_code(otp_secret: &str, from: u64, want: impl Fn(&str) -> bool) -> u64 {
    (0..1000)
        .map(|step| from + step * otp::STEP_SECS)
        .find(|&t| want(&otp::code_at(otp_secret, t).unwrap()))
        .expect("a code of that shape within 1000 steps")
}

/// The codes a registration at `t` accepts: one step either side of `t`'s.
fn window_codes(otp_secret: &str, t: u64) -> Vec<String> {
    [t - otp::STEP_SECS, t, t + otp::STEP_SECS]
        .map(|t| otp::code_at(otp_secret, t).unwrap())
        .to_vec()
}

/// Six digits that are no code a registration at `t` accepts.
fn code_outside_window(otp_secret: &str, t: u64) -> String {
    let window = window_codes(otp_secret, t);
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !window.contains(c))
        .unwrap()
}

#[tokio::test]
async fn provisioned_device_registers_then_logs_in_with_a_token_hubs_can_verify() {
    let app = spawn_app_with(|c| Config {
        token_ttl: Duration::from_secs(900),
        ..c
    })
    .await;
    let provisioned = app.provision("dev-1").await;

    let registered = app
        .register(json!({
            "client": "dev-1",
            "otp": app.otp(&provisioned.otp_secret),
            "secret": secret("dev-1"),
        }))
        .await
        .ok();
    assert_eq!(registered, json!({ "client": "dev-1", "registered": true }));
    let record = app.client_record("dev-1").await;
    assert!(
        record[fields::SECRET].starts_with("$2"),
        "bcrypt hash stored"
    );
    assert!(
        !record.contains_key(fields::REG_DEADLINE),
        "registration closes the deadline"
    );

    let login = app
        .login(json!({ "client": "dev-1", "secret": secret("dev-1") }))
        .await
        .ok();
    let token = login["accessToken"].as_str().unwrap();
    assert_eq!(login["sessionToken"], json!(token));
    assert_eq!(login["bearerToken"], json!(token));
    assert_eq!(login["ttlSeconds"], json!(900));

    let claims = app.verify_with_published_key(token).await;
    assert_eq!(claims.sub.as_str(), "dev-1");
    assert_eq!(claims.exp - claims.iat, 900);
    assert_eq!(login["expiresAt"], json!(claims.exp * 1000));

    let session = app.keys.session(&claims.sid);
    assert_eq!(app.redis_get(&session).await.as_deref(), Some("dev-1"));
    let ttl = app.ttl(&session).await;
    assert!((840..=900).contains(&ttl), "session TTL {ttl}");
    let indexed: Option<u64> = redis::cmd("ZSCORE")
        .arg(app.keys.client_sessions(&client_id("dev-1")))
        .arg(&claims.sid)
        .query_async(&mut app.conn.clone())
        .await
        .unwrap();
    assert_eq!(indexed, Some(claims.exp), "session indexed by its expiry");
}

#[tokio::test]
async fn register_and_login_accept_form_bodies() {
    let app = spawn_app().await;
    let provisioned = app.provision("dev-1").await;
    let code = app.otp(&provisioned.otp_secret);
    let s = secret("dev-1");

    let registered = app
        .post_form(
            "/register",
            &[("client", "dev-1"), ("otp", &code), ("secret", &s)],
        )
        .await
        .ok();
    assert_eq!(registered["registered"], json!(true));

    let login = app
        .post_form("/login", &[("client", "dev-1"), ("secret", &s)])
        .await
        .ok();
    app.verify_with_published_key(login["accessToken"].as_str().unwrap())
        .await;

    // Without a content type, a body that looks like JSON is read as JSON.
    let untyped = json!({ "client": "dev-1", "secret": s }).to_string();
    app.post_raw("/login", None, untyped).await.ok();
}

#[tokio::test]
async fn login_accepts_and_ignores_an_otp_field() {
    let app = spawn_app().await;
    let s = secret("dev-1");
    app.register_device("dev-1", &s).await;

    // Any otp, even one that is no valid code: the secret proves the device.
    app.login(json!({ "client": "dev-1", "secret": s, "otp": "000000" }))
        .await
        .ok();
    app.login(json!({ "client": "dev-1", "secret": s, "otp": 123456 }))
        .await
        .ok();
    app.post_form(
        "/login",
        &[("client", "dev-1"), ("secret", &s), ("otp", "654321")],
    )
    .await
    .ok();
    // It does not stand in for the secret either.
    app.login(json!({ "client": "dev-1", "secret": secret("other"), "otp": "000000" }))
        .await
        .assert_error(401, "wrong_secret");
}

#[tokio::test]
async fn otp_sent_as_a_json_number_registers() {
    let clock = DrivenClock::at_system_now();
    let app = spawn_app_with(|c| Config {
        clock: clock.clock(),
        ..c
    })
    .await;
    let t = first_time_whose_code(OPERATOR_OTP_SECRET, T0, |c| !c.starts_with('0'));
    clock.set(t);
    operator_provision(&app, "dev-1", OPERATOR_OTP_SECRET, (t + 3600) * 1000).await;
    let code: u64 = otp::code_at(OPERATOR_OTP_SECRET, t)
        .unwrap()
        .parse()
        .unwrap();

    app.register(json!({ "client": "dev-1", "otp": code, "secret": secret("dev-1") }))
        .await
        .ok();
}

#[tokio::test]
async fn otp_sent_as_a_json_number_registers_when_the_code_has_a_leading_zero() {
    // A JSON number cannot carry the leading zero of a code such as 012345:
    // it arrives as 12345 and must still count as that code.
    let clock = DrivenClock::at_system_now();
    let app = spawn_app_with(|c| Config {
        clock: clock.clock(),
        ..c
    })
    .await;
    let t = first_time_whose_code(OPERATOR_OTP_SECRET, T0, |c| c.starts_with('0'));
    clock.set(t);
    operator_provision(&app, "dev-1", OPERATOR_OTP_SECRET, (t + 3600) * 1000).await;
    let code: u64 = otp::code_at(OPERATOR_OTP_SECRET, t)
        .unwrap()
        .parse()
        .unwrap();
    assert!(code < 100_000);

    app.register(json!({ "client": "dev-1", "otp": code, "secret": secret("dev-1") }))
        .await
        .ok();
}

#[tokio::test]
async fn second_registration_gets_409_and_keeps_the_first_secret() {
    let app = spawn_app().await;
    let provisioned = app.register_device("dev-1", &secret("first")).await;
    let hash = app.client_record("dev-1").await[fields::SECRET].clone();

    app.register(json!({
        "client": "dev-1",
        "otp": app.otp(&provisioned.otp_secret),
        "secret": secret("second"),
    }))
    .await
    .assert_error(409, "already_registered");

    assert_eq!(app.client_record("dev-1").await[fields::SECRET], hash);
    app.login(json!({ "client": "dev-1", "secret": secret("first") }))
        .await
        .ok();
    app.login(json!({ "client": "dev-1", "secret": secret("second") }))
        .await
        .assert_error(401, "wrong_secret");
}

#[tokio::test]
async fn wrong_otp_gets_403_and_writes_nothing() {
    let clock = DrivenClock::at_system_now();
    let app = spawn_app_with(|c| Config {
        clock: clock.clock(),
        ..c
    })
    .await;
    let provisioned = app.provision("dev-1").await;
    let right = app.otp(&provisioned.otp_secret);
    let wrong = code_outside_window(&provisioned.otp_secret, clock.now());

    app.register(json!({ "client": "dev-1", "otp": wrong, "secret": secret("dev-1") }))
        .await
        .assert_error(403, "wrong_otp");

    let record = app.client_record("dev-1").await;
    assert!(!record.contains_key(fields::SECRET));
    assert_eq!(
        record[fields::REG_DEADLINE],
        provisioned.reg_deadline.to_string()
    );
    assert_eq!(record[fields::OTP_SECRET], provisioned.otp_secret);
    // The refusal cost the device nothing: the right code still registers.
    app.register(json!({ "client": "dev-1", "otp": right, "secret": secret("dev-1") }))
        .await
        .ok();
}

#[tokio::test]
async fn unprovisioned_client_cannot_register() {
    let app = spawn_app().await;
    app.register(json!({ "client": "dev-1", "otp": "123456", "secret": secret("dev-1") }))
        .await
        .assert_error(403, "not_provisioned");
    assert!(
        !app.exists(&app.keys.client(&client_id("dev-1"))).await,
        "no record created"
    );
}

#[tokio::test]
async fn registration_after_the_deadline_gets_403_and_before_it_succeeds() {
    let clock = DrivenClock::at_system_now();
    let app = spawn_app_with(|c| Config {
        clock: clock.clock(),
        ..c
    })
    .await;
    let provisioned = app.provision("dev-1").await;
    let deadline_secs = provisioned.reg_deadline / 1000;

    clock.set(deadline_secs + 1);
    app.register(json!({
        "client": "dev-1",
        "otp": app.otp(&provisioned.otp_secret),
        "secret": secret("dev-1"),
    }))
    .await
    .assert_error(403, "deadline_passed");
    assert!(
        !app.client_record("dev-1")
            .await
            .contains_key(fields::SECRET)
    );

    clock.set(deadline_secs - 1);
    app.register(json!({
        "client": "dev-1",
        "otp": app.otp(&provisioned.otp_secret),
        "secret": secret("dev-1"),
    }))
    .await
    .ok();
}

#[tokio::test]
async fn registration_without_a_deadline_gets_403() {
    let app = spawn_app().await;
    // An operator who forgot regDeadline (or wrote something that is no number).
    app.hset(
        &app.keys.client(&client_id("dev-1")),
        &[(fields::OTP_SECRET, OPERATOR_OTP_SECRET)],
    )
    .await;
    app.hset(
        &app.keys.client(&client_id("dev-2")),
        &[
            (fields::OTP_SECRET, OPERATOR_OTP_SECRET),
            (fields::REG_DEADLINE, "tomorrow"),
        ],
    )
    .await;
    for client in ["dev-1", "dev-2"] {
        app.register(json!({
            "client": client,
            "otp": app.otp(OPERATOR_OTP_SECRET),
            "secret": secret(client),
        }))
        .await
        .assert_error(403, "deadline_passed");
    }
}

#[tokio::test]
async fn operator_provisioned_client_registers_and_logs_in() {
    let app = spawn_app().await;
    let deadline_ms = (common::system_now() + 3600) * 1000;
    operator_provision(&app, "dev-4711", OPERATOR_OTP_SECRET, deadline_ms).await;

    app.register(json!({
        "client": "dev-4711",
        "otp": app.otp(OPERATOR_OTP_SECRET),
        "secret": secret("dev-4711"),
    }))
    .await
    .ok();
    let token = app.login_token("dev-4711", &secret("dev-4711")).await;
    assert_eq!(
        app.verify_with_published_key(&token).await.sub.as_str(),
        "dev-4711"
    );
}

#[tokio::test]
async fn otp_secret_that_is_not_base32_counts_as_not_provisioned() {
    let app = spawn_app().await;
    let deadline_ms = (common::system_now() + 3600) * 1000;
    operator_provision(&app, "dev-1", "not base32!", deadline_ms).await;
    app.register(json!({ "client": "dev-1", "otp": "123456", "secret": secret("dev-1") }))
        .await
        .assert_error(403, "not_provisioned");
}

#[tokio::test]
async fn codes_one_step_either_side_register_but_three_steps_away_do_not() {
    let clock = DrivenClock::at_system_now();
    let app = spawn_app_with(|c| Config {
        clock: clock.clock(),
        ..c
    })
    .await;
    clock.set(T0);
    let code_at = |t: u64| otp::code_at(OPERATOR_OTP_SECRET, t).unwrap();
    let accepted = window_codes(OPERATOR_OTP_SECRET, T0);
    for far in [T0 - 90, T0 + 90] {
        // Fixed secret and time, so fixed codes: none of the far ones happens
        // to equal a code inside the window.
        assert!(!accepted.contains(&code_at(far)));
    }

    for (client, t) in [("far-behind", T0 - 90), ("far-ahead", T0 + 90)] {
        operator_provision(&app, client, OPERATOR_OTP_SECRET, (T0 + 3600) * 1000).await;
        app.register(json!({ "client": client, "otp": code_at(t), "secret": secret(client) }))
            .await
            .assert_error(403, "wrong_otp");
    }
    for (client, t) in [("behind", T0 - 30), ("ahead", T0 + 30)] {
        operator_provision(&app, client, OPERATOR_OTP_SECRET, (T0 + 3600) * 1000).await;
        app.register(json!({ "client": client, "otp": code_at(t), "secret": secret(client) }))
            .await
            .ok();
    }
}

#[tokio::test]
async fn login_with_the_wrong_secret_gets_401() {
    let app = spawn_app().await;
    app.register_device("dev-1", &secret("right")).await;
    app.login(json!({ "client": "dev-1", "secret": secret("wrong") }))
        .await
        .assert_error(401, "wrong_secret");
}

#[tokio::test]
async fn login_before_registering_gets_403_not_registered() {
    let app = spawn_app().await;
    app.provision("dev-1").await;
    app.login(json!({ "client": "dev-1", "secret": secret("dev-1") }))
        .await
        .assert_error(403, "not_registered");
}

#[tokio::test]
async fn login_of_an_unknown_client_gets_403_like_an_unregistered_one() {
    let app = spawn_app().await;
    app.provision("provisioned").await;
    // The answer does not tell whether a client id was ever provisioned.
    for client in ["nobody", "provisioned"] {
        app.login(json!({ "client": client, "secret": secret(client) }))
            .await
            .assert_error(403, "not_registered");
    }
    assert!(
        !app.exists(&app.keys.client(&client_id("nobody"))).await,
        "no record created"
    );
}

#[tokio::test]
async fn malformed_requests_get_400_with_a_json_error() {
    let app = spawn_app().await;
    // Provisioned, so only the shape of each request can be what is wrong.
    let provisioned = app.provision("dev-1").await;
    let code = app.otp(&provisioned.otp_secret);
    let ok_secret = secret("dev-1");
    let short = "s".repeat(MIN_SECRET_LEN - 1);
    let long = "s".repeat(MAX_SECRET_LEN + 1);
    let register_bodies = [
        json!({ "client": "dev-1", "secret": ok_secret }),
        json!({ "client": "dev-1", "otp": code }),
        json!({ "otp": code, "secret": ok_secret }),
        json!({ "client": "a:b", "otp": code, "secret": ok_secret }),
        json!({ "client": "", "otp": code, "secret": ok_secret }),
        json!({ "client": 7, "otp": code, "secret": ok_secret }),
        json!({ "client": "dev-1", "otp": "12345", "secret": ok_secret }),
        json!({ "client": "dev-1", "otp": "1234567", "secret": ok_secret }),
        json!({ "client": "dev-1", "otp": "12a456", "secret": ok_secret }),
        json!({ "client": "dev-1", "otp": "", "secret": ok_secret }),
        json!({ "client": "dev-1", "otp": 1_234_567, "secret": ok_secret }),
        json!({ "client": "dev-1", "otp": -1, "secret": ok_secret }),
        json!({ "client": "dev-1", "otp": code, "secret": short }),
        json!({ "client": "dev-1", "otp": code, "secret": long }),
    ];
    for body in register_bodies {
        let reply = app.register(body.clone()).await;
        assert_eq!(reply.status, 400, "/register {body}: {}", reply.text);
        reply.assert_error(400, "bad_request");
    }
    let login_bodies = [
        json!({ "client": "dev-1" }),
        json!({ "secret": ok_secret }),
        json!({ "client": "a:b", "secret": ok_secret }),
        json!({ "client": "dev-1", "secret": short }),
        json!({ "client": "dev-1", "secret": long }),
    ];
    for body in login_bodies {
        let reply = app.login(body.clone()).await;
        assert_eq!(reply.status, 400, "/login {body}: {}", reply.text);
        reply.assert_error(400, "bad_request");
    }
    // Bodies that are not JSON (or not a complete form) at all.
    let json_ct = Some("application/json");
    let raw = [
        ("/register", json_ct, "not json"),
        ("/register", json_ct, "[]"),
        ("/register", form_content_type(), "client=dev-1&secret=x"),
        ("/login", json_ct, "{\"client\":"),
        ("/login", form_content_type(), "client=dev-1"),
        ("/logout", json_ct, "not json"),
    ];
    for (path, content_type, body) in raw {
        let reply = app.post_raw(path, content_type, body).await;
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.text);
        reply.assert_error(400, "bad_request");
    }
    assert!(
        !app.client_record("dev-1")
            .await
            .contains_key(fields::SECRET),
        "no malformed request registered the client"
    );
}

#[tokio::test]
async fn secrets_at_both_length_bounds_are_accepted() {
    let app = spawn_app().await;
    for (client, s) in [
        ("shortest", "s".repeat(MIN_SECRET_LEN)),
        ("longest", "s".repeat(MAX_SECRET_LEN)),
    ] {
        app.register_device(client, &s).await;
        app.login_token(client, &s).await;
    }
}

#[tokio::test]
async fn unsupported_content_type_gets_415() {
    let app = spawn_app().await;
    let body = json!({ "client": "dev-1", "otp": "123456", "secret": secret("dev-1") }).to_string();
    for path in ["/register", "/login", "/logout", "/renew"] {
        app.post_raw(path, Some("text/plain"), body.clone())
            .await
            .assert_error(415, "unsupported_media_type");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_on_every_endpoint() {
    let app = spawn_app_with(|c| Config {
        max_body_bytes: 1024,
        ..c
    })
    .await;
    let padding = "x".repeat(4096);
    let cases = [
        (
            "/register",
            json!({ "client": "dev-1", "otp": "123456", "secret": padding }),
        ),
        ("/login", json!({ "client": "dev-1", "secret": padding })),
        ("/logout", json!({ "sessionToken": padding })),
        ("/renew", json!({ "sessionToken": padding })),
    ];
    for (path, body) in cases {
        app.post_json(path, &body)
            .await
            .assert_error(413, "payload_too_large");
    }
}

#[tokio::test]
async fn unknown_routes_get_json_404() {
    let app = spawn_app().await;
    app.get("/").await.assert_error(404, "not_found");
    app.post_json("/nope", &json!({}))
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn wrong_methods_get_json_405() {
    let app = spawn_app().await;
    for path in ["/login", "/register", "/logout", "/renew"] {
        app.get(path).await.assert_error(405, "method_not_allowed");
    }
    app.post_json("/healthz", &json!({}))
        .await
        .assert_error(405, "method_not_allowed");
}

#[tokio::test]
async fn logout_with_a_bearer_token_revokes_the_session() {
    let app = spawn_app().await;
    let s = secret("dev-1");
    app.register_device("dev-1", &s).await;
    let token = app.login_token("dev-1", &s).await;
    let other = app.login_token("dev-1", &s).await;
    let session = app.session_key(&token).await;
    let other_session = app.session_key(&other).await;
    assert!(app.exists(&session).await);

    assert_eq!(app.logout(&token).await.ok(), json!({ "revoked": true }));
    assert!(!app.exists(&session).await, "session record deleted");
    let indexed: Vec<String> = redis::cmd("ZRANGE")
        .arg(app.keys.client_sessions(&client_id("dev-1")))
        .arg(0)
        .arg(-1)
        .query_async(&mut app.conn.clone())
        .await
        .unwrap();
    assert_eq!(indexed.len(), 1, "only the other session is left indexed");
    assert!(
        app.exists(&other_session).await,
        "the device's other session is untouched"
    );

    app.logout(&token).await.assert_error(401, "unauthorized");
    app.logout(&other).await.ok();
}

#[tokio::test]
async fn logout_without_a_token_gets_401() {
    let app = spawn_app().await;
    app.post_raw("/logout", None, "")
        .await
        .assert_error(401, "unauthorized");
    app.post_json("/logout", &json!({}))
        .await
        .assert_error(401, "unauthorized");
    app.logout("").await.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn logout_with_a_garbage_token_gets_401() {
    let app = spawn_app().await;
    for garbage in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
        app.logout(garbage).await.assert_error(401, "unauthorized");
    }
}

#[tokio::test]
async fn logout_with_an_expired_token_gets_401() {
    let clock = DrivenClock::at_system_now();
    let app = spawn_app_with(|c| Config {
        clock: clock.clock(),
        ..c
    })
    .await;
    let s = secret("dev-1");
    app.register_device("dev-1", &s).await;
    let now = clock.now();
    let ttl = app.config.token_ttl.as_secs();
    clock.set(now - 2 * ttl);
    let token = app.login_token("dev-1", &s).await;
    clock.set(now);

    app.logout(&token).await.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn logout_accepts_the_token_in_the_body() {
    let app = spawn_app().await;
    let s = secret("dev-1");
    app.register_device("dev-1", &s).await;
    for field in ["sessionToken", "accessToken", "token"] {
        let token = app.login_token("dev-1", &s).await;
        let session = app.session_key(&token).await;
        app.post_json("/logout", &json!({ field: token }))
            .await
            .ok();
        assert!(!app.exists(&session).await, "{field} revoked its session");
    }
    let token = app.login_token("dev-1", &s).await;
    let session = app.session_key(&token).await;
    app.post_form("/logout", &[("sessionToken", &token)])
        .await
        .ok();
    assert!(!app.exists(&session).await, "form body revoked its session");
}

#[tokio::test]
async fn reprovisioning_a_registered_client_without_force_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let s = secret("dev-1");
    let provisioned = app.register_device("dev-1", &s).await;
    let token = app.login_token("dev-1", &s).await;
    let before = app.client_record("dev-1").await;

    let refused = app.try_provision("dev-1", false).await;
    assert!(
        matches!(refused, Err(AuthError::AlreadyRegistered)),
        "{refused:?}"
    );

    let after = app.client_record("dev-1").await;
    assert_eq!(after, before);
    assert_eq!(after[fields::OTP_SECRET], provisioned.otp_secret);
    app.login_token("dev-1", &s).await;
    let session = app.session_key(&token).await;
    assert!(app.exists(&session).await, "sessions survive");
}

#[tokio::test]
async fn forced_reprovisioning_revokes_sessions_and_the_device_registers_again() {
    let app = spawn_app().await;
    let old = secret("old");
    let first = app.register_device("dev-1", &old).await;
    let tokens = [
        app.login_token("dev-1", &old).await,
        app.login_token("dev-1", &old).await,
    ];
    let mut sessions = Vec::new();
    for t in &tokens {
        sessions.push(app.session_key(t).await);
    }

    let second = app.try_provision("dev-1", true).await.unwrap();
    assert_eq!(second.revoked_sessions, 2);
    assert_ne!(second.otp_secret, first.otp_secret);
    for session in &sessions {
        assert!(!app.exists(session).await, "{session} revoked");
    }
    assert!(
        !app.exists(&app.keys.client_sessions(&client_id("dev-1")))
            .await
    );
    let record = app.client_record("dev-1").await;
    assert!(!record.contains_key(fields::SECRET), "secret forgotten");
    assert_eq!(record[fields::OTP_SECRET], second.otp_secret);
    assert_eq!(
        record[fields::REG_DEADLINE],
        second.reg_deadline.to_string()
    );
    for t in &tokens {
        app.logout(t).await.assert_error(401, "unauthorized");
    }
    app.login(json!({ "client": "dev-1", "secret": old }))
        .await
        .assert_error(403, "not_registered");

    // The device (or its replacement) registers again with the new OTP secret.
    let new = secret("new");
    app.register(json!({
        "client": "dev-1",
        "otp": app.otp(&second.otp_secret),
        "secret": new,
    }))
    .await
    .ok();
    app.login_token("dev-1", &new).await;
    app.login(json!({ "client": "dev-1", "secret": old }))
        .await
        .assert_error(401, "wrong_secret");
}

#[tokio::test]
async fn reprovisioning_an_unregistered_client_replaces_its_otp_secret() {
    let clock = DrivenClock::at_system_now();
    let app = spawn_app_with(|c| Config {
        clock: clock.clock(),
        ..c
    })
    .await;
    let first = app.provision("dev-1").await;
    let second = app.provision("dev-1").await;
    let old_code = app.otp(&first.otp_secret);

    // Unless (a few times in a million) the old secret's code happens to be
    // one the new secret accepts now too, the old code is refused.
    if !window_codes(&second.otp_secret, clock.now()).contains(&old_code) {
        app.register(json!({ "client": "dev-1", "otp": old_code, "secret": secret("dev-1") }))
            .await
            .assert_error(403, "wrong_otp");
    }
    app.register(json!({
        "client": "dev-1",
        "otp": app.otp(&second.otp_secret),
        "secret": secret("dev-1"),
    }))
    .await
    .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_with_the_same_code_store_exactly_one_secret() {
    let app = spawn_app().await;
    let provisioned = app.provision("dev-1").await;
    let code = app.otp(&provisioned.otp_secret);
    let (a, b) = (secret("a"), secret("b"));

    let (reply_a, reply_b) = tokio::join!(
        app.register(json!({ "client": "dev-1", "otp": code, "secret": a })),
        app.register(json!({ "client": "dev-1", "otp": code, "secret": b })),
    );

    let (winner, loser, lost) = match (reply_a.status, reply_b.status) {
        (200, _) => (&a, &b, reply_b),
        (_, 200) => (&b, &a, reply_a),
        _ => panic!("neither registration won: {reply_a:?} {reply_b:?}"),
    };
    lost.assert_error(409, "already_registered");
    let hash = app.client_record("dev-1").await[fields::SECRET].clone();
    assert!(bcrypt::verify(winner, &hash).unwrap());
    assert!(!bcrypt::verify(loser, &hash).unwrap());
    app.login_token("dev-1", winner).await;
    app.login(json!({ "client": "dev-1", "secret": loser }))
        .await
        .assert_error(401, "wrong_secret");
}

#[tokio::test]
async fn readyz_and_requests_answer_503_while_redis_is_down_and_recover_after() {
    let mut app = spawn_app_with(|c| Config {
        redis_timeout: Duration::from_millis(500),
        ..c
    })
    .await;
    assert_eq!(app.healthz().await.ok(), json!({ "status": "ok" }));
    assert_eq!(app.readyz().await.ok(), json!({ "status": "ready" }));

    app.redis.kill();
    // Alive (an orchestrator must not restart it for Redis), not ready.
    assert_eq!(app.healthz().await.ok(), json!({ "status": "ok" }));
    let down = app.readyz().await;
    down.assert_error(503, "unavailable");
    assert_eq!(
        down.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    // Every request while Redis is down is a 503, not just the first.
    app.readyz().await.assert_error(503, "unavailable");
    app.login(json!({ "client": "dev-1", "secret": secret("dev-1") }))
        .await
        .assert_error(503, "unavailable");

    app.redis.restart();
    eventually(
        "readyz ok after Redis restarted",
        Duration::from_secs(30),
        || async { (app.readyz().await.status == 200).then_some(()) },
    )
    .await;
    // Redis came back empty (no persistence); the device is simply unknown.
    app.login(json!({ "client": "dev-1", "secret": secret("dev-1") }))
        .await
        .assert_error(403, "not_registered");
}

#[tokio::test]
async fn tokens_keep_verifying_after_the_instance_that_signed_them_stops() {
    let a = spawn_app().await;
    let s = secret("dev-1");
    a.register_device("dev-1", &s).await;
    let token_a = a.login_token("dev-1", &s).await;
    let kid_a = kid_of(&token_a).unwrap();
    let redis = a.stop().await;

    let b = spawn_app_on(redis, |c| c).await;
    let claims = b.verify_with_published_key(&token_a).await;
    assert_eq!(claims.sub.as_str(), "dev-1");
    let token_b = b.login_token("dev-1", &s).await;
    assert_ne!(
        kid_of(&token_b).unwrap(),
        kid_a,
        "each instance has its own key"
    );
    b.verify_with_published_key(&token_b).await;

    // B honours A's token too: it finds A's published key and revokes the session.
    b.logout(&token_a).await.ok();
    b.logout(&token_a).await.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn told_to_stop_it_reports_not_ready_while_it_drains_then_stops() {
    let app = spawn_app_with(|c| Config {
        serve: lula_runtime::ServeOptions {
            drain_delay: Duration::from_secs(2),
            ..c.serve
        },
        ..c
    })
    .await;
    assert_eq!(app.readyz().await.ok(), json!({ "status": "ready" }));
    app.shutdown.cancel();
    // Still serving (a load balancer polling readiness sees 503 and moves on).
    app.readyz().await.assert_error(503, "draining");
    assert_eq!(app.healthz().await.ok(), json!({ "status": "ok" }));
    tokio::time::timeout(Duration::from_secs(30), app.task)
        .await
        .expect("stops after the drain delay")
        .unwrap()
        .unwrap();
}
