//! Optimistic transactions (`WATCH`, check, `MULTI` ... `EXEC`) on a
//! connection of their own, for writes too wide for a Lua script (its
//! `unpack` stops near 8,000 values): the hub's wide appends and dead
//! letters, the daemon's wide stores and set-asides.
//!
//! A watch belongs to a connection, and a shared multiplexed connection
//! ([`crate::redis::RedisConn`]) carries everyone's commands, so a
//! transaction needs a connection nobody else writes on: to the server, or
//! on a cluster to the master of the slot its keys share, found by following
//! `MOVED` (the keys of one transaction must share a hash tag).
//! [`TxConn::run`] is the one retry loop: a try either settles, or finds
//! that a watched key changed before `EXEC` (nothing written) and runs again.

use std::future::Future;
use std::time::Duration;

use crate::redis::{NodeAddr, RedisTarget, node_client};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

/// A wide `XADD` may take a while to cross the link: the response timeout
/// of a transaction's connection is at least this.
const MIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How many redirections one write follows before it gives up.
const MAX_REDIRECTS: usize = 3;

/// A connection for transactions, opened when first needed and again after
/// a failure or a redirection.
pub struct TxConn {
    target: RedisTarget,
    conn: Option<MultiplexedConnection>,
    /// On a cluster, the master a `MOVED` named.
    node: Option<NodeAddr>,
}

impl TxConn {
    /// A connection to `target`, not opened yet.
    pub fn new(target: RedisTarget) -> Self {
        TxConn {
            target,
            conn: None,
            node: None,
        }
    }

    /// The open connection, or a new one (to the node a redirection named).
    pub async fn connect(&mut self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let client = match &self.node {
            Some(node) => node_client(&self.target.url, node)?,
            None => redis::Client::open(self.target.url.as_str())?,
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.target.timeout))
            .set_response_timeout(Some(self.target.timeout.max(MIN_TIMEOUT)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `attempt` until it settles, at most `tries` times: each try
    /// gets the connection, watches and checks, and either settles
    /// (`Ok(Some(_))`, written or nothing to write) or ran `MULTI` ... `EXEC`
    /// and found a watched key changed (`Ok(None)`: nothing was written).
    /// A redirection is followed (up to [`MAX_REDIRECTS`]); any other error
    /// ends it, the connection forgotten. `what` names the write in errors.
    pub async fn run<T, F, Fut>(
        &mut self,
        what: &'static str,
        tries: usize,
        mut attempt: F,
    ) -> RedisResult<T>
    where
        F: FnMut(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<Option<T>>>,
    {
        let mut redirects = 0;
        for _ in 0..tries {
            let tried = match self.connect().await {
                Ok(conn) => attempt(conn).await,
                Err(e) => Err(e),
            };
            match tried {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => tracing::debug!(what, "a watched key changed; checking again"),
                Err(e) if self.failed(&e) && redirects < MAX_REDIRECTS => redirects += 1,
                Err(e) => return Err(e),
            }
        }
        Err(RedisError::from((
            redis::ErrorKind::Io,
            what,
            "the watched keys kept changing; try again".to_owned(),
        )))
    }

    /// Forgets the connection after `e` (whatever it watched is gone with
    /// it); follows it to another node when it was a redirection. Whether to
    /// try again at once.
    fn failed(&mut self, e: &RedisError) -> bool {
        self.conn = None;
        let Some((addr, _slot)) = e.redirect_node() else {
            return false;
        };
        let Some((host, port)) = addr.rsplit_once(':') else {
            return false;
        };
        let Ok(port) = port.parse() else {
            return false;
        };
        self.node = Some(NodeAddr {
            host: host.to_owned(),
            port,
        });
        true
    }
}
