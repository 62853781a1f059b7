//! The hub's live connections by device, so a session's end reaches its socket.
//!
//! One connection per device: each new connection takes the next generation
//! of its device from a Redis counter and announces it on a channel every hub
//! replica listens to; each hub then closes that device's connections of
//! older generations (close code 4002). Generations come from Redis, so of two
//! connections racing on two replicas the later one wins on both.
//!
//! Each connection registers its device and session id, and gets a receiver
//! that says when it must close and with which code. lula-auth announces
//! revocations on a Redis pub/sub channel that every hub replica listens to
//! (see `downstream::watch`), so `lula-auth revoke` or a logout closes the
//! device's sockets on every replica at once; a token's expiry closes its
//! socket from inside the connection. A revocation announced while a hub was
//! not subscribed (its pub/sub connection down) is caught when it subscribes
//! again: it checks every live connection's session record
//! (`session::Revocations::resync`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lula_protocol::ClientId;
use lula_protocol::CloseReason;
use tokio::sync::watch;

struct Entry {
    id: u64,
    generation: u64,
    sid: Mutex<String>,
    kick: watch::Sender<Option<CloseReason>>,
}

/// Live connections by device.
#[derive(Default)]
pub struct Live {
    devices: Mutex<HashMap<String, Vec<Arc<Entry>>>>,
    next_id: AtomicU64,
}

/// A connection's place in [`Live`]; dropping it unregisters.
pub struct Registration {
    live: Arc<Live>,
    client: String,
    entry: Arc<Entry>,
}

impl Registration {
    /// The connection now runs under another session (after a renewal).
    pub fn set_sid(&self, sid: &str) {
        *lock(&self.entry.sid) = sid.to_owned();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut devices = lock(&self.live.devices);
        if let Some(list) = devices.get_mut(&self.client) {
            list.retain(|e| e.id != self.entry.id);
            if list.is_empty() {
                devices.remove(&self.client);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every change is a single call on the guarded value, so it is consistent
    // even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// Registers a connection of `client` under session `sid`; the receiver
    /// says when it must close.
    pub fn register(
        self: &Arc<Self>,
        client: &ClientId,
        sid: &str,
        generation: u64,
    ) -> (Registration, watch::Receiver<Option<CloseReason>>) {
        let (kick, rx) = watch::channel(None);
        let entry = Arc::new(Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            generation,
            sid: Mutex::new(sid.to_owned()),
            kick,
        });
        lock(&self.devices)
            .entry(client.to_string())
            .or_default()
            .push(entry.clone());
        (
            Registration {
                live: self.clone(),
                client: client.to_string(),
                entry,
            },
            rx,
        )
    }

    /// Closes the connections of `client` (only those of session `sid`, when
    /// given) with `kick`; returns how many.
    pub fn kick(&self, client: &str, sid: Option<&str>, reason: CloseReason) -> usize {
        let devices = lock(&self.devices);
        let Some(list) = devices.get(client) else {
            return 0;
        };
        let mut n = 0;
        for e in list {
            if sid.is_none_or(|s| *lock(&e.sid) == s) {
                e.kick.send_replace(Some(reason));
                n += 1;
            }
        }
        n
    }

    /// Handles a revocation announced by lula-auth: `<client>` (every session)
    /// or `<client> <sid>` (one session).
    pub fn revoked(&self, message: &str) -> usize {
        let mut parts = message.split_whitespace();
        match parts.next() {
            Some(client) => self.kick(client, parts.next(), CloseReason::SessionRevoked),
            None => 0,
        }
    }

    /// Closes the connections of `client` older than `generation`; returns how
    /// many it newly told to close.
    pub fn replaced(&self, client: &str, generation: u64) -> usize {
        let devices = lock(&self.devices);
        let Some(list) = devices.get(client) else {
            return 0;
        };
        let mut n = 0;
        for e in list.iter().filter(|e| e.generation < generation) {
            // Each connection is told once (the announcement also comes back
            // to the hub that made it).
            if e.kick.borrow().is_none() {
                e.kick.send_replace(Some(CloseReason::Replaced));
                n += 1;
            }
        }
        n
    }

    /// Handles a connection announced by a hub: `<client> <generation>`.
    pub fn connected(&self, message: &str) -> usize {
        let mut parts = message.split_whitespace();
        match (parts.next(), parts.next().and_then(|g| g.parse().ok())) {
            (Some(client), Some(generation)) => self.replaced(client, generation),
            _ => 0,
        }
    }

    /// The (client, session id) of every connection not yet told to close.
    pub fn sessions(&self) -> Vec<(String, String)> {
        let devices = lock(&self.devices);
        let mut sessions = Vec::new();
        for (client, list) in devices.iter() {
            for e in list.iter().filter(|e| e.kick.borrow().is_none()) {
                sessions.push((client.clone(), lock(&e.sid).clone()));
            }
        }
        sessions
    }

    /// Devices with at least one live connection.
    pub fn devices(&self) -> usize {
        lock(&self.devices).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_reach_the_right_connections_and_dropping_unregisters() {
        let live = Arc::new(Live::default());
        let dev1: ClientId = "dev-1".parse().unwrap();
        let dev2: ClientId = "dev-2".parse().unwrap();
        let (a, a_rx) = live.register(&dev1, "s1", 1);
        let (b, b_rx) = live.register(&dev1, "s2", 2);
        let (_c, c_rx) = live.register(&dev2, "s3", 1);
        assert_eq!(live.revoked("dev-1 s2"), 1);
        assert_eq!(*a_rx.borrow(), None);
        assert_eq!(*b_rx.borrow(), Some(CloseReason::SessionRevoked));
        a.set_sid("s4");
        assert_eq!(live.revoked("dev-1 s1"), 0);
        assert_eq!(live.revoked("dev-1"), 2);
        assert_eq!(*a_rx.borrow(), Some(CloseReason::SessionRevoked));
        assert_eq!(*c_rx.borrow(), None);
        assert_eq!(live.revoked(""), 0);
        // Connections already told to close are not checked again.
        assert_eq!(live.sessions(), vec![("dev-2".to_owned(), "s3".to_owned())]);
        drop((a, b));
        assert_eq!(live.devices(), 1);
    }

    #[test]
    fn a_newer_generation_closes_the_older_connections_only() {
        let live = Arc::new(Live::default());
        let dev1: ClientId = "dev-1".parse().unwrap();
        let (_a, a_rx) = live.register(&dev1, "s", 3);
        let (_b, b_rx) = live.register(&dev1, "s", 5);
        assert_eq!(live.connected("dev-1 5"), 1);
        assert_eq!(*a_rx.borrow(), Some(CloseReason::Replaced));
        assert_eq!(*b_rx.borrow(), None);
        // A late announcement of an older connection closes nothing newer.
        assert_eq!(live.connected("dev-1 4"), 0);
        assert_eq!(live.connected("dev-1 x"), 0);
        assert_eq!(live.connected("dev-2 9"), 0);
    }
}
