//! The upstream reader (`lula_client::uplink::read_batches`) against a real
//! device Redis: each batch carries the backlog it reports to the hub.

use std::sync::Arc;
use std::time::Duration;

use lula_client::device::Device;
use lula_client::metrics::Metrics;
use lula_client::uplink::{Batch, Budget, read_batches};
use lula_protocol::StreamId;
use lula_protocol::keys::DeviceKeys;
use lula_testkit::RedisServer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `XADD out:x * n <i>` for `i` in `0..n`; the ids, in order.
async fn produce(redis: &RedisServer, keys: &DeviceKeys, n: u64) -> Vec<StreamId> {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let id: String = redis::cmd("XADD")
            .arg(keys.out_stream())
            .arg("*")
            .arg("n")
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.push(id.parse().unwrap());
    }
    ids
}

/// The batches `read_batches` cuts from `start` (ordinal `ordinal`), `max`
/// entries at most each, until they hold `total` entries.
async fn batches(
    redis: &RedisServer,
    start: StreamId,
    ordinal: Option<u64>,
    max: usize,
    total: usize,
) -> Vec<Batch> {
    let device = Device::new(&redis.url(), DeviceKeys::default()).unwrap();
    let reader = device.out_reader(Duration::from_millis(100)).await.unwrap();
    let (tx, mut rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(read_batches(
        reader,
        device,
        Arc::new(Metrics::default()),
        (start, ordinal),
        Budget {
            max_entries: max,
            max_bytes: 1 << 20,
            set_aside: None,
            parts: None,
            refused: Default::default(),
        },
        tx,
        cancel.clone(),
    ));
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < total {
        let batch = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("a batch within 30 s")
            .expect("the reader runs")
            .expect("a batch, not an error");
        seen += batch.count;
        out.push(batch);
    }
    cancel.cancel();
    task.await.unwrap();
    out
}

/// Each batch's reported backlog against the truth: the entries of the
/// `total` after it. Batch sizes follow the reader's read counts, which start
/// small and grow (lula_protocol::budget::ReadCount), so the test does not
/// fix them.
fn reported_and_true(got: &[Batch], total: usize) -> Vec<(Option<u64>, u64)> {
    let mut sent = 0;
    got.iter()
        .map(|b| {
            sent += b.count;
            (b.backlog, (total - sent) as u64)
        })
        .collect()
}

#[tokio::test]
async fn each_batch_reports_the_entries_after_it_and_the_last_of_a_drain_reports_zero() {
    let redis = RedisServer::start();
    let keys = DeviceKeys::default();
    produce(&redis, &keys, 10).await;
    let got = batches(&redis, StreamId::ZERO, None, 4, 10).await;
    assert!(got.iter().all(|b| b.count <= 4), "batch limit");
    for (reported, truth) in reported_and_true(&got, 10) {
        assert_eq!(reported, Some(truth), "{got:?}");
    }
    assert_eq!(got.last().unwrap().backlog, Some(0));
}

#[tokio::test]
async fn a_position_whose_count_is_unknown_reports_no_backlog_rather_than_a_guess() {
    let redis = RedisServer::start();
    let keys = DeviceKeys::default();
    let ids = produce(&redis, &keys, 10).await;
    // Resuming after entry 2 without its ordinal (nothing published it):
    // the reader cannot tell how many entries precede it, so how many follow
    // a batch is unknown until a read reaches the end of the stream; what it
    // does report is never a guess.
    let got = batches(&redis, ids[1], None, 4, 8).await;
    let reported = reported_and_true(&got, 8);
    assert_eq!(reported[0].0, None, "{got:?}");
    for (reported, truth) in reported {
        assert!(reported.is_none() || reported == Some(truth), "{got:?}");
    }
    // With the ordinal known (published by an earlier session), it is exact.
    let got = batches(&redis, ids[1], Some(2), 4, 8).await;
    for (reported, truth) in reported_and_true(&got, 8) {
        assert_eq!(reported, Some(truth), "{got:?}");
    }
}
