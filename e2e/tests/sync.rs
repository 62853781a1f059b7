//! The whole system end to end: real Redis servers, lula-auth, lula-hub and
//! lula-client, each on its own runtime, with kills and restarts.
//!
//! Every test ends by comparing both sides entry by entry: each device entry
//! exactly once in `lula-hub:in:x`, in device order, with `client`, `seq` and
//! the original fields; each hub message exactly once in the device's
//! `lula-client:in:x`, in hub order. Timeouts are hang guards, never speed checks.

use std::time::Duration;

use lula_e2e::{Cloud, CloudOptions, Device, check_downstream, check_upstream, read_all};
use lula_protocol::{ClientId, Entry};
use lula_testkit::eventually;

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(120);

/// Waits until the hub holds `n` entries of `client`.
async fn wait_upstream(cloud: &Cloud, client: &str, n: usize) {
    eventually(
        &format!("{n} entries of {client} in the hub"),
        WAIT,
        || async {
            let have = cloud
                .in_entries()
                .await
                .iter()
                .filter(|e| lula_e2e::field(e, "client") == Some(client.as_bytes()))
                .count();
            (have >= n).then_some(())
        },
    )
    .await;
}

/// Waits until the device holds `n` hub messages.
async fn wait_downstream(device: &Device, n: usize) {
    eventually(&format!("{n} messages on the device"), WAIT, || async {
        (device.in_entries().await.len() >= n).then_some(())
    })
    .await;
}

/// What cloud services wrote for `client`, as the device should receive it.
async fn sent_down(cloud: &Cloud, client: &str) -> Vec<Entry> {
    let client: ClientId = client.parse().unwrap();
    read_all(&mut cloud.conn().await, &cloud.keys.out_stream(&client)).await
}

async fn send_down(cloud: &Cloud, client: &str, from: u64, to: u64) {
    for i in from..to {
        cloud
            .send_down(client, &[("cmd", "set".into()), ("n", i.to_string())])
            .await;
    }
}

/// Asserts both directions are exactly once and in order, after giving any
/// stray duplicate a moment to show up.
async fn assert_exactly_once(cloud: &Cloud, device: &Device, client: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = device.out_entries().await;
    check_upstream(client, &sent, &cloud.in_entries().await).unwrap();
    check_downstream(&sent_down(cloud, client).await, &device.in_entries().await).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_messages_flow_both_ways_exactly_once_in_order() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);

    // Producers were busy before the daemon ever ran.
    device.produce(0, 4_000).await;
    let before = device.status().await;
    assert!(!before.registered);
    assert_eq!(before.upstream_backlog, 4_000);

    device.start();
    device.produce(4_000, 10_000).await;
    send_down(&cloud, "dev-1", 0, 1_000).await;
    wait_upstream(&cloud, "dev-1", 10_000).await;
    wait_downstream(&device, 1_000).await;
    assert_exactly_once(&cloud, &device, "dev-1").await;

    let status = eventually("status to show the backlog drained", WAIT, || async {
        let s = device.status().await;
        (s.upstream_backlog == 0).then_some(s)
    })
    .await;
    assert!(status.registered && status.connected, "{status:?}");
    assert_eq!(
        Some(status.downstream_cursor),
        sent_down(&cloud, "dev-1").await.last().map(|e| e.id)
    );

    // SIGTERM: finish what is in flight and exit cleanly.
    device.stop().await.unwrap();
    assert!(!device.status().await.connected);
}

/// Waits until the hub's in stream has grown past `n` entries.
async fn wait_in_len_above(cloud: &Cloud, n: u64) -> u64 {
    eventually(
        &format!("more than {n} entries in the hub"),
        WAIT,
        || async {
            let len = cloud.in_len().await;
            (len > n).then_some(len)
        },
    )
    .await
}

/// 30,000 entries produced steadily over a few seconds while the hub is
/// killed three times; each kill lands while entries are still being produced
/// and sent, so batches and pushes are cut mid-flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_and_restarted_mid_stream_loses_and_doubles_nothing() {
    let mut cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    let producer = device.produce_paced(0, 30_000, 200, Duration::from_millis(20));
    let mut downstream = 0;
    for round in 0..3 {
        send_down(&cloud, "dev-1", downstream, downstream + 200).await;
        downstream += 200;
        let seen = cloud.in_len().await;
        wait_in_len_above(&cloud, seen).await;
        cloud.kill_hub();
        eprintln!(
            "round {round}: hub killed with {} entries in, producer done: {}",
            cloud.in_len().await,
            producer.is_finished()
        );
        send_down(&cloud, "dev-1", downstream, downstream + 100).await;
        downstream += 100;
        tokio::time::sleep(Duration::from_millis(200)).await;
        cloud.start_hub();
    }
    producer.await.unwrap();
    wait_upstream(&cloud, "dev-1", 30_000).await;
    wait_downstream(&device, downstream as usize).await;
    assert_exactly_once(&cloud, &device, "dev-1").await;
}

