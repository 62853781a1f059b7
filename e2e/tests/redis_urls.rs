//! Redis URLs beyond `redis://host:port`: an ACL user and password in the URL
//! (`redis://user:password@...`) and TLS (`rediss://`), for lula-auth,
//! lula-hub and lula-client alike.
//!
//! A private CA for `rediss://` is trusted the way every rustls-native-certs
//! user trusts one, through `SSL_CERT_FILE`. Setting an environment variable
//! inside a test process is unsound while other threads run, so the rediss
//! test runs its body in a child process of this test binary that was started
//! with `SSL_CERT_FILE` naming a CA the parent generated.

use std::time::Duration;

use lula_e2e::{Cloud, CloudOptions, Device, check_upstream};
use lula_testkit::{RedisOptions, RedisServer, TestPki, eventually};

/// Generous: CI machines are shared and debug builds are slow.
const WAIT: Duration = Duration::from_secs(120);

/// An ACL user `lula` with password `s3cret` who may do anything.
fn lula_user_args() -> Vec<String> {
    ["--user", "lula", "on", ">s3cret", "~*", "&*", "+@all"]
        .map(String::from)
        .to_vec()
}

/// The `lula` user, and a default user who may only `PING` (what the test
/// harness checks a server with): whoever works on the server logged in as
/// `lula`.
fn acl_args() -> Vec<String> {
    let default_user = ["--user", "default", "on", "nopass", "-@all", "+ping"];
    [lula_user_args(), default_user.map(String::from).to_vec()].concat()
}

/// Connections to `redis` whose user is `user` (`CLIENT LIST`), and their
/// local addresses (`laddr`, which tells the TLS port from the plain one).
async fn connections_of(redis_url: &str, user: &str) -> Vec<String> {
    let mut conn = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    list.lines()
        .filter(|l| l.split(' ').any(|f| f == format!("user={user}")))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("laddr=")))
        .map(String::from)
        .collect()
}

