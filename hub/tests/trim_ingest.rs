//! `lula-hub trim-ingest`, the binary: trims every in stream (partitions
//! included) below what every consumer group acknowledged, and leaves a
//! stream without a group as it is.

use std::process::Command;

use lula_testkit::RedisServer;
use redis::AsyncCommands;
use serde_json::Value;

fn trim_ingest(redis_url: &str, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_lula-hub"))
        .args(["trim-ingest", "--redis-url", redis_url, "--json"])
        .args(extra)
        .env_remove("REDIS_URL")
        .output()
        .expect("run lula-hub trim-ingest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[tokio::test]
async fn every_partition_is_trimmed_below_what_its_groups_acknowledged() {
    let redis = RedisServer::start();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (p0, p1) = ("lula-hub:in:{0}:x", "lula-hub:in:{1}:x");
    for i in 1..=10u64 {
        let _: String = conn.xadd(p0, format!("{i}-0"), &[("n", i)]).await.unwrap();
        let _: String = conn.xadd(p1, format!("{i}-0"), &[("n", i)]).await.unwrap();
    }
    // p0: one group that took 6 and acknowledged 4 of them (5-0, 6-0 pending).
    let _: () = conn.xgroup_create(p0, "workers", "0").await.unwrap();
    let opts = redis::streams::StreamReadOptions::default()
        .group("workers", "w1")
        .count(6);
    let _: redis::streams::StreamReadReply =
        conn.xread_options(&[p0], &[">"], &opts).await.unwrap();
    let _: u64 = conn
        .xack(p0, "workers", &["1-0", "2-0", "3-0", "4-0"])
        .await
        .unwrap();
    // p1: no group.

    let report = trim_ingest(&redis.url(), &["--ingest-partitions", "2"]);
    let streams = report["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2, "{report}");
    assert_eq!(streams[0]["stream"], p0);
    assert_eq!(streams[0]["floor"], "5-0");
    assert_eq!(streams[0]["trimmed"], 4);
    assert_eq!(streams[1]["floor"], Value::Null);
    assert_eq!(streams[1]["trimmed"], 0);
    let left0: u64 = conn.xlen(p0).await.unwrap();
    let left1: u64 = conn.xlen(p1).await.unwrap();
    assert_eq!((left0, left1), (6, 10));

    // Run again: nothing more to do until the group acknowledges more.
    let report = trim_ingest(&redis.url(), &["--ingest-partitions", "2"]);
    assert_eq!(report["streams"][0]["trimmed"], 0);
}
