//! The checker sees what it must: a small cluster syncs without faults, the
//! check is clean, then both sides are tampered with by hand (an entry deleted,
//! one moved to the end, one copied, one altered) and the check counts exactly that.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lula_chaos::cluster::{Cluster, connect};
use lula_chaos::events::Events;
use lula_chaos::faults::FaultCounts;
use lula_chaos::workload::Workload;
use lula_chaos::{RunConfig, checker, drain};
use lula_protocol::Entry;
use lula_protocol::redis_value::entries_from_range;
use redis::aio::MultiplexedConnection;

async fn all(conn: &mut MultiplexedConnection, key: &str) -> Vec<Entry> {
    let v: redis::Value = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    entries_from_range(v).unwrap()
}

async fn xdel(conn: &mut MultiplexedConnection, key: &str, e: &Entry) {
    let n: u64 = redis::cmd("XDEL")
        .arg(key)
        .arg(e.id.to_string())
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

async fn xadd(conn: &mut MultiplexedConnection, key: &str, fields: &[Vec<u8>]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for f in fields {
        cmd.arg(f.as_slice());
    }
    let _: String = cmd.query_async(conn).await.unwrap();
}

fn field<'a>(e: &'a Entry, name: &str) -> &'a [u8] {
    e.pairs().find(|(k, _)| *k == name.as_bytes()).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_streams_are_counted_as_lost_duplicated_reordered_or_mismatched() {
    let run_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chaos-checker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_lula-chaos"));
    let mut config = RunConfig::short(exe, run_dir.clone(), 1);
    config.sizes.devices = 2;
    config.sizes.device_redis = 1;
    config.sizes.entries_up = 300;
    config.sizes.entries_down = 30;
    config.sizes.produce_for = Duration::from_secs(1);
    config.faults.token_ttl = Duration::from_secs(3600);
    std::fs::create_dir_all(&run_dir).unwrap();
    let events = Arc::new(Events::create(&run_dir.join("events.log"), false).unwrap());
    let cluster = Cluster::start(&config, Arc::new(FaultCounts::default()), events.clone())
        .await
        .unwrap();

    let produced = Workload::start(&cluster, &config.sizes, events.clone())
        .finish(Duration::from_secs(60))
        .await;
    assert_eq!(produced.up.produced, 600);
    assert!(
        drain::wait(&cluster, Duration::from_secs(60), &events)
            .await
            .drained
    );
    let clean = checker::check(&cluster, 300, 30, &events).await.unwrap();
    assert!(clean.up.clean() && clean.down.clean(), "{clean:?}");
    assert_eq!(clean.up.entries, 600);
    assert_eq!(clean.up.delivered, 600);
    assert_eq!(clean.down.delivered, 60);

    // Upstream: dev-01 loses #10, #20 moves to the end, #30 is copied; dev-02's
    // #40 comes back altered at the end.
    let in_key = cluster.hub_keys.in_stream();
    let mut cloud = connect(&cluster.cloud.url).await.unwrap();
    let hub_in = all(&mut cloud, &in_key).await;
    let of = |c: &str| -> Vec<Entry> {
        hub_in
            .iter()
            .filter(|e| field(e, "client") == c.as_bytes())
            .cloned()
            .collect()
    };
    let (one, two) = (of("dev-01"), of("dev-02"));
    xdel(&mut cloud, &in_key, &one[10]).await;
    xdel(&mut cloud, &in_key, &one[20]).await;
    xadd(&mut cloud, &in_key, &one[20].fields).await;
    xadd(&mut cloud, &in_key, &one[30].fields).await;
    xdel(&mut cloud, &in_key, &two[40]).await;
    let mut altered = two[40].fields.clone();
    *altered.last_mut().unwrap() = b"tampered".to_vec();
    xadd(&mut cloud, &in_key, &altered).await;

    // Downstream: dev-01 loses its #5 and gets #6 twice.
    let d = &cluster.devices[0];
    let mut dev = connect(&d.redis_url).await.unwrap();
    let dev_in = all(&mut dev, &d.keys.in_stream()).await;
    xdel(&mut dev, &d.keys.in_stream(), &dev_in[5]).await;
    xadd(&mut dev, &d.keys.in_stream(), &dev_in[6].fields).await;

    let found = checker::check(&cluster, 300, 30, &events).await.unwrap();
    let up = &found.up;
    assert_eq!(
        (up.lost, up.duplicated, up.reordered, up.mismatched),
        (1, 1, 2, 1),
        "{up:?}"
    );
    assert_eq!(up.delivered, 599);
    let down = &found.down;
    assert_eq!(
        (down.lost, down.duplicated, down.reordered, down.mismatched),
        (1, 1, 0, 0),
        "{down:?}"
    );
    let stopped = cluster.shutdown().await;
    assert!(stopped.is_empty(), "{stopped:?}");
    let _ = std::fs::remove_dir_all(&run_dir);
}
