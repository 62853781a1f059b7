//! `xadd`, `xadds` and `id`: batches go to the [`Ingestor`] as they arrive and
//! are answered, in order, when their results come.

use std::collections::VecDeque;

use lula_protocol::limits::{MAX_BATCH_ENTRIES, MAX_ENTRY_VALUES};
use lula_protocol::message::{
    ErrorReply, HubFrame, IdReply, XaddReply, XaddsReply, XaddsRequest, kind,
};
use lula_protocol::{Entry, StreamId};
use serde_json::Value;

use tokio::sync::oneshot;

use super::{Closed, Connection};
use crate::ingest::{self, Appended, IngestError, Ingestor};

/// What a batch was sent as, with what its replies need to name.
#[derive(Debug, Clone, Copy)]
pub(super) enum Batch {
    /// One entry with this seq.
    Xadd { seq: StreamId },
    /// A batch following `prev` (when the device named it), of `count`
    /// entries, after which the device said `backlog` entries wait.
    Xadds {
        prev: Option<StreamId>,
        count: u64,
        backlog: Option<u64>,
    },
}

impl Batch {
    fn kind(self) -> &'static str {
        match self {
            Batch::Xadd { .. } => kind::XADD,
            Batch::Xadds { .. } => kind::XADDS,
        }
    }

    /// The reply to this batch's result.
    fn reply(self, appended: Appended) -> HubFrame<'static> {
        match (self, appended) {
            (Batch::Xadd { .. }, Appended::Applied { last: Some(id), .. }) => {
                HubFrame::Xadd(XaddReply { id })
            }
            (Batch::Xadd { seq }, Appended::Applied { cursor, .. } | Appended::Gap { cursor }) => {
                let message = format!("seq {seq} is at or below the saved {cursor}");
                HubFrame::error(kind::XADD, ErrorReply::conflict(message, cursor))
            }
            (
                Batch::Xadds { .. },
                Appended::Applied {
                    cursor,
                    added,
                    duplicates,
                    set_aside,
                    ..
                },
            ) => HubFrame::Xadds(XaddsReply {
                id: cursor,
                added,
                duplicates,
                set_aside: set_aside.map_or(0, |a| a.count),
            }),
            (Batch::Xadds { prev, .. }, Appended::Gap { cursor }) => {
                let prev = prev.unwrap_or_default();
                let message = format!("gap: batch follows {prev} but the hub holds up to {cursor}");
                HubFrame::error(kind::XADDS, ErrorReply::conflict(message, cursor))
            }
        }
    }
}

/// A batch submitted to the ingestor, answered when its result comes.
pub(super) struct PendingAppend {
    batch: Batch,
    /// Request id, echoed.
    id: Option<Value>,
    result: ingest::Pending,
    /// An entry put together from parts holds its share of the assembly
    /// budget until it is appended.
    reserved: Option<crate::parts_budget::Reservation>,
}

/// The result of the oldest pending batch; never resolves when none is pending.
pub(super) async fn next_done(
    pending: &mut VecDeque<PendingAppend>,
) -> Result<Appended, IngestError> {
    match pending.front_mut() {
        Some(p) => (&mut p.result)
            .await
            .unwrap_or_else(|_| Err(IngestError::Reply("ingest task stopped".into()))),
        None => std::future::pending().await,
    }
}

impl Connection {
    /// `xadd`: one entry.
    pub(super) async fn xadd(&mut self, id: Option<&Value>, entry: Entry) -> Result<(), Closed> {
        let batch = Batch::Xadd { seq: entry.id };
        if entry.set_aside.is_some() {
            let reply = ErrorReply::bad_request("set-aside markers go in xadds batches")
                .about_entry(entry.id);
            return self.reply(id, HubFrame::error(kind::XADD, reply)).await;
        }
        self.submit(batch, id, None, vec![entry]).await
    }

    /// `xadds`: a batch, refused when `prev` is ahead of the saved cursor.
    pub(super) async fn xadds(
        &mut self,
        id: Option<&Value>,
        mut request: XaddsRequest,
    ) -> Result<(), Closed> {
        if let Some(part) = request.part.take() {
            return self.part(id, request, part).await;
        }
        let batch = Batch::Xadds {
            prev: request.prev,
            count: request.entries.len() as u64,
            backlog: request.backlog,
        };
        self.submit(batch, id, request.prev, request.entries).await
    }

    /// Queues the answer to a request that needs no append (a part before
    /// an entry's last), in order with the batches before it.
    pub(super) fn answer_at_once(
        &mut self,
        batch: Batch,
        id: Option<&Value>,
        appended: Appended,
    ) -> Result<(), Closed> {
        let (tx, result) = oneshot::channel();
        let _ = tx.send(Ok(appended));
        self.pending.push_back(PendingAppend {
            batch,
            id: id.cloned(),
            result,
            reserved: None,
        });
        Ok(())
    }

