//! Redis key names. Every key lula touches is named here, once, under a
//! configurable prefix so tests and tenants can share a Redis without colliding.
//!
//! # Redis Cluster
//!
//! Every key one Lua script touches must live in one hash slot. The only
//! script with two keys is the hub's ingest script: a partition's cursor hash
//! and its in stream. [`IngestLayout`] names them so they share a slot:
//! - one partition on one Redis (the default): `lula-hub:cursor:h` and
//!   `lula-hub:in:x`, as always;
//! - one partition on a cluster: `lula-hub:cursor:{lula-hub:in:x}:h`, whose
//!   hash tag is the in stream's whole name, so it hashes to the stream's
//!   slot while the stream keeps the name consumers know;
//! - `N` partitions: `lula-hub:in:{p}:x` and `lula-hub:cursor:{p}:h` for `p` in
//!   `0..N`, sharing the tag `{p}`, so partitions spread over the masters.
//!
//! A device's partition is [`partition`]: FNV-1a (32 bit) of its client id,
//! modulo `N`, so consumers and tools can compute it too. [`key_slot`] is
//! Redis Cluster's own slot function, for checking a layout.

use crate::ClientId;

/// Default prefix of the hub's keys in the cloud Redis.
pub const DEFAULT_HUB_PREFIX: &str = "lula-hub";
/// Default prefix of lula-auth's keys.
pub const DEFAULT_AUTH_PREFIX: &str = "lula-auth";
/// Default prefix of the client daemon's keys in the device Redis.
pub const DEFAULT_DEVICE_PREFIX: &str = "lula-client";

/// Keys in the cloud Redis that lula-hub reads and writes.
#[derive(Debug, Clone)]
pub struct HubKeys {
    prefix: String,
}

impl HubKeys {
    /// Keys under `prefix` (default [`DEFAULT_HUB_PREFIX`]).
    pub fn new(prefix: impl Into<String>) -> Self {
        HubKeys {
            prefix: prefix.into(),
        }
    }

    /// The prefix these keys live under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `lula-hub:in:x`: every device's events, consumed by cloud services.
    pub fn in_stream(&self) -> String {
        format!("{}:in:x", self.prefix)
    }

    /// `lula-hub:out:<client>:x`: messages cloud services address to one device.
    pub fn out_stream(&self, client: &ClientId) -> String {
        format!("{}:out:{}:x", self.prefix, client)
    }

    /// Glob pattern matching every device's out stream (`lula-hub:out:*:x`),
    /// with glob characters in the prefix escaped.
    pub fn out_stream_pattern(&self) -> String {
        format!("{}:out:*:x", escape_glob(&self.prefix))
    }

    /// `lula-hub:broadcast:x`: messages for every device, added by cloud
    /// services once. Each hub connection reads this one stream after the
    /// device's own broadcast cursor; nothing is copied per device. Trimmed
    /// by the hubs to their broadcast retention.
    pub fn broadcast_stream(&self) -> String {
        format!("{}:broadcast:x", self.prefix)
    }

    /// [`HubKeys::broadcast_stream`] as a glob pattern matching only itself
    /// (glob characters in the prefix escaped), for keyspace subscriptions.
    pub fn broadcast_stream_pattern(&self) -> String {
        format!("{}:broadcast:x", escape_glob(&self.prefix))
    }

    /// `lula-hub:conn:<client>`: a counter each new connection of the device
    /// increments; the highest generation is the one connection that stays.
    pub fn connection_generation(&self, client: &ClientId) -> String {
        format!("{}:conn:{}", self.prefix, client)
    }

    /// `lula-hub:connected`: the pub/sub channel on which a hub announces a new
    /// connection (`<client> <generation>`), so every replica closes the
    /// device's older ones.
    pub fn connected_channel(&self) -> String {
        format!("{}:connected", self.prefix)
    }

    /// `lula-hub:cursor:h`: field per device, value the last device seq appended to
    /// the in stream. Updated in the same Lua script as the append. (With
    /// partitions or on a cluster, see [`IngestLayout::cursors`].)
    pub fn cursors(&self) -> String {
        format!("{}:cursor:h", self.prefix)
    }

    /// `lula-hub:device:<client>:h`: what the hubs last saw of one device, for
    /// the fleet view: which replica holds its connection, when it was last
    /// heard, its downstream cursor, why its last connection ended.
    pub fn device(&self, client: &ClientId) -> String {
        format!("{}:device:{}:h", self.prefix, client)
    }

    /// `lula-hub:devices:z`: every device a hub has seen, scored by when a hub
    /// last wrote its [`HubKeys::device`] hash (epoch ms).
    pub fn devices(&self) -> String {
        format!("{}:devices:z", self.prefix)
    }

