//! Two things an operator relies on without seeing them: the daemon trusts
//! the system's CA roots when no `--ca-file` is given, and its logs never
//! carry a secret (the Redis password in its URL, the session token, the
//! device secret, the provisioned OTP secret).
//!
//! The system roots are made to include the test CA the way
//! rustls-native-certs reads them, through `SSL_CERT_FILE`. Setting an
//! environment variable inside a test process is unsound while other threads
//! run, so that test runs its body in a child process of this test binary
//! started with `SSL_CERT_FILE` set (as `redis_urls.rs` does for `rediss://`).

use std::time::Duration;

use lula_e2e::binary::{ClientProcess, status_text};
use lula_e2e::{Cloud, CloudOptions, Device, check_downstream, check_upstream, read_all};
use lula_protocol::ClientId;
use lula_testkit::{RedisOptions, RedisServer, TestPki, eventually};

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(120);

/// Runs [`system_roots_child`] in a child process whose system roots are
/// the test CA.
#[test]
fn client_trusts_the_system_roots_for_https_and_wss() {
    let pki = TestPki::new();
    lula_e2e::run_child_test("system_roots_child", &pki, &[]);
}

/// A TLS cloud (`https://`, `wss://`) with a certificate of the test CA and a
/// device without `ca_file`: it registers, logs in and syncs both ways only
/// because `SSL_CERT_FILE` (from
/// [`client_trusts_the_system_roots_for_https_and_wss`]) puts the CA among
/// the system roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by client_trusts_the_system_roots_for_https_and_wss, with SSL_CERT_FILE set"]
async fn system_roots_child() {
    let (Some(cert), Some(key), Some(_)) = (
        std::env::var_os("LULA_TEST_TLS_CERT"),
        std::env::var_os("LULA_TEST_TLS_KEY"),
        std::env::var_os("SSL_CERT_FILE"),
    ) else {
        eprintln!("skipped: run by client_trusts_the_system_roots_for_https_and_wss");
        return;
    };
    let tls = lula_runtime::tls::server_config(cert.as_ref(), key.as_ref())
        .expect("server config from the test CA's certificate");
    let cloud = Cloud::start_with(CloudOptions {
        tls: Some(tls),
        ..CloudOptions::default()
    })
    .await;
    assert!(cloud.auth_url().starts_with("https://"));
    assert!(cloud.hub_url().starts_with("wss://"));
    let otp = cloud.provision("dev-roots").await;
    let mut device = Device::new(&cloud, "dev-roots", &otp);
    assert_eq!(device.config.ca_file, None);

    device.produce(0, 100).await;
    device.start();
    for i in 0..5 {
        cloud
            .send_down("dev-roots", &[("cmd", "set".into()), ("n", i.to_string())])
            .await;
    }
    eventually(
        "100 entries in the hub and 5 on the device",
        WAIT,
        || async {
            (cloud.in_len().await >= 100 && device.in_entries().await.len() >= 5).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = device.status().await;
    assert!(status.registered && status.connected, "{status:?}");
    check_upstream(
        "dev-roots",
        &device.out_entries().await,
        &cloud.in_entries().await,
    )
    .unwrap();
    let client: ClientId = "dev-roots".parse().unwrap();
    let sent_down = read_all(&mut cloud.conn().await, &cloud.keys.out_stream(&client)).await;
    check_downstream(&sent_down, &device.in_entries().await).unwrap();
    device.stop().await.unwrap();
}

/// A password unlike anything else in a log.
const REDIS_PASSWORD: &str = "pw-Zq8xK3vT9mW";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_never_show_the_redis_password_the_token_or_the_secrets() {
    // Short tokens: the daemon logs in and renews on the live connection
    // several times while it runs.
    let mut cloud = Cloud::start_with(CloudOptions {
        token_ttl: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    let otp = cloud.provision("dev-secret").await;
    // The daemon logs in to its Redis as `lula` with a password; the
    // harness keeps the open default user.
    let redis = RedisServer::start_with(RedisOptions {
        appendonly: true,
        extra_args: ["--user", "lula", "on", &format!(">{REDIS_PASSWORD}")]
            .into_iter()
            .chain(["~*", "&*", "+@all"])
            .map(String::from)
            .collect(),
        ..RedisOptions::default()
    });
    let mut device = Device::with_redis(&cloud, "dev-secret", &otp, redis);
    let url = format!(
        "redis://lula:{REDIS_PASSWORD}@127.0.0.1:{}",
        device.redis.port()
    );
    device.config.redis_url = url.clone();

    let mut daemon = ClientProcess::run(&device, "debug", &[]);
    device.produce(0, 100).await;
    eventually("100 entries in the hub", WAIT, || async {
        (cloud.in_len().await >= 100).then_some(())
    })
    .await;
    // Errors are where URLs and tokens like to leak: the hub goes away, then
    // the device Redis, and both come back.
    cloud.kill_hub();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cloud.start_hub();
    device.redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    device.redis.restart();
    // Past a token lifetime: logins after the outages, then a renewal on
    // the live connection, whose lines are checked too.
    let renewals = |log: &str| {
        log.matches("session token renewed on the live connection")
            .count()
    };
    let before = renewals(&daemon.log());
    eventually("a renewal after the outages", WAIT, || async {
        (renewals(&daemon.log()) > before).then_some(())
    })
    .await;
    device.produce(100, 200).await;
    eventually("200 entries in the hub", WAIT, || async {
        (cloud.in_len().await >= 200).then_some(())
    })
    .await;
    let status = status_text(&device, &url);
    daemon.terminate();
    let exit = daemon.wait(WAIT);
    let log = daemon.log();
    assert!(exit.success(), "exit {exit:?}:\n{log}");
    assert!(
        log.contains("DEBUG") && log.contains("registered"),
        "too little logged:\n{log}"
    );
    // The URL itself is logged (its password masked), so the check below
    // would catch an unmasked one.
    let masked = format!("redis://lula:***@127.0.0.1:{}", device.redis.port());
    assert!(log.contains(&masked), "the Redis URL is not logged:\n{log}");
    let identity = std::fs::read_to_string(device.state_dir().join("identity.json")).unwrap();
    let identity: serde_json::Value = serde_json::from_str(&identity).unwrap();
    let device_secret = identity["secret"].as_str().unwrap();
    for (what, text) in [("log", &log), ("status", &status)] {
        assert!(
            !text.contains(REDIS_PASSWORD),
            "the Redis password is in the {what}:\n{text}"
        );
        assert!(
            !text.contains(&otp),
            "the OTP secret is in the {what}:\n{text}"
        );
        assert!(
            !text.contains(device_secret),
            "the device secret is in the {what}:\n{text}"
        );
        // Session tokens are JWTs, whose header always encodes to `eyJ`.
        assert!(!text.contains("eyJ"), "a token is in the {what}:\n{text}");
    }
}
