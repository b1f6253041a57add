//! Database extracts: a dataset's partitions rebuilt from a Postgres query and swapped in with one Delta
//! commit, like a backfill (the seed's batch ingestion job).
//!
//! One consistent snapshot: a leader connection opens a `REPEATABLE READ` transaction and exports its
//! snapshot; up to `max_parallelism` worker connections each read one range of `split_column` (an integer
//! or a time column) inside
//! that same snapshot (`SET TRANSACTION SNAPSHOT`), so the parallel reads see the database at one
//! instant, whatever commits meanwhile. The range predicates wrap the configured query and Postgres
//! pushes them down. Rows stream through a bounded channel into the dataset's contract (the same
//! coercion rules as streaming) and Arrow buffers written out in chunks of `flush.max_bytes`.
//!
//! Modes: `range` replaces the partitions of a time range (widened to whole partitions, so every row of
//! a replaced partition is read again); `incremental` starts at the high watermark stored in the table
//! minus `lookback` and replaces every partition from there on; `full` replaces the whole table. The
//! high watermark (the snapshot's time) is a `txn` of the same commit (app id `bronze-extract:<dataset>`),
//! so it only advances with the data.

mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use deltalake::kernel::{Add, Transaction};
use serde::Serialize;
use serde_json::Value;
use tracing::info;

use super::partition_swap::{
    PartitionValues, commit_swap, files_to_replace, label, partitions_between, predicate,
    request_done, sorted, write_chunk,
};
use crate::config::{Config, DatasetConfig};
use crate::decode::{Change, Fields, Op};
use crate::pipeline::{self, PipelineError};
use crate::sink::TableSink;
use crate::transform::{Mapper, MessageContext, Row, span_of_partitions};
use crate::txn;
use snapshot::Snapshot;

/// What part of the source an extract reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractMode {
    /// `[from_us, to_us)` of the time column, widened to whole partitions.
    Range { from_us: i64, to_us: i64 },
    /// From the stored high watermark minus `lookback` on (the whole source the first time).
    Incremental,
    /// Everything: the table is replaced as a whole.
    Full,
}

#[derive(Debug, Clone)]
pub struct ExtractRequest {
    pub request_id: String,
    pub dataset: String,
    pub mode: ExtractMode,
    pub force: bool,
    pub dry_run: bool,
    pub requested_by: Option<String>,
}

/// What an extract did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ExtractOutcome {
    pub request_id: String,
    pub dataset: String,
    /// `succeeded`, `already_done` or `dry_run`.
    pub status: String,
    pub mode: String,
    /// Replaced partitions (`range`), or a description of what was replaced.
    pub replaced: Vec<String>,
    /// Parallel ranges read.
    pub ranges: usize,
    pub rows_read: u64,
    pub rows_written: usize,
    pub duplicates_dropped: usize,
    /// Rows the contract refused, by reason (not written).
    pub still_failing: BTreeMap<String, u64>,
    pub files_removed: usize,
    pub files_added: usize,
    /// The stored high watermark before and after, µs since the epoch.
    pub watermark_before_us: Option<i64>,
    pub watermark_after_us: Option<i64>,
    pub snapshot: String,
    pub table_version: Option<u64>,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
enum ExtractError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl From<ExtractError> for PipelineError {
    fn from(e: ExtractError) -> Self {
        PipelineError::Stopped(e.to_string())
    }
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// What an extract reads (`[from_us, to_us)`, `to` open when `None`) and which table partitions it
/// replaces (`targets`; `None`: every partition from `from_us` on, or the whole table when `full`).
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    mode: &'static str,
    from_us: i64,
    to_us: Option<i64>,
    targets: Option<BTreeSet<PartitionValues>>,
    /// Without targets: the partition of `from_us`, the first one replaced.
    first: Option<PartitionValues>,
}

