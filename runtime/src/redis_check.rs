//! Start-up checks of how a Redis is configured, against what lula's
//! guarantees need from it.
//!
//! Exactly-once rests on Redis keeping what it acknowledged: a cursor evicted
//! by an `allkeys-*` policy makes the hub take a device's whole stream again
//! (duplicates) or a device forget what it stored (its downstream cursor);
//! a Redis without persistence forgets acknowledged entries at a restart.
//! Nothing in the data path can see this happen, so each binary reads the
//! settings once at start, logs a warning naming each setting that can break
//! a guarantee, exports it as a metric, and, with `--require-safe-redis`,
//! refuses to start. docs/GUARANTEES.md says which guarantee needs which
//! setting.
//!
//! A managed Redis often refuses `CONFIG`; that is reported as "unknown", not
//! as unsafe: lula cannot tell, and the operator can.

use std::sync::atomic::{AtomicI64, Ordering};

use redis::RedisResult;
use redis::aio::ConnectionLike;

use crate::redis::RedisTarget;

/// Unsafe settings found by this process's last start-up check, for the
/// `*_redis_unsafe_settings` gauge.
static UNSAFE_SETTINGS: AtomicI64 = AtomicI64::new(0);

/// How many unsafe settings the start-up check found (0 before it ran, or
/// when the settings could not be read).
pub fn unsafe_settings() -> i64 {
    UNSAFE_SETTINGS.load(Ordering::Relaxed)
}

/// Exports [`unsafe_settings`] as `<service>_redis_unsafe_settings` when
/// registered in a service's sub-registry (hub and auth; lula-client counts
/// its device Redis's in a gauge of its own).
#[derive(Debug)]
pub struct UnsafeSettingsGauge;

impl prometheus_client::collector::Collector for UnsafeSettingsGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(unsafe_settings());
        gauge.encode(encoder.encode_descriptor(
            "redis_unsafe_settings",
            "Settings of this service's Redis that can break exactly-once (maxmemory-policy, appendonly), as read at start",
            None,
            gauge.metric_type(),
        )?)
    }
}

/// One setting that can break a guarantee, and what it can cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The Redis setting, as `CONFIG GET` names it (`maxmemory-policy`, `appendonly`).
    pub setting: &'static str,
    /// Its value on the server.
    pub value: String,
    /// What it can cost, for the log line.
    pub risk: &'static str,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisSafety {
    /// Every checked setting keeps the guarantees.
    Safe,
    /// These settings can break them.
    Unsafe(Vec<Finding>),
    /// The server refused `CONFIG GET` (a managed Redis, or an ACL without
    /// `+config|get`); the settings could not be read.
    Unknown(String),
}

/// The settings read, by name.
#[derive(Debug, Default, Clone)]
pub struct RedisSettings {
    /// `maxmemory-policy`.
    pub maxmemory_policy: String,
    /// `appendonly` (`yes`/`no`).
    pub appendonly: String,
    /// `save` (the RDB snapshot schedule; empty when off).
    pub save: String,
}

const EVICTION_RISK: &str = "Redis may evict lula's keys (cursors, identities, unsynced entries) when full, breaking exactly-once without an error; use noeviction";
const NO_PERSISTENCE_RISK: &str =
    "neither AOF nor RDB is on: a Redis restart loses every acknowledged entry and cursor";
const RDB_ONLY_RISK: &str = "RDB snapshots only: a Redis crash loses what was acknowledged since the last snapshot (turn on appendonly)";

impl RedisSettings {
    /// Judges the settings.
    pub fn judge(&self) -> RedisSafety {
        let mut findings = Vec::new();
        if self.maxmemory_policy != "noeviction" {
            findings.push(Finding {
                setting: "maxmemory-policy",
                value: self.maxmemory_policy.clone(),
                risk: EVICTION_RISK,
            });
        }
        if self.appendonly != "yes" {
            let rdb = !self.save.trim().is_empty();
            findings.push(Finding {
                setting: "appendonly",
                value: self.appendonly.clone(),
                risk: if rdb {
                    RDB_ONLY_RISK
                } else {
                    NO_PERSISTENCE_RISK
                },
            });
        }
        if findings.is_empty() {
            RedisSafety::Safe
        } else {
            RedisSafety::Unsafe(findings)
        }
    }
}

