//! The hub's start-up check of its Redis settings, with the real binary: a
//! warning naming each unsafe setting, and a refusal to start with
//! `--require-safe-redis`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lula_testkit::RedisServer;

fn serve(redis: &RedisServer, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lula-hub"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &redis.url(),
    ])
    .args(extra)
    .env("NO_COLOR", "1")
    .env("RUST_LOG", "info")
    .env_remove("REDIS_URL")
    .stdin(Stdio::null());
    cmd
}

#[test]
fn an_unsafe_redis_is_refused_with_require_safe_redis_and_named_without() {
    let redis = RedisServer::start_with(lula_testkit::RedisOptions {
        extra_args: ["--maxmemory-policy", "allkeys-lru"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let out = serve(&redis, &["--require-safe-redis"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--require-safe-redis: the hub Redis has unsafe settings: maxmemory-policy allkeys-lru, appendonly no"),
        "{stderr}"
    );

    // Without the flag it starts, and says what is unsafe.
    let mut child = serve(&redis, &[]).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline && !text.contains("listening") {
            use std::io::Read as _;
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        text
    });
    let text = reader.join().unwrap();
    child.kill().ok();
    child.wait().ok();
    assert!(text.contains("unsafe Redis setting"), "{text}");
    assert!(
        text.contains("maxmemory-policy") && text.contains("allkeys-lru"),
        "{text}"
    );
    assert!(text.contains("listening"), "{text}");
}
