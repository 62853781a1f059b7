//! A throwaway Redis Cluster: `redis-server` nodes with cluster mode on, on
//! free ports, joined by `redis-cli --cluster create` (masters only), each
//! killed when the cluster is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{RedisOptions, RedisServer};

/// A Redis Cluster of masters without replicas, slots spread evenly.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

fn cli_binary() -> PathBuf {
    std::env::var_os("LULA_REDIS_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-cli"))
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3, what `redis-cli --cluster create`
    /// accepts), joins them and waits until every node reports
    /// `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::start_with(RedisOptions {
                    cluster: true,
                    ..RedisOptions::default()
                })
            })
            .collect();
        let mut cmd = Command::new(cli_binary());
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port()));
        }
        let out = cmd
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("redis-cli --cluster create: {e}: is redis-cli installed?"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.nodes.iter().all(|n| {
                command(n.port(), &["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:<port>` of the first node: a seed for clients.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Ports of the nodes that hold `key` (that answer `EXISTS key` with 1;
    /// the others answer `MOVED` or 0).
    pub fn holders(&self, key: &str) -> Vec<u16> {
        self.nodes
            .iter()
            .map(|n| n.port())
            .filter(|&port| command(port, &["EXISTS", key]).as_deref() == Some("1"))
            .collect()
    }
}

/// Sends one command to 127.0.0.1:`port` and returns an integer, simple or
/// bulk string reply as text; `None` for errors, nil and anything else.
pub fn command(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end();
    match line.as_bytes().first()? {
        b'+' | b':' => Some(line[1..].to_owned()),
        b'$' => {
            let len: usize = line[1..].parse().ok()?;
            let mut body = vec![0u8; len + 2];
            r.read_exact(&mut body).ok()?;
            body.truncate(len);
            String::from_utf8(body).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_masters_serve_every_slot() {
        let cluster = RedisCluster::start(3);
        for n in cluster.nodes() {
            let info = command(n.port(), &["CLUSTER", "INFO"]).unwrap();
            assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
            assert!(info.contains("cluster_known_nodes:3"), "{info}");
        }
    }
}