    /// `lula-hub:ingest-layout`: the [`IngestLayout::description`] the hubs
    /// write with, recorded by the first hub; a hub configured otherwise
    /// refuses to ingest, since a device moved to another partition would have
    /// its entries accepted again.
    pub fn ingest_layout(&self) -> String {
        format!("{}:ingest-layout", self.prefix)
    }

    /// `lula-hub:dead:x`: the cloud's dead letters. A direct message or a
    /// broadcast a device cannot take (past a limit) is recorded here once,
    /// as `client <c>|broadcast <b> stream <out|broadcast> id <id> reason
    /// <text> <original fields...>`, and the device is told it was set aside.
    pub fn dead_stream(&self) -> String {
        format!("{}:dead:x", self.prefix)
    }

    /// `lula-hub:dead-seen:{lula-hub:dead:x}:<what>`: the guard that records a
    /// set-aside entry in [`HubKeys::dead_stream`] once (`what` names its
    /// stream and id). The hash tag keeps it in the dead stream's cluster
    /// slot, so one script can check it and append.
    pub fn dead_seen(&self, what: &str) -> String {
        format!(
            "{}:dead-seen:{{{}}}:{}",
            self.prefix,
            self.dead_stream(),
            what
        )
    }
}

/// Where the hub appends devices' entries: `partitions` in streams, each with
/// its cursor hash in the same hash slot (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestLayout {
    prefix: String,
    partitions: u32,
    cluster: bool,
}

impl IngestLayout {
    /// The layout of `keys` with `partitions` partitions (at least 1), on a
    /// Redis Cluster when `cluster`.
    pub fn new(keys: &HubKeys, partitions: u32, cluster: bool) -> Self {
        IngestLayout {
            prefix: keys.prefix.clone(),
            partitions: partitions.max(1),
            cluster,
        }
    }

    /// One partition on one Redis: `lula-hub:in:x` and `lula-hub:cursor:h`.
    pub fn single(keys: &HubKeys) -> Self {
        IngestLayout::new(keys, 1, false)
    }

    /// How many partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of `client`'s entries.
    pub fn partition_of(&self, client: &ClientId) -> u32 {
        partition(client, self.partitions)
    }

    /// Partition `p`'s in stream: `lula-hub:in:x` with one partition,
    /// `lula-hub:in:{p}:x` with several.
    pub fn in_stream(&self, p: u32) -> String {
        if self.partitions == 1 {
            format!("{}:in:x", self.prefix)
        } else {
            format!("{}:in:{{{p}}}:x", self.prefix)
        }
    }

    /// Partition `p`'s cursor hash (field per device, the last seq appended):
    /// `lula-hub:cursor:h` with one partition on one Redis,
    /// `lula-hub:cursor:{lula-hub:in:x}:h` with one partition on a cluster,
    /// `lula-hub:cursor:{p}:h` with several.
    pub fn cursors(&self, p: u32) -> String {
        if self.partitions > 1 {
            format!("{}:cursor:{{{p}}}:h", self.prefix)
        } else if self.cluster {
            format!("{}:cursor:{{{}}}:h", self.prefix, self.in_stream(0))
        } else {
            format!("{}:cursor:h", self.prefix)
        }
    }

    /// Every partition's in stream, in partition order.
    pub fn in_streams(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.in_stream(p)).collect()
    }

    /// What the hubs record in [`HubKeys::ingest_layout`]:
    /// `partitions=<N> cursors=<partition 0's cursor hash>`.
    pub fn description(&self) -> String {
        format!("partitions={} cursors={}", self.partitions, self.cursors(0))
    }

    /// The first partition whose cursor hash and in stream fall in different
    /// hash slots (possible only with a prefix holding `{` or `}`); `None`
    /// when every ingest script call stays in one slot.
    pub fn cross_slot_partition(&self) -> Option<u32> {
        (0..self.partitions).find(|&p| {
            key_slot(self.cursors(p).as_bytes()) != key_slot(self.in_stream(p).as_bytes())
        })
    }
}

/// The partition of `client` among `partitions` (at least 1): the 32-bit
/// FNV-1a hash of the client id's bytes, modulo `partitions`.
///
/// ```text
/// h = 2166136261
/// for each byte b of the client id: h = (h XOR b) * 16777619 mod 2^32
/// partition = h mod partitions
/// ```
pub fn partition(client: &ClientId, partitions: u32) -> u32 {
    fnv1a32(client.as_str().as_bytes()) % partitions.max(1)
}

