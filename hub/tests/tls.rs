//! `lula-hub serve --tls-cert --tls-key`: the binary serves HTTPS (and so
//! `wss://`) with the given certificate, and refuses to start on unusable files.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lula_testkit::{RedisServer, TestPki, eventually};

struct Hub(Child);

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lula_hub(redis: &RedisServer, port: u16, tls: &[&std::path::Path]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lula-hub"));
    cmd.arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", &redis.url()])
        .args(["--tls-cert", tls[0].to_str().unwrap()])
        .args(["--tls-key", tls[1].to_str().unwrap()])
        .env_remove("LULA_TLS_CERT")
        .env_remove("LULA_TLS_KEY")
        .stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn serves_https_with_the_given_certificate() {
    let redis = RedisServer::start();
    let pki = TestPki::new();
    let port = lula_testkit::free_port();
    let _hub = Hub(lula_hub(&redis, port, &[&pki.cert_file(), &pki.key_file()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lula-hub"));
    let tls = lula_runtime::tls::client_config(Some(&pki.ca_file())).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/healthz");
    let status = eventually(
        "lula-hub to answer over https",
        Duration::from_secs(30),
        || async { http.get(&url).send().await.ok().map(|r| r.status()) },
    )
    .await;
    assert!(status.is_success(), "{status}");
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err(),
        "plain HTTP was answered"
    );
}

#[test]
fn refuses_to_start_with_a_key_that_is_not_one() {
    let redis = RedisServer::start();
    let pki = TestPki::new();
    let out = lula_hub(
        &redis,
        lula_testkit::free_port(),
        &[&pki.cert_file(), &pki.ca_file()],
    )
    .output()
    .expect("run lula-hub");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no PEM private key") && stderr.contains("ca.pem"),
        "{stderr}"
    );
}
