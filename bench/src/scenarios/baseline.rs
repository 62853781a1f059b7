//! Scenario 0, the baseline: what Redis itself takes. Pipelined `XADD` of the
//! same ~100-byte entries the other scenarios move, on several connections,
//! into a scratch key of the hub's Redis (with the hub running, so whatever
//! the hub configures there, such as keyspace notifications, counts here too).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;

use super::{Ctx, Outcome, check_row, cpu_rows};
use crate::cloud::Cloud;
use crate::config::Scenario;
use crate::load;
use crate::procstat::CpuMeter;
use crate::report::{Row, per_second, thousands};

const SCENARIO: Scenario = Scenario::Baseline;
const KEY: &str = "lula-bench:baseline:x";

/// Runs the baseline; returns its entries per second and its outcome.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<(f64, Outcome)> {
    let s = ctx.sizes;
    let cloud = Cloud::start(ctx.hub_exe).await?;
    let payload = Arc::new(load::payload(s.payload_bytes));
    let mut conns = Vec::new();
    for _ in 0..s.baseline_connections.max(1) {
        conns.push(load::connect(&cloud.redis_url()).await?);
    }
    ctx.progress(
        SCENARIO,
        format_args!(
            "{} entries, {} connections x {} deep",
            thousands(s.baseline_entries),
            conns.len(),
            s.baseline_depth
        ),
    );
    let events_before = keyspace_events(&mut cloud.conn()).await?;
    let next = Arc::new(AtomicU64::new(0));
    let (total, depth) = (s.baseline_entries, s.baseline_depth.max(1) as u64);
    let meter = CpuMeter::start(vec![
        ("hub redis".into(), vec![cloud.redis_pid()]),
        ("lula-bench (XADD load)".into(), vec![std::process::id()]),
    ]);
    let start = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (next, payload) = (next.clone(), payload.clone());
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(depth, Ordering::Relaxed);
                    if from >= total {
                        return anyhow::Ok(());
                    }
                    let mut pipe = redis::pipe();
                    for i in from..total.min(from + depth) {
                        pipe.cmd("XADD")
                            .arg(KEY)
                            .arg("*")
                            .arg("n")
                            .arg(i)
                            .arg("payload")
                            .arg(payload.as_str())
                            .ignore();
                    }
                    pipe.query_async::<()>(&mut conn)
                        .await
                        .context("baseline XADD")?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.context("baseline worker")??;
    }
    let elapsed = start.elapsed();
    let rate = total as f64 / elapsed.as_secs_f64();
    let mut rows = vec![
        Row::info(
            SCENARIO,
            format!(
                "pipelined XADD ({} conns x {} deep)",
                s.baseline_connections, s.baseline_depth
            ),
            per_second(rate, "entries"),
        )
        .ratio(Some(1.0)),
    ];
    rows.extend(cpu_rows(SCENARIO, "the baseline", &meter));
    // What the hub configured on its Redis costs the baseline too; say what it was.
    let events_after = keyspace_events(&mut cloud.conn()).await?;
    rows.push(Row::info(
        SCENARIO,
        "hub redis notify-keyspace-events",
        if events_before == events_after {
            events_after
        } else {
            format!("{events_before} -> {events_after} (changed while measuring)")
        },
    ));

    let mut conn = cloud.conn();
    let len = load::xlen(&mut conn, KEY).await?;
    let check = if len == total {
        Ok(format!("{} entries in the scratch key", thousands(len)))
    } else {
        Err(format!("{len} entries in the scratch key, {total} written"))
    };
    redis::cmd("DEL")
        .arg(KEY)
        .query_async::<()>(&mut conn)
        .await
        .context("DEL scratch key")?;
    rows.push(check_row(SCENARIO, "all entries written", &check));
    Ok((
        rate,
        Outcome {
            rows,
            check,
            notes: cloud.hub_log_note(SCENARIO.name()).into_iter().collect(),
        },
    ))
}

/// `CONFIG GET notify-keyspace-events`, `(off)` when empty.
async fn keyspace_events(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<String> {
    let (_, value): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await
        .context("CONFIG GET notify-keyspace-events")?;
    Ok(if value.is_empty() {
        "(off)".into()
    } else {
        value
    })
}
