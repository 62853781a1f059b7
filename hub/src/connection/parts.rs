//! `xadds` with a `part`: an entry too wide or too large for a batch, put
//! back together here ([`lula_protocol::parts`]) and appended, once whole,
//! like any other batch.
//!
//! Parts write nothing: only the whole entry goes to the ingestor, in one
//! atomic step with the device's cursor. A connection that ends in the middle
//! of an entry drops what it had, and the device sends the entry again from
//! its first part. An entry reserves its declared size in the hub-wide
//! assembly budget at its first part and keeps it until its append is done;
//! when the budget is spent the part is refused with 503, and the device
//! retries after a backoff without reconnecting.

use lula_protocol::StreamId;
use lula_protocol::message::{ErrorReply, HubFrame, XaddsRequest, kind, status};
use lula_protocol::parts::{Assembly, EntryPart, PartError};
use serde_json::Value;

use super::batches::Batch;
use super::{Closed, Connection};
use crate::ingest::Appended;
use crate::parts_budget::{PartsBudget, Reservation};

/// The entry this connection is putting together.
pub(super) struct Assembling {
    assembly: Assembly,
    /// The entry before it, as the device named it.
    prev: Option<StreamId>,
    /// Its share of the hub's budget for entries in parts.
    permit: Reservation,
}

impl Connection {
    /// One part of an entry: kept until the last, which appends the entry.
    pub(super) async fn part(
        &mut self,
        id: Option<&Value>,
        request: XaddsRequest,
        part: EntryPart,
    ) -> Result<(), Closed> {
        let entry_id = part.id;
        if !request.entries.is_empty() {
            let reply = ErrorReply::bad_request("an xadds with a part carries no entries");
            return self.reply(id, HubFrame::error(kind::XADDS, reply)).await;
        }
        let added = if part.index == 0 {
            self.start_assembly(request.prev, part)
        } else {
            match self.assembly.as_mut() {
                Some(a) => a.assembly.push(part).map_err(refusal),
                None => Err(ErrorReply::bad_request(format!(
                    "part {} of entry {entry_id} without its part 0",
                    part.index
                ))),
            }
        };
        if let Err(reply) = added {
            self.assembly = None;
            self.fleet.error(reply.message.clone());
            // Naming the entry makes the device set it aside: only for an
            // entry past the limits, never for a busy hub.
            let reply = if reply.status == status::TOO_LARGE {
                reply.about_entry(entry_id)
            } else {
                reply
            };
            return self.reply(id, HubFrame::error(kind::XADDS, reply)).await;
        }
        let Some(Assembling {
            assembly,
            prev,
            permit,
        }) = self.assembly.take()
        else {
            let reply = ErrorReply::bad_request("no entry in parts is open");
            return self.reply(id, HubFrame::error(kind::XADDS, reply)).await;
        };
        match assembly.finish() {
            Ok(entry) => {
                let batch = Batch::Xadds {
                    prev,
                    count: 1,
                    backlog: request.backlog,
                };
                self.submit_assembled(batch, id, prev, entry, permit).await
            }
            Err(assembly) => {
                self.assembly = Some(Assembling {
                    assembly,
                    prev,
                    permit,
                });
                // Answered in order with the batches before it: the cursor
                // it names is the one the device gave, checked when the
                // entry is appended.
                let batch = Batch::Xadds {
                    prev,
                    count: 0,
                    backlog: None,
                };
                self.answer_at_once(batch, id, part_received(prev))
            }
        }
    }

    /// Part 0: checks the declared size and reserves it.
    fn start_assembly(
        &mut self,
        prev: Option<StreamId>,
        part: EntryPart,
    ) -> Result<(), ErrorReply> {
        if let Some(open) = &self.assembly {
            return Err(ErrorReply::bad_request(format!(
                "entry {} starts while entry {} is not complete",
                part.id,
                open.assembly.id()
            )));
        }
        if prev.is_none() {
            return Err(ErrorReply::bad_request("a part needs prev"));
        }
        let limits = self.state.config.part_limits;
        if part.bytes <= limits.max_bytes && part.values <= limits.max_values {
            let cost = PartsBudget::cost(part.bytes, part.values);
            let Some(permit) = self.state.assembly.try_reserve(cost) else {
                self.state.metrics.assembly_busy.inc();
                return Err(ErrorReply::new(
                    status::UNAVAILABLE,
                    "the hub is putting other large entries together; retry later",
                ));
            };
            let assembly = Assembly::start(part, limits).map_err(refusal)?;
            self.assembly = Some(Assembling {
                assembly,
                prev,
                permit,
            });
            return Ok(());
        }
        // Past the limits: refused before anything is kept.
        Assembly::start(part, limits).map(|_| ()).map_err(refusal)
    }
}

/// The error reply to a part the hub will not take.
fn refusal(e: PartError) -> ErrorReply {
    match e {
        PartError::Invalid(m) => ErrorReply::bad_request(m),
        PartError::TooLarge(m) => ErrorReply::new(status::TOO_LARGE, m),
    }
}

/// What a part before the last is answered with: nothing appended, the
/// cursor where the device said the entry follows.
fn part_received(prev: Option<StreamId>) -> Appended {
    Appended::Applied {
        cursor: prev.unwrap_or_default(),
        added: 0,
        duplicates: 0,
        last: None,
        set_aside: None,
    }
}
