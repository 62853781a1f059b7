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
