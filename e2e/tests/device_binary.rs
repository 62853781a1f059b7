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

/// Resident memory of a process, from `/proc/<pid>/status` (`VmRSS`,
/// `VmHWM`), in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// A measurement, not a check (BENCHMARKS.md, "lula-client on devices"): the
/// daemon's resident memory once registered, synced and idle on a connected
/// session. Under `LULA_CLIENT_RUNNER` the process is qemu-user's, so its own
/// memory is counted too.
///
/// `cargo test -p lula-e2e --test device_binary measure_idle_rss -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand for BENCHMARKS.md"]
async fn measure_idle_rss() {
    let cloud = Cloud::start().await;
    let otp = cloud.provision(CLIENT).await;
    let device = Device::new(&cloud, CLIENT, &otp);
    device.produce(0, 1000).await;
    send_down(&cloud, 0, 100).await;
    let daemon = ClientProcess::run(&device, "info", &[]);
    wait_synced(&cloud, &device, &daemon, 1000, 100).await;
    eventually("connected", WAIT, || async {
        device.status().await.connected.then_some(())
    })
    .await;
    let mut samples = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(memory_kib(daemon.pid()));
    }
    let rss: Vec<u64> = samples.iter().map(|s| s.0).collect();
    let hwm = samples.last().map_or(0, |s| s.1);
    println!(
        "idle RSS after syncing 1000 up / 100 down, 10 samples 1 s apart: min {} KiB, max {} KiB; peak (VmHWM) {hwm} KiB",
        rss.iter().min().unwrap(),
        rss.iter().max().unwrap()
    );
}
