//! The real `lula-client` binary, for what only a process shows: its exit
//! status after SIGTERM and what it writes to its log.
//!
//! Cargo hands `CARGO_BIN_EXE_*` only to the tests of the crate that owns the
//! binary, so the harness builds it once per test process with the `cargo`
//! that runs the tests (a no-op when it is fresh) and takes its path from
//! cargo's own build messages.
//!
//! Two variables run another build instead, e.g. a cross-built device binary
//! under qemu-user (scripts/test.sh does, see scripts/build-device.sh):
//! - `LULA_CLIENT_BIN`: the binary to run (nothing is built then);
//! - `LULA_CLIENT_RUNNER`: a command line put in front of it, split on
//!   whitespace, e.g. `qemu-aarch64-static -L /usr/aarch64-linux-gnu`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::Device;

/// The path of a freshly built `lula-client`, or `LULA_CLIENT_BIN`.
pub fn client_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("LULA_CLIENT_BIN") {
                return PathBuf::from(bin);
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "lula-client", "--bin", "lula-client"])
                .arg("--message-format=json-render-diagnostics")
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stderr(Stdio::inherit());
            if !cfg!(debug_assertions) {
                cmd.arg("--release");
            }
            let out = cmd.output().expect("run cargo build for lula-client");
            assert!(out.status.success(), "cargo build -p lula-client failed");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|m| m["reason"] == "compiler-artifact")
                .filter(|m| m["target"]["name"] == "lula-client")
                .find_map(|m| m["executable"].as_str().map(PathBuf::from))
                .expect("cargo reported no lula-client executable")
        })
        .clone()
}

/// A command that runs [`client_binary`], through `LULA_CLIENT_RUNNER` if set.
pub fn client_command() -> Command {
    let runner = std::env::var("LULA_CLIENT_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut cmd = Command::new(program);
            cmd.args(words).arg(client_binary());
            cmd
        }
        None => Command::new(client_binary()),
    }
}

/// A `lula-client` process; killed when dropped.
pub struct ClientProcess {
    child: Child,
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Holds the OTP secret file while the process may read it.
    _secrets: Option<tempfile::TempDir>,
}

impl ClientProcess {
    /// `lula-client run` with `device`'s configuration (identity, URLs, state
    /// dir, batch size, register retry, backoff cap), its log on stderr at
    /// `rust_log`, and `extra` arguments after. The OTP secret (if the config
    /// has one) goes in a 0600 file, as operators pass it.
    pub fn run(device: &Device, rust_log: &str, extra: &[&str]) -> ClientProcess {
        let c = &device.config;
        let mut cmd = client_command();
        cmd.arg("run")
            .args(["--client-id", c.client_id.as_str()])
            .args(["--auth-url", &c.auth_url, "--hub-url", &c.hub_url])
            .args(["--redis-url", &c.redis_url])
            .arg("--state-dir")
            .arg(device.state_dir())
            .args(["--batch-entries", &c.batch_entries.to_string()])
            .args(["--inflight-batches", &c.inflight_batches.to_string()])
            .args(["--keep-acked", &c.keep_acked.to_string()])
            .arg("--register-retry")
            .arg(humantime_ms(c.register_retry))
            .arg("--max-backoff")
            .arg(humantime_ms(c.max_backoff))
            .args(extra)
            .env_remove("LULA_OTP_SECRET")
            .env("RUST_LOG", rust_log)
            .env_remove("REDIS_URL")
            .stdin(Stdio::null());
        if let Some(ca) = &c.ca_file {
            cmd.arg("--ca-file").arg(ca);
        }
        let secrets = c.otp_secret.as_ref().map(|otp| {
            let dir = tempfile::tempdir().expect("secrets dir");
            let path = dir.path().join("otp-secret");
            write_private(&path, otp.expose());
            cmd.arg("--otp-secret-file").arg(&path);
            dir
        });
        let mut process = Self::spawn(cmd);
        process._secrets = secrets;
        process
    }

    /// Starts `cmd`, collecting its stdout and stderr.
    pub fn spawn(mut cmd: Command) -> ClientProcess {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lula-client");
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let outputs: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for mut out in outputs {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    log.lock().expect("log").push_str(&text);
                }
            }));
        }
        ClientProcess {
            child,
            log,
            readers,
            _secrets: None,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote so far (stdout and stderr, interleaved by arrival).
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Sends SIGTERM, as `systemctl stop` or `docker stop` does.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for it to exit (at most `limit`, a hang guard), then for its
    /// output to be read to the end.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "lula-client did not exit within {limit:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to a new file only its owner may read (0600).
pub fn write_private(path: &std::path::Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create secret file");
    writeln!(f, "{text}").expect("write secret file");
}

/// A duration as whole milliseconds for a humantime flag (`1500ms`).
fn humantime_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// `lula-client status` (text) for `device`, from the binary, with the
/// device Redis at `redis_url`.
pub fn status_text(device: &Device, redis_url: &str) -> String {
    let out = client_command()
        .arg("status")
        .args(["--redis-url", redis_url])
        .arg("--state-dir")
        .arg(device.state_dir())
        .args(["--prefix", device.keys.prefix()])
        .env_remove("REDIS_URL")
        .output()
        .expect("run lula-client status");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lula-client status failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
