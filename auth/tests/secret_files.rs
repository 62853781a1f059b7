//! Every secret `lula-auth` takes comes from a file too, files others can
//! read are refused, and `provision` tells the operator to put the device's
//! OTP secret in a file, never on a command line.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use lula_testkit::RedisServer;

fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn provision_reads_the_redis_url_from_a_file_and_hints_at_the_file_form() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = write_file(dir.path(), "redis-url", &redis.url(), 0o600);
    let out = Command::new(env!("CARGO_BIN_EXE_lula-auth"))
        .args(["provision", "dev-4711"])
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
    let secret = stdout
        .lines()
        .find_map(|l| l.strip_prefix("otpSecret:"))
        .expect("the secret is printed")
        .trim();
    assert!(
        stdout.contains("--otp-secret-file /etc/lula-client/otp-secret"),
        "{stdout}"
    );
    assert!(!stdout.contains("--otp-secret "), "{stdout}");
    // The only command lines holding the secret are shell builtins.
    for line in stdout.lines().filter(|l| l.contains(secret)) {
        assert!(
            line.starts_with("otpSecret:")
                || line.starts_with("otpauth URI:")
                || line.trim_start().starts_with("echo "),
            "{line}"
        );
    }
}

#[test]
fn secret_files_others_can_read_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let open = write_file(dir.path(), "open", "redis://127.0.0.1:9", 0o604);
    for (args, flag) in [
        (vec!["provision", "dev-1"], "--redis-url-file"),
        (vec!["serve", "--listen", "127.0.0.1:0"], "--redis-url-file"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lula-auth"))
            .args(&args)
            .env("REDIS_URL_FILE", &open)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: started");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(err.contains("readable by other users"), "{args:?}: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lula-auth"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--signing-key-file")
        .arg(&open)
        .env_remove("REDIS_URL_FILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--signing-key-file"), "{err}");
    assert!(err.contains("readable by other users"), "{err}");
}
