//! How the daemon behaves when the cloud says no or goes away, and how it
//! stops: registration before provisioning, a hub 401 for a session whose
//! record vanished, SIGTERM in the middle of a backlog, a gap in `out:x` that
//! must be loud, and a hub Redis outage it must not hammer.
//!
//! Each ends by checking both sides entry by entry. Timeouts are hang guards;
//! the only timing assertions are upper bounds on how often something was
//! retried, i.e. lower bounds on waiting.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lula_e2e::binary::{ClientProcess, status_text};
use lula_e2e::{Cloud, CloudOptions, Device, check_upstream, field};
use lula_protocol::{ClientId, Entry};
use lula_testkit::eventually;

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(120);

async fn hub_entries_of(cloud: &Cloud, client: &str) -> Vec<Entry> {
    cloud
        .in_entries()
        .await
        .into_iter()
        .filter(|e| field(e, "client") == Some(client.as_bytes()))
        .collect()
}

async fn wait_upstream(cloud: &Cloud, client: &str, n: usize) {
    eventually(
        &format!("{n} entries of {client} in the hub"),
        WAIT,
        || async { (hub_entries_of(cloud, client).await.len() >= n).then_some(()) },
    )
    .await;
}

/// Every entry of the device's `out:x` in the hub exactly once, in order,
/// after giving a stray duplicate a moment to show up.
async fn assert_upstream_exactly_once(cloud: &Cloud, device: &Device, client: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    check_upstream(
        client,
        &device.out_entries().await,
        &cloud.in_entries().await,
    )
    .unwrap();
}

