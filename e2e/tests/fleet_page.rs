//! The fleet page in a real browser: headless Chromium driven through
//! chromedriver (Debian's `chromium` and `chromium-driver`) over the W3C
//! WebDriver protocol, spoken here with reqwest (a handful of JSON calls, no
//! WebDriver crate). The page refuses without the admin token, lists the
//! devices the test connected, shows one going offline by itself (no
//! reload), filters and sorts, and fits a phone's width.
//!
//! `LULA_FLEET_SCREENSHOT=<path>` saves a screenshot (docs/fleet-page.png is
//! made that way). Without chromedriver the test skips loudly, unless
//! `LULA_REQUIRE_TOOLS` is set (scripts/test.sh installs both and sets it).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use lula_e2e::{Cloud, CloudOptions, Device};
use lula_testkit::eventually;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);
const TOKEN: &str = "fleet-page-admin-token";

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` when they are not
    /// installed (and not required).
    async fn start() -> Option<Browser> {
        let found = ["chromedriver", "chromium"].iter().all(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !found {
            assert!(
                std::env::var_os("LULA_REQUIRE_TOOLS").is_none(),
                "chromium or chromedriver is missing and LULA_REQUIRE_TOOLS is set: apt-get install chromium chromium-driver"
            );
            eprintln!(
                "SKIPPED: chromium or chromedriver is missing (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = lula_testkit::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually("chromedriver to answer", WAIT, || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                http.get(format!("{base}/status"))
                    .send()
                    .await
                    .ok()
                    .map(drop)
            }
        })
        .await;
        let profile = tempfile::tempdir().expect("profile dir").keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium"),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Some(Browser {
            driver,
            http,
            session: format!("{base}/session/{session}"),
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if !body.is_null() {
            request = request.json(&body);
        }
        let reply: Value = request
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        reply["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Sends `headers` with every request from now on (Chrome DevTools
    /// Protocol through chromedriver), as a logged-in browser would.
    async fn set_headers(&self, headers: Value) {
        let cdp = |cmd: &str, params: Value| json!({ "cmd": cmd, "params": params });
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            cdp("Network.enable", json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            cdp("Network.setExtraHTTPHeaders", json!({ "headers": headers })),
        )
        .await;
    }

    /// `client:state` of every row the page shows, in its order.
    async fn rows(&self) -> Vec<String> {
        let rows = self
            .script("return [...document.querySelectorAll('tr[data-client]')].map(r => r.dataset.client + ':' + r.dataset.state)")
            .await;
        serde_json::from_value(rows).unwrap_or_default()
    }

    /// Types `keys` (WebDriver key values) into whatever has the focus, as
    /// a keyboard would.
    async fn keys(&self, keys: &str) {
        let strokes: Vec<Value> = keys
            .chars()
            .flat_map(|k| {
                [
                    json!({ "type": "keyDown", "value": k.to_string() }),
                    json!({ "type": "keyUp", "value": k.to_string() }),
                ]
            })
            .collect();
        self.call(
            reqwest::Method::POST,
            "/actions",
            json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": strokes }] }),
        )
        .await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        let png = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn which(tool: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_lists_devices_follows_them_and_needs_the_token() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let cloud = Cloud::start_with(CloudOptions {
        admin_token: Some(TOKEN.into()),
        ..CloudOptions::default()
    })
    .await;
    let mut devices = Vec::new();
    for name in ["pump-station-1", "weather-mast-2", "gate-controller-3"] {
        let otp = cloud.provision(name).await;
        let mut device = Device::new(&cloud, name, &otp);
        device.start();
        device.produce(0, 5).await;
        devices.push(device);
    }
    let page = format!("{}/fleet/", cloud.admin_url());

    // Without the token: refused, and nothing of the fleet is shown.
    let refused = reqwest::get(&page).await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));
    browser.goto(&page).await;
    let text = browser.script("return document.body.innerText").await;
    let text = text.as_str().unwrap_or_default();
    // Chromium shows the 401 (an empty page, headless: it has no password
    // dialog to open), not the fleet.
    assert!(!text.contains("pump-station-1"), "{text}");
    assert_eq!(
        browser
            .script("return document.getElementById('fleet') === null")
            .await,
        true
    );

    // With it: every device, connected.
    browser
        .set_headers(json!({ "Authorization": format!("Bearer {TOKEN}") }))
        .await;
    browser.goto(&page).await;
    eventually(
        "the page to list the three devices connected",
        WAIT,
        || async {
            let mut rows = browser.rows().await;
            rows.sort();
            (rows
                == [
                    "gate-controller-3:connected",
                    "pump-station-1:connected",
                    "weather-mast-2:connected",
                ])
            .then_some(())
        },
    )
    .await;

    // One goes offline; the page, left alone, shows it.
    devices[1].stop().await.unwrap();
    eventually("the page to show weather-mast-2 offline", WAIT, || async {
        let rows = browser.rows().await;
        rows.iter()
            .any(|r| r == "weather-mast-2:disconnected")
            .then_some(())
    })
    .await;
    if let Some(path) = std::env::var_os("LULA_FLEET_SCREENSHOT") {
        std::fs::write(path, browser.screenshot().await).expect("write the screenshot");
    }
    let rows = browser.rows().await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let row = browser
        .script("return document.querySelector('tr[data-client=\"weather-mast-2\"]').innerText")
        .await;
    assert!(row.as_str().unwrap_or_default().contains("ago"), "{row}");

    // By keyboard: `/` jumps to the filter, typing filters, Escape clears.
    browser.keys("/pump").await;
    let focused = browser.script("return document.activeElement.id").await;
    assert_eq!(focused, "filter");
    assert_eq!(browser.rows().await, ["pump-station-1:connected"]);
    browser.keys("\u{E00C}").await;
    assert_eq!(browser.rows().await.len(), 3);
    // By state; then sort by client.
    browser
        .script("const s = document.getElementById('state'); s.value = 'disconnected'; s.dispatchEvent(new Event('change')); return 0")
        .await;
    assert_eq!(browser.rows().await, ["weather-mast-2:disconnected"]);
    browser
        .script("const s = document.getElementById('state'); s.value = ''; s.dispatchEvent(new Event('change')); document.querySelector('th[data-key=client] button').click(); return 0")
        .await;
    assert_eq!(
        browser.rows().await,
        [
            "gate-controller-3:connected",
            "pump-station-1:connected",
            "weather-mast-2:disconnected"
        ]
    );
    // Every control is reachable by keyboard: native buttons and inputs only.
    let focusable = browser
        .script("return [...document.querySelectorAll('th button, input, select')].every(e => e.tabIndex >= 0)")
        .await;
    assert_eq!(focusable, true);

    // A phone: the table becomes cards, nothing wider than the screen.
    browser
        .call(
            reqwest::Method::POST,
            "/window/rect",
            json!({ "width": 390, "height": 844 }),
        )
        .await;
    let fits = browser
        .script("return document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(fits, true, "the page is wider than a phone");
    browser.call(reqwest::Method::DELETE, "", Value::Null).await;
    for mut d in devices {
        d.stop().await.unwrap();
    }
}