/// Reads the settings with `CONFIG GET`.
pub async fn read_settings<C: ConnectionLike>(conn: &mut C) -> RedisResult<RedisSettings> {
    let mut settings = RedisSettings::default();
    for (name, slot) in [
        ("maxmemory-policy", &mut settings.maxmemory_policy),
        ("appendonly", &mut settings.appendonly),
        ("save", &mut settings.save),
    ] {
        let pairs: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(conn)
            .await?;
        *slot = pairs.get(1).cloned().unwrap_or_default();
    }
    Ok(settings)
}

/// Reads and judges a server's settings; a refused `CONFIG` is
/// [`RedisSafety::Unknown`], a connection failure an error.
pub async fn check<C: ConnectionLike>(conn: &mut C) -> RedisResult<RedisSafety> {
    match read_settings(conn).await {
        Ok(settings) => Ok(settings.judge()),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e),
        Err(e) => Ok(RedisSafety::Unknown(e.to_string())),
    }
}

/// Logs what `safety` says about the Redis at `what` (e.g. "the device
/// Redis"), one warning per finding, and returns how many findings there
/// were (the value of the `*_redis_unsafe_settings` gauge).
pub fn report(what: &str, safety: &RedisSafety) -> usize {
    match safety {
        RedisSafety::Safe => {
            tracing::info!(redis = what, "Redis settings keep lula's guarantees");
            0
        }
        RedisSafety::Unknown(why) => {
            tracing::info!(redis = what, reason = %why, "cannot read the Redis settings (CONFIG GET refused); check maxmemory-policy and appendonly by hand");
            0
        }
        RedisSafety::Unsafe(findings) => {
            for f in findings {
                tracing::warn!(redis = what, setting = f.setting, value = %f.value, "unsafe Redis setting: {}", f.risk);
            }
            findings.len()
        }
    }
}

/// The start-up check of a service's Redis (`what`, e.g. "the hub Redis"):
/// one server, or every master of a cluster. Logs each unsafe setting,
/// records the count for [`unsafe_settings`], and with `refuse`
/// (`--require-safe-redis`) returns an error when a setting is unsafe or the
/// settings cannot be read because Redis is unreachable.
pub async fn check_at_start(target: &RedisTarget, what: &str, refuse: bool) -> Result<(), String> {
    let safety = match read_target(target).await {
        Ok(safety) => safety,
        Err(e) if refuse => {
            return Err(format!(
                "--require-safe-redis: cannot read the settings of {what}: {e}"
            ));
        }
        Err(e) => {
            tracing::warn!(redis = what, error = %e, "cannot check the Redis settings at start (unreachable)");
            return Ok(());
        }
    };
    let found = report(what, &safety);
    UNSAFE_SETTINGS.store(found as i64, Ordering::Relaxed);
    match refusal(what, &safety) {
        Some(r) if refuse => Err(r),
        _ => Ok(()),
    }
}

/// Judges one server, or each master of a cluster (findings of all masters
/// together).
async fn read_target(target: &RedisTarget) -> RedisResult<RedisSafety> {
    let mut conn = target.connect().await?;
    let masters = conn.masters().await?;
    if masters.is_empty() {
        return check(&mut conn).await;
    }
    let mut all = Vec::new();
    for node in masters {
        let client = crate::redis::node_client(&target.url, &node)?;
        let mut c = client.get_multiplexed_async_connection().await?;
        match check(&mut c).await? {
            RedisSafety::Safe => {}
            RedisSafety::Unsafe(f) => all.extend(f),
            unknown @ RedisSafety::Unknown(_) => return Ok(unknown),
        }
    }
    Ok(if all.is_empty() {
        RedisSafety::Safe
    } else {
        RedisSafety::Unsafe(all)
    })
}

