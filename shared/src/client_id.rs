//! Device identities.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted client id.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// A device's identity, as provisioned in lula-auth and named in every Redis key
/// that belongs to the device.
///
/// Only `A-Z a-z 0-9 . _ -` are allowed: ids are embedded in key names such as
/// `lula-hub:out:<client>:x`, so `:` (the key separator), `{}` (Redis Cluster
/// hash tags), `*?[]` (glob patterns used by operators) and whitespace must never
/// appear in them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(String);

/// Why a string is not a client id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "client id must be 1 to {MAX_CLIENT_ID_LEN} characters of A-Z a-z 0-9 . _ - (and not start with . or -)"
)]
pub struct ClientIdError;

impl ClientId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClientId {
    type Err = ClientIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok_len = !s.is_empty() && s.len() <= MAX_CLIENT_ID_LEN;
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        // A leading '-' would read as a flag on command lines; a leading '.' as a hidden file.
        let ok_start = !s.starts_with(['-', '.']);
        if ok_len && ok_chars && ok_start {
            Ok(ClientId(s.to_owned()))
        } else {
            Err(ClientIdError)
        }
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ClientId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for ClientId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in [
            "a",
            "device-4711",
            "kiosk_03.berlin",
            "A1",
            &"x".repeat(128),
        ] {
            assert!(ok.parse::<ClientId>().is_ok(), "{ok:?} refused");
        }
    }

    #[test]
    fn refuses_ids_that_would_break_key_names() {
        for bad in [
            "",
            "a:b",
            "a{b}",
            "a b",
            "a*",
            "-a",
            ".a",
            "ä",
            "a\n",
            &"x".repeat(129),
        ] {
            assert!(bad.parse::<ClientId>().is_err(), "{bad:?} accepted");
        }
    }
}