/// Same workload, but the daemon crashes (its runtime dropped: no close frame,
/// nothing flushed) three times and restarts from its state dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_and_restarted_resumes_without_loss_or_duplicates() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    let producer = device.produce_paced(0, 30_000, 200, Duration::from_millis(20));
    let mut downstream = 0;
    for round in 0..3 {
        send_down(&cloud, "dev-1", downstream, downstream + 200).await;
        downstream += 200;
        let seen = cloud.in_len().await;
        wait_in_len_above(&cloud, seen).await;
        device.kill();
        eprintln!(
            "round {round}: client killed with {} entries in, producer done: {}",
            cloud.in_len().await,
            producer.is_finished()
        );
        send_down(&cloud, "dev-1", downstream, downstream + 100).await;
        downstream += 100;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Registered already: it must log in, not register again.
        device.start();
    }
    producer.await.unwrap();
    wait_upstream(&cloud, "dev-1", 30_000).await;
    wait_downstream(&device, downstream as usize).await;
    assert_exactly_once(&cloud, &device, "dev-1").await;
    assert!(device.status().await.registered);
}

/// Sessions lula-auth holds for `client`: one per login.
async fn sessions_of(cloud: &Cloud, client: &str) -> u64 {
    let client: ClientId = client.parse().unwrap();
    redis::cmd("ZCARD")
        .arg(cloud.auth_keys.client_sessions(&client))
        .query_async(&mut cloud.conn().await)
        .await
        .unwrap()
}

