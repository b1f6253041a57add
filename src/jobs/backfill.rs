//! Backfills: rebuild the time partitions of a range from Kafka and swap them in with **one** Delta
//! commit that removes every file of those partitions and adds the new ones (replaceWhere).
//!
//! What is rebuilt: for every source partition, the offsets the table already covers — from the first
//! offset whose Kafka time is at or after the range start minus `backfill.lookback` (or the lowest offset
//! found in the replaced partitions, if lower) up to the streaming position committed in the table (its
//! `txn` version). The messages go through the same checks, decoding, contract and dedup as streaming;
//! rows outside the replaced partitions are not written.
//!
//! Streaming into the same partitions meanwhile: the replace is committed against the snapshot whose
//! positions it replayed up to. If any commit lands in between (a streaming append, another member), the
//! commit fails, the table is re-read, the offsets streaming committed since are replayed as well, the
//! file list to remove is taken again, and the commit is retried. Every row streaming committed is thus
//! either replaced by its rebuilt copy or appended after the replace, never lost, never doubled (the
//! retry strategy; streaming is not fenced). Rows still in the streaming buffers land after the replace.
//!
//! Idempotent: the commit carries a `txn` (app id `bronze-request:<request_id>`), so the same request
//! again is a no-op unless forced (which rebuilds and bumps the txn version).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use chrono::Utc;
use deltalake::kernel::{Add, Transaction};
use serde::Serialize;
use tracing::info;

use super::partition_swap::{
    PartitionValues, commit_swap, files_to_replace, label, parse_partition, partitions_between,
    predicate, request_done, sorted, write_chunk,
};
use crate::buffer::DatasetBuffer;
use crate::config::{Config, DatasetConfig, PartitionBy};
use crate::decode::Decoder;
use crate::pipeline::admission::{self, Admission, admit};
use crate::pipeline::message::Message;
use crate::pipeline::{self, PipelineError};
use crate::sink::{self, TableSink};
use crate::source::Inspector;
use crate::transform::Mapper;
use crate::txn::{self, TopicPartition};

use crate::transform::span_of_partitions;

/// A request to rebuild the partitions of `[from_us, to_us)` (widened to whole partitions).
#[derive(Debug, Clone)]
pub struct BackfillRequest {
    pub request_id: String,
    pub dataset: String,
    pub from_us: i64,
    pub to_us: i64,
    /// Explicit partitions (`2026-11-01`, or `2026-11-01/05` for date/hour tables) instead of the
    /// range; `from_us`/`to_us` then span them.
    pub partitions: Vec<String>,
    /// Run again even if this request id was already committed.
    pub force: bool,
    /// Replay and report, commit nothing.
    pub dry_run: bool,
    pub requested_by: Option<String>,
}

/// What a backfill did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BackfillOutcome {
    pub request_id: String,
    pub dataset: String,
    /// `succeeded`, `already_done` (the request id is in the table and not forced) or `dry_run`.
    pub status: String,
    pub partitions: Vec<String>,
    pub messages_read: u64,
    pub rows_written: usize,
    pub duplicates_dropped: usize,
    /// Rows of the replayed offsets that belong to other partitions (left as they are).
    pub rows_outside: u64,
    /// Messages that still cannot be ingested, by reason (their dead letters are already recorded).
    pub still_failing: BTreeMap<String, u64>,
    pub skipped: u64,
    pub files_removed: usize,
    pub files_added: usize,
    pub table_version: Option<u64>,
    /// Commit attempts (more than one when other commits came in between).
    pub attempts: usize,
    pub duration_ms: u64,
}

/// Messages handed over per blocking read, between progress reports and buffer checks.
const READ_CHUNK: usize = 5_000;

/// Why a request cannot run, before anything is read.
pub fn check(cfg: &Config, req: &BackfillRequest) -> Result<(), String> {
    let d = cfg
        .dataset(&req.dataset)
        .ok_or_else(|| format!("unknown dataset `{}`", req.dataset))?;
    if req.request_id.trim().is_empty() {
        return Err("request_id must not be empty".into());
    }
    if req.from_us >= req.to_us {
        return Err("the range is empty or inverted (from must be before to)".into());
    }
    if let Some(e) = range_too_long(cfg, req.from_us, req.to_us) {
        return Err(e);
    }
    if d.partitioning.by == PartitionBy::None {
        return Err(format!(
            "dataset `{}` is not time-partitioned: there are no partitions to replace",
            d.name
        ));
    }
    for p in &req.partitions {
        parse_partition(d.partitioning.by, p)?;
    }
    Ok(())
}

