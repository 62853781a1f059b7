//! Exactly-once append of device entries into the hub's in stream.
//!
//! One Lua script per batch compares the entries' device seqs with the device's
//! saved cursor, appends the new ones and moves the cursor, atomically: two
//! connections of the same device sending the same entries at once are
//! serialized by Redis, and whichever runs second sees them as duplicates.
//!
//! Batches of many connections share one script call: the [`Ingestor`] takes
//! whatever batches are queued when Redis is free and appends them together, so
//! a thousand devices sending a few entries each cost Redis a few calls, not a
//! thousand, and a device's pipelined batches ride together.
//!
//! The hub validates every batch before it reaches Redis (ids parsed, strictly
//! increasing, within limits), so the script trusts their order: duplicates can
//! only be a prefix of the batch, and when the first entry is already past the
//! cursor (the normal case) the script compares one id, not all of them.
//!
//! With several ingest partitions ([`IngestLayout`]) each partition has its
//! own in stream and cursor hash, in one hash slot, and its own group-commit
//! task: a device's batches always go to its partition's task, so they keep
//! their order, and the partitions' script calls run side by side (on a
//! Redis Cluster, on the masters that hold them). Before its first call a
//! hub checks the layout every hub records in `lula-hub:ingest-layout`
//! ([`Ingestor::check_layout`]): a hub with another partition count would look
//! for a device's cursor in another partition and take its entries again.

mod wide;

use crate::metrics::HubMetrics;
use std::sync::{Arc, LazyLock};

use lula_protocol::field_names::escaped;
use lula_protocol::keys::{HubKeys, IngestLayout};
use lula_protocol::limits::{MAX_BATCH_ENTRIES, MAX_ENTRY_VALUES};
use lula_protocol::message::{ErrorReply, status};
use lula_protocol::{ClientId, Entry, StreamId};
use lula_runtime::redis::{RedisConn, RedisTarget};
use lula_runtime::redis_tx::TxConn;
use redis::aio::ConnectionLike;
use redis::{RedisError, Script, Value};
use tokio::sync::{OnceCell, mpsc, oneshot};

/// KEYS[1] cursor hash, KEYS[2] in stream.
/// ARGV: per section: client, prev ('' = no gap check), number of entries, then
/// per entry: seq, number of values, values (k1, v1, ...); a set-aside marker
/// is seq, -1, reason (it is past the cursor like any entry, appends nothing).
/// Returns per section {'ok', cursor, added, duplicates, last hub id or '',
/// markers, last marker's seq or '', its reason or ''} or {'gap', cursor}.
/// Sections run in order, so two batches of one device in one
/// call see each other's cursor. One `XADD` argument table is reused for every
/// entry (`unpack` is bounded by the entry's length), so the script allocates
/// per section, not per entry.
const INGEST_BODY: &str = r#"
local function width(nv)
  if nv < 0 then return 3 end
  return 2 + nv
