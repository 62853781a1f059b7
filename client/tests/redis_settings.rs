//! lula-client's start-up check of the device Redis, with the real binary.

use std::process::{Command, Stdio};

use lula_testkit::RedisServer;

#[test]
fn require_safe_redis_refuses_a_device_redis_that_evicts_or_does_not_persist() {
    let redis = RedisServer::start();
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lula-client"))
        .args([
            "run",
            "--client-id",
            "dev-1",
            "--otp-secret",
            "JBSWY3DPEHPK3PXP",
        ])
        .args(["--redis-url", &redis.url(), "--require-safe-redis"])
        .arg("--state-dir")
        .arg(state.path())
        .env("NO_COLOR", "1")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("--require-safe-redis: the device Redis has unsafe settings: appendonly no"),
        "{stderr}"
    );
}
