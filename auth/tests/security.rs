//! lula-auth against a hostile network: failed-attempt limits that hold
//! across replicas, refusals that take as long whoever is refused.

mod common;

use std::time::Duration;

use common::{secret, spawn_app_with};
use lula_auth::throttle::Limits;
use lula_testkit::RedisServer;
use serde_json::json;

fn limits(per_client: u64, per_address: u64) -> Limits {
    Limits {
        per_client,
        per_address,
        window: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn failed_logins_of_one_client_are_limited_across_replicas() {
    let a = spawn_app_with(|mut c| {
        c.limits = limits(3, 1000);
        c
    })
    .await;
    let good = secret("right");
    a.register_device("dev-1", &good).await;
    // A second replica on the same Redis shares the count.
    let b = replica_of(&a).await;
    let login = |addr: std::net::SocketAddr, secret: String| {
        let http = reqwest::Client::new();
        async move {
            http.post(format!("http://{addr}/login"))
                .json(&json!({"client": "dev-1", "secret": secret}))
                .send()
                .await
                .unwrap()
        }
    };
    for (i, addr) in [a.addr, b, a.addr].into_iter().enumerate() {
        let r = login(addr, secret(&format!("wrong-{i}"))).await;
        assert_eq!(r.status(), 401);
    }
    // Now even the right secret waits for the window, on either replica.
    for addr in [a.addr, b] {
        let r = login(addr, good.clone()).await;
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "rate_limited");
    }
    // Other clients are not affected.
    a.register_device("dev-2", &good).await;
    assert_eq!(
        a.login(json!({"client": "dev-2", "secret": good}))
            .await
            .status,
        200
    );
}

/// Another lula-auth on `app`'s Redis with the same settings; its address.
async fn replica_of(app: &common::TestApp) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(lula_auth::run(
        listener,
        app.config.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));
    addr
}

