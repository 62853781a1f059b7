//! Test harness: a real hub on 127.0.0.1:0 against its own real redis-server,
//! tokens minted exactly as lula-auth mints them (Ed25519 JWT, key published in
//! Redis, session record), and a small WebSocket client.

#![allow(dead_code, missing_docs)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use lula_hub::Config;
use lula_protocol::keys::{AuthKeys, HubKeys};
use lula_protocol::token::{AUDIENCE, Claims, ISSUER, encode_public_key, kid_for};
use lula_testkit::RedisServer;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub struct TestHub {
    pub addr: std::net::SocketAddr,
    /// The admin listener: probes, /metrics, /fleet.
    pub admin: std::net::SocketAddr,
    pub redis: RedisServer,
    pub conn: redis::aio::MultiplexedConnection,
    pub keys: HubKeys,
    pub auth_keys: AuthKeys,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    signing: SigningKey,
}

pub async fn spawn_hub() -> TestHub {
    spawn_hub_with(|c| c).await
}

pub async fn spawn_hub_with(configure: impl FnOnce(Config) -> Config) -> TestHub {
    spawn_hub_on(RedisServer::start(), configure).await
}

/// A hub on a Redis the test started itself (e.g. with special options).
pub async fn spawn_hub_on(redis: RedisServer, configure: impl FnOnce(Config) -> Config) -> TestHub {
    let config = configure(Config::new(redis.url()));
    let keys = HubKeys::new(config.prefix.clone());
    let auth_keys = AuthKeys::new(config.auth_prefix.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(lula_hub::run_with_admin(
        listener,
        Some(admin_listener),
        config,
        shutdown.clone(),
    ));
    let client = redis::Client::open(redis.url()).unwrap();
    // Longer than redis-rs's default 500 ms reply timeout: CI machines are busy.
    let conn_config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&conn_config)
        .await
        .unwrap();
    let signing = SigningKey::from_bytes(&rand_bytes());
    let pk = signing.verifying_key().to_bytes();
    let _: () = redis::cmd("SET")
        .arg(auth_keys.verify_key(&kid_for(&pk)))
        .arg(encode_public_key(&pk))
        .query_async(&mut conn)
        .await
        .unwrap();
    TestHub {
        addr,
        admin,
        redis,
        conn,
        keys,
        auth_keys,
        shutdown,
        task,
        signing,
    }
}

fn rand_bytes() -> [u8; 32] {
    rand::random()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A hub clock standing still at `secs` (epoch seconds): a token's time left
/// at the upgrade is then exactly what the test gave it, however long the
/// test takes to connect on a busy machine.
pub fn frozen_clock(secs: u64) -> lula_hub::Clock {
    lula_hub::Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(secs))
}

pub fn sign_with(key: &SigningKey, kid: &str, claims: &Claims) -> String {
    let der = key.to_pkcs8_der().unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
}

impl TestHub {
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn kid(&self) -> String {
        kid_for(&self.signing.verifying_key().to_bytes())
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn claims(&self, client: &str, sid: &str, ttl: i64) -> Claims {
        Claims {
            sub: client.parse().unwrap(),
            sid: sid.to_owned(),
            iat: now(),
            exp: (now() as i64 + ttl) as u64,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        }
    }

    /// A valid token for `client` with a live session, as lula-auth's login makes.
    pub async fn token(&self, client: &str) -> String {
        let sid = format!(
            "sid-{client}-{}",
            rand_bytes()[0..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        self.session(&sid, client).await;
        sign_with(&self.signing, &self.kid(), &self.claims(client, &sid, 3600))
    }

    pub async fn session(&self, sid: &str, client: &str) {
        let mut c = self.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(self.auth_keys.session(sid))
            .arg(client)
            .arg("EX")
            .arg(3600)
            .query_async(&mut c)
            .await
            .unwrap();
    }

    pub async fn connect(&self, client: &str) -> Ws {
        let token = self.token(client).await;
        self.connect_with_token(&token).await.unwrap()
    }

    /// Starts another hub replica on the same Redis; returns its address and
    /// the token that stops it.
    pub async fn spawn_replica(&self) -> (std::net::SocketAddr, CancellationToken) {
        self.spawn_replica_with(|c| c).await
    }

    /// A replica with `configure` applied to its default config.
    pub async fn spawn_replica_with(
        &self,
        configure: impl FnOnce(Config) -> Config,
    ) -> (std::net::SocketAddr, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(lula_hub::run(
            listener,
            configure(Config::new(self.redis.url())),
            shutdown.clone(),
        ));
        (addr, shutdown)
    }

    /// Connects `client` to the hub (or replica) at `addr`.
    pub async fn connect_to(&self, addr: std::net::SocketAddr, client: &str) -> Ws {
        let token = self.token(client).await;
        let mut req = format!("ws://{addr}/").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Ws { ws, next_id: 1 }
    }

    pub async fn connect_with_token(&self, token: &str) -> Result<Ws, tungstenite::Error> {
        let mut req = self.url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Ws { ws, next_id: 1 })
    }

    /// How many connections are subscribed to `channel` on the hub's Redis
    /// (`PUBSUB NUMSUB`): one per hub replica for the revocation channel.
    pub async fn subscribers(&self, channel: &str) -> u64 {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        n
    }

    /// Waits (at most 10 s) until `channel` has at least `n` subscribers.
    pub async fn wait_for_subscribers(&self, channel: &str, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.subscribers(channel).await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{channel}: fewer than {n} subscribers after 10s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        self.conn.clone()
    }

    /// All entries of a stream as (id, [fields...]) with UTF-8 lossy strings.
    pub async fn range(&self, key: &str) -> Vec<(String, Vec<String>)> {
        let mut c = self.conn.clone();
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .unwrap();
        lula_protocol::redis_value::entries_from_range(v)
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.id.to_string(),
                    e.fields
                        .iter()
                        .map(|f| String::from_utf8_lossy(f).into_owned())
                        .collect(),
                )
            })
            .collect()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub struct Ws {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl From<WebSocketStream<MaybeTlsStream<TcpStream>>> for Ws {
    fn from(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Ws { ws, next_id: 1 }
    }
}

impl Ws {
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    /// Next text frame as JSON, skipping pings; panics after 10 s (hang guard).
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("no frame within 10s")
                .expect("socket ended")
                .expect("socket error");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Sends a request and waits for the reply with the same id (other frames,
    /// such as pushes, are returned in `skipped` order ignored).
    pub async fn request(&mut self, kind: &str, payload: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(json!({"type": kind, "id": id.to_string(), "payload": payload}).to_string())
            .await;
        loop {
            let reply = self.recv().await;
            if reply["id"] == json!(id.to_string()) {
                assert_eq!(reply["type"], json!(kind));
                return reply["payload"].clone();
            }
        }
    }

    /// Waits for the socket to close and returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("no close within 10s")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// Upgrades at the hub (or replica) at `addr` with `token`.
pub async fn connect_with_token_to(
    addr: std::net::SocketAddr,
    token: &str,
) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(Ws { ws, next_id: 1 })
}

/// The HTTP status of an upgrade: 101, or the refusal's.
pub fn status_of(r: Result<Ws, tungstenite::Error>) -> u16 {
    match r {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

pub fn entry(seq: &str, fields: &[&str]) -> Value {
    json!({"id": seq, "fields": fields})
}
