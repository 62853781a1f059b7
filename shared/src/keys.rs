//! Redis key names. Every key lula touches is named here, once, under a
//! configurable prefix so tests and tenants can share a Redis without colliding.

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
    /// the in stream. Updated in the same Lua script as the append.
    pub fn cursors(&self) -> String {
        format!("{}:cursor:h", self.prefix)
    }
}

/// Escapes the characters Redis glob patterns treat specially.
fn escape_glob(s: &str) -> String {
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
}
