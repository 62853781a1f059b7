//! Test harness: a real lula-auth on 127.0.0.1:0 against its own real
//! redis-server, a real HTTP client with one method per endpoint, and a clock
//! the test drives.

#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lula_auth::config::Clock;
use lula_auth::provision::{self, Provisioned};
use lula_auth::{AuthError, Config, otp};
use lula_protocol::ClientId;
use lula_protocol::keys::AuthKeys;
use lula_protocol::token::{self, Claims};
use lula_testkit::RedisServer;
use redis::aio::MultiplexedConnection;
use reqwest::header::{self, HeaderMap};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long provisioned clients may take to register, unless a test says otherwise.
pub const REG_WINDOW: Duration = Duration::from_secs(3600);

/// A lula-auth instance serving on a free port, with its own Redis.
pub struct TestApp {
    pub addr: SocketAddr,
    pub redis: RedisServer,
    pub conn: MultiplexedConnection,
    pub keys: AuthKeys,
    pub config: Config,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// lula-auth with test defaults (bcrypt cost 4) on a fresh Redis.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|c| c).await
}

/// lula-auth on a fresh Redis, with `configure` applied to the test defaults.
pub async fn spawn_app_with(configure: impl FnOnce(Config) -> Config) -> TestApp {
    spawn_app_on(RedisServer::start(), configure).await
}

/// lula-auth on an existing Redis (one a stopped instance used, say).
pub async fn spawn_app_on(redis: RedisServer, configure: impl FnOnce(Config) -> Config) -> TestApp {
    let config = configure(Config {
        bcrypt_cost: 4,
        ..Config::new(redis.url())
    });
    let keys = AuthKeys::new(config.prefix.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(lula_auth::run(listener, config.clone(), shutdown.clone()));
    let conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        // A hang guard, not a speed assertion.
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    TestApp {
        addr,
        redis,
        conn,
        keys,
        config,
        http,
        shutdown,
        task,
    }
}

/// A clock that stands still until the test moves it.
#[derive(Clone)]
pub struct DrivenClock(Arc<AtomicU64>);

impl DrivenClock {
    /// Stopped at the current system time.
    pub fn at_system_now() -> Self {
        DrivenClock(Arc::new(AtomicU64::new(system_now())))
    }

    /// For [`Config::clock`].
    pub fn clock(&self) -> Clock {
        let secs = self.0.clone();
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(secs.load(Ordering::SeqCst)))
    }

    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set(&self, epoch_secs: u64) {
        self.0.store(epoch_secs, Ordering::SeqCst);
    }
}

pub fn system_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn client_id(client: &str) -> ClientId {
    client.parse().unwrap()
}