/// FNV-1a, 32 bits.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Number of hash slots of a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16384;

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (what
/// lies between the first `{` and the next `}`, when not empty) or else of the
/// whole key, modulo [`CLUSTER_SLOTS`]. Keys with the same slot can be used
/// together in one script.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % CLUSTER_SLOTS
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Escapes the characters Redis glob patterns treat specially, so a prefix
/// or client id can be part of a `SCAN MATCH` or `PSUBSCRIBE` pattern.
pub fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Default for HubKeys {
    fn default() -> Self {
        HubKeys::new(DEFAULT_HUB_PREFIX)
    }
}

/// Keys lula-auth owns and lula-hub reads (sessions, signing keys).
#[derive(Debug, Clone)]
pub struct AuthKeys {
    prefix: String,
}

impl AuthKeys {
    /// Keys under `prefix` (default [`DEFAULT_AUTH_PREFIX`]).
    pub fn new(prefix: impl Into<String>) -> Self {
        AuthKeys {
            prefix: prefix.into(),
        }
    }

    /// The prefix these keys live under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `lula-auth:client:<client>:h` with fields [`fields::OTP_SECRET`],
    /// [`fields::REG_DEADLINE`] and, once registered, [`fields::SECRET`].
    pub fn client(&self, client: &ClientId) -> String {
        format!("{}:client:{}:h", self.prefix, client)
    }

    /// `lula-auth:client:<client>:sessions:z`: the device's live session ids,
    /// scored by expiry (epoch seconds), so every session of one device can be
    /// revoked at once (re-provisioning, `lula-auth revoke`).
    pub fn client_sessions(&self, client: &ClientId) -> String {
        format!("{}:client:{}:sessions:z", self.prefix, client)
    }

    /// `lula-auth:session:<sid>`: string holding the client id, with the token's TTL.
    /// Deleting it revokes the session.
    pub fn session(&self, session_id: &str) -> String {
        format!("{}:session:{}", self.prefix, session_id)
    }

    /// `lula-auth:fail:<action>:client:<client>`: failed attempts of one client
    /// at `action` (`register`, `login`) in the current window; expires with it.
    pub fn failures_of_client(&self, action: &str, client: &ClientId) -> String {
        format!("{}:fail:{action}:client:{client}", self.prefix)
    }

    /// `lula-auth:fail:<action>:addr:<ip>`: failed attempts from one address.
    pub fn failures_from(&self, action: &str, addr: &std::net::IpAddr) -> String {
        format!("{}:fail:{action}:addr:{addr}", self.prefix)
    }

    /// `lula-auth:revoked`: the pub/sub channel on which lula-auth announces
    /// revocations (message: the client id), so every hub replica closes that
    /// device's live sockets at once.
    pub fn revocations(&self) -> String {
        format!("{}:revoked", self.prefix)
    }

    /// `lula-auth:key:<kid>`: a token verification key published by lula-auth
    /// (base64url of the raw Ed25519 public key), kept alive while lula-auth runs.
    pub fn verify_key(&self, kid: &str) -> String {
        format!("{}:key:{}", self.prefix, kid)
    }
}

impl Default for AuthKeys {
    fn default() -> Self {
        AuthKeys::new(DEFAULT_AUTH_PREFIX)
    }
}

/// Field names of the auth client hash. Operators may provision with
/// `redis-cli HSET lula-auth:client:<client>:h otpSecret <base32> regDeadline <epoch ms>`.
pub mod fields {
    /// Base32 TOTP secret provisioned for the device.
    pub const OTP_SECRET: &str = "otpSecret";
    /// Registration deadline, epoch milliseconds.
    pub const REG_DEADLINE: &str = "regDeadline";
    /// bcrypt hash of the device's own secret, set by registration.
    pub const SECRET: &str = "secret";
}

/// Keys in the device Redis that lula-client reads and writes.
#[derive(Debug, Clone)]
pub struct DeviceKeys {
    prefix: String,
}

impl DeviceKeys {
    /// Keys under `prefix` (default [`DEFAULT_DEVICE_PREFIX`]).
    pub fn new(prefix: impl Into<String>) -> Self {
        DeviceKeys {
            prefix: prefix.into(),
        }
    }

    /// The prefix these keys live under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `lula-client:out:x`: producers on the device `XADD` here.
    pub fn out_stream(&self) -> String {
        format!("{}:out:x", self.prefix)
    }

    /// `lula-client:in:x`: messages from the hub land here.
    pub fn in_stream(&self) -> String {
        format!("{}:in:x", self.prefix)
    }

    /// `lula-client:state:h`: the downstream cursor (updated atomically with
    /// `in:x`) and the daemon's published status (see `lula-client status`).
    pub fn state(&self) -> String {
        format!("{}:state:h", self.prefix)
    }

    /// `lula-client:dead:x`: the device's dead letters. An out-stream entry
    /// that cannot be sent (past a limit, or refused by the hub) is written
    /// here under its original id, as `reason <text> <original fields...>`,
    /// and the hub is told it was set aside.
    pub fn dead_stream(&self) -> String {
        format!("{}:dead:x", self.prefix)
    }
}

impl Default for DeviceKeys {
    fn default() -> Self {
        DeviceKeys::new(DEFAULT_DEVICE_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_the_documented_layout() {
        let c: ClientId = "dev-1".parse().unwrap();
        let hub = HubKeys::default();
        assert_eq!(hub.in_stream(), "lula-hub:in:x");
        assert_eq!(hub.out_stream(&c), "lula-hub:out:dev-1:x");
        assert_eq!(hub.out_stream_pattern(), "lula-hub:out:*:x");
        assert_eq!(hub.broadcast_stream(), "lula-hub:broadcast:x");
        assert_eq!(hub.broadcast_stream_pattern(), "lula-hub:broadcast:x");
        assert_eq!(
            HubKeys::new("t*").broadcast_stream_pattern(),
            r"t\*:broadcast:x"
        );
        assert_eq!(
            HubKeys::new("t[1]*").out_stream_pattern(),
            r"t\[1\]\*:out:*:x"
        );
        let auth = AuthKeys::default();
        assert_eq!(auth.client(&c), "lula-auth:client:dev-1:h");
        let dev = DeviceKeys::default();
        assert_eq!(dev.out_stream(), "lula-client:out:x");
        assert_eq!(dev.in_stream(), "lula-client:in:x");
    }

    #[test]
    fn one_partition_on_one_redis_keeps_the_documented_names() {
        let layout = IngestLayout::single(&HubKeys::default());
        assert_eq!(layout.in_stream(0), "lula-hub:in:x");
        assert_eq!(layout.cursors(0), "lula-hub:cursor:h");
        assert_eq!(layout.in_stream(0), HubKeys::default().in_stream());
        assert_eq!(layout.cursors(0), HubKeys::default().cursors());
        assert_eq!(
            layout.description(),
            "partitions=1 cursors=lula-hub:cursor:h"
        );
    }

    #[test]
    fn a_dead_letter_guard_shares_the_dead_streams_slot() {
        let keys = HubKeys::default();
        let guard = keys.dead_seen("broadcast:5-0");
        assert_eq!(guard, "lula-hub:dead-seen:{lula-hub:dead:x}:broadcast:5-0");
        assert_eq!(
            key_slot(guard.as_bytes()),
            key_slot(keys.dead_stream().as_bytes())
        );
        assert_eq!(DeviceKeys::default().dead_stream(), "lula-client:dead:x");
    }

    #[test]
    fn cluster_layouts_keep_each_script_in_one_slot() {
        let keys = HubKeys::default();
        let one = IngestLayout::new(&keys, 1, true);
        assert_eq!(one.in_stream(0), "lula-hub:in:x");
        assert_eq!(one.cursors(0), "lula-hub:cursor:{lula-hub:in:x}:h");
        assert_eq!(one.cross_slot_partition(), None);
        let four = IngestLayout::new(&keys, 4, true);
        assert_eq!(four.in_stream(3), "lula-hub:in:{3}:x");
        assert_eq!(four.cursors(3), "lula-hub:cursor:{3}:h");
        // Several partitions have the same names with or without a cluster.
        assert_eq!(
            IngestLayout::new(&keys, 4, false).cursors(3),
            four.cursors(3)
        );
        assert_eq!(four.cross_slot_partition(), None);
        // A prefix with a hash tag of its own puts everything in its slot.
        let tagged = IngestLayout::new(&HubKeys::new("t{1}"), 4, true);
        assert_eq!(tagged.cross_slot_partition(), None);
        // One with an unclosed brace cannot keep the one-partition script in one slot.
        let broken = IngestLayout::new(&HubKeys::new("a{b"), 1, true);
        assert_eq!(broken.cross_slot_partition(), Some(0));
    }

    #[test]
    fn slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{foo}.bar"), 12182);
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(
            key_slot(b"foo{}{bar}"),
            crc16_xmodem(b"foo{}{bar}") % CLUSTER_SLOTS
        );
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"lula-hub:in:{0}:x"), key_slot(b"0"));
    }

    #[test]
    fn partitions_are_fnv1a_of_the_client_id() {
        // FNV-1a test vectors.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        // The README's Python version gives the same.
        let d: ClientId = "dev-4711".parse().unwrap();
        assert_eq!((partition(&d, 4), partition(&d, 16)), (0, 12));
        let c: ClientId = "dev-1".parse().unwrap();
        assert_eq!(partition(&c, 1), 0);
        assert_eq!(partition(&c, 4), fnv1a32(b"dev-1") % 4);
        assert_eq!(partition(&c, 0), 0);
        let spread: std::collections::HashSet<u32> = (0..100)
            .map(|i| partition(&format!("dev-{i}").parse().unwrap(), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