/// The value of a metric line `name value` in a text exposition (0 when absent:
/// a labelled counter appears only once counted).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Session ids in `client`'s session index.
async fn session_ids(cloud: &Cloud, client: &ClientId) -> HashSet<String> {
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(cloud.auth_keys.client_sessions(client))
        .arg(0)
        .arg(-1)
        .query_async(&mut cloud.conn().await)
        .await
        .unwrap();
    ids.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_started_before_provisioning_registers_once_an_operator_provisions_it() {
    let cloud = Cloud::start().await;
    // The installer put the secret on the device; the operator has not yet
    // put it in lula-auth.
    let otp_secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let mut device = Device::new(&cloud, "dev-late", otp_secret);
    device.config.register_retry = Duration::from_secs(1);
    device.produce(0, 100).await;
    device.start();

    let refused = eventually("the refusal in the status", WAIT, || async {
        let s = device.status().await;
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("403") && e.contains("not_provisioned"))
            .then_some(s)
    })
    .await;
    assert!(!refused.registered, "{refused:?}");
    assert!(!refused.connected, "{refused:?}");
    assert_eq!(refused.upstream_backlog, 100, "{refused:?}");
    assert_eq!(cloud.in_len().await, 0);

    // Provisioned by hand, exactly as the README lets operators do it.
    let key = "lula-auth:client:dev-late:h";
    assert_eq!(key, cloud.auth_keys.client(&"dev-late".parse().unwrap()));
    let deadline = now_ms() + 3_600_000;
    let _: u64 = redis::cmd("HSET")
        .arg(key)
        .arg("otpSecret")
        .arg(otp_secret)
        .arg("regDeadline")
        .arg(deadline)
        .query_async(&mut cloud.conn().await)
        .await
        .unwrap();

    device.produce(100, 200).await;
    wait_upstream(&cloud, "dev-late", 200).await;
    let status = device.status().await;
    assert!(status.registered, "{status:?}");
    assert!(
        status.session_expires_at.is_some(),
        "never logged in: {status:?}"
    );
    assert_upstream_exactly_once(&cloud, &device, "dev-late").await;
    let auth = get_text(&format!("{}/metrics", cloud.auth_admin_url())).await;
    assert_eq!(
        metric(&auth, r#"lula_auth_registrations_total{outcome="ok"}"#),
        1.0,
        "{auth}"
    );
    device.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_401_for_a_vanished_session_record_leads_to_a_fresh_login() {
    let mut cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    device.produce(0, 100).await;
    wait_upstream(&cloud, "dev-1", 100).await;

    let client: ClientId = "dev-1".parse().unwrap();
    let before = session_ids(&cloud, &client).await;
    assert_eq!(before.len(), 1, "{before:?}");
    let old = before.iter().next().unwrap().clone();
    // Only the record goes (an eviction, a hand-run DEL): no announcement, so
    // the live connection does not hear of it.
    let deleted: u64 = redis::cmd("DEL")
        .arg(format!("lula-auth:session:{old}"))
        .query_async(&mut cloud.conn().await)
        .await
        .unwrap();
    assert_eq!(deleted, 1, "no session record lula-auth:session:{old}");

    // The reconnect presents the old token, which the new hub refuses.
    cloud.kill_hub();
    cloud.start_hub();
    device.produce(100, 200).await;
    wait_upstream(&cloud, "dev-1", 200).await;

    let hub = get_text(&format!("{}/metrics", cloud.admin_url())).await;
    assert!(
        metric(&hub, r#"lula_hub_refused_total{reason="unauthorized"}"#) >= 1.0,
        "the restarted hub never refused the old token:\n{hub}"
    );
    let after = session_ids(&cloud, &client).await;
    let fresh: Vec<&String> = after.difference(&before).collect();
    assert_eq!(fresh.len(), 1, "no fresh login: {before:?} then {after:?}");
    let live: u64 = redis::cmd("EXISTS")
        .arg(cloud.auth_keys.session(fresh[0]))
        .query_async(&mut cloud.conn().await)
        .await
        .unwrap();
    assert_eq!(live, 1);
    assert!(device.status().await.connected);
    assert_upstream_exactly_once(&cloud, &device, "dev-1").await;
    device.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_backlog_finishes_the_batches_in_flight_and_exits_0() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-term").await;
    let mut device = Device::new(&cloud, "dev-term", &otp);
    // Small batches: many in flight at any moment.
    device.config.batch_entries = 20;
    const TOTAL: usize = 50_000;
    device.produce(0, TOTAL as u64).await;

    let mut daemon = ClientProcess::run(&device, "info", &[]);
    wait_upstream(&cloud, "dev-term", 2_000).await;
    daemon.terminate();
    let exit = daemon.wait(WAIT);
    assert!(exit.success(), "exit {exit:?}; log:\n{}", daemon.log());
    assert!(daemon.log().contains("stopped"), "{}", daemon.log());

    // Everything the hub took is what the client recorded as acknowledged:
    // no batch was sent and then abandoned.
    let client: ClientId = "dev-term".parse().unwrap();
    let hub_cursor = lula_hub::ingest::cursor(&mut cloud.conn().await, &cloud.layout, &client)
        .await
        .unwrap();
    let status = device.status().await;
    assert!(!status.connected, "{status:?}");
    assert_eq!(status.upstream_cursor, Some(hub_cursor), "{status:?}");
    let in_hub = hub_entries_of(&cloud, "dev-term").await;
    assert!(
        in_hub.len() < TOTAL,
        "the backlog drained before SIGTERM; the test proves nothing"
    );
    eprintln!(
        "SIGTERM left {} of {TOTAL} entries in the hub",
        in_hub.len()
    );
    let sent = device.out_entries().await;
    let acked = sent.iter().position(|e| e.id == hub_cursor).unwrap() + 1;
    assert_eq!(in_hub.len(), acked);
    assert_eq!(status.upstream_backlog as usize, TOTAL - acked);
    check_upstream("dev-term", &sent[..acked], &in_hub).unwrap();

    // Started again, it sends the rest, each entry once.
    let mut daemon = ClientProcess::run(&device, "info", &[]);
    wait_upstream(&cloud, "dev-term", TOTAL).await;
    assert_upstream_exactly_once(&cloud, &device, "dev-term").await;
    daemon.terminate();
    assert!(daemon.wait(WAIT).success(), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_before_sync_are_a_warning_in_the_log_and_in_the_status_text() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-gap").await;
    let device = Device::new(&cloud, "dev-gap", &otp);
    let mut daemon = ClientProcess::run(&device, "info", &["--log-format", "json"]);
    device.produce_capped(0, 100, 1_000).await;
    wait_upstream(&cloud, "dev-gap", 100).await;
    daemon.terminate();
    assert!(daemon.wait(WAIT).success(), "{}", daemon.log());
    let text = status_text(&device, &device.redis.url());
    assert!(text.contains("lost before sync:   none"), "{text}");

    // Offline, 500 more into a stream capped at 200: 300 unsynced entries
    // are trimmed away before the daemon sees them.
    device.produce_capped(100, 600, 200).await;
    let mut daemon = ClientProcess::run(&device, "info", &["--log-format", "json"]);
    wait_upstream(&cloud, "dev-gap", 300).await;
    eventually("the gap in the status", WAIT, || async {
        (device.status().await.gaps > 0).then_some(())
    })
    .await;

    let text = status_text(&device, &device.redis.url());
    let line = text
        .lines()
        .find(|l| l.starts_with("lost before sync:"))
        .unwrap_or_else(|| panic!("no gap line in:\n{text}"));
    assert!(line.contains("1 time(s)"), "{text}");
    assert!(line.contains("300 entries"), "{text}");

    let log = daemon.log();
    let warnings: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "WARN")
        .filter(|v| v.to_string().contains("entries lost before sync"))
        .collect();
    assert_eq!(warnings.len(), 1, "one WARN about the gap expected:\n{log}");
    assert!(
        warnings[0].to_string().contains("300 entries"),
        "{}",
        warnings[0]
    );
    daemon.terminate();
    assert!(daemon.wait(WAIT).success(), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_hub_redis_down_the_client_backs_off_and_then_loses_nothing() {
    let mut cloud = Cloud::start_with(CloudOptions {
        persistent: true,
        ..Default::default()
    })
    .await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.config.min_backoff = Duration::from_millis(100);
    device.config.max_backoff = Duration::from_secs(1);
    device.start();
    device.produce(0, 1_000).await;
    wait_upstream(&cloud, "dev-1", 1_000).await;

    let hub_metrics = format!("{}/metrics", cloud.admin_url());
    let auth_metrics = format!("{}/metrics", cloud.auth_admin_url());
    // Every way back in: a hub upgrade (refused while Redis is down), a
    // login at lula-auth, or, on a connection that stays up, a request the
    // paused upstream retries with (`id`, then `xadds`: frames the hub
    // received; issue 13: a 503 to `xadds` pauses upstream, not the
    // connection).
    let attempts = || async {
        let hub = get_text(&hub_metrics).await;
        let auth = get_text(&auth_metrics).await;
        let refused: f64 = hub
            .lines()
            .filter(|l| {
                l.starts_with("lula_hub_refused_total{")
                    || l.starts_with("lula_hub_frames_in_total ")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let logins: f64 = auth
            .lines()
            .filter(|l| l.starts_with("lula_auth_logins_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        refused + logins
    };

    cloud.redis.kill();
    let before = attempts().await;
    device.produce(1_000, 2_000).await;
    let down_for = Duration::from_secs(6);
    tokio::time::sleep(down_for).await;
    let during = attempts().await - before;
    eprintln!("{during} attempts to come back in {down_for:?}");
    // A reconnect loop without backoff makes hundreds of attempts in 6 s;
    // with delays of 100 ms doubling to 1 s (full jitter) it makes about a
    // dozen. 60 means it waited 100 ms per attempt on average.
    assert!(during >= 1.0, "no attempt to come back at all");
    assert!(
        during <= 60.0,
        "{during} attempts in {down_for:?}: not backing off"
    );
    // The refusal shows (the connection itself may stay up: issue 13).
    let status = device.status().await;
    assert!(
        !status.connected
            || status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("503")),
        "{status:?}"
    );

    cloud.redis.restart();
    device.produce(2_000, 3_000).await;
    wait_upstream(&cloud, "dev-1", 3_000).await;
    assert_upstream_exactly_once(&cloud, &device, "dev-1").await;
    device.stop().await.unwrap();
}
