//! Scale on a Redis Cluster: three hubs with `--redis-cluster` and four
//! ingest partitions behind a real load balancer (haproxy), on a cluster of
//! three masters made from local redis-server processes; 200 devices (their
//! daemons in this process, sharing a few device Redis servers, each under a
//! prefix of its own) produce while messages go down and every hub is
//! restarted in turn. Then, device by device and in both directions, nothing
//! is lost, doubled or reordered.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use lula_e2e::{Cloud, CloudOptions, Replica, check_downstream, check_upstream, field, read_all};
use lula_protocol::ClientId;
use lula_protocol::keys::DeviceKeys;
use lula_testkit::haproxy::Haproxy;
use lula_testkit::{RedisServer, eventually};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(180);
const DEVICES: usize = 200;
/// Device Redis servers, shared round-robin.
const SERVERS: usize = 4;
/// Entries each device produces, one per round.
const ENTRIES: u64 = 50;
/// Pause between production rounds: production spans the rolling restart.
const ROUND: Duration = Duration::from_millis(150);
/// Messages sent down to each device before each hub restart.
const DOWN_PER_RESTART: u64 = 4;
const PARTITIONS: u32 = 4;

struct FleetDevice {
    name: String,
    keys: DeviceKeys,
    server: usize,
    _state: tempfile::TempDir,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_through_a_rolling_restart_on_a_redis_cluster_lose_and_double_nothing()
{
    let started = Instant::now();
    let cloud = Cloud::start_with(CloudOptions {
        cluster_masters: Some(3),
        ingest_partitions: PARTITIONS,
        ..CloudOptions::default()
    })
    .await;
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&cloud)).collect();
    let lb = Haproxy::start(&replicas.iter().map(|r| r.addr).collect::<Vec<_>>());
    for r in &replicas {
        let addr = r.addr;
        eventually("a replica to listen", WAIT, || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
    }
    let servers: Vec<RedisServer> = (0..SERVERS).map(|_| RedisServer::start()).collect();

    // One cluster connection for the test's own commands.
    let mut cloud_conn = cloud.conn().await;
    let daemons = CancellationToken::new();
    let mut devices = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..DEVICES {
        let name = format!("dev-{i:03}");
        let otp = lula_auth::provision::provision(
            &mut cloud_conn,
            &cloud.auth_keys,
            &name.parse().unwrap(),
            Duration::from_secs(3600),
            false,
        )
        .await
        .unwrap()
        .otp_secret;
        let state = tempfile::tempdir().unwrap();
        let server = i % SERVERS;
        let mut config = lula_client::Config::new(name.parse().unwrap(), otp, state.path());
        config.auth_url = cloud.auth_url();
        config.hub_url = format!("ws://127.0.0.1:{}", lb.port());
        config.redis_url = servers[server].url();
        config.prefix = name.clone();
        config.register_retry = Duration::from_millis(500);
        config.min_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(500);
        tasks.push(tokio::spawn(lula_client::run(config, daemons.clone())));
        devices.push(FleetDevice {
            keys: DeviceKeys::new(name.clone()),
            name,
            server,
            _state: state,
        });
    }
    eprintln!("{DEVICES} devices provisioned at {:?}", started.elapsed());

    // One producer per device server: a round adds one entry to every device
    // on it, pipelined.
    let mut producers = Vec::new();
    for (s, server) in servers.iter().enumerate() {
        let keys: Vec<String> = devices
            .iter()
            .filter(|d| d.server == s)
            .map(|d| d.keys.out_stream())
            .collect();
        let url = server.url();
        producers.push(tokio::spawn(async move {
            // A generous response timeout (redis-rs's default is 500 ms): a
            // producer must not fail because the shared machine is busy.
            let config = redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(60)));
            let mut conn = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .unwrap();
            for n in 0..ENTRIES {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("XADD")
                        .arg(key)
                        .arg("*")
                        .arg("n")
                        .arg(n)
                        .arg("payload")
                        .arg("p".repeat(40))
                        .ignore();
                }
                let () = pipe.query_async(&mut conn).await.unwrap();
                tokio::time::sleep(ROUND).await;
            }
        }));
    }

    // Restart each hub in turn, gracefully, while devices produce and
    // messages go down; each time its devices move to the other two.
    let mut down = 0u64;
    for r in replicas.iter_mut() {
        for d in &devices {
            let out = cloud.keys.out_stream(&d.name.parse().unwrap());
            for n in down..down + DOWN_PER_RESTART {
                let _: String = redis::cmd("XADD")
                    .arg(&out)
                    .arg("*")
                    .arg("cmd")
                    .arg("set")
                    .arg("n")
                    .arg(n)
                    .query_async(&mut cloud_conn)
                    .await
                    .unwrap();
            }
        }
        down += DOWN_PER_RESTART;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        r.stop().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        r.restart();
    }
    for p in producers {
        p.await.unwrap();
    }
    eprintln!("rolling restart done at {:?}", started.elapsed());

    let total = DEVICES as u64 * ENTRIES;
    eventually("every entry in the hub", WAIT, || async {
        (cloud.in_len().await >= total).then_some(())
    })
    .await;
    let device_conns = {
        let mut conns = Vec::new();
        for s in &servers {
            conns.push(
                redis::Client::open(s.url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            );
        }
        conns
    };
    for d in &devices {
        let (conn, key) = (&device_conns[d.server], d.keys.in_stream());
        eventually("every message on the device", WAIT, || async {
            let n: u64 = redis::cmd("XLEN")
                .arg(&key)
                .query_async(&mut conn.clone())
                .await
                .ok()?;
            (n >= down).then_some(())
        })
        .await;
    }
    eprintln!("all delivered at {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The exactly-once check, device by device, both ways.
    let hub_in = cloud.in_entries().await;
    let (mut lost, mut doubled, mut lost_down, mut doubled_down) = (0usize, 0usize, 0usize, 0usize);
    let mut problems = Vec::new();
    for d in &devices {
        let mut conn = device_conns[d.server].clone();
        let sent = read_all(&mut conn, &d.keys.out_stream()).await;
        assert_eq!(sent.len() as u64, ENTRIES);
        let arrived: Vec<&[u8]> = hub_in
            .iter()
            .filter(|e| field(e, "client") == Some(d.name.as_bytes()))
            .filter_map(|e| field(e, "seq"))
            .collect();
        let distinct: HashSet<&[u8]> = arrived.iter().copied().collect();
        doubled += arrived.len() - distinct.len();
        lost += sent
            .iter()
            .filter(|e| !distinct.contains(e.id.to_string().as_bytes()))
            .count();
        if let Err(e) = check_upstream(&d.name, &sent, &hub_in) {
            problems.push(e);
        }

        let client: ClientId = d.name.parse().unwrap();
        let sent_down = read_all(&mut cloud_conn, &cloud.keys.out_stream(&client)).await;
        let stored = read_all(&mut conn, &d.keys.in_stream()).await;
        let stored_seqs: Vec<&[u8]> = stored.iter().filter_map(|e| field(e, "seq")).collect();
        let distinct: HashSet<&[u8]> = stored_seqs.iter().copied().collect();
        doubled_down += stored_seqs.len() - distinct.len();
        lost_down += sent_down
            .iter()
            .filter(|e| !distinct.contains(e.id.to_string().as_bytes()))
            .count();
        if let Err(e) = check_downstream(&sent_down, &stored) {
            problems.push(format!("{} down: {e}", d.name));
        }
    }
    eprintln!(
        "up: {total} sent, {lost} lost, {doubled} duplicated; down: {} sent, {lost_down} lost, {doubled_down} duplicated; {:?}",
        DEVICES as u64 * down,
        started.elapsed()
    );
    assert_eq!((lost, doubled, lost_down, doubled_down), (0, 0, 0, 0));
    assert!(problems.is_empty(), "{problems:#?}");

    // The partitions really are spread over the masters.
    let cluster = cloud.redis.cluster().unwrap();
    let holders: BTreeSet<u16> = cloud
        .layout
        .in_streams()
        .iter()
        .flat_map(|s| cluster.holders(s))
        .collect();
    assert!(holders.len() >= 2, "partitions on {holders:?}");

    daemons.cancel();
    for t in tasks {
        let _ = t.await;
    }
}
