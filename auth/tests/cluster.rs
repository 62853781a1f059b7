//! lula-auth on a Redis Cluster (three masters, made by the test from local
//! redis-server processes): the whole device life cycle through the HTTP API,
//! failed-attempt limits and revocation, whose keys spread over the masters,
//! and the `provision` and `revoke` commands with `--redis-cluster`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use lula_auth::Config;
use lula_auth::throttle::Limits;
use lula_protocol::ClientId;
use lula_protocol::keys::{AuthKeys, fields};
use lula_runtime::redis::{RedisConn, RedisTarget};
use lula_testkit::RedisCluster;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct ClusterAuth {
    cluster: RedisCluster,
    conn: RedisConn,
    keys: AuthKeys,
    url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl ClusterAuth {
    async fn start() -> Self {
        let cluster = RedisCluster::start(3);
        let config = Config {
            redis_cluster: true,
            bcrypt_cost: 4,
            limits: Limits {
                per_client: 3,
                per_address: 1000,
                window: Duration::from_secs(60),
            },
            ..Config::new(cluster.url())
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(lula_auth::run(listener, config, shutdown.clone()));
        let mut target = RedisTarget::new(cluster.url(), true);
        target.timeout = Duration::from_secs(30);
        let conn = target.connect().await.unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let auth = ClusterAuth {
            cluster,
            conn,
            keys: AuthKeys::default(),
            url,
            http,
            shutdown,
        };
        lula_testkit::eventually("lula-auth healthy", Duration::from_secs(30), || async {
            let res = auth.http.get(format!("{}/healthz", auth.url)).send().await;
            res.ok()?.status().is_success().then_some(())
        })
        .await;
        auth
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn exists(&self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap()
    }
}

fn secret(tag: &str) -> String {
    format!("{tag}-0123456789abcdefghijklmnopqrstuvwxyz")
}

fn otp_now(otp_secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    lula_auth::otp::code_at(otp_secret, now).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_register_log_in_renew_and_are_revoked_on_a_cluster() {
    let auth = ClusterAuth::start().await;
    let mut holders = BTreeSet::new();
    // Hubs listen for revocations on one master; the cluster delivers them
    // there whichever master lula-auth published on.
    let last = auth.cluster.nodes().last().unwrap().url();
    let mut revocations = redis::Client::open(last)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    revocations
        .subscribe(auth.keys.revocations())
        .await
        .unwrap();
    let mut revocations = revocations.into_on_message();

    for d in 0..3 {
        let client = format!("dev-{d}");
        let id: ClientId = client.parse().unwrap();
        let provisioned = lula_auth::provision::provision(
            &mut auth.conn.clone(),
            &auth.keys,
            &id,
            Duration::from_secs(3600),
            false,
        )
        .await
        .unwrap();
        let (status, body) = auth
            .post(
                "/register",
                json!({"client": client, "otp": otp_now(&provisioned.otp_secret), "secret": secret(&client)}),
            )
            .await;
        assert_eq!(status, 200, "{body}");

        // Logins: session record and index are different keys (slots).
        let mut tokens = Vec::new();
        for _ in 0..2 {
            let (status, body) = auth
                .post(
                    "/login",
                    json!({"client": client, "secret": secret(&client)}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            tokens.push(body["accessToken"].as_str().unwrap().to_owned());
        }
        let (status, renewed) = auth
            .post("/renew", json!({"sessionToken": tokens[0]}))
            .await;
        assert_eq!(status, 200, "{renewed}");
        tokens.push(renewed["accessToken"].as_str().unwrap().to_owned());
        let sessions: Vec<String> = redis::cmd("ZRANGE")
            .arg(auth.keys.client_sessions(&id))
            .arg(0)
            .arg(-1)
            .query_async(&mut auth.conn.clone())
            .await
            .unwrap();
        assert_eq!(sessions.len(), 3, "every session indexed");
        for sid in &sessions {
            let key = auth.keys.session(sid);
            assert!(auth.exists(&key).await);
            holders.extend(auth.cluster.holders(&key));
        }
        holders.extend(auth.cluster.holders(&auth.keys.client(&id)));

        // Logout: one session ends, announced.
        let res = auth
            .http
            .post(format!("{}/logout", auth.url))
            .bearer_auth(&tokens[1])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let msg = tokio::time::timeout(Duration::from_secs(10), revocations.next())
            .await
            .unwrap()
            .unwrap();
        assert!(msg.get_payload::<String>().unwrap().starts_with(&client));

        // Failed logins are counted per client and per address; the fourth is 429.
        for _ in 0..3 {
            let (status, _) = auth
                .post(
                    "/login",
                    json!({"client": client, "secret": secret("wrong")}),
                )
                .await;
            assert_eq!(status, 401);
        }
        let (status, body) = auth
            .post(
                "/login",
                json!({"client": client, "secret": secret(&client)}),
            )
            .await;
        assert_eq!(status, 429, "{body}");

        // Revocation: every session ends, the secret is forgotten, hubs hear it.
        let revoked = lula_auth::sessions::revoke_device(&mut auth.conn.clone(), &auth.keys, &id)
            .await
            .unwrap();
        assert_eq!(revoked, 2, "the two sessions left");
        for sid in &sessions {
            assert!(!auth.exists(&auth.keys.session(sid)).await);
        }
        assert!(!auth.exists(&auth.keys.client_sessions(&id)).await);
        let record: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(auth.keys.client(&id))
            .query_async(&mut auth.conn.clone())
            .await
            .unwrap();
        assert!(!record.contains_key(fields::SECRET));
        let msg = tokio::time::timeout(Duration::from_secs(10), revocations.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.get_payload::<String>().unwrap(), client);
        let (status, _) = auth
            .post("/renew", json!({"sessionToken": tokens[2]}))
            .await;
        assert_eq!(status, 401);
    }
    assert!(
        holders.len() >= 2,
        "sessions and records should spread over the masters: {holders:?}"
    );
    auth.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_and_revoke_commands_take_a_cluster_seed() {
    let cluster = RedisCluster::start(3);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lula-auth"))
            .args(args)
            .args(["--redis-url", &cluster.url(), "--redis-cluster"])
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lula-auth {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let mut clients = Vec::new();
    for d in 0..4 {
        let client = format!("dev-{d}");
        let printed: Value = serde_json::from_str(&run(&["provision", &client, "--json"])).unwrap();
        assert_eq!(printed["client"], json!(client));
        clients.push(client);
    }
    let holders: BTreeSet<u16> = clients
        .iter()
        .flat_map(|c| cluster.holders(&AuthKeys::default().client(&c.parse().unwrap())))
        .collect();
    assert!(holders.len() >= 2, "{holders:?}");
    let printed = run(&["revoke", "dev-0"]);
    assert!(
        printed.contains("revoked 0 session(s) of dev-0"),
        "{printed}"
    );
    // Without --redis-cluster, a key on another master is refused (MOVED).
    let out = Command::new(env!("CARGO_BIN_EXE_lula-auth"))
        .args([
            "provision",
            "dev-1",
            "--force",
            "--redis-url",
            &cluster.url(),
        ])
        .env_remove("REDIS_URL")
        .env_remove("LULA_REDIS_CLUSTER")
        .output()
        .unwrap();
    let on_seed = cluster.holders(&AuthKeys::default().client(&"dev-1".parse().unwrap()))
        == vec![cluster.nodes()[0].port()];
    assert_eq!(out.status.success(), on_seed);
}
