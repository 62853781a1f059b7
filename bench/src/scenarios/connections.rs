//! Scenario 5, idle connections: many authenticated devices connected to one
//! hub, doing nothing.
//!
//! Each device is a bare WebSocket that behaves like lula-client at connect:
//! `Authorization: Bearer <token>`, then `id` and `subscribe` from `0-0`, and
//! both replies awaited; afterwards a task per connection keeps reading, so
//! the hub's pings are answered. Tokens are minted the way `POST /login` does
//! it, minus bcrypt: a signing key published in the hub's Redis, a session
//! record and a signed token per device. The hub's resident memory before and
//! after, divided by the connections, is its memory per idle device.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _, TryStreamExt as _};
use lula_auth::signing::Signer;
use lula_protocol::ClientId;
use lula_protocol::compress::{self, Decoder, Encoder, Params};
use lula_protocol::message::Envelope;
use lula_protocol::token::{AUDIENCE, Claims, ISSUER};
use redis::aio::MultiplexedConnection;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Ctx, Outcome, check_row, compression_row, cpu_rows};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::procstat::CpuMeter;
use crate::report::{Row, bytes, per_second, secs, thousands};

const SCENARIO: Scenario = Scenario::Connections;
/// Target from the issue, bytes of hub memory per idle connection.
const TARGET_BYTES: f64 = 16.0 * 1024.0;
/// Target from the issue, authenticated connects per second.
const TARGET_CONNECTS: f64 = 2_000.0;
/// Lifetime of the minted tokens.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Time allowed for one connect, upgrade and both replies.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Session records written at once while minting tokens.
const MINT_CONCURRENCY: usize = 64;
/// Pause before reading the hub's memory, so work set off by the last
/// connects has settled.
const SETTLE: Duration = Duration::from_secs(2);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs scenario 5.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let s = ctx.sizes;
    let n = s.connections;
    let cloud = Cloud::start(ctx.hub_exe).await?;
    ctx.progress(
        SCENARIO,
        format_args!("minting {} tokens", thousands(n as u64)),
    );
    // One extra for the warm-up connection.
    let tokens = mint_tokens(&cloud, n + 1).await?;
    let url = cloud.hub.url();
    let offer = ctx.compression_window_bits.and_then(Params::new);

    // One connection first, so lazy one-time setup in the hub (its Redis
    // connection, the key lookup) is not counted per connection.
    drop(
        connect_one(&url, &tokens[n], offer)
            .await
            .context("warm-up connection")?,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut redis = cloud.conn();
    let rss_before = cloud.hub.rss_bytes()?;
    let fds_before = cloud.hub.open_fds()?;
    let clients_before = redis_clients(&mut redis).await?;

    ctx.progress(
        SCENARIO,
        format_args!(
            "connecting {} devices, {} at a time",
            thousands(n as u64),
            s.connect_concurrency
        ),
    );
    let alive = Arc::new(AtomicUsize::new(0));
    let mut holders = JoinSet::new();
    let meter = CpuMeter::start(vec![
        ("hub".into(), vec![cloud.hub.pid()]),
        ("hub redis".into(), vec![cloud.redis_pid()]),
        (
            "lula-bench (raw WebSocket devices)".into(),
            vec![std::process::id()],
        ),
    ]);
    let start = Instant::now();
    let mut last_ok = start;
    let (mut ok, mut failed, mut first_error) = (0usize, 0usize, None);
    let mut connects = futures_util::stream::iter(&tokens[..n])
        .map(|token| connect_one(&url, token, offer))
        .buffer_unordered(s.connect_concurrency.max(1));
    while let Some(result) = connects.next().await {
        match result {
            Ok(ws) => {
                ok += 1;
                last_ok = Instant::now();
                alive.fetch_add(1, Ordering::Relaxed);
                holders.spawn(hold(ws, alive.clone()));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    drop(connects);
    let connecting = last_ok.duration_since(start);
    let cpu = cpu_rows(SCENARIO, "connecting", &meter);

    tokio::time::sleep(SETTLE).await;
    let rss_after = cloud.hub.rss_bytes()?;
    let fds_after = cloud.hub.open_fds()?;
    let clients_after = redis_clients(&mut redis).await?;
    let still_open = alive.load(Ordering::Relaxed);

    let per = |after: f64, before: f64| (after - before) / ok.max(1) as f64;
    let connects_per_s = ok as f64 / connecting.as_secs_f64().max(1e-6);
    let mem = per(rss_after as f64, rss_before as f64);
    let mut rows = vec![
        compression_row(SCENARIO, ctx.compression_window_bits),
        Row::info(
            SCENARIO,
            format!(
                "authenticated connects/s ({} devices, {} in flight)",
                thousands(n as u64),
                s.connect_concurrency
            ),
            per_second(connects_per_s, "connects"),
        )
        .target(
            format!(">= {}", per_second(TARGET_CONNECTS, "connects")),
            ok == n && connects_per_s >= TARGET_CONNECTS,
        ),
        Row::info(SCENARIO, "hub memory per idle connection", bytes(mem)).target(
            format!("<= {}", bytes(TARGET_BYTES)),
            ok == n && mem <= TARGET_BYTES,
        ),
        Row::info(
            SCENARIO,
            "hub RSS before -> after",
            format!(
                "{} -> {}",
                bytes(rss_before as f64),
                bytes(rss_after as f64)
            ),
        ),
        Row::info(
            SCENARIO,
            "hub open fds per idle connection",
            format!("{:.2}", per(fds_after as f64, fds_before as f64)),
        ),
        Row::info(
            SCENARIO,
            "hub redis clients per idle connection",
            format!("{:.2}", per(clients_after as f64, clients_before as f64)),
        ),
        Row::info(SCENARIO, "time to connect all", secs(connecting)),
    ];
    rows.extend(cpu);

    let check = if ok == n && still_open == n {
        Ok(format!(
            "{} devices authenticated, answered and still open",
            thousands(n as u64)
        ))
    } else {
        Err(format!(
            "{ok} of {n} connected ({failed} failed{}), {still_open} still open after {SETTLE:?}",
            first_error
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        ))
    };
    rows.push(check_row(SCENARIO, "all connected and open", &check));
    holders.abort_all();
    Ok(Outcome {
        rows,
        check,
        notes: cloud.hub_log_note(SCENARIO.name()).into_iter().collect(),
    })
}

/// `count` session tokens, minted as `POST /login` does after bcrypt: a key
/// published where the hub looks, a session record and a signed token each.
async fn mint_tokens(cloud: &Cloud, count: usize) -> anyhow::Result<Vec<String>> {
    let signer = Arc::new(Signer::generate());
    let mut conn = cloud.conn();
    signer
        .publish(&mut conn, &cloud.auth_keys, TOKEN_TTL)
        .await
        .context("publish signing key")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    futures_util::stream::iter(0..count)
        .map(|i| {
            let (signer, mut conn) = (signer.clone(), cloud.conn());
            async move {
                let client: ClientId = format!("idle-{i:05}").parse().context("client id")?;
                let claims = Claims {
                    sub: client.clone(),
                    sid: format!("{:032x}", rand::random::<u128>()),
                    iat: now,
                    exp: now + TOKEN_TTL.as_secs(),
                    iss: ISSUER.into(),
                    aud: AUDIENCE.into(),
                };
                lula_auth::sessions::create(
                    &mut conn,
                    &cloud.auth_keys,
                    &client,
                    &claims.sid,
                    now,
                    TOKEN_TTL,
                )
                .await
                .map_err(|e| anyhow::anyhow!("session of {client}: {e}"))?;
                signer.sign(&claims)
            }
        })
        .buffered(MINT_CONCURRENCY)
        .try_collect()
        .await
}

/// Connects like lula-client: bearer token, the compression offer (if any;
/// the run's `--compression-window-bits`), `id` and `subscribe` (compressed
/// if the hub agreed), both replies.
async fn connect_one(url: &str, token: &str, offer: Option<Params>) -> anyhow::Result<Ws> {
    tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        if let Some(offer) = offer {
            request
                .headers_mut()
                .insert(compress::HEADER, HeaderValue::from_str(&offer.to_string())?);
        }
        // Small buffers: ten thousand of these live in this process.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, response) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                .await
                .context("connect")?;
        let agreed = response
            .headers()
            .get(compress::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Params::parse);
        let mut encoder = agreed.map(Encoder::new);
        let mut decoder = agreed.map(|p| Decoder::new(p, 1 << 20));
        for text in [
            r#"{"type":"id","id":1}"#,
            r#"{"type":"subscribe","id":2,"payload":{"id":"0-0"}}"#,
        ] {
            let msg = match &mut encoder {
                Some(e) => Message::Binary(e.encode(text.as_bytes()).into()),
                None => Message::text(text),
            };
            ws.send(msg).await?;
        }
        let (mut id, mut subscribed) = (false, false);
        while !(id && subscribed) {
            let text = match (ws.next().await, &mut decoder) {
                (Some(Ok(Message::Binary(frame))), Some(d)) => {
                    Some(String::from_utf8(d.decode(&frame)?).context("utf-8")?)
                }
                (Some(Ok(Message::Text(text))), _) => Some(text.as_str().to_owned()),
                (other, _) => match other {
                    Some(Ok(Message::Close(frame))) => bail!("hub closed: {frame:?}"),
                    Some(Ok(_)) => None,
                    Some(Err(e)) => return Err(e).context("read reply"),
                    None => bail!("hub closed the connection"),
                },
            };
            let Some(text) = text else { continue };
            let env = Envelope::parse(&text).context("reply")?;
            if let Some(e) = env.error() {
                bail!("{} refused: {} {}", env.kind, e.status, e.message);
            }
            match (env.kind.as_ref(), env.id.as_ref().and_then(|v| v.as_u64())) {
                ("id", Some(1)) => id = true,
                ("subscribe", Some(2)) => subscribed = true,
                _ => {}
            }
        }
        Ok(ws)
    })
    .await
    .context("timed out")?
}

/// Keeps reading (which answers pings) until the hub closes the connection.
async fn hold(mut ws: Ws, alive: Arc<AtomicUsize>) {
    loop {
        match ws.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }
    alive.fetch_sub(1, Ordering::Relaxed);
}

/// `connected_clients` of the Redis behind `conn`.
async fn redis_clients(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(conn)
        .await
        .context("INFO clients")?;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no connected_clients in INFO clients")
}
