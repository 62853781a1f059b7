//! Scale-out: several hub replicas behind a real load balancer (haproxy,
//! round-robin, health-checked on `/readyz`) share one Redis; devices move
//! between replicas as those restart, and nothing is lost or doubled.

use std::time::Duration;

use lula_e2e::{Cloud, Device, Replica, check_downstream, check_upstream, read_all};
use lula_protocol::ClientId;
use lula_testkit::eventually;
use lula_testkit::haproxy::Haproxy;

const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_hubs_behind_a_load_balancer_loses_and_doubles_nothing() {
    let cloud = Cloud::start().await;
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&cloud)).collect();
    let lb = Haproxy::start(&replicas.iter().map(|r| r.addr).collect::<Vec<_>>());
    for r in &replicas {
        let addr = r.addr;
        eventually("a replica to listen", WAIT, || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
    }

    const DEVICES: usize = 6;
    const ENTRIES: u64 = 6_000;
    let mut devices = Vec::new();
    let mut producers = Vec::new();
    for i in 0..DEVICES {
        let name = format!("dev-{i}");
        let otp = cloud.provision(&name).await;
        let mut device = Device::new(&cloud, &name, &otp);
        device.config.hub_url = format!("ws://127.0.0.1:{}", lb.port());
        device.start();
        // About 8 s of steady production per device.
        producers.push(device.produce_paced(0, ENTRIES, 50, Duration::from_millis(60)));
        devices.push((name, device));
    }

    // Restart each replica in turn, gracefully, while devices produce and
    // messages go down; each time its devices move to the other two.
    let mut down = 0u64;
    for r in replicas.iter_mut() {
        for (name, _) in &devices {
            for n in down..down + 20 {
                cloud
                    .send_down(name, &[("cmd", "set".into()), ("n", n.to_string())])
                    .await;
            }
        }
        down += 20;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        r.stop().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        r.restart();
    }
    for p in producers {
        p.await.unwrap();
    }

    let total = DEVICES as u64 * ENTRIES;
    eventually("every entry in the hub", WAIT, || async {
        (cloud.in_len().await >= total).then_some(())
    })
    .await;
    for (_, device) in &devices {
        eventually("every message on the device", WAIT, || async {
            (device.in_entries().await.len() as u64 >= down).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hub_in = cloud.in_entries().await;
    for (name, device) in &devices {
        let client: ClientId = name.parse().unwrap();
        check_upstream(name, &device.out_entries().await, &hub_in).unwrap();
        let sent = read_all(&mut cloud.conn().await, &cloud.keys.out_stream(&client)).await;
        check_downstream(&sent, &device.in_entries().await).unwrap();
    }
}
