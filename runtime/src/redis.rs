//! The cloud Redis of lula-hub and lula-auth: one server, or a Redis Cluster
//! (`--redis-cluster`), behind one cheap-to-clone handle, [`RedisConn`].
//!
//! [`RedisConn`] implements redis-rs's [`ConnectionLike`], so the services
//! keep calling `query_async` and `invoke_async` on it whichever it is:
//! - **One server** ([`RedisConn::Single`]): redis-rs's [`ConnectionManager`],
//!   exactly what the services used before clusters: one multiplexed
//!   connection that reconnects by itself.
//! - **A cluster** ([`RedisConn::Cluster`]): redis-rs's
//!   [`ClusterConnection`](redis::cluster_async::ClusterConnection), seeded by
//!   the one URL given. It learns the slot map itself, keeps a multiplexed
//!   connection per node, reconnects to nodes that went away, follows
//!   `MOVED`/`ASK`, and re-learns the map when it changes, so it is the
//!   cluster's counterpart of the connection manager. Each command goes to
//!   the node owning its key's slot; a Lua script to the node of its first
//!   key (so every key one script touches must share a hash tag).
//!
//! A cluster refuses a pipeline whose keys live in different slots. lula's
//! pipelines are plain (not `MULTI`) sequences of single-key commands, so on
//! a cluster [`RedisConn`] sends a pipeline that names several keys as
//! consecutive runs of commands on the same key, one run after the other, in
//! the pipeline's order: what a single server would do, at one round trip per
//! run. A one-key pipeline still goes in one trip. A transaction (`MULTI`)
//! goes as it is: across slots the cluster refuses it, as it should.
//!
//! Keyspace notifications are per node in a cluster; [`RedisConn::masters`]
//! lists the masters and [`node_client`] connects to one, for the hub's
//! per-node subscriptions.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClient, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    Arg, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    RedisResult, Value,
};

/// Where the cloud Redis is and how long a command may take.
#[derive(Clone)]
pub struct RedisTarget {
    /// `redis://` or `rediss://` URL: the server, or one seed node of the cluster.
    pub url: String,
    /// Treat `url` as a seed node of a Redis Cluster.
    pub cluster: bool,
    /// Connection and response timeout of one command (on a cluster, of one
    /// command including its redirections and retries).
    pub timeout: Duration,
}

/// A connection to the cloud Redis, cheap to clone; every clone shares the
/// same connections.
#[derive(Clone)]
pub enum RedisConn {
    /// One Redis server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl RedisTarget {
    /// A target with the default timeout of 5 s.
    pub fn new(url: impl Into<String>, cluster: bool) -> Self {
        RedisTarget {
            url: url.into(),
            cluster,
            timeout: Duration::from_secs(5),
        }
    }

    /// Connects in the background: returns at once, and commands fail (within
    /// the timeout) until Redis answers. For services, which start, and answer
    /// 503, while Redis is still coming up.
    pub fn connect_lazy(&self) -> RedisResult<RedisConn> {
        if self.cluster {
            Ok(RedisConn::Cluster(
                self.cluster_client()?
                    .get_pending_async_connection_with_config(self.cluster_config()),
            ))
        } else {
            let client = redis::Client::open(self.url.as_str())?;
            Ok(RedisConn::Single(
                client.get_connection_manager_lazy(self.manager_config())?,
            ))
        }
    }

    /// Connects now, failing if Redis does not answer. For command-line tools.
    pub async fn connect(&self) -> RedisResult<RedisConn> {
        if self.cluster {
            Ok(RedisConn::Cluster(
                self.cluster_client()?
                    .get_async_connection_with_config(self.cluster_config())
                    .await?,
            ))
        } else {
            let client = redis::Client::open(self.url.as_str())?;
            Ok(RedisConn::Single(
                client
                    .get_connection_manager_with_config(self.manager_config())
                    .await?,
            ))
        }
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout))
            // Requests wait on a reconnect in progress, and redis-rs retries six
            // times with backoff (~10 s) by default: while Redis is down every
            // request would hang that long instead of failing within the
            // timeout. One attempt per reconnect; the next request tries again.
            .set_number_of_retries(0)
    }

    fn cluster_client(&self) -> RedisResult<ClusterClient> {
        ClusterClient::builder([self.url.as_str()])
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            // Retries (redirections, reconnects to a node) happen within the
            // command's timeout, never beyond it, so a command fails within
            // the timeout as on one server.
            .overall_response_timeout(Some(self.timeout))
            .build()
    }

    fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
    }
}

/// A cluster node, as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddr {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl RedisConn {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// The masters that serve slots, sorted, from `CLUSTER SLOTS` (the
    /// endpoints the cluster announces to clients, which is what redis-rs
    /// connects to as well). Empty on one server.
    pub async fn masters(&mut self) -> RedisResult<Vec<NodeAddr>> {
        if !self.is_cluster() {
            return Ok(Vec::new());
        }
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(self).await?;
        let mut masters = masters_of_slots(reply);
        masters.sort();
        masters.dedup();
        Ok(masters)
    }
}

