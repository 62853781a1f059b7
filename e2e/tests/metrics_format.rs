//! `GET /metrics` of the hub, lula-auth and lula-client as Prometheus reads
//! it: `promtool check metrics` (the linter Prometheus ships) accepts each
//! body, the Content-Type names the format served, OpenMetrics goes to a
//! scraper that asks for it, and `*_build_info` and `process_*` are there.
//!
//! promtool comes from Debian's `prometheus` package; scripts/test.sh installs
//! it and sets `LULA_REQUIRE_TOOLS`, so there a missing promtool fails the
//! test instead of skipping it.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use lula_e2e::{Cloud, Device};
use lula_testkit::eventually;

const WAIT: Duration = Duration::from_secs(120);

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// promtool, or `None` (with a loud note) when it is missing and the run
/// does not require it.
pub fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var_os("LULA_REQUIRE_TOOLS").is_none(),
        "promtool is missing and LULA_REQUIRE_TOOLS is set: apt-get install prometheus"
    );
    eprintln!("SKIPPED: promtool is missing (apt-get install prometheus); metrics not linted");
    None
}

/// Runs `promtool check metrics` on `body`; its complaints on failure.
fn promtool_check(promtool: &str, body: &str) -> Result<(), String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// GETs `url` with `accept`; (Content-Type, body).
async fn scrape(url: &str, accept: Option<&str>) -> Option<(String, String)> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let content_type = response
        .headers()
        .get("content-type")?
        .to_str()
        .ok()?
        .to_owned();
    Some((content_type, response.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_endpoint_passes_promtool_in_the_format_it_names() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    let port = lula_testkit::free_port();
    device.config.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    device.start();
    device.produce(0, 10).await;
    cloud.send_down("dev-1", &[("n", "1".into())]).await;
    let endpoints = [
        ("lula_hub", cloud.admin_url() + "/metrics"),
        ("lula_auth", cloud.auth_admin_url() + "/metrics"),
        ("lula_client", format!("http://127.0.0.1:{port}/metrics")),
    ];
    // Every family has samples once the device synced both ways.
    let hub = endpoints[0].1.clone();
    eventually("the hub's counts", WAIT, || {
        let hub = hub.clone();
        async move {
            let (_, text) = scrape(&hub, None).await?;
            text.contains("lula_hub_entries_out_total 1").then_some(())
        }
    })
    .await;
    let promtool = promtool();
    for (service, url) in &endpoints {
        let (content_type, text) = scrape(url, None).await.expect("scrape");
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(
            !text.contains("# EOF"),
            "{service}: OpenMetrics as text:\n{text}"
        );
        let info = format!(
            "{service}_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            lula_runtime::metrics::COMMIT
        );
        assert!(text.contains(&info), "{service}: no {info} in:\n{text}");
        for process in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(
                text.contains(process),
                "{service}: no {process} in:\n{text}"
            );
        }
        if let Some(promtool) = promtool {
            promtool_check(promtool, &text)
                .unwrap_or_else(|e| panic!("promtool check metrics on {service}: {e}\n{text}"));
        }

        let (content_type, om) = scrape(url, Some(PROMETHEUS_ACCEPT)).await.expect("scrape");
        assert!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{service}: {content_type}"
        );
        assert!(om.ends_with("# EOF\n"), "{service}: {om}");
    }
    device.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_ports_serve_only_what_devices_need() {
    let cloud = Cloud::start().await;
    let hub = cloud.hub_url().replacen("ws://", "http://", 1);
    let auth = cloud.auth_url();
    let status =
        |url: String| async move { reqwest::get(&url).await.expect("GET").status().as_u16() };
    for path in ["/metrics", "/fleet", "/healthz", "/readyz"] {
        assert_eq!(
            status(format!("{hub}{path}")).await,
            404,
            "hub device port {path}"
        );
    }
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            status(format!("{auth}{path}")).await,
            404,
            "auth device port {path}"
        );
    }
    for admin in [cloud.admin_url(), cloud.auth_admin_url()] {
        for path in ["/metrics", "/healthz", "/readyz"] {
            assert_eq!(status(format!("{admin}{path}")).await, 200, "{admin}{path}");
        }
        // What devices use is not on the admin port.
        assert_eq!(status(format!("{admin}/")).await, 404, "{admin}/");
    }
    // The device routes still answer on the device ports.
    let login = reqwest::Client::new()
        .post(format!("{auth}/login"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_ne!(login.status().as_u16(), 404);
    let upgrade = reqwest::get(&hub).await.unwrap().status().as_u16();
    assert_eq!(upgrade, 401, "the hub's upgrade route wants a token");
}

/// deploy/prometheus/alerts.yml passes `promtool check rules`, and its unit
/// tests (alerts_test.yml: each alert fires on what it is for and stays
/// quiet on a healthy system) pass `promtool test rules`.
#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
