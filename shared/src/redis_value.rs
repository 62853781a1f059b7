//! Stream replies from redis-rs values, keeping field order and raw bytes.
//!
//! redis-rs's own `StreamReadReply` collects fields into a `HashMap`, which loses
//! their order and requires UTF-8 keys; lula promises both are preserved.

use redis::Value;

use crate::{Entry, StreamId};

/// A stream reply that is not shaped like `XREAD`/`XRANGE` output.
#[derive(Debug, thiserror::Error)]
#[error("unexpected stream reply: {0}")]
pub struct StreamReplyError(String);

fn err(what: impl Into<String>) -> StreamReplyError {
    StreamReplyError(what.into())
}

fn bytes(v: Value) -> Result<Vec<u8>, StreamReplyError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::VerbatimString { text, .. } => Ok(text.into_bytes()),
        other => Err(err(format!("expected a string, got {other:?}"))),
    }
}

fn entry(v: Value) -> Result<Entry, StreamReplyError> {
    let Value::Array(parts) = v else {
        return Err(err("entry is not an array"));
    };
    let mut parts = parts.into_iter();
    let id = bytes(parts.next().ok_or_else(|| err("entry without id"))?)?;
    let id: StreamId = std::str::from_utf8(&id)
        .map_err(|_| err("entry id is not UTF-8"))?
        .parse()
        .map_err(|e| err(format!("{e}")))?;
    let fields = match parts.next() {
        Some(Value::Array(kv)) => kv.into_iter().map(bytes).collect::<Result<_, _>>()?,
        Some(Value::Map(kv)) => {
            let mut flat = Vec::with_capacity(kv.len() * 2);
            for (k, v) in kv {
                flat.push(bytes(k)?);
                flat.push(bytes(v)?);
            }
            flat
        }
        // A deleted entry still referenced by a consumer group's PEL has nil fields.
        Some(Value::Nil) | None => Vec::new(),
        Some(other) => return Err(err(format!("entry fields: {other:?}"))),
    };
    Ok(Entry::new(id, fields))
}

/// Entries of an `XRANGE` reply (an array of `[id, [k, v, ...]]`).
pub fn entries_from_range(v: Value) -> Result<Vec<Entry>, StreamReplyError> {
    match v {
        Value::Array(items) => items.into_iter().map(entry).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(err(format!("XRANGE reply: {other:?}"))),
    }
}

/// Entries of an `XREAD` reply for a single stream; nil (timeout) is empty.
pub fn entries_from_read(v: Value) -> Result<Vec<Entry>, StreamReplyError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        // RESP2: [[key, entries]]
        Value::Array(streams) => match streams.into_iter().next() {
            None => Ok(Vec::new()),
            Some(Value::Array(kv)) => {
                let entries = kv
                    .into_iter()
                    .nth(1)
                    .ok_or_else(|| err("stream without entries"))?;
                entries_from_range(entries)
            }
            Some(other) => Err(err(format!("XREAD stream: {other:?}"))),
        },
        // RESP3: {key: entries}
        Value::Map(streams) => match streams.into_iter().next() {
            None => Ok(Vec::new()),
            Some((_, entries)) => entries_from_range(entries),
        },
        other => Err(err(format!("XREAD reply: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn keeps_field_order_and_binary_values() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"k"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"1-1"),
                Value::Array(vec![bulk(b"z"), bulk(b"1"), bulk(b"a"), bulk(&[0xff])]),
            ])]),
        ])]);
        let entries = entries_from_read(reply).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, StreamId::new(1, 1));
        assert_eq!(
            entries[0].fields,
            vec![b"z".to_vec(), b"1".to_vec(), b"a".to_vec(), vec![0xff]]
        );
        assert!(entries_from_read(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn rejects_misshapen_replies() {
        assert!(entries_from_read(Value::Int(3)).is_err());
        assert!(entries_from_range(Value::Array(vec![Value::Array(vec![bulk(b"x")])])).is_err());
    }
}
