//! Process-level faults at random points: the hub or a daemon killed with
//! SIGKILL and restarted, a device Redis or the hub's Redis killed and
//! restarted from its AOF, and twin daemons (a second daemon with a device's
//! identity) that run for a while and then are killed or stopped.
//!
//! Kinds come from a shuffled bag holding each kind once, so every kind is
//! injected as often as the others and even a short run sees each of them;
//! the gaps between faults, the victims and the downtimes are random.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{RngExt as _, SeedableRng as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::children::Service;
use crate::cluster::Cluster;
use crate::config::FaultSettings;
use crate::events::Events;
use crate::faults::{FaultCounts, FaultKind};

/// A twin daemon and when it is to end.
struct Twin {
    service: Service,
    until: Instant,
    kill: bool,
}

/// Injects faults until `stop`, then ends every twin and returns. Everything
/// it killed is running again when it returns. Errors (a restart that failed,
/// a twin that exited by itself) are recorded in the timeline and returned.
pub async fn run(
    cluster: Arc<Cluster>,
    settings: FaultSettings,
    seed: u64,
    counts: Arc<FaultCounts>,
    events: Arc<Events>,
    stop: CancellationToken,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bag: Vec<FaultKind> = Vec::new();
    let mut twins: Vec<Twin> = Vec::new();
    let mut errors = Vec::new();
    let mut next = Instant::now() + crate::chance::exponential(&mut rng, settings.process_mean_gap);
    loop {
        let twin_due = twins.iter().map(|t| t.until).min();
        let wake = twin_due.map_or(next, |t| t.min(next));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(wake) => {}
        }
        end_twins(&mut twins, Some(Instant::now()), &events, &mut errors).await;
        if Instant::now() < next {
            continue;
        }
        if bag.is_empty() {
            bag = FaultKind::PROCESS.to_vec();
            bag.shuffle(&mut rng);
        }
        let kind = bag.pop().unwrap_or(FaultKind::HubKill);
        if let Err(e) = inject(
            kind, &cluster, &settings, &mut rng, &counts, &events, &mut twins,
        )
        .await
        {
            let e = format!("{}: {e:#}", kind.label());
            events.note(format_args!("monkey: FAILED {e}"));
            errors.push(e);
        }
        next = Instant::now() + crate::chance::exponential(&mut rng, settings.process_mean_gap);
    }
    end_twins(&mut twins, None, &events, &mut errors).await;
    errors
}

async fn inject(
    kind: FaultKind,
    cluster: &Cluster,
    settings: &FaultSettings,
    rng: &mut StdRng,
    counts: &FaultCounts,
    events: &Events,
    twins: &mut Vec<Twin>,
) -> anyhow::Result<()> {
    let downtime = rng.random_range(settings.downtime.clone());
    match kind {
        FaultKind::HubKill => {
            let pid = {
                let mut hub = cluster.hub.lock().await;
                let pid = hub.pid();
                hub.kill().await;
                pid
            };
            counts.add(kind);
            events.note(format_args!(
                "monkey: SIGKILL lula-hub (pid {pid:?}), down for {downtime:?}"
            ));
            tokio::time::sleep(downtime).await;
            cluster.hub.lock().await.start().await?;
            events.note("monkey: lula-hub restarted");
        }
        FaultKind::ClientKill => {
            let d = &cluster.devices[rng.random_range(0..cluster.devices.len())];
            let pid = {
                let mut daemon = d.daemon.lock().await;
                let pid = daemon.pid();
                daemon.kill().await;
                pid
            };
            counts.add(kind);
            events.note(format_args!(
                "monkey: SIGKILL daemon {} (pid {pid:?}), down for {downtime:?}",
                d.client
            ));
            tokio::time::sleep(downtime).await;
            d.daemon.lock().await.start().await?;
            events.note(format_args!("monkey: daemon {} restarted", d.client));
        }
        FaultKind::DeviceRedisRestart => {
            let r = &cluster.device_redis[rng.random_range(0..cluster.device_redis.len())];
            r.kill().await?;
            counts.add(kind);
            events.note(format_args!(
                "monkey: SIGKILL {} ({}), down for {downtime:?}",
                r.name, r.url
            ));
            tokio::time::sleep(downtime).await;
            r.restart().await?;
            events.note(format_args!("monkey: {} restarted from its AOF", r.name));
        }
        FaultKind::HubRedisRestart => {
            let r = &cluster.cloud;
            r.kill().await?;
            counts.add(kind);
            events.note(format_args!(
                "monkey: SIGKILL {} ({}), down for {downtime:?}",
                r.name, r.url
            ));
            tokio::time::sleep(downtime).await;
            r.restart().await?;
            events.note(format_args!("monkey: {} restarted from its AOF", r.name));
        }
        FaultKind::TwinDaemon => {
            let d = &cluster.devices[rng.random_range(0..cluster.devices.len())];
            let lifetime = rng.random_range(settings.twin_lifetime.clone());
            let kill = rng.random_bool(0.5);
            let service = cluster.start_twin(d).await?;
            counts.add(kind);
            events.note(format_args!(
                "monkey: twin {} (pid {:?}) started for {lifetime:?}, then {}",
                service.name(),
                service.pid(),
                if kill { "SIGKILL" } else { "stop" }
            ));
            twins.push(Twin {
                service,
                until: Instant::now() + lifetime,
                kill,
            });
        }
        other => anyhow::bail!("{other:?} is not a process fault"),
    }
    Ok(())
}

/// Ends the twins due by `now` (all of them with `None`). A twin that exited
/// by itself is an error: daemons run until told to stop.
async fn end_twins(
    twins: &mut Vec<Twin>,
    now: Option<Instant>,
    events: &Events,
    errors: &mut Vec<String>,
) {
    let mut keep = Vec::new();
    for mut twin in twins.drain(..) {
        if now.is_some_and(|n| twin.until > n) {
            keep.push(twin);
            continue;
        }
        if let Some(status) = twin.service.exited() {
            let e = format!(
                "twin {} exited by itself with {status}; see {}",
                twin.service.name(),
                twin.service.log().display()
            );
            events.note(format_args!("monkey: {e}"));
            errors.push(e);
            continue;
        }
        if twin.kill {
            twin.service.kill().await;
            events.note(format_args!("monkey: SIGKILL twin {}", twin.service.name()));
        } else {
            let status = twin.service.stop(Duration::from_secs(15)).await;
            events.note(format_args!(
                "monkey: stopped twin {} ({})",
                twin.service.name(),
                status.map_or("killed after the grace period".into(), |s| s.to_string())
            ));
            if !status.is_some_and(|s| s.success()) {
                errors.push(format!(
                    "twin {} did not exit cleanly when asked to stop; see {}",
                    twin.service.name(),
                    twin.service.log().display()
                ));
            }
        }
    }
    *twins = keep;
}
