//! The faults the suite injects, and how many of each it did.
//!
//! The proxy counts its own kinds as it applies them (a fault planned for a
//! connection that closed first is not counted); the monkey counts the
//! process-level kinds once the process is down.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The proxy closes both sides of a connection.
    ProxyCut,
    /// The proxy stops forwarding a connection for a while, then resumes.
    ProxyStall,
    /// The proxy holds every chunk of a connection back for a while.
    ProxyDelay,
    /// The proxy forwards only the start of a chunk, then closes: a frame cut in two.
    ProxyMidFrameCut,
    /// The proxy stops forwarding for longer than the idle timeouts, then closes.
    ProxyBlackhole,
    /// lula-hub killed with SIGKILL, restarted on the same port.
    HubKill,
    /// A lula-client daemon killed with SIGKILL, restarted on the same state dir.
    ClientKill,
    /// A device Redis killed with SIGKILL, restarted on its port and AOF.
    DeviceRedisRestart,
    /// The hub's Redis killed with SIGKILL, restarted on its port and AOF.
    HubRedisRestart,
    /// A second daemon with the same identity, against the same device Redis, for a while.
    TwinDaemon,
    /// A device's way to lula-auth blackholed for longer than a token lives,
    /// while its hub connection is left alone: the token expires mid-sync.
    AuthOutage,
}

impl FaultKind {
    /// Every kind, in table order.
    pub const ALL: [FaultKind; 11] = [
        FaultKind::ProxyCut,
        FaultKind::ProxyStall,
        FaultKind::ProxyDelay,
        FaultKind::ProxyMidFrameCut,
        FaultKind::ProxyBlackhole,
        FaultKind::HubKill,
        FaultKind::ClientKill,
        FaultKind::DeviceRedisRestart,
        FaultKind::HubRedisRestart,
        FaultKind::TwinDaemon,
        FaultKind::AuthOutage,
    ];

    /// The kinds the monkey injects (the others are the proxy's).
    pub const PROCESS: [FaultKind; 5] = [
        FaultKind::HubKill,
        FaultKind::ClientKill,
        FaultKind::DeviceRedisRestart,
        FaultKind::HubRedisRestart,
        FaultKind::TwinDaemon,
    ];

    /// What the table calls it.
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::ProxyCut => "proxy: connection cut",
            FaultKind::ProxyStall => "proxy: stall",
            FaultKind::ProxyDelay => "proxy: delay",
            FaultKind::ProxyMidFrameCut => "proxy: cut mid-frame",
            FaultKind::ProxyBlackhole => "proxy: blackhole, then cut",
            FaultKind::HubKill => "hub SIGKILL + restart",
            FaultKind::ClientKill => "client SIGKILL + restart",
            FaultKind::DeviceRedisRestart => "device Redis SIGKILL + restart (AOF)",
            FaultKind::HubRedisRestart => "hub Redis SIGKILL + restart (AOF)",
            FaultKind::TwinDaemon => "twin daemon (same identity)",
            FaultKind::AuthOutage => "auth blackholed past token expiry",
        }
    }

    fn index(self) -> usize {
        FaultKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or_default()
    }
}

/// Counters of injected faults, shared by the proxy and the monkey.
#[derive(Debug, Default)]
pub struct FaultCounts {
    counts: [AtomicU64; FaultKind::ALL.len()],
}

impl FaultCounts {
    /// Counts one fault of `kind`.
    pub fn add(&self, kind: FaultKind) {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// How many faults of `kind` were injected.
    pub fn get(&self, kind: FaultKind) -> u64 {
        self.counts[kind.index()].load(Ordering::Relaxed)
    }

    /// Every kind with its count, in table order.
    pub fn snapshot(&self) -> Vec<(FaultKind, u64)> {
        FaultKind::ALL.iter().map(|k| (*k, self.get(*k))).collect()
    }

    /// Faults of every kind together.
    pub fn total(&self) -> u64 {
        FaultKind::ALL.iter().map(|k| self.get(*k)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_per_kind() {
        let c = FaultCounts::default();
        c.add(FaultKind::HubKill);
        c.add(FaultKind::HubKill);
        c.add(FaultKind::TwinDaemon);
        assert_eq!(c.get(FaultKind::HubKill), 2);
        assert_eq!(c.get(FaultKind::ProxyCut), 0);
        assert_eq!(c.total(), 3);
        assert_eq!(c.snapshot().len(), FaultKind::ALL.len());
    }
}
