//! The daemon: register once, log in, run sessions, and come back after any
//! failure by itself.
//!
//! It is an explicit loop over states rather than nested retries:
//! unregistered → (register) → no session → (login) → connected → (error) →
//! waiting (backoff) → no session or connected again. Every wait is cut short
//! by shutdown, and the only way out of the loop is shutdown or a
//! configuration error no retry can fix.

use std::time::Duration;

use anyhow::Context as _;
use lula_protocol::Redacted;
use lula_protocol::keys::DeviceKeys;
use lula_protocol::message::close;
use lula_runtime::secret::{Readers, read_secret_file};
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::auth::{AuthCallError, AuthClient, Session};
use crate::backoff::Backoff;
use crate::device::Device;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::published::StatusUpdate;
use crate::session::{self, SessionError};
use std::sync::Arc;

/// Why an unregistered device cannot start without the provisioned secret.
const NEEDS_OTP_SECRET: &str = "this device is not registered yet: give the OTP secret `lula-auth provision` printed with --otp-secret-file <file> (or LULA_OTP_SECRET_FILE); once registered it is no longer needed";

/// A token this close to expiry is renewed before connecting with it.
const RENEW_MARGIN: Duration = Duration::from_secs(30);

/// Reads the device Redis's eviction and persistence settings once it is
/// reachable, logs a warning per unsafe one and sets the
/// `redis_unsafe_settings` gauge; with `refuse`, an unsafe setting is an
/// error (`--require-safe-redis`).
async fn check_device_redis(
    mut device: Device,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    refuse: bool,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let safety = loop {
        match device.redis_safety().await {
            Ok(s) => break s,
            Err(e) => {
                tracing::debug!(error = %e, "device Redis not reachable yet for the settings check");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    let what = "the device Redis";
    let unsafe_settings = lula_runtime::redis_check::report(what, &safety);
    metrics.redis_unsafe_settings.set(unsafe_settings as i64);
    match lula_runtime::redis_check::refusal(what, &safety) {
        Some(refusal) if refuse => anyhow::bail!(refusal),
        _ => Ok(()),
    }
}

/// Runs the daemon until `shutdown` is cancelled. Returns an error only for
/// problems retrying cannot solve (unreadable state dir, malformed OTP secret,
/// unparseable URLs).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    if let Some(listen) = config.metrics_listen {
        let (m, s) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listen, m, s).await {
                tracing::error!(error = format!("{e:#}"), "metrics endpoint stopped");
            }
        });
    }
    run_with_metrics(config, metrics, shutdown).await
}

