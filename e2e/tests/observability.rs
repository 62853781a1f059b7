//! What an on-call engineer can see: the client's Prometheus metrics and
//! `lula-client status`, against a running system.

use std::time::Duration;

use lula_e2e::{Cloud, Device};
use lula_testkit::eventually;

const WAIT: Duration = Duration::from_secs(120);

/// The value of a metric line `name value` in a text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_exports_what_it_moved_as_prometheus_metrics() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    let port = lula_testkit::free_port();
    device.config.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    device.start();
    device.produce(0, 100).await;
    for i in 0..10 {
        cloud.send_down("dev-1", &[("n", i.to_string())]).await;
    }
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = eventually("the counts in /metrics", WAIT, || {
        let url = url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let up = metric(&text, "lula_client_upstream_entries_total")?;
            let down = metric(&text, "lula_client_downstream_entries_total")?;
            (up >= 100.0 && down >= 10.0).then_some(text)
        }
    })
    .await;
    assert_eq!(
        metric(&text, "lula_client_upstream_entries_total"),
        Some(100.0)
    );
    assert_eq!(
        metric(&text, "lula_client_downstream_entries_total"),
        Some(10.0)
    );
    assert_eq!(metric(&text, "lula_client_connected"), Some(1.0));
    assert!(metric(&text, "lula_client_sessions_total").unwrap() >= 1.0);
    assert_eq!(metric(&text, "lula_client_gaps_total"), Some(0.0));
    // Caught up: nothing in out:x the hub has not acknowledged.
    assert_eq!(metric(&text, "lula_client_upstream_lag_entries"), Some(0.0));
    assert!(text.contains("lula_client_upstream_batch_entries_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_auth_export_what_they_did_as_prometheus_metrics() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.start();
    device.produce(0, 50).await;
    cloud.send_down("dev-1", &[("n", "1".into())]).await;
    let hub = cloud.admin_url() + "/metrics";
    let text = eventually("the hub's counts", WAIT, || {
        let hub = hub.clone();
        async move {
            let text = reqwest::get(&hub).await.ok()?.text().await.ok()?;
            let up = metric(&text, "lula_hub_entries_in_total")?;
            let down = metric(&text, "lula_hub_entries_out_total")?;
            (up >= 50.0 && down >= 1.0).then_some(text)
        }
    })
    .await;
    assert_eq!(metric(&text, "lula_hub_entries_in_total"), Some(50.0));
    assert_eq!(metric(&text, "lula_hub_connections"), Some(1.0));
    assert_eq!(metric(&text, "lula_hub_duplicates_total"), Some(0.0));
    assert!(metric(&text, "lula_hub_ingest_calls_total").unwrap() >= 1.0);
    assert!(text.contains("lula_hub_ingest_seconds_bucket"));
    assert!(metric(&text, "lula_hub_upstream_lag_seconds_count").unwrap() >= 1.0);
    assert!(metric(&text, "lula_hub_downstream_lag_seconds_count").unwrap() >= 1.0);
    assert!(metric(&text, r#"lula_hub_redis_seconds_count{op="authenticate"}"#).unwrap() >= 1.0);
    assert!(metric(&text, r#"lula_hub_redis_seconds_count{op="xread"}"#).unwrap() >= 1.0);

    let auth = format!("{}/metrics", cloud.auth_admin_url());
    let text = reqwest::get(&auth).await.unwrap().text().await.unwrap();
    assert_eq!(
        metric(&text, r#"lula_auth_registrations_total{outcome="ok"}"#),
        Some(1.0)
    );
    assert!(metric(&text, r#"lula_auth_logins_total{outcome="ok"}"#).unwrap() >= 1.0);
    assert!(text.contains("lula_auth_bcrypt_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_both_backlogs_and_the_session() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    device.produce(0, 100).await;
    let mut last = lula_protocol::StreamId::ZERO;
    for i in 0..1_200 {
        last = cloud.send_down("dev-1", &[("n", i.to_string())]).await;
    }
    let (dir, url) = (
        device.state_dir().to_owned(),
        device.config.redis_url.clone(),
    );
    let status = || {
        let (dir, url) = (dir.clone(), url.clone());
        async move {
            lula_client::status::status(&dir, &url, "lula-client")
                .await
                .unwrap()
        }
    };
    let before = status().await;
    assert!(!before.connected);
    assert_eq!(before.upstream_backlog, 100);
    assert_eq!(before.downstream_backlog, None, "no hub has spoken yet");
    assert!(before.to_string().contains("downstream backlog: unknown"));

    device.start();
    let after = eventually("both directions caught up", WAIT, || async {
        let s = status().await;
        (s.connected
            && s.upstream_backlog == 0
            && s.downstream_cursor == last
            && s.downstream_backlog == Some(0))
        .then_some(s)
    })
    .await;
    assert!(after.session_expires_at.is_some());
    let text = after.to_string();
    assert!(text.contains("upstream backlog:   0 entries"), "{text}");
    assert!(
        text.contains("downstream backlog: 0 entries waiting on the hub"),
        "{text}"
    );
    let json = serde_json::to_value(&after).unwrap();
    assert_eq!(json["downstreamBacklog"], 0);
    assert_eq!(json["upstreamBacklog"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_is_compressed_and_status_shows_its_bytes_and_ratio() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-z").await;
    let mut device = Device::new(&cloud, "dev-z", &otp);
    // The default, said here because this test is about it.
    device.config.compression_window_bits = Some(lula_protocol::compress::DEFAULT_WINDOW_BITS);
    device.produce(0, 500).await;
    for i in 0..500 {
        cloud.send_down("dev-z", &[("n", i.to_string())]).await;
    }
    let (dir, url) = (
        device.state_dir().to_owned(),
        device.config.redis_url.clone(),
    );
    device.start();
    // The upstream cursor (and the link counts with it) is published a
    // moment after each acknowledgement: wait for counts that include the
    // whole upstream backlog.
    let status = eventually("upstream synced and link counts published", WAIT, || {
        let (dir, url) = (dir.clone(), url.clone());
        async move {
            let s = lula_client::status::status(&dir, &url, "lula-client")
                .await
                .unwrap();
            let sent_plain = s.link.map_or(0, |l| l[1]);
            (s.connected && s.upstream_backlog == 0 && sent_plain > 500 * 60).then_some(s)
        }
    })
    .await;
    assert_eq!(
        status.compression.as_deref(),
        Some("deflate; window-bits=10; frame-window-bits=15")
    );
    let [sent, sent_plain, received, received_plain] = status.link.unwrap();
    // 500 entries of 80 repeated bytes: far below half of the JSON.
    assert!(sent * 2 < sent_plain, "sent {sent} of {sent_plain}");
    assert!(received > 0 && received_plain > 0);
    let text = status.to_string();
    assert!(
        text.contains("compression:        deflate; window-bits=10; frame-window-bits=15"),
        "{text}"
    );
    assert!(
        text.contains("link sent:") && text.contains("of JSON)"),
        "{text}"
    );
}
