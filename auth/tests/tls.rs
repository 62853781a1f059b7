//! `lula-auth serve` with `LULA_TLS_CERT` / `LULA_TLS_KEY` (the environment
//! forms of `--tls-cert` / `--tls-key`): the binary serves HTTPS with the given
//! certificate, and refuses to start with only half of the pair.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lula_testkit::{RedisServer, TestPki, eventually};

struct Auth(Child);

impl Drop for Auth {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lula_auth(redis: &RedisServer, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lula-auth"));
    cmd.arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", &redis.url()])
        .env_remove("LULA_TLS_CERT")
        .env_remove("LULA_TLS_KEY")
        .stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn serves_https_with_the_certificate_from_the_environment() {
    let redis = RedisServer::start();
    let pki = TestPki::new();
    let port = lula_testkit::free_port();
    let _auth = Auth(
        lula_auth(&redis, port)
            .env("LULA_TLS_CERT", pki.cert_file())
            .env("LULA_TLS_KEY", pki.key_file())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start lula-auth"),
    );
    let tls = lula_runtime::tls::client_config(Some(&pki.ca_file())).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/healthz");
    let status = eventually(
        "lula-auth to answer over https",
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
fn a_certificate_without_its_key_is_refused() {
    let redis = RedisServer::start();
    let pki = TestPki::new();
    let out = lula_auth(&redis, lula_testkit::free_port())
        .arg("--tls-cert")
        .arg(pki.cert_file())
        .output()
        .expect("run lula-auth");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}