    /// Submits an entry put together from parts; `reserved` is released
    /// when its append is answered.
    pub(super) async fn submit_assembled(
        &mut self,
        batch: Batch,
        id: Option<&Value>,
        prev: Option<StreamId>,
        entry: Entry,
        reserved: crate::parts_budget::Reservation,
    ) -> Result<(), Closed> {
        let max_values = self.state.config.part_limits.max_values;
        let submitted = self
            .state
            .ingestor
            .submit_wide(&self.client, prev, entry, max_values)
            .await;
        self.queue(batch, id, submitted, Some(reserved)).await
    }

    /// `id`: the cursor, after the batches sent before this request.
    pub(super) async fn id(&mut self, id: Option<&Value>) -> Result<(), Closed> {
        self.drain().await?;
        let layout = self.state.ingestor.layout();
        let frame = match ingest::cursor(&mut self.redis, layout, &self.client).await {
            Ok(cursor) => HubFrame::Id(IdReply {
                id: cursor,
                max_frame_bytes: Some(self.state.config.max_frame_bytes),
                max_batch_entries: Some(MAX_BATCH_ENTRIES),
                max_entry_values: Some(MAX_ENTRY_VALUES),
                set_aside: true,
                parts: Some(self.state.config.part_limits),
            }),
            Err(e) => HubFrame::error(kind::ID, self.failure(e)),
        };
        self.send(id, frame).await
    }

    /// Submits a batch to the ingestor; its reply is sent when its result comes.
    async fn submit(
        &mut self,
        batch: Batch,
        id: Option<&Value>,
        prev: Option<StreamId>,
        entries: Vec<Entry>,
    ) -> Result<(), Closed> {
        let ingestor: &Ingestor = &self.state.ingestor;
        let submitted = ingestor.submit(&self.client, prev, entries).await;
        self.queue(batch, id, submitted, None).await
    }

    /// Queues a submitted batch for its answer, or answers its refusal.
    async fn queue(
        &mut self,
        batch: Batch,
        id: Option<&Value>,
        submitted: Result<ingest::Pending, IngestError>,
        reserved: Option<crate::parts_budget::Reservation>,
    ) -> Result<(), Closed> {
        match submitted {
            Ok(result) => {
                self.pending.push_back(PendingAppend {
                    batch,
                    id: id.cloned(),
                    result,
                    reserved,
                });
                Ok(())
            }
            Err(e) => {
                self.note_backlog(batch, false);
                let reply = self.failure(e);
                self.reply(id, HubFrame::error(batch.kind(), reply)).await
            }
        }
    }

    /// Waits for and answers every pending batch, oldest first.
    pub(super) async fn drain(&mut self) -> Result<(), Closed> {
        while !self.pending.is_empty() {
            let result = next_done(&mut self.pending).await;
            if let Some(p) = self.pending.pop_front() {
                self.answer(p, result).await?;
            }
        }
        Ok(())
    }

    /// Sends the reply to a batch whose result came.
    pub(super) async fn answer(
        &mut self,
        p: PendingAppend,
        result: Result<Appended, IngestError>,
    ) -> Result<(), Closed> {
        let applied = matches!(result, Ok(Appended::Applied { .. }));
        self.note_backlog(p.batch, applied);
        if p.reserved.is_some()
            && let Ok(Appended::Applied { added, .. }) = &result
        {
            self.state.metrics.assembled.inc_by(*added);
        }
        let frame = match result {
            Ok(appended) => {
                if let Appended::Applied {
                    set_aside: Some(aside),
                    ..
                } = &appended
                {
                    tracing::warn!(
                        entries = aside.count,
                        last = %aside.last,
                        reason = %aside.reason,
                        "the device set entries aside (past a limit; in its lula-client:dead:x)"
                    );
                    self.fleet.set_aside(aside.count, aside.last, &aside.reason);
                }
                p.batch.reply(appended)
            }
            Err(e) => HubFrame::error(p.batch.kind(), self.failure(e)),
        };
        self.send(p.id.as_ref(), frame).await
    }

    /// Tells the fleet recorder the upstream backlog the device reported
    /// with `batch`, if it did, and whether the batch was applied.
    fn note_backlog(&mut self, batch: Batch, applied: bool) {
        if let Batch::Xadds {
            count,
            backlog: Some(backlog),
            ..
        } = batch
        {
            self.fleet.upstream_backlog(backlog, count, applied);
        }
    }

    /// The error reply to a failed request, noted in the fleet view and logged.
    fn failure(&mut self, e: IngestError) -> ErrorReply {
        self.fleet.error(e.to_string());
        match &e {
            IngestError::Redis(_) | IngestError::Reply(_) => {
                tracing::warn!(error = %e, "request failed")
            }
            _ => tracing::debug!(error = %e, "request refused"),
        }
        e.to_reply()
    }
}
