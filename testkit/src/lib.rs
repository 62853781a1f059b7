//! Test support for lula's crates: real `redis-server` processes, started by the
//! test on a free port and killed when dropped, plus a polling helper.
//!
//! Nothing here mocks Redis. Each test starts the servers it needs, so tests run
//! in parallel without sharing state and never rely on a server started by hand.
//!
//! The server binary is `redis-server` from `PATH`, or `$LULA_REDIS_SERVER`;
//! [`cluster::RedisCluster`] also runs `redis-cli` (or `$LULA_REDIS_CLI`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod cli;
pub mod cluster;
pub mod haproxy;
pub mod pki;
pub use cluster::RedisCluster;
pub use pki::TestPki;

/// A `redis-server` child process on 127.0.0.1 and a private data directory.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    options: RedisOptions,
    dir: tempfile::TempDir,
}

/// Options for [`RedisServer`].
#[derive(Debug, Default, Clone)]
pub struct RedisOptions {
    /// Turn on AOF persistence with `appendfsync always`, so a restart keeps
    /// every acknowledged write.
    pub appendonly: bool,
    /// More `redis-server` arguments, e.g. `["--rename-command", "CONFIG", ""]`
    /// to play a managed Redis that refuses `CONFIG`.
    pub extra_args: Vec<String>,
    /// Start as a Redis Cluster node (`--cluster-enabled yes`, on a port whose
    /// cluster bus port, 10000 above, is free too); see [`RedisCluster`].
    pub cluster: bool,
}

fn server_binary() -> PathBuf {
    std::env::var_os("LULA_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// A TCP port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// A free port whose Redis Cluster bus port (the port + 10000) is free and
/// valid too.
fn free_cluster_port() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if port <= u16::MAX - 10_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port with a free cluster bus port 10000 above it");
}

impl RedisServer {
    /// Starts a throwaway server without persistence.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with `options`.
    pub fn start_with(options: RedisOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut server = RedisServer {
            child: None,
            port: 0,
            options,
            dir,
        };
        let mut last_err = String::new();
        // A port found free can be taken before redis binds it; try a few.
        for _ in 0..5 {
            server.port = if server.options.cluster {
                free_cluster_port()
            } else {
                free_port()
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(server_binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path());
        if self.options.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if self.options.cluster {
            // The bus listens 10000 above the port (`--cluster-port` would
            // choose another, but only from Redis 7 on).
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "5000"]);
        }
        cmd.args(&self.options.extra_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "{e}: is redis-server installed? `apt-get install redis-server`, \
                     or run scripts/test.sh, which installs it (or set LULA_REDIS_SERVER)"
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.take().and_then(|mut c| c.stderr.take()) {
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(format!("redis-server exited with {status}: {stderr}"));
            }
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("redis-server did not answer PING within 10s".into())
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data directory (after
    /// [`RedisServer::kill`]; kills it first if it still runs).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis-server restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what`
/// after `timeout`. For waiting on effects that happen in other tasks or
/// processes; the timeout is a hang guard, not a speed assertion.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_restarts_on_the_same_port() {
        let mut r = RedisServer::start();
        assert!(ping(r.port()));
        let port = r.port();
        r.kill();
        assert!(!ping(port));
        r.restart();
        assert_eq!(r.port(), port);
        assert!(ping(port));
    }
}
