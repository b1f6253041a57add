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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use deltalake::kernel::Transaction;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

use super::partition_swap::{
    PartitionValues, commit_swap, files_to_replace, label, partitions_between, predicate, sorted,
    write_chunk,
};
use crate::config::{Config, DatasetConfig, ExtractConfig};
use crate::decode::{Change, Fields, Op};
use crate::pipeline::{self, PipelineError};
use crate::transform::{MessageContext, span_of_partitions};

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

/// Rows in flight between the readers and the buffer.
const CHANNEL_ROWS: usize = 4096;

async fn connect(dsn: &str) -> Result<Client, ExtractError> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "postgres connection ended with an error");
        }
    });
    Ok(client)
}

/// `col` quoted as an SQL identifier.
fn ident(col: &str) -> String {
    format!("\"{}\"", col.replace('"', "\"\""))
}

/// The wrapped query's time predicate: `$1` from, `$2` to (unused where open). A full extract has none,
/// so rows without a time are read too.
fn time_predicate(x: &ExtractConfig, from: bool, to: bool) -> String {
    let t = ident(&x.time_column);
    let from = if from {
        format!("{t} >= ($1::text)::timestamptz")
    } else {
        "$1::text IS NOT NULL".to_string()
    };
    let to = if to {
        format!("{t} < ($2::text)::timestamptz")
    } else {
        "$2::text IS NOT NULL".to_string()
    };
    format!("{from} AND {to}")
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// Run an extract to its commit (or report, for a dry run).
pub async fn extract(
    cfg: &Config,
    req: &ExtractRequest,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ExtractOutcome, PipelineError> {
    let started = Instant::now();
    let d: &DatasetConfig = cfg
        .datasets
        .iter()
        .find(|d| d.name == req.dataset)
        .ok_or_else(|| PipelineError::Stopped(format!("unknown dataset `{}`", req.dataset)))?;
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
    sink.refresh().await?;
    let app_id = crate::txn::request(&req.request_id);
    let done = sink.committed_offset(&app_id).await?;
    if done.is_some() && !req.force {
        out.status = "already_done".into();
        out.table_version = sink.version();
        return Ok(out);
    }
    let watermark = sink
        .committed_offset(&crate::txn::extract_watermark(&d.name))
        .await?;
    out.watermark_before_us = watermark;
    let by = d.partitioning.by;
    let lookback_us = i64::try_from(x.lookback.as_micros()).unwrap_or(i64::MAX / 4);
    // What is read ([from, to), `to` open when None) and which table partitions it replaces.
    let (mode, from_us, to_us, targets): (_, i64, Option<i64>, Option<BTreeSet<PartitionValues>>) =
        match (req.mode, watermark) {
            (ExtractMode::Range { from_us, to_us }, _) => {
                let targets = partitions_between(by, from_us, to_us);
                let (from, to) = span_of_partitions(&targets).unwrap_or((from_us, to_us));
                ("range", from, Some(to), Some(targets))
            }
            (ExtractMode::Incremental, Some(w)) => {
                let start = partitions_between(by, w - lookback_us, w - lookback_us + 1);
                let from = span_of_partitions(&start).map_or(w - lookback_us, |(f, _)| f);
                ("incremental", from, None, None)
            }
            (ExtractMode::Incremental, None) | (ExtractMode::Full, _) => {
                ("full", i64::MIN / 2, None, None)
            }
        };
    out.mode = mode.to_string();
    out.replaced = match &targets {
        Some(t) => t.iter().map(label).collect(),
        None if mode == "full" => vec!["the whole table".into()],
        None => vec![format!("every partition from {}", rfc3339(from_us))],
    };

    // The snapshot: a leader transaction, exported to the workers.
    let leader = connect(&x.dsn).await.map_err(PipelineError::from)?;
    leader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(ExtractError::from)?;
    let row = leader
        .query_one(
            "SELECT pg_export_snapshot(), (extract(epoch from now()) * 1000000)::int8",
            &[],
        )
        .await
        .map_err(ExtractError::from)?;
    let snapshot: String = row.get(0);
    let snapshot_us: i64 = row.get(1);
    out.snapshot = snapshot.clone();
    let from_text = if from_us <= i64::MIN / 4 {
        "-infinity".to_string()
    } else {
        rfc3339(from_us)
    };
    let to_text = to_us.map(rfc3339).unwrap_or_else(|| "infinity".into());
    let base = format!(
        "FROM ({}) AS src WHERE {}",
        x.query,
        time_predicate(x, mode != "full", to_us.is_some())
    );
    // Integer columns split as they are; time columns by their microseconds since the epoch.
    let column = ident(&x.split_column);
    let split_type: Option<String> = leader
        .query_opt(
            &format!(
                "SELECT pg_typeof({column})::text FROM ({}) AS src LIMIT 1",
                x.query
            ),
            &[],
        )
        .await
        .map_err(ExtractError::from)?
        .map(|r| r.get(0));
    let split = match split_type.as_deref() {
        Some(t) if t.starts_with("timestamp") || t == "date" => {
            format!("(extract(epoch from {column}) * 1000000)::int8")
        }
        _ => format!("{column}::int8"),
    };
    let bounds = leader
        .query_one(
            &format!("SELECT min({split}), max({split}), count(*)::int8 {base}"),
            &[&from_text, &to_text],
        )
        .await
        .map_err(ExtractError::from)?;
    let (low, high, count): (Option<i64>, Option<i64>, i64) =
        (bounds.get(0), bounds.get(1), bounds.get(2));
    let mut ranges = Vec::new();
    if let (Some(low), Some(high)) = (low, high) {
        let n = x.max_parallelism.max(1) as i64;
        let step = ((high - low) / n + 1).max(1);
        let mut a = low;
        while a <= high {
            ranges.push((a, a.saturating_add(step).min(high.saturating_add(1))));
            a = a.saturating_add(step);
        }
    }
    out.ranges = ranges.len();
    info!(dataset = %d.name, mode, snapshot = %snapshot, rows = count, ranges = ranges.len(),
        "extract snapshot taken");

    // Workers: one connection per range, in the exported snapshot, feeding one channel.
    let (tx, mut rx) = mpsc::channel::<Result<(usize, String), ExtractError>>(CHANNEL_ROWS);
    let mut workers = Vec::new();
    for (i, (a, b)) in ranges.iter().copied().enumerate() {
        let tx = tx.clone();
        let dsn = x.dsn.clone();
        let sql = format!(
            "SELECT row_to_json(src)::text {base} AND {split} >= $3::int8 AND {split} < $4::int8"
        );
        let snapshot = snapshot.clone();
        let (from_text, to_text) = (from_text.clone(), to_text.clone());
        workers.push(tokio::spawn(async move {
            let read = async {
                use futures::StreamExt;
                let client = connect(&dsn).await?;
                client
                    .batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
                    ))
                    .await?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                    [&from_text, &to_text, &a, &b];
                let rows = client.query_raw(&sql, params).await?;
                futures::pin_mut!(rows);
                while let Some(row) = rows.next().await {
                    let text: String = row?.get(0);
                    if tx.send(Ok((i, text))).await.is_err() {
                        break;
                    }
                }
                client.batch_execute("COMMIT").await?;
                Ok::<(), ExtractError>(())
            };
            if let Err(e) = read.await {
                let _ = tx.send(Err(e)).await;
            }
        }));
    }
    drop(tx);

    let pcols = mapper.partition_columns();
    let mut buffer = pipeline::buffer_for(&mapper);
    let topic = format!("postgres:{}", d.name);
    let mut adds = Vec::new();
    let mut counts = (0usize, 0usize);
    let mut failed: Option<ExtractError> = None;
    let no_header = |_: &str| None;
    let mut last_report = Instant::now();
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
        let row: Map<String, Value> = match serde_json::from_str(&text) {
            Ok(Value::Object(m)) => m,
            _ => {
                *out.still_failing.entry("invalid_json".into()).or_default() += 1;
                continue;
            }
        };
        let change = Change {
            op: Op::Read,
            row: Some(Fields::from_json_map(row)),
            source_ts_ms: Some(snapshot_us / 1000),
            source_pos: Some(snapshot.as_str().into()),
        };
        let mapped = {
            let ctx = MessageContext {
                offset,
                key: &|| None,
                ingested_at_us: chrono::Utc::now().timestamp_micros(),
                header: &no_header,
            };
            let mut unknown = 0;
            mapper.map(change, &ctx, &mut unknown)
        };
        match mapped {
            Ok(row) => {
                if let Some(t) = &targets
                    && !t.contains(&sorted(&row.partition_values, pcols))
                {
                    // A row whose contract time is outside the range it was selected by (a time column
                    // other than the partition column): not in a replaced partition, so not written.
                    *out.still_failing.entry("outside_range".into()).or_default() += 1;
                    continue;
                }
                pipeline::sync_columns(&mapper, &mut buffer);
                buffer.push(&topic, range as i32, row, std::time::Instant::now());
            }
            Err(e) => *out.still_failing.entry(e.kind().to_string()).or_default() += 1,
        }
        if buffer.bytes() >= d.flush.max_bytes {
            write_chunk(&mut buffer, &sink, &mut adds, &mut counts).await?;
        }
        if last_report.elapsed().as_millis() >= 500 {
            last_report = Instant::now();
            progress(out.rows_read, count.max(0) as u64);
        }
    }
    // After an error the other readers may be blocked on a full channel: closing it lets them end.
    drop(rx);
    for w in workers {
        let _ = w.await;
    }
    let _ = leader.batch_execute("COMMIT").await;
    if let Some(e) = failed {
        sink.discard_files(&adds).await;
        return Err(e.into());
    }
    write_chunk(&mut buffer, &sink, &mut adds, &mut counts).await?;
    (out.rows_written, out.duplicates_dropped) = counts;
    progress(out.rows_read, count.max(0) as u64);

    let first = partitions_between(by, from_us, from_us + 1)
        .first()
        .cloned();
    let replaced = |v: &PartitionValues| match (&targets, mode) {
        (Some(t), _) => t.contains(v),
        (None, "full") => true,
        (None, _) => first.as_ref().is_none_or(|f| v >= f),
    };
    let what = format!("extract `{}`", req.request_id);
    let hint = " (is the partition time column the extract's time column?)";
    let removes = files_to_replace(&sink, &adds, replaced, &what, hint).await?;
    out.files_removed = removes.len();
    out.files_added = adds.len();
    if req.dry_run {
        sink.discard_files(&adds).await;
        out.status = "dry_run".into();
        out.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(out);
    }
    let now_ms = Some(chrono::Utc::now().timestamp_millis());
    let txns = vec![
        Transaction::new_with_last_update(app_id, done.unwrap_or(0) + 1, now_ms),
        Transaction::new_with_last_update(
            crate::txn::extract_watermark(&d.name),
            snapshot_us,
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
            "mode": mode,
            "snapshot": snapshot,
            "rows_in": out.rows_read,
            "rows_written": out.rows_written,
            "rows_deduplicated": out.duplicates_dropped,
        }),
    )];
    let pred = match &targets {
        Some(t) => predicate(t),
        None if mode == "full" => "true".to_string(),
        None => format!("partitions from {}", rfc3339(from_us)),
    };
    match commit_swap(&mut sink, removes, &adds, txns, metadata, pred).await? {
        Some(version) => {
            out.status = "succeeded".into();
            out.table_version = Some(version);
            out.watermark_after_us = Some(snapshot_us);
            out.duration_ms = started.elapsed().as_millis() as u64;
            info!(request_id = %req.request_id, dataset = %d.name, mode, version, rows = out.rows_written,
                ranges = out.ranges, files_removed = out.files_removed, ms = out.duration_ms, "extract committed");
            metrics::counter!("bronze_extract_rows_total", "dataset" => d.name.clone())
                .increment(out.rows_written as u64);
            Ok(out)
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
        assert_eq!(ident("up\"date\"d"), "\"up\"\"date\"\"d\"");
    }
}