impl Plan {
    /// The plan of `mode`, given the stored high `watermark`: an incremental extract starts `lookback`
    /// before it, at the start of that partition; without a watermark it reads everything.
    fn new(
        mode: ExtractMode,
        watermark: Option<i64>,
        by: crate::config::PartitionBy,
        lookback: std::time::Duration,
    ) -> Plan {
        let lookback_us = i64::try_from(lookback.as_micros()).unwrap_or(i64::MAX / 4);
        match (mode, watermark) {
            (ExtractMode::Range { from_us, to_us }, _) => {
                let targets = partitions_between(by, from_us, to_us);
                let (from, to) = span_of_partitions(&targets).unwrap_or((from_us, to_us));
                Plan {
                    mode: "range",
                    from_us: from,
                    to_us: Some(to),
                    targets: Some(targets),
                    first: None,
                }
            }
            (ExtractMode::Incremental, Some(w)) => {
                let start = partitions_between(by, w - lookback_us, w - lookback_us + 1);
                let from_us = span_of_partitions(&start).map_or(w - lookback_us, |(f, _)| f);
                Plan {
                    mode: "incremental",
                    from_us,
                    to_us: None,
                    targets: None,
                    first: partitions_between(by, from_us, from_us + 1).pop_first(),
                }
            }
            (ExtractMode::Incremental, None) | (ExtractMode::Full, _) => Plan {
                mode: "full",
                from_us: i64::MIN / 2,
                to_us: None,
                targets: None,
                first: None,
            },
        }
    }

    fn is_full(&self) -> bool {
        self.mode == "full"
    }

    /// What the outcome reports as replaced.
    fn replaced(&self) -> Vec<String> {
        match &self.targets {
            Some(t) => t.iter().map(label).collect(),
            None if self.is_full() => vec!["the whole table".into()],
            None => vec![format!("every partition from {}", rfc3339(self.from_us))],
        }
    }

    /// Whether the table partition `values` is replaced.
    fn replaces(&self, values: &PartitionValues) -> bool {
        match &self.targets {
            Some(t) => t.contains(values),
            None if self.is_full() => true,
            None => self.first.as_ref().is_none_or(|first| values >= first),
        }
    }

    /// The replace predicate recorded in the commit.
    fn predicate(&self) -> String {
        match &self.targets {
            Some(t) => predicate(t),
            None if self.is_full() => "true".to_string(),
            None => format!("partitions from {}", rfc3339(self.from_us)),
        }
    }

    /// `$1` and `$2` of the wrapped query.
    fn bounds_text(&self) -> (String, String) {
        let from = if self.from_us <= i64::MIN / 4 {
            "-infinity".to_string()
        } else {
            rfc3339(self.from_us)
        };
        let to = self.to_us.map(rfc3339).unwrap_or_else(|| "infinity".into());
        (from, to)
    }
}

