//! Every secret `lula-hub` takes also comes from a file (`--<flag>-file`,
//! `<ENV>_FILE`), so none has to be on a command line; files others can read
//! are refused.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lula_testkit::{RedisServer, eventually};

const ADMIN: &str = "admin-token-from-a-file";

fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `lula-hub serve` with no secret inline, in flags or environment.
fn serve(port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lula-hub"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("REDIS_URL")
        .env_remove("LULA_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_url_and_admin_token_come_from_files() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = write_file(dir.path(), "redis-url", &redis.url(), 0o600);
    // Group-readable, as Kubernetes mounts secrets for the pod's fsGroup.
    let token = write_file(dir.path(), "admin-token", ADMIN, 0o440);
    let port = lula_testkit::free_port();
    let mut child = serve(port)
        .env("REDIS_URL_FILE", &url)
        .arg("--admin-token-file")
        .arg(&token)
        .spawn()
        .expect("start lula-hub");
    let fleet = format!("http://127.0.0.1:{port}/fleet");
    let http = reqwest::Client::new();
    let status = eventually("the hub to answer /fleet", Duration::from_secs(30), || {
        let request = http.get(&fleet).bearer_auth(ADMIN);
        async move { request.send().await.ok().map(|r| r.status()) }
    })
    .await;
    let wrong = http.get(&fleet).bearer_auth("other").send().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200, "the token in the file opens /fleet");
    assert_eq!(wrong.status(), 401);
}

#[test]
fn secret_files_others_can_read_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let open = write_file(dir.path(), "open", "redis://127.0.0.1:9", 0o644);
    for (flag, env) in [
        ("--admin-token-file", "LULA_ADMIN_TOKEN_FILE"),
        ("--auth-redis-url-file", "LULA_AUTH_REDIS_URL_FILE"),
        ("--redis-url-file", "REDIS_URL_FILE"),
    ] {
        let out = serve(lula_testkit::free_port())
            .env(env, &open)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: started");
        assert!(err.contains(flag), "{flag}: {err}");
        assert!(err.contains("readable by other users"), "{flag}: {err}");
        assert!(err.contains(&open.display().to_string()), "{flag}: {err}");
    }
}