/// The error `--require-safe-redis` stops with.
pub fn refusal(what: &str, safety: &RedisSafety) -> Option<String> {
    match safety {
        RedisSafety::Unsafe(findings) => Some(format!(
            "--require-safe-redis: {what} has unsafe settings: {}",
            findings
                .iter()
                .map(|f| format!("{} {}", f.setting, f.value))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lula_testkit::{RedisOptions, RedisServer};

    async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    fn settings(policy: &str, aof: &str, save: &str) -> RedisSettings {
        RedisSettings {
            maxmemory_policy: policy.into(),
            appendonly: aof.into(),
            save: save.into(),
        }
    }

    #[test]
    fn each_unsafe_setting_is_named() {
        assert_eq!(settings("noeviction", "yes", "").judge(), RedisSafety::Safe);
        let RedisSafety::Unsafe(f) = settings("allkeys-lru", "yes", "").judge() else {
            panic!()
        };
        assert_eq!(
            (f.len(), f[0].setting, f[0].value.as_str()),
            (1, "maxmemory-policy", "allkeys-lru")
        );
        let RedisSafety::Unsafe(f) = settings("noeviction", "no", "").judge() else {
            panic!()
        };
        assert_eq!(
            (f[0].setting, f[0].risk),
            ("appendonly", NO_PERSISTENCE_RISK)
        );
        let RedisSafety::Unsafe(f) = settings("volatile-lru", "no", "3600 1").judge() else {
            panic!()
        };
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].risk, RDB_ONLY_RISK);
        assert!(
            refusal("the hub Redis", &RedisSafety::Unsafe(f))
                .unwrap()
                .contains("maxmemory-policy volatile-lru, appendonly no")
        );
    }

    #[tokio::test]
    async fn a_real_server_is_read_and_judged() {
        // The test servers run without persistence and with Redis's default policy.
        let server = RedisServer::start_with(RedisOptions {
            extra_args: vec!["--maxmemory-policy".into(), "allkeys-lru".into()],
            ..Default::default()
        });
        let RedisSafety::Unsafe(f) = check(&mut conn(&server).await).await.unwrap() else {
            panic!("allkeys-lru without AOF is unsafe")
        };
        let names: Vec<_> = f.iter().map(|f| (f.setting, f.value.as_str())).collect();
        assert_eq!(
            names,
            [("maxmemory-policy", "allkeys-lru"), ("appendonly", "no")]
        );

        let safe = RedisServer::start_with(RedisOptions {
            appendonly: true,
            extra_args: vec!["--maxmemory-policy".into(), "noeviction".into()],
            ..Default::default()
        });
        assert_eq!(
            check(&mut conn(&safe).await).await.unwrap(),
            RedisSafety::Safe
        );
    }

    #[tokio::test]
    async fn the_start_up_check_refuses_only_when_asked() {
        let server = RedisServer::start();
        let target = RedisTarget::new(server.url(), false);
        assert_eq!(
            check_at_start(&target, "the test Redis", false).await,
            Ok(())
        );
        assert_eq!(unsafe_settings(), 1, "appendonly no");
        let e = check_at_start(&target, "the test Redis", true)
            .await
            .unwrap_err();
        assert!(
            e.contains("the test Redis has unsafe settings: appendonly no"),
            "{e}"
        );
        let down = RedisTarget::new(
            format!("redis://127.0.0.1:{}", lula_testkit::free_port()),
            false,
        );
        assert_eq!(
            check_at_start(&down, "a Redis that is down", false).await,
            Ok(())
        );
        assert!(
            check_at_start(&down, "a Redis that is down", true)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_gauge_exports_what_the_start_up_check_found() {
        let server = RedisServer::start();
        let target = RedisTarget::new(server.url(), false);
        check_at_start(&target, "the test Redis", false)
            .await
            .unwrap();
        let mut root = prometheus_client::registry::Registry::default();
        root.sub_registry_with_prefix("lula_test")
            .register_collector(Box::new(UnsafeSettingsGauge));
        let text = crate::metrics::render(&root);
        assert!(text.contains("lula_test_redis_unsafe_settings 1"), "{text}");
    }

    #[tokio::test]
    async fn a_refused_config_is_unknown_not_unsafe() {
        let server = RedisServer::start_with(RedisOptions {
            extra_args: vec!["--rename-command".into(), "CONFIG".into(), "".into()],
            ..Default::default()
        });
        let r = check(&mut conn(&server).await).await.unwrap();
        assert!(matches!(r, RedisSafety::Unknown(_)), "{r:?}");
        assert_eq!(refusal("x", &r), None);
    }
}
