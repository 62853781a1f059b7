//! Exactly-once append of device entries into the hub's in stream.
//!
//! One Lua script per batch compares the entries' device seqs with the device's
//! saved cursor, appends the new ones and moves the cursor, atomically: two
//! connections of the same device sending the same entries at once are
//! serialized by Redis, and whichever runs second sees them as duplicates.
//!
//! The hub validates every batch before it reaches Redis (ids parsed, strictly
//! increasing, within limits), so the script trusts their order: duplicates can
//! only be a prefix of the batch, and when the first entry is already past the
//! cursor (the normal case) the script compares one id, not all of them.

use std::sync::LazyLock;

use lula_protocol::keys::HubKeys;
use lula_protocol::limits::{MAX_BATCH_ENTRIES, MAX_ENTRY_VALUES};
use lula_protocol::message::{ErrorReply, status};
use lula_protocol::{ClientId, Entry, FIELD_CLIENT, FIELD_SEQ, StreamId, escape_reserved};
use redis::aio::ConnectionLike;
use redis::{RedisError, Script, Value};

/// KEYS[1] cursor hash, KEYS[2] in stream.
/// ARGV[1] client, ARGV[2] prev ('' = no gap check), then per entry:
/// seq, number of values, values (k1, v1, ...).
/// Returns {'ok', cursor, added, duplicates, last hub id or ''} or {'gap', cursor}.
const INGEST_BODY: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or '0-0'
if ARGV[2] ~= '' and id_gt(ARGV[2], cur) then
  return {'gap', cur}
end
local n = #ARGV
local i = 3
local dups = 0
while i <= n and not id_gt(ARGV[i], cur) do
  i = i + 2 + tonumber(ARGV[i + 1])
  dups = dups + 1
end
local added = 0
local last = ''
while i <= n do
  local seq = ARGV[i]
  local nv = tonumber(ARGV[i + 1])
  local args = {'XADD', KEYS[2], '*', 'client', ARGV[1], 'seq', seq}
  for j = 1, nv do
    args[7 + j] = ARGV[i + 1 + j]
  end
  last = redis.call(unpack(args))
  cur = seq
  added = added + 1
  i = i + 2 + nv
end
if added > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], cur)
end
return {'ok', cur, added, dups, last}
"#;

static INGEST: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{}{}", lula_protocol::lua::ID_GT, INGEST_BODY)));

/// Result of one ingest call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The batch was applied (possibly entirely as duplicates).
    Applied {
        /// The device's cursor after the batch.
        cursor: StreamId,
        /// Entries appended.
        added: u64,
        /// Entries the hub already had.
        duplicates: u64,
        /// Hub in-stream id of the last appended entry, if any was appended.
        last: Option<StreamId>,
    },
    /// `prev` is ahead of the saved cursor: an earlier batch is missing, nothing was written.
    Gap {
        /// The saved cursor, where the client must resume.
        cursor: StreamId,
    },
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The batch breaks a protocol rule (400).
    #[error("{0}")]
    Invalid(String),
    /// The batch exceeds a limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Redis failed (503); retrying is safe.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The script answered something unexpected (500).
    #[error("unexpected ingest reply: {0}")]
    Reply(String),
}

impl IngestError {
    /// The protocol error reply for this failure.
    pub fn to_reply(&self) -> ErrorReply {
        match self {
            IngestError::Invalid(m) => ErrorReply::bad_request(m.clone()),
            IngestError::TooLarge(m) => ErrorReply::new(status::TOO_LARGE, m.clone()),
            IngestError::Redis(_) => {
                ErrorReply::new(status::UNAVAILABLE, "redis unavailable, retry later")
            }
            IngestError::Reply(_) => ErrorReply::new(status::INTERNAL, "internal error"),
        }
    }
}

