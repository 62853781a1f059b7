//! Taking over the Node lula-client's state (`lula_client::takeover`), against
//! a real device Redis: what is taken, what wins when both exist, and the
//! clear refusals. The whole switch with a hub is in e2e/tests/migration.rs.

use lula_client::Config;
use lula_client::identity::{IDENTITY_FILE, Identity};
use lula_client::takeover::{load_identity, node_state_key};
use lula_protocol::Redacted;
use lula_protocol::keys::DeviceKeys;
use lula_testkit::RedisServer;
use tokio_util::sync::CancellationToken;

const OTP: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

struct Fixture {
    redis: RedisServer,
    dir: tempfile::TempDir,
    keys: DeviceKeys,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            redis: RedisServer::start(),
            dir: tempfile::tempdir().unwrap(),
            keys: DeviceKeys::default(),
        }
    }

    fn config(&self, client: &str, node_secret: Option<&str>) -> Config {
        let mut c = Config::new(client.parse().unwrap(), OTP, self.dir.path());
        c.redis_url = self.redis.url();
        c.node_secret = node_secret.map(|s| Redacted::new(s.to_owned()));
        c
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The Node client's hash, as its app.js leaves it.
    async fn node_state(&self, fields: &[(&str, &str)]) {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(node_state_key(&self.keys));
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        let _: () = cmd.query_async(&mut self.conn().await).await.unwrap();
    }

    async fn hgetall(&self, key: &str) -> std::collections::BTreeMap<String, String> {
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_registered_node_device_keeps_its_id_secret_and_cursor_and_its_keys_stay() {
    let f = Fixture::new();
    f.node_state(&[
        ("client", "dev-1"),
        ("otpSecret", OTP),
        ("registered", "1733300000000"),
        ("id", "1733300000000-4"),
    ])
    .await;
    let before = f.hgetall(&node_state_key(&f.keys)).await;

    let id = load_identity(
        &f.config("dev-1", Some("node-secret-of-dev-1")),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(id.registered);
    assert_eq!(id.secret.expose(), "node-secret-of-dev-1");
    assert_eq!(id.client_id.as_str(), "dev-1");
    let state = f.hgetall(&f.keys.state()).await;
    assert_eq!(state["downstream"], "1733300000000-4");
    // Durable: the next start reads our file.
    let again = Identity::load(&f.dir.path().join(IDENTITY_FILE))
        .unwrap()
        .unwrap();
    assert!(again.registered);
    assert_eq!(again.secret.expose(), "node-secret-of-dev-1");
    assert_eq!(f.hgetall(&node_state_key(&f.keys)).await, before);
}

#[tokio::test]
async fn an_unregistered_node_device_gets_a_strong_secret_of_ours() {
    let f = Fixture::new();
    f.node_state(&[("client", "dev-1"), ("otpSecret", OTP)])
        .await;
    let id = load_identity(&f.config("dev-1", Some("short")), &CancellationToken::new())
        .await
        .unwrap();
    assert!(!id.registered);
    assert!(id.secret.expose().len() >= 43, "not a fresh secret");
    // No `id` in the Node state: no cursor written.
    assert!(!f.hgetall(&f.keys.state()).await.contains_key("downstream"));
}

#[tokio::test]
async fn when_both_exist_ours_wins() {
    let f = Fixture::new();
    let ours = Identity::load_or_create(f.dir.path(), &"dev-1".parse().unwrap()).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(f.keys.state())
        .arg("downstream")
        .arg("1733300000000-9")
        .query_async(&mut f.conn().await)
        .await
        .unwrap();
    f.node_state(&[
        ("client", "dev-1"),
        ("registered", "1"),
        ("id", "1733300000000-2"),
    ])
    .await;
    let id = load_identity(
        &f.config("dev-1", Some("node-secret-of-dev-1")),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(id.secret, ours.secret);
    assert!(!id.registered);
    assert_eq!(
        f.hgetall(&f.keys.state()).await["downstream"],
        "1733300000000-9"
    );
}

#[tokio::test]
async fn a_registered_node_device_without_its_secret_or_of_another_id_is_refused_clearly() {
    let f = Fixture::new();
    f.node_state(&[("client", "dev-1"), ("registered", "1"), ("id", "5-1")])
        .await;
    let no_secret = load_identity(&f.config("dev-1", None), &CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(no_secret.contains("LULA_SECRET"), "{no_secret}");
    let other = load_identity(
        &f.config("dev-2", Some("x".repeat(20).as_str())),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(other.contains("belongs to client dev-1"), "{other}");
    // Refusals write nothing: no identity, no cursor.
    assert!(!f.dir.path().join(IDENTITY_FILE).exists());
    assert!(!f.hgetall(&f.keys.state()).await.contains_key("downstream"));
}

#[tokio::test]
async fn a_node_cursor_that_is_not_a_stream_id_is_refused() {
    let f = Fixture::new();
    f.node_state(&[("client", "dev-1"), ("id", "yesterday")])
        .await;
    let e = load_identity(&f.config("dev-1", None), &CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a stream id"), "{e}");
}