/// Why `[from_us, to_us)` is longer than one request may replace (`backfill.max_range`), if it is.
pub fn range_too_long(cfg: &Config, from_us: i64, to_us: i64) -> Option<String> {
    let span = std::time::Duration::from_micros(to_us.saturating_sub(from_us).max(0) as u64);
    (span > cfg.backfill.max_range).then(|| {
        format!(
            "the range spans {}, more than backfill.max_range ({})",
            humantime::format_duration(span),
            humantime::format_duration(cfg.backfill.max_range)
        )
    })
}

/// Lowest offset per source partition among the rows of the `targets` partitions.
async fn lowest_offsets(
    d: &DatasetConfig,
    cfg: &Config,
    targets: &BTreeSet<PartitionValues>,
) -> Result<HashMap<TopicPartition, i64>, PipelineError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Int32Type, Int64Type};
    use deltalake::datafusion::functions_aggregate::expr_fn::min;
    use deltalake::datafusion::prelude::{Expr, col, lit};
    let uri = &d.table_uri;
    let Some(df) = sink::scan::frame(uri, &cfg.storage_options()).await? else {
        return Ok(HashMap::new());
    };
    let q = |e| PipelineError::from(sink::scan::query_error(uri, e));
    let filter = targets
        .iter()
        .map(|values| {
            values
                .iter()
                .map(|(k, v)| col(k.as_str()).eq(lit(v.clone().unwrap_or_default())))
                .reduce(Expr::and)
                .unwrap_or(lit(false))
        })
        .reduce(Expr::or)
        .unwrap_or(lit(false));
    let batches = df
        .filter(filter)
        .and_then(|df| {
            df.aggregate(
                vec![col("_topic"), col("_partition")],
                vec![min(col("_offset")).alias("low")],
            )
        })
        .map_err(q)?
        .collect()
        .await
        .map_err(q)?;
    let mut out = HashMap::new();
    for b in &batches {
        let topics = sink::scan::column_as(uri, b, "_topic", &DataType::Utf8)?;
        let parts = sink::scan::column_as(uri, b, "_partition", &DataType::Int32)?;
        let low = sink::scan::column_as(uri, b, "low", &DataType::Int64)?;
        let (topics, parts, low) = (
            topics.as_string::<i32>(),
            parts.as_primitive::<Int32Type>(),
            low.as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            if !low.is_null(i) {
                out.insert(
                    TopicPartition::new(topics.value(i), parts.value(i)),
                    low.value(i),
                );
            }
        }
    }
    Ok(out)
}