/// The masters in a `CLUSTER SLOTS` reply: per range `[start, end, [host,
/// port, id, ...], replicas...]`. An unknown endpoint (`?`) is skipped.
fn masters_of_slots(reply: Value) -> Vec<NodeAddr> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    ranges
        .iter()
        .filter_map(|range| match range {
            Value::Array(items) => match items.get(2) {
                Some(Value::Array(master)) => {
                    let host = master.first().and_then(text)?;
                    let port = match master.get(1) {
                        Some(Value::Int(p)) => u16::try_from(*p).ok()?,
                        _ => return None,
                    };
                    (host != "?").then_some(NodeAddr { host, port })
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A client for one node of the cluster seeded by `seed_url`: the seed's
/// user, password and TLS settings, the node's address. (An empty announced
/// host means the seed's own.)
pub fn node_client(seed_url: &str, node: &NodeAddr) -> RedisResult<redis::Client> {
    let seed: ConnectionInfo = seed_url.into_connection_info()?;
    redis::Client::open(node_info(seed, node))
}

fn node_info(seed: ConnectionInfo, node: &NodeAddr) -> ConnectionInfo {
    let addr = match seed.addr().clone() {
        ConnectionAddr::TcpTls {
            host,
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: if node.host.is_empty() {
                host
            } else {
                node.host.clone()
            },
            port: node.port,
            insecure,
            tls_params,
        },
        ConnectionAddr::Tcp(host, _) => ConnectionAddr::Tcp(
            if node.host.is_empty() {
                host
            } else {
                node.host.clone()
            },
            node.port,
        ),
        other => other,
    };
    seed.set_addr(addr)
}

/// The first argument of `cmd` (its key, for the commands lula pipelines).
fn first_arg(cmd: &Cmd) -> Option<&[u8]> {
    match cmd.args_iter().nth(1) {
        Some(Arg::Simple(a)) => Some(a),
        _ => None,
    }
}

/// Splits a plain pipeline into runs of consecutive commands with the same
/// first argument (the same key), in order: each run lives in one slot.
fn runs_by_key(pipeline: &Pipeline) -> Vec<Pipeline> {
    let mut runs: Vec<Pipeline> = Vec::new();
    let mut current_key: Option<&[u8]> = None;
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        let key = first_arg(cmd);
        if i == 0 || key != current_key {
            runs.push(redis::pipe());
            current_key = key;
        }
        if let Some(run) = runs.last_mut() {
            run.add_command(cmd.clone());
        }
    }
    runs
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => {
                if pipeline.is_transaction() {
                    return c.req_packed_commands(pipeline, offset, count);
                }
                let runs = runs_by_key(pipeline);
                if runs.len() <= 1 {
                    return c.req_packed_commands(pipeline, offset, count);
                }
                Box::pin(async move {
                    let mut replies = Vec::with_capacity(count);
                    for run in &runs {
                        let n = run.cmd_iter().count();
                        replies.extend(c.req_packed_commands(run, 0, n).await?);
                    }
                    Ok(replies)
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Every key matching `pattern` (a `SCAN MATCH` glob: escape literal parts
/// with `lula_protocol::keys::escape_glob`), sorted, each once: `SCAN` may
/// return a key more than once, and not necessarily in consecutive pages.
/// For admin commands (imports), not hot paths: it walks the whole keyspace.
pub async fn scan_keys<C: ConnectionLike>(conn: &mut C, pattern: &str) -> RedisResult<Vec<String>> {
    const PAGE: usize = 500;
    let mut cursor: u64 = 0;
    let mut found = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        found.extend(batch);
        if next == 0 {
            found.sort();
            found.dedup();
            return Ok(found);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_split_into_runs_of_one_key_in_order() {
        let mut p = redis::pipe();
        p.cmd("ZADD").arg("idx").arg(1).arg("s");
        p.cmd("EXPIRE").arg("idx").arg(10);
        p.cmd("SET").arg("sess").arg("c");
        p.cmd("PUBLISH").arg("chan").arg("m");
        p.cmd("DEL").arg("idx");
        let runs: Vec<Vec<String>> = runs_by_key(&p)
            .iter()
            .map(|r| {
                r.cmd_iter()
                    .map(|c| String::from_utf8_lossy(first_arg(c).unwrap()).into_owned())
                    .collect()
            })
            .collect();
        assert_eq!(
            runs,
            vec![
                vec!["idx".to_owned(), "idx".to_owned()],
                vec!["sess".to_owned()],
                vec!["chan".to_owned()],
                vec!["idx".to_owned()],
            ]
        );
    }

    #[test]
    fn masters_come_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("?", 7001)]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("10.0.0.3", 7002),
            ]),
        ]);
        assert_eq!(
            masters_of_slots(reply),
            vec![
                NodeAddr {
                    host: "10.0.0.1".into(),
                    port: 7000
                },
                NodeAddr {
                    host: "10.0.0.3".into(),
                    port: 7002
                },
            ]
        );
    }

    #[test]
    fn nodes_keep_the_seed_credentials_and_tls() {
        let seed: ConnectionInfo = "rediss://lula:pw@seed.example:6380"
            .into_connection_info()
            .unwrap();
        let info = node_info(
            seed,
            &NodeAddr {
                host: "n2.example".into(),
                port: 6381,
            },
        );
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls { host, port: 6381, .. } if host == "n2.example"
        ));
        assert_eq!(info.redis_settings().username(), Some("lula"));
        assert_eq!(info.redis_settings().password(), Some("pw"));
    }
}
