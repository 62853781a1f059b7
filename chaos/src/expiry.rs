//! Tokens that really expire mid-sync.
//!
//! A daemon renews its token on the live connection a quarter of the TTL
//! before expiry (a login or `/renew` at lula-auth, then `renew` to the hub),
//! so faults elsewhere rarely let one run out. This injector makes it happen:
//! at random times it picks a device not already in an outage and blackholes
//! its proxy to lula-auth for longer than a token lives, while the device's hub
//! proxy injects no faults. The renewal cannot get through, the hub closes the
//! connection with 4001 (session expired) at the token's expiry, and the daemon
//! must log in again once lula-auth is reachable. The logs tell how often that
//! happened ([`crate::logs`]).

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::FaultSettings;
use crate::events::Events;
use crate::faults::{FaultCounts, FaultKind};

/// Starts auth outages until `stop`, then ends every outage still running.
pub async fn run(
    cluster: Arc<Cluster>,
    settings: FaultSettings,
    seed: u64,
    counts: Arc<FaultCounts>,
    events: Arc<Events>,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut outage_ends: Vec<Option<Instant>> = vec![None; cluster.devices.len()];
    loop {
        let gap = crate::chance::exponential(&mut rng, settings.auth_outage_mean_gap);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(gap) => {}
        }
        let now = Instant::now();
        let free: Vec<usize> = outage_ends
            .iter()
            .enumerate()
            .filter(|(_, end)| end.is_none_or(|t| t <= now))
            .map(|(i, _)| i)
            .collect();
        if free.is_empty() {
            continue;
        }
        let i = free[rng.random_range(0..free.len())];
        let end = now + settings.auth_outage;
        let d = &cluster.devices[i];
        d.hub_proxy.quiet_until(end);
        d.auth_proxy.blackhole_until(end);
        outage_ends[i] = Some(end);
        counts.add(FaultKind::AuthOutage);
        events.note(format_args!(
            "expiry: lula-auth blackholed for {} for {:?} (token TTL {:?}), its hub proxy quiet",
            d.client, settings.auth_outage, settings.token_ttl
        ));
    }
    for d in &cluster.devices {
        d.auth_proxy.clear();
        d.hub_proxy.clear();
    }
}
