//! lula-auth on a Redis of its own: the hub verifies tokens and hears
//! revocations there, and keeps streams and cursors in its own.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use lula_protocol::keys::{AuthKeys, HubKeys};
use lula_protocol::message::close;
use lula_protocol::token::{AUDIENCE, Claims, ISSUER, encode_public_key, kid_for};
use lula_testkit::RedisServer;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn tokens_sessions_and_revocations_come_from_auths_own_redis() {
    let hub_redis = RedisServer::start();
    let auth_redis = RedisServer::start();
    let (auth_keys, hub_keys) = (AuthKeys::default(), HubKeys::default());
    let mut auth = conn(&auth_redis.url()).await;

    // What lula-auth keeps in its Redis: a verification key and a session.
    let signing = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let pk = signing.verifying_key().to_bytes();
    let kid = kid_for(&pk);
    let _: () = redis::cmd("SET")
        .arg(auth_keys.verify_key(&kid))
        .arg(encode_public_key(&pk))
        .query_async(&mut auth)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(auth_keys.session("s1"))
        .arg("dev-1")
        .query_async(&mut auth)
        .await
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub: "dev-1".parse().unwrap(),
        sid: "s1".into(),
        iat: now,
        exp: now + 3600,
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
    };
    let token = common::sign_with(&signing, &kid, &claims);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = lula_hub::Config {
        auth_redis_url: Some(auth_redis.url()),
        ..lula_hub::Config::new(hub_redis.url())
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(lula_hub::run(listener, config, shutdown.clone()));

    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut ws = common::Ws::from(ws);
    let r = ws
        .request(
            "xadds",
            json!({"entries": [common::entry("1-0", &["k", "v"])]}),
        )
        .await;
    assert_eq!(r["added"], 1, "{r}");

    // Streams and cursors are the hub's; nothing of them in auth's Redis.
    let mut hub = conn(&hub_redis.url()).await;
    let len: u64 = redis::cmd("XLEN")
        .arg(hub_keys.in_stream())
        .query_async(&mut hub)
        .await
        .unwrap();
    assert_eq!(len, 1);
    let stray: u64 = redis::cmd("EXISTS")
        .arg(hub_keys.in_stream())
        .arg(hub_keys.cursors())
        .query_async(&mut auth)
        .await
        .unwrap();
    assert_eq!(stray, 0);

    // lula-auth revokes on its own Redis; the hub hears it there.
    let announcer = {
        let mut auth = auth.clone();
        let channel = auth_keys.revocations();
        tokio::spawn(async move {
            loop {
                let _: u64 = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg("dev-1")
                    .query_async(&mut auth)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    assert_eq!(ws.closed().await, Some(close::SESSION_REVOKED));
    announcer.abort();
    shutdown.cancel();
}