/// Run an extract to its commit (or report, for a dry run).
pub async fn extract(
    cfg: &Config,
    req: &ExtractRequest,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ExtractOutcome, PipelineError> {
    let started = Instant::now();
    let d = super::dataset(cfg, &req.dataset)?;
    let x = d.extract.as_ref().ok_or_else(|| {
        PipelineError::Stopped(format!(
            "dataset `{}` has no [datasets.extract] source",
            d.name
        ))
    })?;
    let (mut mapper, mut sink) = pipeline::open_dataset(cfg, d).await?;
    let mut out = ExtractOutcome {
        request_id: req.request_id.clone(),
        dataset: d.name.clone(),
        ..ExtractOutcome::default()
    };
    let done = request_done(&mut sink, &req.request_id).await?;
    if done.is_some() && !req.force {
        out.status = "already_done".into();
        out.table_version = sink.version();
        return Ok(out);
    }
    let watermark = sink
        .committed_offset(&txn::extract_watermark(&d.name))
        .await?;
    out.watermark_before_us = watermark;
    let plan = Plan::new(req.mode, watermark, d.partitioning.by, x.lookback);
    out.mode = plan.mode.to_string();
    out.replaced = plan.replaced();
    let snapshot = Snapshot::take(x, &plan).await?;
    out.snapshot = snapshot.id.clone();
    out.ranges = snapshot.ranges.len();
    info!(dataset = %d.name, mode = plan.mode, snapshot = %snapshot.id, rows = snapshot.rows,
        ranges = snapshot.ranges.len(), "extract snapshot taken");
    let adds = read_rows(d, &mut mapper, &sink, &plan, &snapshot, &mut out, progress).await?;
    let _ = snapshot.leader.batch_execute("COMMIT").await;
    commit(d, &mut sink, req, &plan, &snapshot, adds, done, &mut out).await?;
    out.duration_ms = started.elapsed().as_millis() as u64;
    Ok(out)
}

/// Read the snapshot's rows through the contract into Parquet files of the table (not committed):
/// the new files.
async fn read_rows(
    d: &DatasetConfig,
    mapper: &mut Mapper,
    sink: &TableSink,
    plan: &Plan,
    snapshot: &Snapshot,
    out: &mut ExtractOutcome,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<Add>, PipelineError> {
    let (mut rx, workers) = snapshot.spawn_readers(plan);
    let mut buffer = pipeline::buffer_for(mapper);
    let topic = format!("postgres:{}", d.name);
    let mut adds = Vec::new();
    let mut counts = (0usize, 0usize);
    let mut failed: Option<ExtractError> = None;
    let mut last_report = Instant::now();
    let total = snapshot.rows.max(0) as u64;
    while let Some(item) = rx.recv().await {
        let (range, text) = match item {
            Ok(v) => v,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        let offset = out.rows_read as i64;
        out.rows_read += 1;
        match map_row(mapper, plan, snapshot, &text, offset) {
            Ok(row) => {
                pipeline::sync_columns(mapper, &mut buffer);
                buffer.push(&topic, range as i32, row, std::time::Instant::now());
            }
            Err(reason) => *out.still_failing.entry(reason).or_default() += 1,
        }
        if buffer.bytes() >= d.flush.max_bytes {
            write_chunk(&mut buffer, sink, &mut adds, &mut counts).await?;
        }
        if last_report.elapsed().as_millis() >= 500 {
            last_report = Instant::now();
            progress(out.rows_read, total);
        }
    }
    // After an error the other readers may be blocked on a full channel: closing it lets them end.
    drop(rx);
    for w in workers {
        let _ = w.await;
    }
    if let Some(e) = failed {
        sink.discard_files(&adds).await;
        return Err(e.into());
    }
    write_chunk(&mut buffer, sink, &mut adds, &mut counts).await?;
    (out.rows_written, out.duplicates_dropped) = counts;
    progress(out.rows_read, total);
    Ok(adds)
}

/// One extracted row (`row_to_json` text) through the contract: its row, or the reason it is not
/// written.
fn map_row(
    mapper: &mut Mapper,
    plan: &Plan,
    snapshot: &Snapshot,
    text: &str,
    offset: i64,
) -> Result<Row, String> {
    let Ok(Value::Object(row)) = serde_json::from_str::<Value>(text) else {
        return Err("invalid_json".into());
    };
    let change = Change {
        op: Op::Read,
        row: Some(Fields::from_json_map(row)),
        source_ts_ms: Some(snapshot.taken_us / 1000),
        source_pos: Some(snapshot.id.as_str().into()),
    };
    let no_header = |_: &str| None;
    let ctx = MessageContext {
        offset,
        key: &|| None,
        ingested_at_us: chrono::Utc::now().timestamp_micros(),
        header: &no_header,
    };
    let row = mapper
        .map(change, &ctx, &mut 0)
        .map_err(|e| e.kind().to_string())?;
    let pcols = mapper.partition_columns();
    if plan
        .targets
        .as_ref()
        .is_some_and(|t| !t.contains(&sorted(&row.partition_values, pcols)))
    {
        // A row whose contract time is outside the range it was selected by (a time column other
        // than the partition column): not in a replaced partition, so not written.
        return Err("outside_range".into());
    }
    Ok(row)
}

/// Swap the new files in for the replaced partitions, with the request's txn and the new high
/// watermark (the snapshot's time), or report them for a dry run.
#[allow(clippy::too_many_arguments)]
async fn commit(
    d: &DatasetConfig,
    sink: &mut TableSink,
    req: &ExtractRequest,
    plan: &Plan,
    snapshot: &Snapshot,
    adds: Vec<Add>,
    done: Option<i64>,
    out: &mut ExtractOutcome,
) -> Result<(), PipelineError> {
    let what = format!("extract `{}`", req.request_id);
    let hint = " (is the partition time column the extract's time column?)";
    let removes = files_to_replace(sink, &adds, |v| plan.replaces(v), &what, hint).await?;
    out.files_removed = removes.len();
    out.files_added = adds.len();
    if req.dry_run {
        sink.discard_files(&adds).await;
        out.status = "dry_run".into();
        return Ok(());
    }
    let now_ms = Some(chrono::Utc::now().timestamp_millis());
    let txns = vec![
        Transaction::new_with_last_update(
            txn::request(&req.request_id),
            done.unwrap_or(0) + 1,
            now_ms,
        ),
        Transaction::new_with_last_update(
            txn::extract_watermark(&d.name),
            snapshot.taken_us,
            now_ms,
        ),
    ];
    let metadata = vec![(
        "bronze".to_string(),
        serde_json::json!({
            "kind": "extract",
            "request_id": req.request_id,
            "requested_by": req.requested_by,
            "dataset": d.name,
            "mode": plan.mode,
            "snapshot": snapshot.id,
            "rows_in": out.rows_read,
            "rows_written": out.rows_written,
            "rows_deduplicated": out.duplicates_dropped,
        }),
    )];
    match commit_swap(sink, removes, &adds, txns, metadata, plan.predicate()).await? {
        Some(version) => {
            out.status = "succeeded".into();
            out.table_version = Some(version);
            out.watermark_after_us = Some(snapshot.taken_us);
            info!(request_id = %req.request_id, dataset = %d.name, mode = plan.mode, version,
                rows = out.rows_written, ranges = out.ranges, files_removed = out.files_removed,
                "extract committed");
            metrics::counter!("bronze_extract_rows_total", "dataset" => d.name.clone())
                .increment(out.rows_written as u64);
            Ok(())
        }
        None => {
            sink.discard_files(&adds).await;
            Err(PipelineError::Stopped(format!(
                "extract `{}`: the table changed while the extract ran (another extract or a stream); run it again",
                req.request_id
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PartitionBy;

    #[test]
    fn ranges_are_read_from_the_start_of_their_first_partition_to_the_end_of_their_last() {
        let us = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_micros()
        };
        let days = partitions_between(
            PartitionBy::Date,
            us("2026-11-01T10:00:00Z"),
            us("2026-11-02T01:00:00Z"),
        );
        assert_eq!(
            span_of_partitions(&days),
            Some((us("2026-11-01T00:00:00Z"), us("2026-11-03T00:00:00Z")))
        );
        let hours = partitions_between(
            PartitionBy::DateHour,
            us("2026-11-01T10:30:00Z"),
            us("2026-11-01T11:00:00Z"),
        );
        assert_eq!(
            span_of_partitions(&hours),
            Some((us("2026-11-01T10:00:00Z"), us("2026-11-01T11:00:00Z")))
        );
    }

    #[test]
    fn plans_say_what_is_read_and_what_is_replaced() {
        let us = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_micros()
        };
        let day = |d: &str| vec![("event_date".to_string(), Some(d.to_string()))];
        let hour = std::time::Duration::from_secs(3600);
        // Incremental: from the start of the partition an hour before the watermark, on.
        let w = us("2026-11-02T00:30:00Z");
        let p = Plan::new(ExtractMode::Incremental, Some(w), PartitionBy::Date, hour);
        assert_eq!(
            (p.mode, p.from_us, p.to_us),
            ("incremental", us("2026-11-01T00:00:00Z"), None)
        );
        assert!(p.replaces(&day("2026-11-01")) && p.replaces(&day("2026-11-05")));
        assert!(!p.replaces(&day("2026-10-31")));
        assert_eq!(
            p.predicate(),
            format!("partitions from {}", rfc3339(p.from_us))
        );
        // No watermark yet: everything, the whole table.
        let p = Plan::new(ExtractMode::Incremental, None, PartitionBy::Date, hour);
        assert!(p.is_full() && p.replaces(&day("1970-01-01")));
        assert_eq!(
            p.bounds_text(),
            ("-infinity".to_string(), "infinity".to_string())
        );
        // A range: its partitions only.
        let range = ExtractMode::Range {
            from_us: us("2026-11-01T10:00:00Z"),
            to_us: us("2026-11-02T10:00:00Z"),
        };
        let p = Plan::new(range, Some(w), PartitionBy::Date, hour);
        assert_eq!(
            p.replaced(),
            ["event_date=2026-11-01", "event_date=2026-11-02"]
        );
        assert!(!p.replaces(&day("2026-11-03")));
        assert_eq!(p.to_us, Some(us("2026-11-03T00:00:00Z")));
    }
}