#[tokio::test]
async fn failed_registrations_from_one_address_are_limited() {
    let app = spawn_app_with(|mut c| {
        c.limits = limits(100, 3);
        c
    })
    .await;
    for i in 0..3 {
        let client = format!("dev-{i}");
        let p = app.provision(&client).await;
        // A code for another time: wrong.
        let wrong = lula_auth::otp::code_at(&p.otp_secret, 1_000_000).unwrap();
        app.register(json!({"client": client, "otp": wrong, "secret": secret("s")}))
            .await
            .assert_error(403, "wrong_otp");
    }
    // A fourth client, even with the right code, from the same address: 429.
    let p = app.provision("dev-9").await;
    let r = app
        .register(json!({"client": "dev-9", "otp": app.otp(&p.otp_secret), "secret": secret("s")}))
        .await;
    r.assert_error(429, "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_what_counts() {
    let app = spawn_app_with(|mut c| {
        c.limits = limits(100, 2);
        c.trust_forwarded_for = true;
        c
    })
    .await;
    let attempt = |from: &'static str| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/login"))
                .header("x-forwarded-for", from)
                .json(&json!({"client": "nobody", "secret": secret("x")}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(attempt("203.0.113.1").await, 403);
    assert_eq!(attempt("203.0.113.1, 10.0.0.1").await, 403);
    assert_eq!(attempt("203.0.113.1").await, 429);
    // Another address behind the same proxy is its own.
    assert_eq!(attempt("198.51.100.7").await, 403);
}

#[tokio::test]
async fn malformed_requests_and_a_success_do_not_count_as_failures() {
    let app = spawn_app_with(|mut c| {
        c.limits = limits(2, 1000);
        c
    })
    .await;
    let good = secret("right");
    app.register_device("dev-1", &good).await;
    for _ in 0..5 {
        app.login(json!({"client": "dev-1", "secret": "short"}))
            .await
            .assert_error(400, "bad_request");
    }
    app.login(json!({"client": "dev-1", "secret": secret("wrong")}))
        .await
        .assert_error(401, "wrong_secret");
    // A success clears the client's count...
    assert_eq!(
        app.login(json!({"client": "dev-1", "secret": good}))
            .await
            .status,
        200
    );
    // ...so one more failure is not yet the limit.
    app.login(json!({"client": "dev-1", "secret": secret("wrong")}))
        .await
        .assert_error(401, "wrong_secret");
    assert_eq!(
        app.login(json!({"client": "dev-1", "secret": good}))
            .await
            .status,
        200
    );
}

/// Unknown clients, provisioned clients that never registered and wrong
/// secrets all cost one bcrypt verification at the configured cost: the time
/// adds nothing to what the status code (403 or 401) already says.
#[tokio::test]
async fn unknown_and_unregistered_clients_cost_a_bcrypt_like_a_wrong_secret() {
    // Served by hand to see the hasher's work.
    let redis = RedisServer::start();
    let config = lula_auth::Config {
        bcrypt_cost: 5,
        ..lula_auth::Config::new(redis.url())
    };
    let state = lula_auth::AppState::new(config).unwrap();
    assert!(
        state.hasher.dummy_hash().starts_with("$2b$05$"),
        "dummy hash {} is not at the configured cost",
        state.hasher.dummy_hash()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(lula_runtime::serve(
        listener,
        lula_auth::app(state.clone()),
        shutdown.clone(),
        Default::default(),
    ));
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    lula_auth::provision::provision(
        &mut conn,
        &state.keys,
        &common::client_id("unregistered"),
        Duration::from_secs(60),
        false,
    )
    .await
    .unwrap();
    let registered = common::client_id("registered");
    let hash = bcrypt::hash(secret("right"), 5).unwrap();
    redis::cmd("HSET")
        .arg(state.keys.client(&registered))
        .arg(lula_protocol::keys::fields::SECRET)
        .arg(&hash)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    for (client, status) in [("nobody", 403), ("unregistered", 403), ("registered", 401)] {
        let before = state.hasher.runs();
        let r = http
            .post(format!("http://{addr}/login"))
            .json(&json!({"client": client, "secret": secret("x")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{client}");
        assert_eq!(
            state.hasher.runs(),
            before + 1,
            "{client}: not one bcrypt verification"
        );
    }
    shutdown.cancel();
}

/// With one bcrypt slot and a short wait for it, a flood of logins gets 503
/// `busy` with `Retry-After` for those that waited too long, while the rest
/// of the service keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_that_wait_too_long_for_a_bcrypt_slot_get_503_busy() {
    let app = spawn_app_with(|mut c| {
        c.bcrypt_cost = 10;
        c.bcrypt_concurrency = std::num::NonZeroUsize::MIN;
        c.bcrypt_max_wait = Duration::from_millis(10);
        c.limits = limits(1000, 1000);
        c
    })
    .await;
    let n = 12;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, url, barrier) = (app.http.clone(), app.url("/login"), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let r = http
                    .post(url)
                    .json(&json!({"client": format!("nobody-{i}"), "secret": secret("x")}))
                    .send()
                    .await
                    .unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                let ct = r
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned());
                (r.status().as_u16(), retry, ct, r.text().await.unwrap())
            })
        })
        .collect();
    // The rest of the service answers meanwhile.
    app.healthz().await.ok();
    let mut busy = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, retry, ct, body) = t.await.unwrap();
        match status {
            403 => refused += 1,
            503 => {
                busy += 1;
                let retry: u64 = retry.expect("503 without Retry-After").parse().unwrap();
                assert!(retry >= 1);
                assert!(ct.unwrap_or_default().starts_with("application/json"));
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["code"], "busy", "{v}");
                assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(busy > 0, "no login was turned away ({refused} ran)");
    assert!(refused > 0, "no login got the slot");
    // A 503 is no failed attempt: it did not count against the address.
    let count = app
        .redis_get(
            &app.keys
                .failures_from("login", &"127.0.0.1".parse().unwrap()),
        )
        .await;
    assert_eq!(count, Some(refused.to_string()));
}

#[tokio::test]
async fn a_live_session_renews_without_a_bcrypt_and_a_dead_one_cannot() {
    let redis = RedisServer::start();
    let config = lula_auth::Config {
        bcrypt_cost: 4,
        ..lula_auth::Config::new(redis.url())
    };
    let state = lula_auth::AppState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(lula_runtime::serve(
        listener,
        lula_auth::app(state.clone()),
        shutdown.clone(),
        Default::default(),
    ));
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let client: lula_protocol::ClientId = "dev-1".parse().unwrap();
    let p = lula_auth::provision::provision(
        &mut conn,
        &state.keys,
        &client,
        Duration::from_secs(60),
        false,
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let post = |path: &'static str, body: serde_json::Value| {
        let http = http.clone();
        async move {
            http.post(format!("http://{addr}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let code = lula_auth::otp::code_at(&p.otp_secret, state.config.clock.epoch_secs()).unwrap();
    let secret = secret("device");
    assert_eq!(
        post(
            "/register",
            json!({"client": "dev-1", "otp": code, "secret": secret})
        )
        .await
        .status(),
        200
    );
    let login: serde_json::Value = post("/login", json!({"client": "dev-1", "secret": secret}))
        .await
        .json()
        .await
        .unwrap();
    let token = login["accessToken"].as_str().unwrap().to_owned();

    let bcrypts = state.hasher.runs();
    let renewed = post("/renew", json!({"sessionToken": token})).await;
    assert_eq!(renewed.status(), 200);
    let renewed: serde_json::Value = renewed.json().await.unwrap();
    let new_token = renewed["accessToken"].as_str().unwrap();
    assert_ne!(new_token, token);
    assert_eq!(state.hasher.runs(), bcrypts, "a renewal ran a bcrypt");
    // The new token is a session of its own, for the same device.
    let kid = lula_protocol::token::kid_of(new_token).unwrap();
    assert_eq!(kid, state.signer.kid());
    let claims = lula_protocol::token::verify(new_token, &state.signer.public_key()).unwrap();
    assert_eq!(claims.sub, client);

    // Logged out (or revoked, or expired): no renewal.
    assert_eq!(
        post("/logout", json!({"sessionToken": new_token}))
            .await
            .status(),
        200
    );
    let refused = post("/renew", json!({"sessionToken": new_token})).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        post("/renew", json!({"sessionToken": "garbage"}))
            .await
            .status(),
        401
    );
    assert_eq!(post("/renew", json!({})).await.status(), 401);
    shutdown.cancel();
}

/// 50 wrong-OTP registrations of one client sent at once, per-client limit 3:
/// the limit is checked and counted in one step before the OTP check, so at
/// most 3 get an OTP check (403) and every other one is 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_otps_cannot_slip_past_the_client_limit() {
    let app = spawn_app_with(|mut c| {
        c.limits = limits(3, 1000);
        c
    })
    .await;
    let p = app.provision("dev-1").await;
    let wrong = lula_auth::otp::code_at(&p.otp_secret, 1_000_000).unwrap();
    let statuses = burst(
        &app,
        "/register",
        50,
        |_| json!({"client": "dev-1", "otp": wrong, "secret": secret("s")}),
    )
    .await;
    let forbidden = statuses.iter().filter(|s| **s == 403).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(forbidden <= 3, "{forbidden} OTP checks ran: {statuses:?}");
    assert_eq!(forbidden + limited, 50, "{statuses:?}");
    // Every OTP check counted: the right code waits for the window now.
    app.register(json!({"client": "dev-1", "otp": app.otp(&p.otp_secret), "secret": secret("s")}))
        .await
        .assert_error(429, "rate_limited");
}

/// The same for wrong secrets at /login, per client and per address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_secrets_cannot_slip_past_either_limit() {
    for (per_client, per_address) in [(3, 1000), (1000, 3)] {
        let app = spawn_app_with(|mut c| {
            c.limits = limits(per_client, per_address);
            c
        })
        .await;
        app.register_device("dev-1", &secret("right")).await;
        let statuses = burst(
            &app,
            "/login",
            50,
            |i| json!({"client": "dev-1", "secret": secret(&format!("wrong-{i}"))}),
        )
        .await;
        let refused = statuses.iter().filter(|s| **s == 401).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert!(refused <= 3, "{refused} bcrypts ran: {statuses:?}");
        assert_eq!(refused + limited, 50, "{statuses:?}");
    }
}

/// A success and a refusal that does not count give their reservation back:
/// a registration that succeeds, then re-registrations (409), leave the count
/// where it was.
#[tokio::test]
async fn reservations_of_attempts_that_are_not_failures_are_given_back() {
    let app = spawn_app_with(|mut c| {
        c.limits = limits(2, 2);
        c
    })
    .await;
    let good = secret("right");
    app.register_device("dev-1", &good).await;
    for _ in 0..4 {
        app.register(json!({"client": "dev-1", "otp": "123456", "secret": good}))
            .await
            .assert_error(409, "already_registered");
    }
    let key = app
        .keys
        .failures_of_client("register", &common::client_id("dev-1"));
    assert_eq!(app.redis_get(&key).await.as_deref().unwrap_or("0"), "0");
    for _ in 0..4 {
        assert_eq!(
            app.login(json!({"client": "dev-1", "secret": good}))
                .await
                .status,
            200
        );
    }
}

/// Sends `n` POSTs of `body(i)` to `path` at once; their statuses.
async fn burst(
    app: &common::TestApp,
    path: &str,
    n: usize,
    body: impl Fn(usize) -> serde_json::Value,
) -> Vec<u16> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, url, body, barrier) =
                (app.http.clone(), app.url(path), body(i), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                http.post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// A device whose secret is gone (revoked; `lula-auth revoke` ends its
/// sessions too, so the secret is removed by hand here to leave a live one)
/// cannot stay on by renewing its session, and the refusal leaves no session.
#[tokio::test]
async fn a_live_session_of_a_device_no_longer_registered_cannot_renew() {
    let app = common::spawn_app().await;
    let s = secret("dev-1");
    app.register_device("dev-1", &s).await;
    let token = app.login_token("dev-1", &s).await;
    let renew = |token: String| {
        let app = &app;
        async move {
            app.post_json("/renew", &json!({ "sessionToken": token }))
                .await
        }
    };
    renew(token.clone()).await.ok();
    redis::cmd("HDEL")
        .arg(app.keys.client(&common::client_id("dev-1")))
        .arg(lula_protocol::keys::fields::SECRET)
        .query_async::<()>(&mut app.conn.clone())
        .await
        .unwrap();
    let sessions_before: Vec<String> = redis::cmd("KEYS")
        .arg(app.keys.session("*"))
        .query_async(&mut app.conn.clone())
        .await
        .unwrap();
    renew(token.clone())
        .await
        .assert_error(403, "not_registered");
    let sessions_after: Vec<String> = redis::cmd("KEYS")
        .arg(app.keys.session("*"))
        .query_async(&mut app.conn.clone())
        .await
        .unwrap();
    assert_eq!(sessions_after.len(), sessions_before.len());
}