/// The connection of `client` the hub's fleet record names (`<hub>/<conn>`).
async fn connection_of(cloud: &Cloud, client: &str) -> Option<String> {
    let client: ClientId = client.parse().unwrap();
    redis::cmd("HGET")
        .arg(cloud.keys.device(&client))
        .arg("owner")
        .query_async(&mut cloud.conn().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_leads_to_a_fresh_login() {
    // Hour-long tokens: the daemon logs in before connecting only when its
    // token has less than 30 s left by its own clock, which never happens
    // here. So the only way to a second login is the hub refusing the token.
    let ttl = Duration::from_secs(3600);
    let mut cloud = Cloud::start_with(CloudOptions {
        token_ttl: ttl,
        ..Default::default()
    })
    .await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    device.produce(0, 100).await;
    wait_upstream(&cloud, "dev-1", 100).await;
    assert_eq!(sessions_of(&cloud, "dev-1").await, 1);

    // The hub comes back an hour and a minute later by its clock: the token
    // the daemon reconnects with has expired there (401) though the daemon
    // still thinks it good, and the daemon must log in again.
    cloud.kill_hub();
    cloud.set_hub_clock_offset(ttl.as_secs() as i64 + 60);
    cloud.start_hub();
    eventually("the daemon to log in again", WAIT, || async {
        (sessions_of(&cloud, "dev-1").await >= 2).then_some(())
    })
    .await;
    // Every token lula-auth issues is expired by that clock too, so the
    // daemon keeps logging in until the hub's clock is back.
    cloud.set_hub_clock_offset(0);
    device.produce(100, 200).await;
    wait_upstream(&cloud, "dev-1", 200).await;
    let status = device.status().await;
    assert!(status.connected, "{status:?}");
    assert_exactly_once(&cloud, &device, "dev-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_is_refused_and_the_client_logs_in_again() {
    let mut cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    device.produce(0, 100).await;
    wait_upstream(&cloud, "dev-1", 100).await;

    let client: ClientId = "dev-1".parse().unwrap();
    let revoked =
        lula_auth::sessions::revoke_all(&mut cloud.conn().await, &cloud.auth_keys, &client)
            .await
            .unwrap();
    assert_eq!(revoked, 1);
    // Force a reconnect: the hub answers the old token with 401.
    cloud.kill_hub();
    cloud.start_hub();
    device.produce(100, 200).await;
    wait_upstream(&cloud, "dev-1", 200).await;

    let sessions: u64 = redis::cmd("ZCARD")
        .arg(cloud.auth_keys.client_sessions(&client))
        .query_async(&mut cloud.conn().await)
        .await
        .unwrap();
    assert_eq!(sessions, 1, "the client should hold one fresh session");
    assert_exactly_once(&cloud, &device, "dev-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_share_one_hub_and_stay_apart() {
    let cloud = Cloud::start().await;
    let mut devices = Vec::new();
    for i in 0..3 {
        let name = format!("dev-{i}");
        let otp = cloud.provision(&name).await;
        let mut device = Device::new(&cloud, &name, &otp);
        device.start();
        devices.push((name, device));
    }
    for (name, device) in &devices {
        device.produce(0, 2_000).await;
        send_down(&cloud, name, 0, 50).await;
    }
    for (name, device) in &devices {
        wait_upstream(&cloud, name, 2_000).await;
        wait_downstream(device, 50).await;
    }
    for (name, device) in &devices {
        assert_exactly_once(&cloud, device, name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_renewed_on_the_live_connection_without_reconnecting() {
    let cloud = Cloud::start_with(CloudOptions {
        token_ttl: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    // The daemon renews 1 s before its 4 s token runs out by its clock; the
    // hub's clock runs 6 s behind, so it ends a connection 10 s after its
    // token was issued: 7 s for a renewal to get through on a busy machine
    // rather than 1, and still no connection outlives the 12 s below
    // without renewing in place.
    cloud.set_hub_clock_offset(-6);
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    device.produce(0, 10).await;
    wait_upstream(&cloud, "dev-1", 10).await;
    let first = device.status().await.session_expires_at.unwrap();
    let connection = eventually("the hub to record the connection", WAIT, || async {
        connection_of(&cloud, "dev-1").await
    })
    .await;
    // Three token lifetimes; the hub closes a connection whose token expires,
    // so the connection survives only if the client renews it in place.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        device.produce(10 + i * 10, 20 + i * 10).await;
    }
    wait_upstream(&cloud, "dev-1", 70).await;
    let status = device.status().await;
    assert!(
        status.session_expires_at.unwrap() >= first + 8_000,
        "{status:?}"
    );
    assert!(status.connected, "{status:?}");
    // Any disconnect would have been recorded as the last error.
    assert_eq!(status.last_error, None, "{status:?}");
    // A reconnect clears that error, though; the hub's record names the
    // connection, which must be the first one still.
    assert_eq!(
        connection_of(&cloud, "dev-1").await,
        Some(connection),
        "the device reconnected instead of renewing in place"
    );
    assert_exactly_once(&cloud, &device, "dev-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_off_at_once_and_stays_off() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    device.produce(0, 10).await;
    wait_upstream(&cloud, "dev-1", 10).await;
    let client: ClientId = "dev-1".parse().unwrap();
    lula_auth::sessions::revoke_device(&mut cloud.conn().await, &cloud.auth_keys, &client)
        .await
        .unwrap();
    eventually("the device to be disconnected", WAIT, || async {
        let s = device.status().await;
        (!s.connected && s.last_error.is_some()).then_some(())
    })
    .await;
    // It cannot come back: its secret is gone and its registration closed.
    device.produce(10, 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!device.status().await.connected);
    assert_eq!(cloud.in_entries().await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_client_waits_as_told_and_comes_back() {
    let cloud = Cloud::start_with(CloudOptions {
        auth_limits: Some(lula_auth::throttle::Limits {
            per_client: 1,
            per_address: 1_000,
            window: Duration::from_secs(3),
        }),
        ..Default::default()
    })
    .await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    device.produce(0, 10).await;
    wait_upstream(&cloud, "dev-1", 10).await;

    // Someone fails a login as dev-1: its logins are refused for 3 s.
    let refused = reqwest::Client::new()
        .post(format!("{}/login", cloud.auth_url()))
        .json(&serde_json::json!({"client": "dev-1", "secret": "not-the-secret-of-dev-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // Its session ends now, so it must log in during the lockout.
    let client: ClientId = "dev-1".parse().unwrap();
    lula_auth::sessions::revoke_all(&mut cloud.conn().await, &cloud.auth_keys, &client)
        .await
        .unwrap();
    eventually("the 429 in the status", WAIT, || async {
        let s = device.status().await;
        s.last_error.filter(|e| e.contains("429")).map(|_| ())
    })
    .await;
    // After Retry-After it logs in again and syncs.
    device.produce(10, 20).await;
    wait_upstream(&cloud, "dev-1", 20).await;
    assert_exactly_once(&cloud, &device, "dev-1").await;

    // It waited as told: the lockout refused one login, perhaps two around
    // the window's edge. A client ignoring Retry-After retries on its own
    // backoff (at most 500 ms here) and is refused about six times.
    let metrics = reqwest::get(format!("{}/metrics", cloud.auth_admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let limited = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"lula_auth_rate_limited_total{action="login"} "#))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        (1..=2).contains(&limited),
        "{limited} logins refused with 429 during a 3 s lockout:\n{metrics}"
    );
}
