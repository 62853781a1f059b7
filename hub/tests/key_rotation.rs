//! Key rotation seen from the hub: tokens of every key lula-auth publishes
//! verify (the overlap while instances roll over to a new key), and a key
//! that is no longer published stops verifying once the hub's key cache
//! expires.

mod common;

use std::time::Duration;

use common::{TestHub, spawn_hub_with, status_of};
use lula_auth::signing::{KEY_GRACE, Signer};

/// The hub's key cache in this test, instead of the default minute.
const KEY_CACHE_TTL: Duration = Duration::from_millis(500);
/// lula-auth's token lifetime, which its published keys outlive by KEY_GRACE.
const TOKEN_TTL: Duration = Duration::from_secs(900);

/// A token of `client` signed by `signer`, under a new live session `sid`.
async fn token(hub: &TestHub, signer: &Signer, client: &str, sid: &str) -> String {
    hub.session(sid, client).await;
    signer.sign(&hub.claims(client, sid, 900)).unwrap()
}

#[tokio::test]
async fn tokens_of_both_published_keys_verify_until_one_is_withdrawn() {
    let hub = spawn_hub_with(|c| lula_hub::Config {
        key_cache_ttl: KEY_CACHE_TTL,
        ..c
    })
    .await;
    let mut redis = hub.redis().await;
    // Two lula-auth instances, or one before and after a rotation: each
    // publishes its key as lula-auth does, expiring after the longest token.
    let (k1, k2) = (Signer::generate(), Signer::generate());
    for k in [&k1, &k2] {
        k.publish(&mut redis, &hub.auth_keys, TOKEN_TTL)
            .await
            .unwrap();
        let ttl: i64 = redis::cmd("TTL")
            .arg(hub.auth_keys.verify_key(k.kid()))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            ttl > 0 && ttl as u64 <= (TOKEN_TTL + KEY_GRACE).as_secs(),
            "a published key must expire after the longest token: TTL {ttl}"
        );
    }
    assert_ne!(k1.kid(), k2.kid());

    // Both verify, each cached by its own kid.
    let t1 = token(&hub, &k1, "dev-1", "s1").await;
    let t2 = token(&hub, &k2, "dev-2", "s2").await;
    assert_eq!(status_of(hub.connect_with_token(&t1).await), 101, "K1");
    assert_eq!(status_of(hub.connect_with_token(&t2).await), 101, "K2");

    // K1 is no longer published (its instance stopped and the key expired,
    // or an operator withdrew it). Once the hub's cached copy is older than
    // the cache TTL, a K1 token is refused even with a live session.
    let _: () = redis::cmd("DEL")
        .arg(hub.auth_keys.verify_key(k1.kid()))
        .query_async(&mut redis)
        .await
        .unwrap();
    tokio::time::sleep(KEY_CACHE_TTL + Duration::from_millis(200)).await;
    let t1 = token(&hub, &k1, "dev-1", "s3").await;
    assert_eq!(
        status_of(hub.connect_with_token(&t1).await),
        401,
        "a withdrawn key still verifies"
    );
    // K2 still does.
    let t2 = token(&hub, &k2, "dev-2", "s4").await;
    assert_eq!(status_of(hub.connect_with_token(&t2).await), 101, "K2");
}