/// The device Redis, with its settings checked (refusing to go on when they
/// are unsafe and `--require-safe-redis` says so) and `in:x` trimmed in the
/// background when `--trim-in-consumed` asks for it.
async fn open_device(
    config: &Config,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Device> {
    let device = Device::new(&config.redis_url, DeviceKeys::new(config.prefix.clone()))
        .context("parse --redis-url")?
        .with_keep_acked(config.keep_acked);
    let check = check_device_redis(
        device.clone(),
        metrics.clone(),
        shutdown.clone(),
        config.require_safe_redis,
    );
    if config.require_safe_redis {
        check.await?;
    } else {
        tokio::spawn(check);
    }
    if let Some(every) = config.trim_in_consumed {
        tokio::spawn(crate::retention::trim_in_loop(
            device.clone(),
            every,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    Ok(device)
}

/// [`run`], counting into `metrics` (which the caller may read or serve).
pub async fn run_with_metrics(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Takes over a Node lula-client's state when ours does not exist yet.
    let mut identity = crate::takeover::load_identity(&config, &shutdown).await?;
    if !identity.registered {
        // Fail at start, not at the first attempt, on a missing secret.
        otp_secret(&config)?;
    }
    let mut device = open_device(&config, &metrics, &shutdown).await?;
    let auth = AuthClient::with_ca_file(&config.auth_url, config.ca_file.as_deref())
        .context("build lula-auth client")?;
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    let mut session: Option<Session> = None;
    let started = StatusUpdate {
        pid: Some(std::process::id()),
        ..StatusUpdate::disconnected()
    };
    let _ = device.publish(&started).await;
    tracing::info!(client = %config.client_id, registered = identity.registered, "starting");

    while !shutdown.is_cancelled() {
        let wait = if !identity.registered {
            register(&auth, &config, &mut identity, &mut backoff, &mut device).await?
        } else if let Some(current) = session.as_mut().filter(|s| !s.expires_within(RENEW_MARGIN)) {
            let login = session::Login {
                auth: &auth,
                secret: identity.secret.expose(),
                current,
            };
            let report = session::run(&config, &mut device, login, &metrics, &shutdown).await;
            match after_session(report, &config, &mut backoff, &mut device).await {
                AfterSession::Stop => break,
                AfterSession::Wait(wait) => Some(wait),
                AfterSession::LogIn(wait) => {
                    session = None;
                    Some(wait)
                }
            }
        } else {
            log_in(
                &auth,
                &config,
                &mut identity,
                &mut backoff,
                &mut device,
                &mut session,
            )
            .await?
        };
        let Some(wait) = wait else { continue };
        tracing::debug!(?wait, "waiting before the next attempt");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = device.publish(&StatusUpdate::disconnected()).await;
    tracing::info!("stopped");
    Ok(())
}

/// One login attempt. `Ok(None)`: logged in (or found unregistered), go on;
/// `Ok(Some(wait))`: try again after `wait`; `Err`: the identity cannot be
/// saved.
async fn log_in(
    auth: &AuthClient,
    config: &Config,
    identity: &mut Identity,
    backoff: &mut Backoff,
    device: &mut Device,
    session: &mut Option<Session>,
) -> anyhow::Result<Option<Duration>> {
    let e = match auth
        .login(&config.client_id, identity.secret.expose())
        .await
    {
        Ok(s) => {
            let _ = device
                .publish(&StatusUpdate::session_expires(s.expires_at))
                .await;
            *session = Some(s);
            return Ok(None);
        }
        Err(AuthCallError::Status { status: 403, .. }) => {
            tracing::warn!(
                "lula-auth says this device is not registered (re-provisioned?); registering again"
            );
            identity.set_registered(false).context("save identity")?;
            return Ok(None);
        }
        Err(e) => e,
    };
    note_error(device, &e.to_string()).await;
    Ok(Some(match &e {
        AuthCallError::Status { status: 401, .. } => {
            tracing::error!(
                "lula-auth refused this device's secret; another daemon may have registered this client id. Re-provision it with `lula-auth provision --force`"
            );
            config.register_retry
        }
        AuthCallError::Status {
            status: 429,
            retry_after,
            ..
        } => retry_after.unwrap_or_else(|| backoff.next_delay()),
        _ => {
            tracing::warn!(error = %e, "login failed");
            backoff.next_delay()
        }
    }))
}

/// What to do after a session.
enum AfterSession {
    /// Shutdown was requested.
    Stop,
    /// Connect again with the same token after this long.
    Wait(Duration),
    /// Log in again after this long (the hub refused or ended the session).
    LogIn(Duration),
}

/// Decides what follows a session, and notes its error.
async fn after_session(
    report: session::SessionReport,
    config: &Config,
    backoff: &mut Backoff,
    device: &mut Device,
) -> AfterSession {
    // A connection that worked resets the backoff, unless another
    // connection of this device took it over: a second daemon with
    // the same identity would otherwise take turns with this one at
    // full speed.
    let replaced = matches!(
        report.result,
        Err(SessionError::Closed(Some(close::REPLACED)))
    );
    // Nor does a connection the hub (or the device) refused: the same
    // refusal after every connect would otherwise turn into a reconnect
    // loop at full speed.
    let refused = report.result.as_ref().is_err_and(SessionError::is_refusal);
    if report.established && !replaced && !refused {
        backoff.reset();
    }
    let e = match report.result {
        Ok(()) => return AfterSession::Stop,
        Err(e) => e,
    };
    note_error(device, &e.to_string()).await;
    match e {
        SessionError::Unauthorized => {
            tracing::info!("hub refused the session token; logging in again");
            AfterSession::LogIn(backoff.next_delay())
        }
        SessionError::Closed(Some(close::REPLACED)) => {
            tracing::warn!(
                "another connection of this device took over (is a second daemon running with this identity?); backing off"
            );
            AfterSession::Wait(backoff.next_delay())
        }
        SessionError::Closed(Some(code @ (close::SESSION_EXPIRED | close::SESSION_REVOKED))) => {
            tracing::info!(code, "hub ended the session; logging in again");
            AfterSession::LogIn(backoff.next_delay())
        }
        SessionError::RateLimited(after) => {
            AfterSession::Wait(after.unwrap_or_else(|| backoff.next_delay()))
        }
        SessionError::Uplink(e) => {
            tracing::error!(error = %e, "upstream sync is stuck");
            AfterSession::Wait(config.register_retry)
        }
        e => {
            tracing::warn!(error = %e, "disconnected from hub");
            AfterSession::Wait(backoff.next_delay())
        }
    }
}

/// One registration attempt. `Ok(None)`: registered, go on; `Ok(Some(wait))`:
/// try again after `wait`; `Err`: a configuration error.
async fn register(
    auth: &AuthClient,
    config: &Config,
    identity: &mut crate::identity::Identity,
    backoff: &mut Backoff,
    device: &mut Device,
) -> anyhow::Result<Option<Duration>> {
    // Read here, not at start: a registered device never needs the file.
    let otp_secret = otp_secret(config)?;
    let result = auth
        .register(
            &config.client_id,
            otp_secret.expose(),
            identity.secret.expose(),
        )
        .await;
    let registered = match result {
        Ok(()) => true,
        // Possibly our own earlier registration, answered before a crash kept us
        // from recording it: our secret logs in if so.
        Err(AuthCallError::Status { status: 409, .. }) => auth
            .login(&config.client_id, identity.secret.expose())
            .await
            .is_ok(),
        Err(AuthCallError::OtpSecret) => {
            anyhow::bail!("the OTP secret (--otp-secret-file) is not valid base32")
        }
        Err(e @ AuthCallError::Status { status: 429, .. }) => {
            note_error(device, &format!("registration: {e}")).await;
            let AuthCallError::Status { retry_after, .. } = e else {
                return Ok(Some(config.register_retry));
            };
            return Ok(Some(retry_after.unwrap_or(config.register_retry)));
        }
        Err(e @ AuthCallError::Status { .. }) => {
            tracing::warn!(error = %e, retry_in = ?config.register_retry, "registration refused");
            note_error(device, &format!("registration: {e}")).await;
            return Ok(Some(config.register_retry));
        }
        Err(e) => {
            tracing::warn!(error = %e, "registration failed");
            note_error(device, &format!("registration: {e}")).await;
            return Ok(Some(backoff.next_delay().min(config.register_retry)));
        }
    };
    if !registered {
        let message = "this client id is registered with another secret; re-provision it with `lula-auth provision --force`";
        tracing::error!(retry_in = ?config.register_retry, "{message}");
        note_error(device, message).await;
        return Ok(Some(config.register_retry));
    }
    identity.set_registered(true).context("save identity")?;
    tracing::info!("registered");
    Ok(None)
}

/// The provisioned OTP secret: `--otp-secret`, or the content of
/// `--otp-secret-file` (which must be private to the daemon's user).
fn otp_secret(config: &Config) -> anyhow::Result<Redacted<String>> {
    if let Some(secret) = &config.otp_secret {
        return Ok(secret.clone());
    }
    let Some(path) = &config.otp_secret_file else {
        anyhow::bail!(NEEDS_OTP_SECRET);
    };
    let secret = read_secret_file(path, Readers::Owner).context("--otp-secret-file")?;
    Ok(Redacted::new(secret))
}

async fn note_error(device: &mut Device, error: &str) {
    let _ = device.publish(&StatusUpdate::failed(error)).await;
}