async fn sync_one_device(cloud: &Cloud, device: &mut Device, client: &str) {
    device.produce(0, 50).await;
    device.start();
    eventually("50 entries in the hub", WAIT, || async {
        (cloud.in_len().await >= 50).then_some(())
    })
    .await;
    check_upstream(
        client,
        &device.out_entries().await,
        &cloud.in_entries().await,
    )
    .unwrap();
    cloud.send_down(client, &[("cmd", "ping".into())]).await;
    eventually("the message on the device", WAIT, || async {
        (device.in_entries().await.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_client_log_in_to_redis_with_the_acl_user_in_the_url() {
    // The cloud Redis refuses everything but PING without the user: lula-auth
    // and lula-hub only work if they log in with the URL's credentials.
    let cloud = Cloud::start_with(CloudOptions {
        redis_args: acl_args(),
        redis_userinfo: Some("lula:s3cret".into()),
        ..CloudOptions::default()
    })
    .await;
    let otp = cloud.provision("dev-acl").await;
    // The device Redis keeps its default user open for the harness; the
    // daemon logs in as `lula`, which CLIENT LIST shows.
    let device_redis = RedisServer::start_with(RedisOptions {
        extra_args: lula_user_args(),
        ..RedisOptions::default()
    });
    let mut device = Device::with_redis(&cloud, "dev-acl", &otp, device_redis);
    device.config.redis_url = format!("redis://lula:s3cret@127.0.0.1:{}", device.redis.port());

    sync_one_device(&cloud, &mut device, "dev-acl").await;
    assert!(!connections_of(&device.redis.url(), "lula").await.is_empty());
    device.stop().await.unwrap();

    // A wrong password gets nothing.
    let wrong = format!("redis://lula:wrong@127.0.0.1:{}", device.redis.port());
    let refused =
        lula_client::status::status(device.state_dir(), &wrong, device.keys.prefix()).await;
    let e = refused.expect_err("a wrong Redis password was accepted");
    let message = format!("{e:#}").to_lowercase();
    assert!(message.contains("authentication failed"), "{e:#}");
}

/// Runs [`rediss_child`] in a child process trusting a CA generated here.
#[test]
fn services_and_client_reach_redis_over_rediss() {
    let pki = TestPki::new();
    lula_e2e::run_child_test(
        "rediss_child",
        &pki,
        &[("LULA_TEST_OTHER_CA", &pki.other_ca_file())],
    );
}

/// `rediss://` (with the ACL user too) for lula-auth, lula-hub, the harness
/// and lula-client. Needs `SSL_CERT_FILE` and the server certificate from
/// [`services_and_client_reach_redis_over_rediss`], which runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by services_and_client_reach_redis_over_rediss, with SSL_CERT_FILE set"]
async fn rediss_child() {
    let (Some(cert), Some(key), Some(ca), Some(other_ca)) = (
        std::env::var_os("LULA_TEST_TLS_CERT"),
        std::env::var_os("LULA_TEST_TLS_KEY"),
        std::env::var_os("SSL_CERT_FILE"),
        std::env::var_os("LULA_TEST_OTHER_CA"),
    ) else {
        eprintln!("skipped: run by services_and_client_reach_redis_over_rediss");
        return;
    };
    let tls_args = |port: u16| -> Vec<String> {
        let mut args: Vec<String> = ["--tls-port", &port.to_string(), "--tls-auth-clients", "no"]
            .map(String::from)
            .to_vec();
        for (flag, file) in [
            ("--tls-cert-file", &cert),
            ("--tls-key-file", &key),
            ("--tls-ca-cert-file", &ca),
        ] {
            args.push(flag.into());
            args.push(file.to_string_lossy().into_owned());
        }
        args
    };

    let cloud_tls_port = lula_testkit::free_port();
    let cloud = Cloud::start_with(CloudOptions {
        redis_args: [acl_args(), tls_args(cloud_tls_port)].concat(),
        redis_userinfo: Some("lula:s3cret".into()),
        redis_tls_port: Some(cloud_tls_port),
        ..CloudOptions::default()
    })
    .await;
    // Provisioning went through the harness's rediss:// connection.
    let otp = cloud.provision("dev-rediss").await;

    let device_tls_port = lula_testkit::free_port();
    let device_redis = RedisServer::start_with(RedisOptions {
        extra_args: tls_args(device_tls_port),
        ..RedisOptions::default()
    });
    let mut device = Device::with_redis(&cloud, "dev-rediss", &otp, device_redis);
    device.config.redis_url = format!("rediss://127.0.0.1:{device_tls_port}");

    sync_one_device(&cloud, &mut device, "dev-rediss").await;
    // lula-auth and lula-hub (user lula) are on the cloud Redis's TLS port;
    // the daemon (the device's default user) on the device Redis's.
    let cloud_tls = format!("127.0.0.1:{cloud_tls_port}");
    let on_cloud = connections_of(
        &format!("redis://lula:s3cret@127.0.0.1:{}", cloud.redis.port()),
        "lula",
    )
    .await;
    assert!(
        on_cloud.iter().filter(|a| **a == cloud_tls).count() >= 2,
        "{on_cloud:?}"
    );
    let on_device = connections_of(&device.redis.url(), "default").await;
    assert!(
        on_device.contains(&format!("127.0.0.1:{device_tls_port}")),
        "{on_device:?}"
    );
    let status =
        lula_client::status::status(device.state_dir(), &device.config.redis_url, "lula-client")
            .await
            .unwrap();
    assert!(status.connected, "{status:?}");
    device.stop().await.unwrap();

    // The certificate is verified, not merely encrypted to: trusting another
    // CA instead (roots of the connection's own, the environment untouched),
    // the same URL is refused.
    let other_roots = redis::Client::build_with_tls(
        device.config.redis_url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(other_ca).unwrap()),
        },
    )
    .unwrap()
    .get_multiplexed_async_connection()
    .await;
    let e = other_roots.expect_err("a server of an untrusted CA was accepted");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
}