/// A device secret of `tag`, within the accepted length and form-safe.
pub fn secret(tag: &str) -> String {
    format!("{tag}-0123456789abcdefghijklmnopqrstuvwxyz")
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    async fn read(res: reqwest::Response) -> Reply {
        Reply {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            text: res.text().await.unwrap(),
        }
    }

    /// The body as JSON; panics, showing the body, when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "{} answered a body that is not JSON ({e}): {:?}",
                self.status, self.text
            )
        })
    }

    /// Asserts a 2xx and returns the JSON body.
    pub fn ok(&self) -> Value {
        assert_eq!(self.status, 200, "body: {}", self.text);
        self.json()
    }

    /// Asserts the documented error shape: `status`, a JSON body with string
    /// `code` equal to `code` and a non-empty string `message`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            content_type.starts_with("application/json"),
            "{status} with content type {content_type:?}: {:?}",
            self.text
        );
        let body = self.json();
        assert_eq!(body["code"], json!(code), "body: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message missing in {body}"
        );
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let res = self.http.post(self.url(path)).json(body).send().await;
        Reply::read(res.unwrap()).await
    }

    /// POSTs `fields` as `application/x-www-form-urlencoded` (reqwest's own
    /// `form` needs a feature this workspace leaves off).
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body = serde_urlencoded::to_string(fields).unwrap();
        self.post_raw(path, Some("application/x-www-form-urlencoded"), body)
            .await
    }

    /// POSTs `body` with `content_type` (none at all when `None`).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let mut req = self.http.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        Reply::read(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::read(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn register(&self, body: Value) -> Reply {
        self.post_json("/register", &body).await
    }

    pub async fn login(&self, body: Value) -> Reply {
        self.post_json("/login", &body).await
    }

    /// `POST /logout` with `Authorization: Bearer <token>` and no body.
    pub async fn logout(&self, token: &str) -> Reply {
        let res = self
            .http
            .post(self.url("/logout"))
            .bearer_auth(token)
            .send()
            .await;
        Reply::read(res.unwrap()).await
    }

    pub async fn healthz(&self) -> Reply {
        self.get("/healthz").await
    }

    pub async fn readyz(&self) -> Reply {
        self.get("/readyz").await
    }

    /// The operator's `provision` (not forced); panics when refused.
    pub async fn provision(&self, client: &str) -> Provisioned {
        self.try_provision(client, false).await.unwrap()
    }

    pub async fn try_provision(&self, client: &str, force: bool) -> Result<Provisioned, AuthError> {
        let mut conn = self.conn.clone();
        provision::provision(&mut conn, &self.keys, &client_id(client), REG_WINDOW, force).await
    }

    /// The code of `otp_secret` at the app's clock's current time.
    pub fn otp(&self, otp_secret: &str) -> String {
        otp::code_at(otp_secret, self.config.clock.epoch_secs()).unwrap()
    }

    /// Provisions `client` and registers it with `secret`.
    pub async fn register_device(&self, client: &str, secret: &str) -> Provisioned {
        let provisioned = self.provision(client).await;
        self.register(json!({
            "client": client,
            "otp": self.otp(&provisioned.otp_secret),
            "secret": secret,
        }))
        .await
        .ok();
        provisioned
    }

    /// Logs `client` in and returns its session token.
    pub async fn login_token(&self, client: &str, secret: &str) -> String {
        let body = self
            .login(json!({ "client": client, "secret": secret }))
            .await
            .ok();
        body["accessToken"].as_str().unwrap().to_owned()
    }

    /// Verifies `token` the way a hub does it: with the public key published
    /// under the token's `kid` (not the session check).
    pub async fn verify_with_published_key(&self, token_text: &str) -> Claims {
        let kid = token::kid_of(token_text).unwrap();
        let published: Option<String> = self.redis_get(&self.keys.verify_key(&kid)).await;
        let public = token::decode_public_key(
            &published.unwrap_or_else(|| panic!("no key published for kid {kid}")),
        )
        .unwrap();
        token::verify(token_text, &public).unwrap()
    }

    /// `lula-auth:session:<sid>` of the session `token` names.
    pub async fn session_key(&self, token: &str) -> String {
        self.keys
            .session(&self.verify_with_published_key(token).await.sid)
    }

    /// The client hash, field by field.
    pub async fn client_record(&self, client: &str) -> std::collections::HashMap<String, String> {
        redis::cmd("HGETALL")
            .arg(self.keys.client(&client_id(client)))
            .query_async(&mut self.conn.clone())
            .await
            .unwrap()
    }

    pub async fn redis_get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap()
    }

    pub async fn exists(&self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap()
    }

    pub async fn ttl(&self, key: &str) -> i64 {
        redis::cmd("TTL")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap()
    }

    pub async fn hset(&self, key: &str, fields: &[(&str, &str)]) {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key);
        for (f, v) in fields {
            cmd.arg(*f).arg(*v);
        }
        cmd.query_async::<()>(&mut self.conn.clone()).await.unwrap();
    }

    /// Stops serving (as a shutdown signal would) and hands back its Redis.
    pub async fn stop(self) -> RedisServer {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.redis
    }
}
