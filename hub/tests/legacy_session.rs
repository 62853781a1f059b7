//! `--non-renewing-grace`: a connection that never asked to renew (the Node
//! lula-client: `id`, `xread`, `xadd` only) outlives its token by at most the
//! grace; revocation still closes it (4003) within a second; without the
//! setting, or for a client speaking our protocol, expiry closes it (4001).

mod common;

use std::time::{Duration, Instant};

use common::{TestHub, now, sign_with, spawn_hub, spawn_hub_with};
use lula_protocol::ClientId;
use lula_protocol::message::close;
use serde_json::json;

/// What SECURITY.md promises for revocation.
const REVOKE_BOUND: Duration = Duration::from_secs(1);

/// A token of `client` expiring `ttl` seconds from now, its session recorded
/// as lula-auth's login records it (with a longer life than the token, so
/// only the token's expiry is under test).
async fn short_token(hub: &TestHub, client: &str, sid: &str, ttl: i64) -> (String, u64) {
    let id: ClientId = client.parse().unwrap();
    lula_auth::sessions::create(
        &mut hub.redis().await,
        &hub.auth_keys,
        &id,
        sid,
        now(),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let claims = hub.claims(client, sid, ttl);
    let exp = claims.exp;
    (sign_with(hub.signing_key(), &hub.kid(), &claims), exp)
}

/// Waits until the wall clock is past `exp + extra` seconds.
async fn wait_past(exp: u64, extra: u64) {
    while now() <= exp + extra {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn with_grace(grace: Duration) -> impl FnOnce(lula_hub::Config) -> lula_hub::Config {
    move |c| lula_hub::Config {
        non_renewing_grace: grace,
        ..c
    }
}

#[tokio::test]
async fn without_the_setting_a_node_style_connection_closes_at_token_expiry_with_4001() {
    let hub = spawn_hub().await;
    let (token, _) = short_token(&hub, "dev-1", "s-1", 2).await;
    let mut ws = hub.connect_with_token(&token).await.unwrap();
    ws.request("id", json!({})).await;
    assert_eq!(ws.closed().await, Some(close::SESSION_EXPIRED));
}

#[tokio::test]
async fn with_a_grace_a_node_style_connection_outlives_its_token_and_revocation_still_closes_it() {
    let hub = spawn_hub_with(with_grace(Duration::from_secs(3600))).await;
    let (token, exp) = short_token(&hub, "dev-1", "s-1", 2).await;
    let mut node = hub.connect_with_token(&token).await.unwrap();
    node.request("id", json!({})).await;
    node.request("xread", json!({"id": "0-0"})).await;
    hub.wait_for_subscribers(&hub.auth_keys.revocations(), 1)
        .await;

    wait_past(exp, 1).await;
    let r = node.request("echo", json!({"still": "here"})).await;
    assert_eq!(
        r["still"], "here",
        "closed at token expiry despite the grace"
    );

    let started = Instant::now();
    let code = tokio::time::timeout(REVOKE_BOUND, async {
        lula_auth::sessions::revoke_device(
            &mut hub.redis().await,
            &hub.auth_keys,
            &"dev-1".parse().unwrap(),
        )
        .await
        .unwrap();
        node.closed().await
    })
    .await
    .unwrap_or_else(|_| panic!("not closed within {REVOKE_BOUND:?} of the revoke"));
    eprintln!("revoke to close: {:?}", started.elapsed());
    assert_eq!(code, Some(close::SESSION_REVOKED));
}

#[tokio::test]
async fn a_client_speaking_our_protocol_gets_no_grace() {
    let hub = spawn_hub_with(with_grace(Duration::from_secs(3600))).await;
    let (token, exp) = short_token(&hub, "dev-2", "s-2", 2).await;
    let mut ours = hub.connect_with_token(&token).await.unwrap();
    ours.request("id", json!({})).await;
    ours.request("subscribe", json!({"id": "0-0"})).await;
    assert_eq!(ours.closed().await, Some(close::SESSION_EXPIRED));
    // Closed at expiry, not after the grace.
    assert!(now() <= exp + 60);

    // One that starts Node-style and subscribes after its token expired is
    // closed at once.
    let (token, exp) = short_token(&hub, "dev-3", "s-3", 1).await;
    let mut late = hub.connect_with_token(&token).await.unwrap();
    late.request("id", json!({})).await;
    wait_past(exp, 1).await;
    late.send_text(json!({"type": "subscribe", "id": "9", "payload": {"id": "0-0"}}).to_string())
        .await;
    assert_eq!(late.closed().await, Some(close::SESSION_EXPIRED));
}

#[tokio::test]
async fn the_grace_is_bounded_and_then_expiry_closes_with_4001() {
    let hub = spawn_hub_with(with_grace(Duration::from_secs(2))).await;
    let (token, exp) = short_token(&hub, "dev-4", "s-4", 1).await;
    let mut node = hub.connect_with_token(&token).await.unwrap();
    node.request("id", json!({})).await;
    assert_eq!(node.closed().await, Some(close::SESSION_EXPIRED));
    assert!(now() >= exp + 2, "closed before the grace ran out");
}
