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
use crate::device::{Device, status_fields};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::session::{self, SessionError};
use std::sync::Arc;

/// Why an unregistered device cannot start without the provisioned secret.
const NEEDS_OTP_SECRET: &str = "this device is not registered yet: give the OTP secret `lula-auth provision` printed with --otp-secret-file <file> (or LULA_OTP_SECRET_FILE); once registered it is no longer needed";

/// A token this close to expiry is renewed before connecting with it.
const RENEW_MARGIN: Duration = Duration::from_secs(30);

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

/// [`run`], counting into `metrics` (which the caller may read or serve).
pub async fn run_with_metrics(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut identity = Identity::load_or_create(&config.state_dir, &config.client_id)
        .context("load identity from --state-dir")?;
    if !identity.registered {
        // Fail at start, not at the first attempt, on a missing secret.
        otp_secret(&config)?;
    }
    let mut device = Device::new(&config.redis_url, DeviceKeys::new(config.prefix.clone()))
        .context("parse --redis-url")?;
    let auth = AuthClient::with_ca_file(&config.auth_url, config.ca_file.as_deref())
        .context("build lula-auth client")?;
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    let mut session: Option<Session> = None;
    let _ = device
        .publish(&[
            (status_fields::PID, std::process::id().to_string()),
            (status_fields::CONNECTED, "0".into()),
        ])
        .await;
    tracing::info!(client = %config.client_id, registered = identity.registered, "starting");

    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let wait = if !identity.registered {
            match register(&auth, &config, &mut identity, &mut backoff, &mut device).await? {
                None => continue,
                Some(wait) => wait,
            }
        } else if session
            .as_ref()
            .is_none_or(|s| s.expires_within(RENEW_MARGIN))
        {
            match auth
                .login(&config.client_id, identity.secret.expose())
                .await
            {
                Ok(s) => {
                    let expires = s
                        .expires_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let _ = device
                        .publish(&[(status_fields::SESSION_EXPIRES_AT, expires.to_string())])
                        .await;
                    session = Some(s);
                    continue;
                }
                Err(AuthCallError::Status { status: 403, .. }) => {
                    tracing::warn!(
                        "lula-auth says this device is not registered (re-provisioned?); registering again"
                    );
                    identity.set_registered(false).context("save identity")?;
                    continue;
                }
                Err(e) => {
                    note_error(&mut device, &e.to_string()).await;
                    match &e {
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
                    }
                }
            }
        } else {
            let Some(current) = session.as_mut() else {
                continue;
            };
            let login = session::Login {
                auth: &auth,
                secret: identity.secret.expose(),
                current,
            };
            let report = session::run(&config, &mut device, login, &metrics, &shutdown).await;
            // A connection that worked resets the backoff, unless another
            // connection of this device took it over: a second daemon with
            // the same identity would otherwise take turns with this one at
            // full speed.
            let replaced = matches!(
                report.result,
                Err(SessionError::Closed(Some(close::REPLACED)))
            );
            if report.established && !replaced {
                backoff.reset();
            }
            match report.result {
                Ok(()) => break,
                Err(e) => {
                    note_error(&mut device, &e.to_string()).await;
                    match e {
                        SessionError::Unauthorized => {
                            tracing::info!("hub refused the session token; logging in again");
                            session = None;
                            backoff.next_delay()
                        }
                        SessionError::Closed(Some(close::REPLACED)) => {
                            tracing::warn!(
                                "another connection of this device took over (is a second daemon running with this identity?); backing off"
                            );
                            backoff.next_delay()
                        }
                        SessionError::Closed(Some(
                            code @ (close::SESSION_EXPIRED | close::SESSION_REVOKED),
                        )) => {
                            tracing::info!(code, "hub ended the session; logging in again");
                            session = None;
                            backoff.next_delay()
                        }
                        SessionError::RateLimited(after) => {
                            after.unwrap_or_else(|| backoff.next_delay())
                        }
                        SessionError::Uplink(e) => {
                            tracing::error!(error = %e, "upstream sync is stuck");
                            config.register_retry
                        }
                        e => {
                            tracing::warn!(error = %e, "disconnected from hub");
                            backoff.next_delay()
                        }
                    }
                }
            }
        };
        tracing::debug!(?wait, "waiting before the next attempt");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = device
        .publish(&[(status_fields::CONNECTED, "0".into())])
        .await;
    tracing::info!("stopped");
    Ok(())
}

/// One registration attempt. `Ok(None)`: registered, go on; `Ok(Some(wait))`:
/// try again after `wait`; `Err`: a configuration error.
async fn register(
    auth: &AuthClient,
    config: &Config,
    identity: &mut Identity,
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
    let _ = device
        .publish(&[
            (status_fields::CONNECTED, "0".into()),
            (status_fields::LAST_ERROR, error.to_owned()),
        ])
        .await;
}