end
local n = #ARGV
local i = 1
local out = {}
local args = {'XADD', KEYS[2], '*', 'client', '', 'seq', ''}
while i <= n do
  local client, prev, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local cur = redis.call('HGET', KEYS[1], client) or '0-0'
  if prev ~= '' and id_gt(prev, cur) then
    for _ = 1, count do
      i = i + width(tonumber(ARGV[i + 1]))
    end
    out[#out + 1] = {'gap', cur}
  else
    local k, dups = 0, 0
    while k < count and not id_gt(ARGV[i], cur) do
      i = i + width(tonumber(ARGV[i + 1]))
      dups = dups + 1
      k = k + 1
    end
    local added, last, aside, aside_id, aside_why = 0, '', 0, '', ''
    args[5] = client
    while k < count do
      local seq = ARGV[i]
      local nv = tonumber(ARGV[i + 1])
      if nv < 0 then
        aside = aside + 1
        aside_id, aside_why = seq, ARGV[i + 2]
      else
        args[7] = seq
        for j = 1, nv do
          args[7 + j] = ARGV[i + 1 + j]
        end
        last = redis.call(unpack(args, 1, 7 + nv))
        added = added + 1
      end
      cur = seq
      i = i + width(nv)
      k = k + 1
    end
    if added + aside > 0 then
      redis.call('HSET', KEYS[1], client, cur)
    end
    out[#out + 1] = {'ok', cur, added, dups, last, aside, aside_id, aside_why}
  end
end
return out
"#;

static INGEST: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{}{}", lula_protocol::lua::ID_GT, INGEST_BODY)));

/// One device's batch within an ingest call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The device, from its session.
    pub client: ClientId,
    /// Where the batch says it follows on from; see [`Appended::Gap`].
    pub prev: Option<StreamId>,
    /// Entries, validated by [`validate`].
    pub entries: Vec<Entry>,
}

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
        /// Set-aside markers the cursor moved past, and the last one's seq
        /// and reason (see [`Entry`]).
        set_aside: Option<SetAside>,
    },
    /// `prev` is ahead of the saved cursor: an earlier batch is missing, nothing was written.
    Gap {
        /// The saved cursor, where the client must resume.
        cursor: StreamId,
    },
}

/// The set-aside markers of one batch that moved the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// How many.
    pub count: u64,
    /// The last one's device seq.
    pub last: StreamId,
    /// Its reason.
    pub reason: String,
}

/// Why a batch was not applied.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The hubs on this Redis were started with another ingest layout (503):
    /// this hub appends nothing until it is configured alike.
    #[error("ingest layout {configured:?} differs from the recorded {recorded:?}")]
    Layout {
        /// This hub's [`IngestLayout::description`].
        configured: String,
        /// What `lula-hub:ingest-layout` holds.
        recorded: String,
    },
}

impl IngestError {
    /// The protocol error reply for this failure.
    pub fn to_reply(&self) -> ErrorReply {
        match self {
            IngestError::Invalid(m) => ErrorReply::bad_request(m.clone()),
            IngestError::TooLarge(m) => ErrorReply::new(status::TOO_LARGE, m.clone()),
            IngestError::Redis(e) if e.code() == Some("OOM") => ErrorReply::storage_full(),
            IngestError::Redis(_) => {
                ErrorReply::new(status::UNAVAILABLE, "redis unavailable, retry later")
            }
            IngestError::Layout { .. } => {
                ErrorReply::new(status::UNAVAILABLE, "hub misconfigured, retry later")
            }
            IngestError::Reply(_) => ErrorReply::new(status::INTERNAL, "internal error"),
        }
    }
}

/// Longest reason a set-aside marker may carry.
pub const MAX_REASON_BYTES: usize = 1024;

/// Checks the rules a batch must meet before it may reach the script;
/// `max_values` is [`MAX_ENTRY_VALUES`] for a batch, more for an entry put
/// together from parts.
pub fn validate(entries: &[Entry], max_values: usize) -> Result<(), IngestError> {
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
        .find(|e| e.fields.len() > max_values || !e.fields.len().is_multiple_of(2))
    {
        return Err(IngestError::TooLarge(format!(
            "entry {} has too many or unpaired fields",
            e.id
        )));
    }
    if let Some(e) = entries
        .iter()
        .find(|e| e.set_aside.is_none() && e.fields.is_empty())
    {
        return Err(IngestError::Invalid(format!(
            "entry {} has no fields",
            e.id
        )));
    }
    if let Some(e) = entries.iter().find(|e| {
        e.set_aside
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REASON_BYTES)
    }) {
        return Err(IngestError::Invalid(format!(
            "set-aside marker {} has a reason longer than {MAX_REASON_BYTES} bytes",
            e.id
        )));
    }
    Ok(())
}

