//! `lula-hub import-node` (the binary) against a real Redis holding what the
//! Node lula-hub leaves: per-device cursors in `lula:id:h` and messages for
//! devices in `lula:out:<client>:x`.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use lula_testkit::RedisServer;

fn import(redis: &RedisServer, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lula-hub"))
        .arg("import-node")
        .args(extra)
        .env("REDIS_URL", redis.url())
        .output()
        .unwrap()
}

async fn conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn cmd<T: redis::FromRedisValue>(
    c: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await.unwrap()
}

async fn range(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<(String, Vec<String>)> {
    cmd(c, &["XRANGE", key, "-", "+"]).await
}

#[tokio::test]
async fn cursors_move_only_forward_messages_keep_their_ids_and_a_dry_run_writes_nothing() {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    // The Node hub: dev-1 synced to 5-0, dev-2 to 3-0; a field that is no
    // client id. Our hub already holds dev-2 up to 7-0.
    let _: () = cmd(
        &mut c,
        &[
            "HSET",
            "lula:id:h",
            "dev-1",
            "5-0",
            "dev-2",
            "3-0",
            "a:b",
            "1-0",
        ],
    )
    .await;
    let _: () = cmd(&mut c, &["HSET", "lula-hub:cursor:h", "dev-2", "7-0"]).await;
    for id in ["10-1", "10-2", "10-3"] {
        let _: String = cmd(&mut c, &["XADD", "lula:out:dev-1:x", id, "cmd", id]).await;
    }
    let node_before: BTreeMap<String, String> = cmd(&mut c, &["HGETALL", "lula:id:h"]).await;

    let dry = import(&redis, &["--dry-run"]);
    let out = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(dry.status.success(), "{dry:?}");
    assert!(
        out.contains("dev-1: would set 5-0 (ours was none)"),
        "{out}"
    );
    assert!(out.contains("dev-2: kept ours 7-0"), "{out}");
    assert!(out.contains("a:b: skipped"), "{out}");
    assert!(out.contains("dev-1: would copy 3 message(s)"), "{out}");
    let ours: BTreeMap<String, String> = cmd(&mut c, &["HGETALL", "lula-hub:cursor:h"]).await;
    assert_eq!(ours.len(), 1, "a dry run wrote {ours:?}");
    assert!(range(&mut c, "lula-hub:out:dev-1:x").await.is_empty());

    let run = import(&redis, &[]);
    assert!(run.status.success(), "{run:?}");
    let ours: BTreeMap<String, String> = cmd(&mut c, &["HGETALL", "lula-hub:cursor:h"]).await;
    assert_eq!(ours["dev-1"], "5-0");
    assert_eq!(ours["dev-2"], "7-0", "a cursor of ours was moved back");
    assert_eq!(
        range(&mut c, "lula-hub:out:dev-1:x").await,
        range(&mut c, "lula:out:dev-1:x").await
    );

    // Again: nothing changes, nothing is copied twice; the Node keys are as
    // they were.
    let again = import(&redis, &[]);
    let out = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        out.contains("dev-1: copied 0 message(s)") && out.contains("(3 already here)"),
        "{out}"
    );
    assert_eq!(range(&mut c, "lula-hub:out:dev-1:x").await.len(), 3);
    let node_after: BTreeMap<String, String> = cmd(&mut c, &["HGETALL", "lula:id:h"]).await;
    assert_eq!(node_after, node_before);
}