/// Checks the rules a batch must meet before it may reach the script.
pub fn validate(entries: &[Entry]) -> Result<(), IngestError> {
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(IngestError::TooLarge(format!(
            "batch has {} entries, more than the limit of {MAX_BATCH_ENTRIES}",
            entries.len()
        )));
    }
    for pair in entries.windows(2) {
        if pair[1].id <= pair[0].id {
            return Err(IngestError::Invalid(format!(
                "entry ids must strictly increase within a batch: {} after {}",
                pair[1].id, pair[0].id
            )));
        }
    }
    // Deserialization already enforces this; callers building entries in code
    // get the same guarantee.
    if let Some(e) = entries
        .iter()
        .find(|e| e.fields.len() > MAX_ENTRY_VALUES || !e.fields.len().is_multiple_of(2))
    {
        return Err(IngestError::TooLarge(format!(
            "entry {} has too many or unpaired fields",
            e.id
        )));
    }
    Ok(())
}

/// The device's saved cursor: the last seq the hub appended, `0-0` at first.
pub async fn cursor<C: ConnectionLike>(
    redis: &mut C,
    keys: &HubKeys,
    client: &ClientId,
) -> Result<StreamId, IngestError> {
    let saved: Option<String> = redis::cmd("HGET")
        .arg(keys.cursors())
        .arg(client.as_str())
        .query_async(redis)
        .await?;
    match saved {
        None => Ok(StreamId::ZERO),
        Some(s) => s
            .parse()
            .map_err(|e| IngestError::Reply(format!("saved cursor {s:?}: {e}"))),
    }
}

/// Appends `entries` of `client` exactly once. `prev`, when given, must not be
/// ahead of the saved cursor (see [`Appended::Gap`]).
pub async fn append<C: ConnectionLike>(
    redis: &mut C,
    keys: &HubKeys,
    client: &ClientId,
    prev: Option<StreamId>,
    entries: Vec<Entry>,
) -> Result<Appended, IngestError> {
    validate(&entries)?;
    let mut invocation = INGEST.key(keys.cursors());
    invocation.key(keys.in_stream()).arg(client.as_str());
    match prev {
        Some(p) => invocation.arg(p.to_string()),
        None => invocation.arg(""),
    };
    for entry in entries {
        invocation.arg(entry.id.to_string()).arg(entry.fields.len());
        for (i, mut value) in entry.fields.into_iter().enumerate() {
            if i.is_multiple_of(2) {
                escape_reserved(&mut value, &[FIELD_CLIENT, FIELD_SEQ]);
            }
            invocation.arg(value);
        }
    }
    let reply: Value = invocation.invoke_async(redis).await?;
    parse_reply(reply)
}

fn parse_reply(reply: Value) -> Result<Appended, IngestError> {
    let bad = |what: &str| IngestError::Reply(what.to_owned());
    let Value::Array(items) = reply else {
        return Err(bad("not an array"));
    };
    let text = |v: &Value| -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    };
    let int = |v: &Value| -> Option<u64> {
        match v {
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    };
    let tag = items
        .first()
        .and_then(text)
        .ok_or_else(|| bad("no status"))?;
    let cursor: StreamId = items
        .get(1)
        .and_then(text)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no cursor"))?;
    match tag.as_str() {
        "gap" => Ok(Appended::Gap { cursor }),
        "ok" => {
            let added = items
                .get(2)
                .and_then(int)
                .ok_or_else(|| bad("no added count"))?;
            let duplicates = items
                .get(3)
                .and_then(int)
                .ok_or_else(|| bad("no duplicate count"))?;
            let last = match items.get(4).and_then(text).filter(|s| !s.is_empty()) {
                Some(id) => Some(id.parse().map_err(|_| bad("hub id"))?),
                None => None,
            };
            Ok(Appended::Applied {
                cursor,
                added,
                duplicates,
                last,
            })
        }
        other => Err(bad(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_must_be_strictly_increasing_and_bounded() {
        let e = |ms| Entry::from_pairs(StreamId::new(ms, 0), &[("k", "v")]);
        assert!(validate(&[e(1), e(2), e(3)]).is_ok());
        assert!(matches!(
            validate(&[e(1), e(1)]),
            Err(IngestError::Invalid(_))
        ));
        assert!(matches!(
            validate(&[e(2), e(1)]),
            Err(IngestError::Invalid(_))
        ));
        let big: Vec<Entry> = (0..MAX_BATCH_ENTRIES as u64 + 1).map(e).collect();
        assert!(matches!(validate(&big), Err(IngestError::TooLarge(_))));
    }
}