/// Run a backfill to its commit (or to its report, for a dry run). `progress` gets the messages read and
/// the offsets to read so far.
pub async fn backfill(
    cfg: &Config,
    req: &BackfillRequest,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<BackfillOutcome, PipelineError> {
    check(cfg, req).map_err(PipelineError::Stopped)?;
    let started = Instant::now();
    let d = super::dataset(cfg, &req.dataset)?;
    let (mapper, mut sink) = pipeline::open_dataset(cfg, d).await?;
    let targets = targets_of(d, req)?;
    let mut out = BackfillOutcome {
        request_id: req.request_id.clone(),
        dataset: d.name.clone(),
        partitions: targets.iter().map(label).collect(),
        ..BackfillOutcome::default()
    };
    let done = request_done(&mut sink, &req.request_id).await?;
    if done.is_some() && !req.force {
        out.status = "already_done".into();
        out.table_version = sink.version();
        return Ok(out);
    }
    let inspector = tokio::task::block_in_place(|| Inspector::new(cfg))?;
    let tps = tokio::task::block_in_place(|| inspector.partitions(&d.topics))?;
    let mut rebuild = Rebuild {
        cfg,
        d,
        decoder: Decoder::new(d.format, pipeline::registry(cfg)?),
        buffer: pipeline::buffer_for(&mapper),
        mapper,
        cursor: start_cursor(cfg, d, &inspector, &tps, &targets, req.from_us).await?,
        targets,
        adds: Vec::new(),
        counts: (0, 0),
        total: 0,
    };
    let txn_version = done.unwrap_or(0) + 1;
    let outcome = rebuild
        .run(
            &mut sink,
            &inspector,
            &tps,
            req,
            txn_version,
            &mut out,
            progress,
        )
        .await;
    if outcome.is_err() {
        sink.discard_files(&rebuild.adds).await;
    }
    outcome?;
    out.duration_ms = started.elapsed().as_millis() as u64;
    if out.status == "succeeded" {
        info!(request_id = %req.request_id, dataset = %d.name, version = out.table_version.unwrap_or_default(),
            rows = out.rows_written, files_removed = out.files_removed, files_added = out.files_added,
            attempts = out.attempts, ms = out.duration_ms, "backfill committed");
        metrics::counter!("bronze_backfills_total", "dataset" => d.name.clone(), "status" => "succeeded")
            .increment(1);
        metrics::counter!("bronze_backfill_rows_total", "dataset" => d.name.clone())
            .increment(out.rows_written as u64);
    }
    Ok(out)
}

/// The partitions a request replaces: those it names, or those its range overlaps.
fn targets_of(
    d: &DatasetConfig,
    req: &BackfillRequest,
) -> Result<BTreeSet<PartitionValues>, PipelineError> {
    if req.partitions.is_empty() {
        return Ok(partitions_between(
            d.partitioning.by,
            req.from_us,
            req.to_us,
        ));
    }
    req.partitions
        .iter()
        .map(|p| parse_partition(d.partitioning.by, p))
        .collect::<Result<_, _>>()
        .map_err(PipelineError::Stopped)
}

/// Where each source partition's replay starts: the first offset at or after the first replaced
/// partition's start minus `backfill.lookback`, or the lowest offset found in the replaced partitions
/// if that is lower.
async fn start_cursor(
    cfg: &Config,
    d: &DatasetConfig,
    inspector: &Inspector,
    tps: &[TopicPartition],
    targets: &BTreeSet<PartitionValues>,
    from_us: i64,
) -> Result<HashMap<TopicPartition, i64>, PipelineError> {
    let first_start_us = span_of_partitions(targets).map_or(from_us, |(start, _)| start);
    let read_from_ms = (first_start_us / 1000)
        - i64::try_from(cfg.backfill.lookback.as_millis()).unwrap_or(i64::MAX / 2);
    let by_time =
        tokio::task::block_in_place(|| inspector.offsets_at_time(tps, read_from_ms.max(0)))?;
    let lowest = lowest_offsets(d, cfg, targets).await?;
    Ok(tps
        .iter()
        .map(|tp| {
            let t = by_time.get(tp).copied().unwrap_or(0);
            let low = lowest.get(tp).copied().unwrap_or(t);
            (tp.clone(), t.min(low))
        })
        .collect())
}

/// One backfill's replay: what it has read so far (the cursor per source partition) and the files it
/// has written for the replaced partitions.
struct Rebuild<'a> {
    cfg: &'a Config,
    d: &'a DatasetConfig,
    decoder: Decoder,
    mapper: Mapper,
    buffer: DatasetBuffer,
    targets: BTreeSet<PartitionValues>,
    /// Next offset to replay, per source partition.
    cursor: HashMap<TopicPartition, i64>,
    adds: Vec<Add>,
    /// Rows written and duplicates dropped.
    counts: (usize, usize),
    /// Offsets to replay, over all attempts.
    total: u64,
}