/// The device's saved cursor: the last seq the hub appended, `0-0` at first.
pub async fn cursor<C: ConnectionLike>(
    redis: &mut C,
    layout: &IngestLayout,
    client: &ClientId,
) -> Result<StreamId, IngestError> {
    let saved: Option<String> = redis::cmd("HGET")
        .arg(layout.cursors(layout.partition_of(client)))
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

/// Appends several sections (validated batches, possibly of different
/// devices, all of `partition`) in one script call, in order, each exactly
/// once. Returns one result per section.
pub async fn append_many<C: ConnectionLike>(
    redis: &mut C,
    layout: &IngestLayout,
    partition: u32,
    sections: Vec<Section>,
) -> Result<Vec<Appended>, IngestError> {
    debug_assert!(
        sections
            .iter()
            .all(|s| layout.partition_of(&s.client) == partition)
    );
    let expected = sections.len();
    let mut invocation = INGEST.key(layout.cursors(partition));
    invocation.key(layout.in_stream(partition));
    for section in sections {
        invocation.arg(section.client.as_str());
        match section.prev {
            Some(p) => invocation.arg(p.to_string()),
            None => invocation.arg(""),
        };
        invocation.arg(section.entries.len());
        for entry in section.entries {
            if let Some(reason) = entry.set_aside {
                invocation.arg(entry.id.to_string()).arg(-1).arg(reason);
                continue;
            }
            invocation.arg(entry.id.to_string()).arg(entry.fields.len());
            // Names that would shadow `client` / `seq` (or `broadcast`) are
            // escaped here, before the script, by the one rule of
            // `lula_protocol::field_names`: the script stores what it is given.
            for arg in escaped(&entry.fields) {
                invocation.arg(arg.as_ref());
            }
        }
    }
    let reply: Value = invocation.invoke_async(redis).await?;
    let Value::Array(items) = reply else {
        return Err(IngestError::Reply("not an array".into()));
    };
    if items.len() != expected {
        return Err(IngestError::Reply(format!(
            "{} results for {expected} sections",
            items.len()
        )));
    }
    items.into_iter().map(parse_reply).collect()
}

/// Batches queued for the [`Ingestor`] before connections wait.
const QUEUE: usize = 1024;

/// A validated batch waiting for the ingestor, and where its result goes.
struct Job {
    section: Section,
    reply: oneshot::Sender<Result<Appended, IngestError>>,
}

/// The result of a submitted batch, once its script call returns.
pub type Pending = oneshot::Receiver<Result<Appended, IngestError>>;

/// Group commit of every connection's batches, one task per partition. Each
/// takes the first batch in its queue plus whatever else is queued (up to
/// [`MAX_BATCH_ENTRIES`] entries, since a script blocks Redis while it runs),
/// appends them in one call in queue order, answers each, and repeats. While
/// a call runs, the next group gathers. Batches of one connection stay in the
/// order it submitted them (one device, one partition, one queue).
#[derive(Clone)]
pub struct Ingestor {
    layout: IngestLayout,
    partitions: Vec<mpsc::Sender<Job>>,
    guard: Arc<LayoutGuard>,
}

/// Checks once, before the first append, that this hub's layout is the one
/// recorded on the Redis (recording it if none is).
struct LayoutGuard {
    redis: RedisConn,
    key: String,
    description: String,
    confirmed: OnceCell<()>,
}

impl LayoutGuard {
    async fn check(&self) -> Result<(), IngestError> {
        self.confirmed
            .get_or_try_init(|| async {
                let mut redis = self.redis.clone();
                let () = redis::cmd("SET")
                    .arg(&self.key)
                    .arg(&self.description)
                    .arg("NX")
                    .query_async(&mut redis)
                    .await?;
                let recorded: Option<String> = redis::cmd("GET")
                    .arg(&self.key)
                    .query_async(&mut redis)
                    .await?;
                match recorded {
                    Some(r) if r == self.description => Ok(()),
                    recorded => Err(IngestError::Layout {
                        configured: self.description.clone(),
                        recorded: recorded.unwrap_or_default(),
                    }),
                }
            })
            .await
            .map(|_| ())
    }
}

impl Ingestor {
    /// Starts one ingest task per partition of `layout`. They end when every
    /// clone of the ingestor is gone. `target` is where `redis` goes, for the
    /// connections of wide appends ([`wide`]).
    pub fn start(
        redis: RedisConn,
        target: RedisTarget,
        keys: &HubKeys,
        layout: IngestLayout,
        metrics: Arc<HubMetrics>,
    ) -> Self {
        let guard = Arc::new(LayoutGuard {
            redis: redis.clone(),
            key: keys.ingest_layout(),
            description: layout.description(),
            confirmed: OnceCell::new(),
        });
        let partitions = (0..layout.partitions())
            .map(|p| {
                let (jobs, rx) = mpsc::channel(QUEUE);
                tokio::spawn(ingest_loop(
                    (redis.clone(), TxConn::new(target.clone())),
                    layout.clone(),
                    p,
                    guard.clone(),
                    rx,
                    metrics.clone(),
                ));
                jobs
            })
            .collect();
        Ingestor {
            layout,
            partitions,
            guard,
        }
    }

    /// Where entries are appended.
    pub fn layout(&self) -> &IngestLayout {
        &self.layout
    }

    /// Whether this hub's layout is the one recorded on the Redis (checked
    /// once; a Redis failure is tried again on the next call).
    pub async fn check_layout(&self) -> Result<(), IngestError> {
        self.guard.check().await
    }

    /// Queues a batch ([`validate`]d here) and returns where its result will
    /// arrive. Waits while the queue is full.
    pub async fn submit(
        &self,
        client: &ClientId,
        prev: Option<StreamId>,
        entries: Vec<Entry>,
    ) -> Result<Pending, IngestError> {
        self.submit_checked(client, prev, entries, MAX_ENTRY_VALUES)
            .await
    }

    /// Queues one entry put together from parts, of up to `max_values` keys
    /// plus values (appended by the script, or when wider by [`wide`]).
    pub async fn submit_wide(
        &self,
        client: &ClientId,
        prev: Option<StreamId>,
        entry: Entry,
        max_values: usize,
    ) -> Result<Pending, IngestError> {
        self.submit_checked(client, prev, vec![entry], max_values)
            .await
    }

    async fn submit_checked(
        &self,
        client: &ClientId,
        prev: Option<StreamId>,
        entries: Vec<Entry>,
        max_values: usize,
    ) -> Result<Pending, IngestError> {
        validate(&entries, max_values)?;
        let (reply, pending) = oneshot::channel();
        let job = Job {
            section: Section {
                client: client.clone(),
                prev,
                entries,
            },
            reply,
        };
        let partition = self.layout.partition_of(client) as usize;
        self.partitions[partition]
            .send(job)
            .await
            .map_err(|_| IngestError::Reply("ingest task stopped".into()))?;
        Ok(pending)
    }
}

async fn ingest_loop(
    (mut redis, mut wide): (RedisConn, TxConn),
    layout: IngestLayout,
    partition: u32,
    guard: Arc<LayoutGuard>,
    mut rx: mpsc::Receiver<Job>,
    metrics: Arc<HubMetrics>,
) {
    let mut carry: Option<Job> = None;
    while let Some(group) = next_group(&mut rx, &mut carry).await {
        let (mut sections, replies): (Vec<Section>, Vec<_>) =
            group.into_iter().map(|j| (j.section, j.reply)).unzip();
        let last_ms: Vec<Option<u64>> = sections
            .iter()
            .map(|s| {
                metrics.batch_entries.observe(s.entries.len() as f64);
                s.entries.last().map(|e| e.id.ms)
            })
            .collect();
        let batches = sections.len();
        let started = std::time::Instant::now();
        let appended = match guard.check().await {
            Ok(()) if sections.len() == 1 && wide::is_wide(&sections[0]) => {
                let section = sections.remove(0);
                let appended = wide::append(&mut wide, &layout, partition, section).await;
                appended.map(|a| vec![a])
            }
            Ok(()) => append_many(&mut redis, &layout, partition, sections).await,
            Err(e) => {
                if matches!(e, IngestError::Layout { .. }) {
                    tracing::error!(error = %e, "refusing to ingest: every hub on this Redis must run with the same --ingest-partitions and --redis-cluster");
                }
                Err(e)
            }
        };
        metrics.ingest_call(batches, started.elapsed(), appended.is_ok());
        match appended {
            Ok(results) => {
                count_results(&metrics, &results, &last_ms);
                for (result, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(Ok(result));
                }
            }
            // The call may or may not have run; every batch in it is answered
            // with the error, and a retry is answered as duplicates if it ran.
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The next group to append in one call: the first queued batch plus
/// whatever else is queued, up to [`MAX_BATCH_ENTRIES`] entries. An entry
/// too wide for the script ([`wide::is_wide`]) goes in a group of its own,
/// in its place in the queue. `None` once the ingestor is gone.
async fn next_group(rx: &mut mpsc::Receiver<Job>, carry: &mut Option<Job>) -> Option<Vec<Job>> {
    let first = match carry.take() {
        Some(job) => job,
        None => rx.recv().await?,
    };
    if wide::is_wide(&first.section) {
        return Some(vec![first]);
    }
    let mut total = first.section.entries.len();
    let mut group = vec![first];
    while total < MAX_BATCH_ENTRIES {
        match rx.try_recv() {
            Ok(job)
                if !wide::is_wide(&job.section)
                    && total + job.section.entries.len() <= MAX_BATCH_ENTRIES =>
            {
                total += job.section.entries.len();
                group.push(job);
            }
            Ok(job) => {
                *carry = Some(job);
                break;
            }
            Err(_) => break,
        }
    }
    Some(group)
}

/// Counts what one script call appended; `last_ms` is each batch's last
/// device seq time, for the upstream lag.
fn count_results(metrics: &HubMetrics, results: &[Appended], last_ms: &[Option<u64>]) {
    for (result, last_ms) in results.iter().zip(last_ms) {
        match result {
            Appended::Applied {
                added,
                duplicates,
                set_aside,
                ..
            } => {
                if let Some(aside) = set_aside {
                    metrics
                        .set_aside
                        .get_or_create(&[("direction", "up")])
                        .inc_by(aside.count);
                }
                metrics.entries_in.inc_by(*added);
                metrics.duplicates.inc_by(*duplicates);
                if *added > 0
                    && let Some(ms) = last_ms
                {
                    HubMetrics::lag(&metrics.upstream_lag, *ms);
                }
            }
            Appended::Gap { .. } => {
                metrics.gaps.inc();
            }
        }
    }
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
            let count = items.get(5).and_then(int).unwrap_or(0);
            let set_aside = match items.get(6).and_then(text).filter(|s| !s.is_empty()) {
                Some(id) if count > 0 => Some(SetAside {
                    count,
                    last: id.parse().map_err(|_| bad("marker seq"))?,
                    reason: items.get(7).and_then(text).unwrap_or_default(),
                }),
                _ => None,
            };
            Ok(Appended::Applied {
                cursor,
                added,
                duplicates,
                last,
                set_aside,
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
        assert!(validate(&[e(1), e(2), e(3)], MAX_ENTRY_VALUES).is_ok());
        assert!(matches!(
            validate(&[e(1), e(1)], MAX_ENTRY_VALUES),
            Err(IngestError::Invalid(_))
        ));
        assert!(matches!(
            validate(&[e(2), e(1)], MAX_ENTRY_VALUES),
            Err(IngestError::Invalid(_))
        ));
        let big: Vec<Entry> = (0..MAX_BATCH_ENTRIES as u64 + 1).map(e).collect();
        assert!(matches!(
            validate(&big, MAX_ENTRY_VALUES),
            Err(IngestError::TooLarge(_))
        ));
    }
}
