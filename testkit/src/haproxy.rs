//! A real load balancer for tests: `haproxy` round-robin in front of some
//! backends, with health checks on `/readyz` so a backend that is down is
//! skipped within half a second, as in production.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A `haproxy` process on 127.0.0.1, killed when dropped.
pub struct Haproxy {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

fn binary() -> String {
    std::env::var("LULA_HAPROXY").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/sbin/haproxy").exists() {
            "/usr/sbin/haproxy".into()
        } else {
            "haproxy".into()
        }
    })
}

impl Haproxy {
    /// Balances HTTP (and WebSocket upgrades) round-robin over `backends`.
    pub fn start(backends: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for haproxy");
        let port = free_port();
        let mut cfg = format!(
            "global\n  maxconn 4000\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\
             frontend lula\n  bind 127.0.0.1:{port}\n  default_backend hubs\n\
             backend hubs\n  balance roundrobin\n  option httpchk GET /readyz\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!(
                "  server hub{i} {b} check inter 250ms fall 1 rise 1\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let child = Command::new(binary())
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("haproxy.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{e}: is haproxy installed? `apt-get install haproxy` (scripts/test.sh installs it)")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen within 10s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
