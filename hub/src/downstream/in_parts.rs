//! Pushing an entry past what one push frame may hold in parts
//! ([`lula_protocol::parts`]), to devices that put entries together (they
//! said so in `subscribe`).
//!
//! An entry wider than [`MAX_ENTRY_VALUES`] or encoded larger than a frame
//! goes alone, one part per push frame, each cut and encoded when the
//! connection's queue has all but drained, so a slow device holds the entry
//! rather than a queue of encoded parts. The device stores the entry when its last part arrives
//! and acknowledges it then, so the window counts the entry with its last
//! part. While the entry is being cut the push holds a share of the hub's
//! [`PartsBudget`](crate::parts_budget::PartsBudget), which bounds the
//! memory of such entries over all connections.

use axum::extract::ws::Message;
use lula_protocol::limits::{MAX_ENTRY_VALUES, PUSH_ENVELOPE_BYTES};
use lula_protocol::message::{HubFrame, Push};
use lula_protocol::parts::{PartLimits, Splitter};
use lula_protocol::{Entry, StreamId};

use super::{Batch, Ended, Pusher};
use crate::parts_budget::PartsBudget;

/// Frames queued for the connection's writer before the next part is cut:
/// parts go out as fast as the device takes them, and what waits for a slow
/// device is the entry (within the budget), not a queue of encoded parts.
const PARTS_QUEUED: usize = 2;

/// How often a push waiting to cut its next part looks at the queue again.
const QUEUE_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Where a push may send entries in parts.
pub struct PartsTo {
    /// What the device puts together.
    pub limits: PartLimits,
    /// The hub's budget for entries in parts.
    pub budget: PartsBudget,
}

impl PartsTo {
    /// Whether `entry` goes in parts rather than in a push: wider than a
    /// push may hold, or encoded larger than a frame (`--max-frame-bytes`,
    /// the device's default limit too), and within what the device puts
    /// together. An entry that fits a frame goes whole, alone in its push
    /// when it is larger than half a frame, as before parts: cutting it
    /// would only cost memory and copies.
    pub(super) fn takes(&self, entry: &Entry, max_frame_bytes: usize) -> bool {
        let frame = max_frame_bytes.saturating_sub(PUSH_ENVELOPE_BYTES);
        entry.set_aside.is_none()
            && (entry.fields.len() > MAX_ENTRY_VALUES
                || entry.past_limits(MAX_ENTRY_VALUES, frame).is_some())
            && self.limits.refuses(entry).is_none()
    }
}

/// Leaves an entry that goes in parts alone in `batch` (then marked
/// `in_parts`): the batch ends before it, or is only it when it comes
/// first. What is cut off is read again next time.
pub(super) fn isolate(batch: &mut Batch, parts: &PartsTo, max_frame_bytes: usize) {
    let Some(at) = batch
        .entries
        .iter()
        .position(|e| parts.takes(e, max_frame_bytes))
    else {
        return;
    };
    let keep = at.max(1);
    batch.in_parts = at == 0;
    if keep < batch.entries.len() {
        batch.entries.truncate(keep);
        batch.last_read = batch.entries.last().map(|e| e.id);
        // Not caught up: what follows is read next.
        batch.read = usize::MAX;
    }
}

impl Pusher {
    /// Pushes one entry in parts, after a frame for the gap or the expired
    /// messages before it, if any; the last part carries the backlog.
    pub(super) async fn send_parts(
        &mut self,
        entry: Entry,
        (gap, expired, backlog): (Option<StreamId>, Option<u64>, Option<u64>),
        permit: crate::push_budget::Permit,
    ) -> Result<(), Ended> {
        let Some(parts) = &self.source.parts else {
            return Err(Ended);
        };
        let cost = PartsBudget::cost(entry.payload_len(), entry.fields.len());
        let budget = parts.budget.clone();
        let reserved = tokio::select! {
            r = budget.reserve(cost) => r,
            _ = self.out.closed() => return Err(Ended),
        };
        drop(permit);
        if gap.is_some() || expired.is_some() {
            let notice = self.push_of(Vec::new(), gap, expired, None);
            let frame = self.encode_frame(notice)?;
            self.send_frame(frame).await?;
        }
        let id = entry.id;
        let room = (self.max_frame_bytes / 2).saturating_sub(PUSH_ENVELOPE_BYTES);
        let mut split = Splitter::new(entry, room);
        loop {
            self.queue_drained().await?;
            let Some(part) = split.next_part() else { break };
            let last = part.index + 1 == part.count;
            let mut push = self.push_of(Vec::new(), None, None, backlog.filter(|_| last));
            push.part = Some(part);
            if last {
                let mut frame = self.encode_frame(push)?;
                (frame.last, frame.n) = (id, 1);
                self.send_frame(frame).await?;
            } else {
                let text = HubFrame::Push(push).to_text(None).map_err(|_| Ended)?;
                self.out
                    .send(Message::Text(text.into()))
                    .await
                    .map_err(|_| Ended)?;
            }
        }
        drop(reserved);
        Ok(())
    }

    /// Waits until at most [`PARTS_QUEUED`] frames wait for the writer.
    async fn queue_drained(&self) -> Result<(), Ended> {
        while self.out.max_capacity() - self.out.capacity() > PARTS_QUEUED {
            if self.out.is_closed() {
                return Err(Ended);
            }
            tokio::time::sleep(QUEUE_POLL).await;
        }
        Ok(())
    }

    /// A push frame of this stream.
    pub(super) fn push_of(
        &self,
        entries: Vec<Entry>,
        gap: Option<StreamId>,
        expired: Option<u64>,
        backlog: Option<u64>,
    ) -> Push {
        Push {
            entries,
            backlog,
            stream: self.source.stream,
            gap,
            expired,
            part: None,
        }
    }
}
