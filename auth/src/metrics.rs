//! lula-auth's Prometheus metrics, at `GET /metrics`: registrations, logins
//! and renewals by outcome (the error `code` of a refusal), rate-limited
//! attempts, and the bcrypt work that dominates its CPU. No per-device labels.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::AuthError;

/// A counter by one label.
pub type ByLabel = Family<[(&'static str, &'static str); 1], Counter>;

/// Everything lula-auth counts.
pub struct AuthMetrics {
    registry: Registry,
    /// `POST /register`, by outcome.
    pub registrations: ByLabel,
    /// `POST /login`, by outcome.
    pub logins: ByLabel,
    /// `POST /renew`, by outcome.
    pub renewals: ByLabel,
    /// `POST /logout`, by outcome.
    pub logouts: ByLabel,
    /// Attempts refused by the failed-attempt limits, by action.
    pub rate_limited: ByLabel,
    /// Time of one bcrypt (hash or verify), seconds.
    pub bcrypt_seconds: Histogram,
}

impl Default for AuthMetrics {
    fn default() -> Self {
        let m = AuthMetrics {
            registry: Registry::default(),
            registrations: ByLabel::default(),
            logins: ByLabel::default(),
            renewals: ByLabel::default(),
            logouts: ByLabel::default(),
            rate_limited: ByLabel::default(),
            bcrypt_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        };
        let mut root = lula_runtime::metrics::registry("lula_auth", env!("CARGO_PKG_VERSION"));
        let r = root.sub_registry_with_prefix("lula_auth");
        r.register_collector(Box::new(lula_runtime::redis_check::UnsafeSettingsGauge));
        r.register(
            "registrations",
            "Registrations by outcome",
            m.registrations.clone(),
        );
        r.register("logins", "Logins by outcome", m.logins.clone());
        r.register(
            "renewals",
            "Session renewals by outcome",
            m.renewals.clone(),
        );
        r.register("logouts", "Logouts by outcome", m.logouts.clone());
        r.register(
            "rate_limited",
            "Attempts refused by the failed-attempt limits, by action",
            m.rate_limited.clone(),
        );
        r.register(
            "bcrypt_seconds",
            "Time of one bcrypt hash or verify",
            m.bcrypt_seconds.clone(),
        );
        AuthMetrics {
            registry: root,
            ..m
        }
    }
}

impl AuthMetrics {
    /// Counts a request's outcome: `ok`, or the refusal's error code.
    pub fn outcome<T>(family: &ByLabel, result: &Result<T, AuthError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.status_and_code().1,
        };
        family.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Records one bcrypt.
    pub fn bcrypt(&self, took: Duration) {
        self.bcrypt_seconds.observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition (see [`lula_runtime::metrics::response`]).
    pub fn render(&self) -> String {
        lula_runtime::metrics::render(&self.registry)
    }
}
