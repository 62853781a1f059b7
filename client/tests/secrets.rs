//! Secrets never on argv: the `lula-client` binary takes its OTP secret and
//! Redis URL from files only its user can read, needs the OTP secret only until
//! registered, and keeps its own state private.

use std::io::Read;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lula_testkit::RedisServer;

const OTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
/// Hang guard of every wait; conditions end it early.
const WAIT: Duration = Duration::from_secs(30);

fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `lula-client run` for `dev-1` against a cloud nobody listens on, with no
/// secret in the environment.
fn run_command(redis: &RedisServer, state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lula-client"));
    cmd.args(["run", "--client-id", "dev-1"])
        .args(["--auth-url", "http://127.0.0.1:9"])
        .args(["--hub-url", "ws://127.0.0.1:9"])
        .arg("--redis-url")
        .arg(redis.url())
        .arg("--state-dir")
        .arg(state)
        .env_remove("LULA_OTP_SECRET")
        .env_remove("LULA_OTP_SECRET_FILE")
        .env_remove("REDIS_URL")
        .env("LULA_MAX_BACKOFF", "200ms")
        .env("LULA_REGISTER_RETRY", "200ms")
        .env("LULA_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug");
    cmd
}

/// A running daemon whose stderr is collected as it arrives.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Daemon { child, log }
    }

    /// Waits until the log contains `text`; fails if the daemon exits first.
    fn wait_for_log(&mut self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.log.lock().unwrap().contains(text) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "exited ({status}) before logging {text:?}:\n{}",
                    self.log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "never logged {text:?}:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end (it must stop by itself) and returns (success, stderr).
fn run_to_end(mut cmd: Command) -> (bool, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn otp_secret_file_is_used_and_the_state_it_creates_is_private() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "otp-secret", &format!("{OTP_SECRET}\n"), 0o600);
    let state = dir.path().join("state");
    let mut cmd = run_command(&redis, &state);
    cmd.env("LULA_OTP_SECRET_FILE", &secret);
    let mut daemon = Daemon::spawn(cmd);
    // It got as far as calling lula-auth with a code of that secret.
    daemon.wait_for_log("registration failed");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", daemon.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(OTP_SECRET));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state.join("identity.json")), 0o600);
    assert_eq!(mode(&state), 0o700, "the state dir is private too");
}

#[test]
fn a_secret_file_others_can_read_is_refused_naming_it() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o640, 0o604] {
        let secret = write_file(dir.path(), "otp-secret", OTP_SECRET, mode);
        let mut cmd = run_command(&redis, &dir.path().join("state"));
        cmd.arg("--otp-secret-file").arg(&secret);
        let (ok, err) = run_to_end(cmd);
        assert!(!ok, "started with a mode {mode:o} secret file");
        assert!(err.contains("--otp-secret-file"), "{err}");
        assert!(err.contains(&secret.display().to_string()), "{err}");
        assert!(err.contains("readable by other users"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }
    let (ok, err) = run_to_end({
        let mut cmd = run_command(&redis, &dir.path().join("state"));
        cmd.arg("--otp-secret-file").arg(dir.path().join("missing"));
        cmd
    });
    assert!(!ok);
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn an_unregistered_device_without_the_otp_secret_is_told_which_flag_to_give() {
    let redis = RedisServer::start();
    let state = tempfile::tempdir().unwrap();
    let (ok, err) = run_to_end(run_command(&redis, state.path()));
    assert!(!ok, "an unregistered device started without its OTP secret");
    assert!(err.contains("not registered"), "{err}");
    assert!(err.contains("--otp-secret-file"), "{err}");
}

#[test]
fn a_registered_device_starts_without_the_otp_secret() {
    let redis = RedisServer::start();
    let state = tempfile::tempdir().unwrap();
    let identity = r#"{"clientId": "dev-1", "secret": "c2VjcmV0LW9mLWRldi0xLWF0LWxlYXN0LTQzLWNoYXJz", "registered": true}"#;
    write_file(state.path(), "identity.json", identity, 0o600);
    // Without any secret, and with the unit's secret file deleted after
    // registration (it is not even opened).
    let gone = state.path().join("otp-secret-deleted");
    for file in [None, Some(&gone)] {
        let mut cmd = run_command(&redis, state.path());
        if let Some(file) = file {
            cmd.env("LULA_OTP_SECRET_FILE", file);
        }
        let mut daemon = Daemon::spawn(cmd);
        // Registered: it goes straight to logging in (nobody answers).
        daemon.wait_for_log("login failed");
        let log = daemon.log.lock().unwrap().clone();
        assert!(log.contains(r#""registered":true"#), "{log}");
        assert!(!log.contains("registration"), "{log}");
    }
}

#[test]
fn inline_and_file_forms_of_a_secret_are_exclusive() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "otp-secret", OTP_SECRET, 0o600);
    let mut cmd = run_command(&redis, &dir.path().join("state"));
    cmd.args(["--otp-secret", OTP_SECRET])
        .arg("--otp-secret-file")
        .arg(&secret);
    let (ok, err) = run_to_end(cmd);
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn redis_url_file_names_the_device_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = write_file(dir.path(), "redis-url", &redis.url(), 0o600);
    let out = Command::new(env!("CARGO_BIN_EXE_lula-client"))
        .args(["status", "--json"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("REDIS_URL")
        .env("REDIS_URL_FILE", &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["upstreamBacklog"], 0, "{stdout}");

    std::fs::set_permissions(&url, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lula-client"));
    cmd.args(["status"]).env("REDIS_URL_FILE", &url);
    let (ok, err) = run_to_end(cmd);
    assert!(!ok);
    assert!(err.contains("--redis-url-file"), "{err}");
    assert!(err.contains("readable by other users"), "{err}");
}