impl Rebuild<'_> {
    /// Replay and commit until a swap goes in (each attempt replays only what streaming committed
    /// since the last one), or report for a dry run.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        sink: &mut TableSink,
        inspector: &Inspector,
        tps: &[TopicPartition],
        req: &BackfillRequest,
        txn_version: i64,
        out: &mut BackfillOutcome,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(), PipelineError> {
        let mut retry = sink.retry("backfill");
        loop {
            let attempt = retry.next(sink).await?;
            out.attempts = attempt;
            self.replay_to_table(sink, inspector, tps, out, progress)
                .await?;
            let what = format!("backfill `{}`", req.request_id);
            let targets = &self.targets;
            let removes = match files_to_replace(
                sink,
                &self.adds,
                |v| targets.contains(v),
                &what,
                "",
            )
            .await
            {
                Ok(removes) => removes,
                Err(e) => {
                    // Deleted by the refusal.
                    self.adds.clear();
                    return Err(e);
                }
            };
            out.files_removed = removes.len();
            out.files_added = self.adds.len();
            if req.dry_run {
                sink.discard_files(&self.adds).await;
                self.adds.clear();
                out.status = "dry_run".into();
                return Ok(());
            }
            crate::sink::failpoint("backfill_before_commit");
            let txn = Transaction::new_with_last_update(
                txn::request(&req.request_id),
                txn_version,
                Some(Utc::now().timestamp_millis()),
            );
            let metadata = vec![(
                "bronze".to_string(),
                serde_json::json!({
                    "kind": "backfill",
                    "request_id": req.request_id,
                    "requested_by": req.requested_by,
                    "dataset": self.d.name,
                    "partitions": out.partitions,
                    "rows_in": out.messages_read,
                    "rows_written": out.rows_written,
                    "rows_deduplicated": out.duplicates_dropped,
                    "attempt": attempt,
                }),
            )];
            let predicate = predicate(&self.targets);
            let swap = commit_swap(sink, removes, &self.adds, vec![txn], metadata, predicate);
            let swapped = swap.await.inspect_err(|_| self.adds.clear())?;
            match swapped {
                Some(version) => {
                    out.status = "succeeded".into();
                    out.table_version = Some(version);
                    return Ok(());
                }
                None => {
                    info!(request_id = %req.request_id, attempt,
                        "the table moved during the backfill; replaying what was committed since");
                }
            }
        }
    }

    /// Replay every source partition from the cursor up to the streaming position in the loaded
    /// snapshot, writing the rows of the replaced partitions as files.
    async fn replay_to_table(
        &mut self,
        sink: &TableSink,
        inspector: &Inspector,
        tps: &[TopicPartition],
        out: &mut BackfillOutcome,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(), PipelineError> {
        let mut ranges = Vec::new();
        for tp in tps {
            let end = sink
                .committed_offset(&txn::streaming(&self.cfg.kafka.group_id, tp))
                .await?
                .map_or(0, |v| v + 1);
            let start = self.cursor.get(tp).copied().unwrap_or(end);
            if end > start {
                self.total += (end - start) as u64;
                ranges.push((tp.clone(), start, end));
            }
            self.cursor.insert(tp.clone(), end.max(start));
        }
        let mut ends = tokio::task::block_in_place(|| inspector.start_ranges(&ranges))?;
        while !ends.is_empty() {
            tokio::task::block_in_place(|| self.read_chunk(inspector, &mut ends, out))?;
            progress(out.messages_read, self.total);
            if self.buffer.bytes() >= self.d.flush.max_bytes {
                write_chunk(&mut self.buffer, sink, &mut self.adds, &mut self.counts).await?;
            }
        }
        write_chunk(&mut self.buffer, sink, &mut self.adds, &mut self.counts).await?;
        (out.rows_written, out.duplicates_dropped) = self.counts;
        Ok(())
    }

    /// Up to [`READ_CHUNK`] messages of the ranges still open, through the streaming admission into
    /// the buffer (rows of the replaced partitions only).
    fn read_chunk(
        &mut self,
        inspector: &Inspector,
        ends: &mut HashMap<TopicPartition, i64>,
        out: &mut BackfillOutcome,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let now = Instant::now();
        let pcols = self.mapper.partition_columns();
        let read = inspector.read_ranges(ends, READ_CHUNK, |m| {
            out.messages_read += 1;
            let m = Message::of_kafka(m, chrono::Utc::now().timestamp_micros());
            if self.decoder.needs_registry() {
                // Counted as still failing (`registry_unavailable`) if the wait runs out.
                let wait =
                    admission::prepare_patiently(&self.decoder, &m, admission::REGISTRY_PATIENCE);
                let _ = tokio::runtime::Handle::current().block_on(wait);
            }
            match admit(self.d, &self.decoder, &mut self.mapper, &m) {
                Admission::Row(row)
                    if self.targets.contains(&sorted(&row.partition_values, pcols)) =>
                {
                    pipeline::sync_columns(&self.mapper, &mut self.buffer);
                    self.buffer.push(m.topic, m.partition, *row, now);
                }
                Admission::Row(_) => out.rows_outside += 1,
                Admission::Skip(_) => out.skipped += 1,
                Admission::Reject(r) => {
                    *out.still_failing.entry(r.reason.to_string()).or_default() += 1
                }
            }
        });
        read.map(|_| ())
    }
}
