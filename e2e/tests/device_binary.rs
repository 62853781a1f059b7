//! The `lula-client` binary as a device runs it, against the real lula-auth
//! and lula-hub: it registers (OTP secret from a file), moves entries up and
//! down exactly once, survives a SIGKILL, and starts again without the OTP
//! secret because its state dir says it registered.
//!
//! By default it runs the binary this workspace builds. scripts/test.sh runs
//! it again for each cross-built device binary under qemu-user
//! (`LULA_CLIENT_BIN=target/device/arm64/lula-client`,
//! `LULA_CLIENT_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"`): an
//! arm64 and an armv7 daemon syncing with the x86_64 cloud.

use std::time::Duration;

use lula_e2e::binary::ClientProcess;
use lula_e2e::{Cloud, Device, check_downstream, check_upstream, field, read_all};
use lula_protocol::{ClientId, Entry};
use lula_testkit::eventually;

/// Hang guard of each wait (emulated arm under a loaded CI machine is slow);
/// conditions end every wait early.
const WAIT: Duration = Duration::from_secs(180);
const CLIENT: &str = "dev-edge";

async fn hub_entries_of(cloud: &Cloud) -> Vec<Entry> {
    cloud
        .in_entries()
        .await
        .into_iter()
        .filter(|e| field(e, "client") == Some(CLIENT.as_bytes()))
        .collect()
}

async fn sent_down(cloud: &Cloud) -> Vec<Entry> {
    let client: ClientId = CLIENT.parse().unwrap();
    read_all(&mut cloud.conn().await, &cloud.keys.out_stream(&client)).await
}

async fn send_down(cloud: &Cloud, from: u64, to: u64) {
    for i in from..to {
        cloud
            .send_down(CLIENT, &[("cmd", format!("set-{i}"))])
            .await;
    }
}

/// Waits until the hub has `up` of the device's entries and the device `down`
/// of the hub's, with the daemon's log in the failure message.
async fn wait_synced(
    cloud: &Cloud,
    device: &Device,
    daemon: &ClientProcess,
    up: usize,
    down: usize,
) {
    let what = format!("{up} entries up and {down} down");
    let found = tokio::time::timeout(
        WAIT,
        eventually(&what, WAIT + Duration::from_secs(1), || async {
            let ups = hub_entries_of(cloud).await.len();
            let downs = device.in_entries().await.len();
            (ups >= up && downs >= down).then_some(())
        }),
    )
    .await;
    assert!(
        found.is_ok(),
        "{what} never arrived; daemon log:\n{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_binary_registers_syncs_both_ways_and_survives_a_kill() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision(CLIENT).await;
    let mut device = Device::new(&cloud, CLIENT, &otp);

    // Registers with the OTP secret from a 0600 file, then syncs.
    device.produce(0, 300).await;
    send_down(&cloud, 0, 30).await;
    let daemon = ClientProcess::run(&device, "info", &[]);
    wait_synced(&cloud, &device, &daemon, 300, 30).await;
    assert!(device.status().await.registered);

    // SIGKILL while entries keep coming both ways, and more while it is dead.
    device.produce(300, 800).await;
    send_down(&cloud, 30, 60).await;
    drop(daemon); // kills it (SIGKILL) and reaps it
    device.produce(800, 1000).await;
    send_down(&cloud, 60, 80).await;

    // Registered: it starts again with no OTP secret at all.
    device.config.otp_secret = None;
    let daemon = ClientProcess::run(&device, "info", &[]);
    wait_synced(&cloud, &device, &daemon, 1000, 80).await;
    let status = device.status().await;
    assert!(status.registered, "{status:?}");

    // Exactly once, in order, both ways: the ids the hub and the device
    // stored are each other's, once each, after everything was delivered.
    check_upstream(
        CLIENT,
        &device.out_entries().await,
        &hub_entries_of(&cloud).await,
    )
    .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", daemon.log()));
    check_downstream(&sent_down(&cloud).await, &device.in_entries().await)
        .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", daemon.log()));
    let log = daemon.log();
    assert!(!log.contains(&otp), "the OTP secret was logged:\n{log}");
}
