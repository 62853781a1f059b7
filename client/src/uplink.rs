//! Upstream batching: read the device's out stream after the hub's cursor and
//! cut it into batches that fit the frame limit.
//!
//! The reader runs as its own task, one batch ahead of the session loop (the
//! channel holds one), so Redis reads overlap with the network round trip. It
//! never decides what was delivered: the session advances the cursor only on
//! the hub's acknowledgement, and a new session starts a new reader from the
//! cursor the hub reports.

use std::collections::VecDeque;
use std::time::Duration;

use lula_protocol::{Entry, StreamId};
use redis::RedisError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device::OutReader;

/// How long one `XREAD` on the out stream blocks before it is issued again.
pub const READ_BLOCK: Duration = Duration::from_secs(1);

/// Bytes kept free in a frame for the envelope around the entries
/// (`{"type":"xadds","id":N,"payload":{"prev":"<id>","entries":...}}`).
pub const ENVELOPE_RESERVE: usize = 256;

/// Consecutive out-stream entries, encoded and ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Id of the first entry.
    pub first: StreamId,
    /// Id of the last entry.
    pub last: StreamId,
    /// Number of entries.
    pub count: usize,
    /// The entries as a JSON array.
    pub entries_json: String,
}

/// Why the reader stopped.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The device Redis failed.
    #[error("device redis: {0}")]
    Device(#[from] RedisError),
    /// One entry alone is larger than a frame may be; it can never be sent.
    /// Sync stops here rather than skip it (which would lose it): raise the
    /// frame limit on hub and client, or remove the entry.
    #[error(
        "entry {id} encodes to {bytes} bytes, more than the frame limit allows ({limit}); raise --max-frame-bytes on hub and client"
    )]
    Oversized {
        /// The entry.
        id: StreamId,
        /// Its encoded size.
        bytes: usize,
        /// The budget for entries in one frame.
        limit: usize,
    },
}

/// Takes entries from the front of `pending` into one batch of at most
/// `max_entries` entries and `max_bytes` of encoded entries. Entries are
/// encoded straight into the batch's buffer: one allocation per batch.
pub fn take_batch(
    pending: &mut VecDeque<Entry>,
    max_entries: usize,
    max_bytes: usize,
) -> Result<Option<Batch>, UplinkError> {
    let mut json: Vec<u8> = Vec::with_capacity(max_bytes.min(256 * 1024));
    json.push(b'[');
    let (mut first, mut last, mut count) = (StreamId::ZERO, StreamId::ZERO, 0);
    while count < max_entries {
        let Some(entry) = pending.front() else { break };
        let mark = json.len();
        if count > 0 {
            json.push(b',');
        }
        serde_json::to_writer(&mut json, entry).map_err(|e| {
            RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "entry encoding",
                e.to_string(),
            ))
        })?;
        // +1 for the closing bracket
        if json.len() + 1 > max_bytes {
            if count == 0 {
                return Err(UplinkError::Oversized {
                    id: entry.id,
                    bytes: json.len() - mark,
                    limit: max_bytes,
                });
            }
            json.truncate(mark);
            break;
        }
        if count == 0 {
            first = entry.id;
        }
        last = entry.id;
        count += 1;
        pending.pop_front();
    }
    if count == 0 {
        return Ok(None);
    }
    json.push(b']');
    // serde_json writes UTF-8 only; this check cannot fail and costs one pass.
    let entries_json = String::from_utf8(json).map_err(|e| {
        RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "entry encoding",
            e.to_string(),
        ))
    })?;
    Ok(Some(Batch {
        first,
        last,
        count,
        entries_json,
    }))
}

/// Reads `out:x` after `start` and sends batches into `tx` until `cancel` or the
/// receiver goes away. A failure is sent as the last item.
pub async fn read_batches(
    mut reader: OutReader,
    start: StreamId,
    max_entries: usize,
    max_bytes: usize,
    tx: mpsc::Sender<Result<Batch, UplinkError>>,
    cancel: CancellationToken,
) {
    let mut last_read = start;
    let mut pending: VecDeque<Entry> = VecDeque::new();
    loop {
        if pending.is_empty() {
            let read = tokio::select! {
                _ = cancel.cancelled() => return,
                r = reader.read(last_read, max_entries) => r,
            };
            match read {
                Ok(entries) => {
                    if let Some(last) = entries.last() {
                        last_read = last.id;
                    }
                    pending.extend(entries);
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
            continue;
        }
        let batch = match take_batch(&mut pending, max_entries, max_bytes) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            sent = tx.send(Ok(batch)) => if sent.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64, size: usize) -> VecDeque<Entry> {
        (1..=n)
            .map(|i| Entry::from_pairs(StreamId::new(i, 0), &[("v", "x".repeat(size))]))
            .collect()
    }

    #[test]
    fn batches_respect_entry_and_byte_limits_and_keep_order() {
        let mut pending = entries(10, 10);
        let b = take_batch(&mut pending, 4, 10_000).unwrap().unwrap();
        assert_eq!(
            (b.first, b.last, b.count),
            (StreamId::new(1, 0), StreamId::new(4, 0), 4)
        );
        let parsed: Vec<Entry> = serde_json::from_str(&b.entries_json).unwrap();
        assert_eq!(
            parsed.iter().map(|e| e.id.ms).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // one entry encodes to about 40 bytes; a 100-byte budget holds two
        let b = take_batch(&mut pending, 100, 100).unwrap().unwrap();
        assert_eq!(b.count, 2);
        assert!(b.entries_json.len() <= 100);
        assert_eq!(pending.front().unwrap().id, StreamId::new(7, 0));
    }

    #[test]
    fn an_entry_larger_than_a_frame_is_an_error_not_a_skip() {
        let mut pending = entries(2, 1000);
        assert!(matches!(
            take_batch(&mut pending, 10, 500),
            Err(UplinkError::Oversized { .. })
        ));
        assert_eq!(pending.len(), 2, "nothing may be dropped");
        assert!(take_batch(&mut VecDeque::new(), 10, 500).unwrap().is_none());
    }
}
