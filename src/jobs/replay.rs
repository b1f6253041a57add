//! `bronze dlq replay`: after the contract or the input is fixed, dead letters go through the same
//! checks, decoding and mapping as streaming, and those that now pass are committed to the dataset table
//! with their original topic, partition and offset.
//!
//! Idempotent: a dead letter whose offset is already in the table is not replayed again, and every
//! replay commit carries a `txn` (app id `<group>:dlq-replay:<dataset>`, version + 1 per replay) so two
//! replays racing each other conflict and the loser re-checks the table. The dead-letter table keeps its
//! rows (it is the history of what went wrong); streaming positions are not touched.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use deltalake::datafusion::prelude::{col, lit};
use deltalake::kernel::Transaction;
use serde::Serialize;
use tracing::info;

use crate::buffer::{DatasetBuffer, DeadLetter};
use crate::config::{Config, DatasetConfig};
use crate::decode::Decoder;
use crate::pipeline::admission::{self, Admission, admit};
use crate::pipeline::message::Message;
use crate::pipeline::{self, PipelineError};
use crate::sink::dead_letters::{self, DeadLetterFilter};
use crate::sink::{SinkError, scan};
use crate::transform::Mapper;

/// What a replay did (or, with `dry_run`, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReplaySummary {
    pub dataset: String,
    /// Dead letters matching the filter.
    pub dead_letters: usize,
    /// Already in the dataset table (an earlier replay).
    pub already_in_table: usize,
    pub rows_written: usize,
    pub duplicates_dropped: usize,
    /// Tombstones and other messages that carry no row.
    pub skipped: usize,
    /// Dead letters that still cannot be ingested, by reason.
    pub still_failing: BTreeMap<String, usize>,
    pub table_version: Option<u64>,
    pub dry_run: bool,
}

pub async fn replay(
    cfg: &Config,
    dataset: &str,
    filter: &DeadLetterFilter,
    dry_run: bool,
) -> Result<ReplaySummary, PipelineError> {
    let d = super::dataset(cfg, dataset)?;
    let options = cfg.storage_options();
    let letters = dead_letters::read(&d.dead_letters.table_uri, &options, filter).await?;
    let (mut mapper, mut sink) = pipeline::open_dataset(cfg, d).await?;
    let decoder = Decoder::new(d.format, pipeline::registry(cfg)?);
    let run_id = uuid::Uuid::now_v7().to_string();
    let app_id = crate::txn::replay(&cfg.kafka.group_id, &d.name);
    let mut retry = sink.retry("dlq_replay");
    loop {
        retry.next(&mut sink).await?;
        let present = offsets_in_table(&d.table_uri, &options, &letters).await?;
        let mut summary = ReplaySummary {
            dataset: d.name.clone(),
            dead_letters: letters.len(),
            dry_run,
            ..ReplaySummary::default()
        };
        let mut buffer = pipeline::buffer_for(&mapper);
        for l in &letters {
            if present.contains(&(l.topic.clone(), l.partition, l.offset)) {
                summary.already_in_table += 1;
                continue;
            }
            admit_letter(d, &decoder, &mut mapper, &mut buffer, l, &mut summary).await;
        }
        let batch_id = uuid::Uuid::now_v7().to_string();
        let Some(batch) = buffer
            .take(&batch_id)
            .map_err(|e| PipelineError::Stopped(format!("cannot build the replay batch: {e}")))?
        else {
            return Ok(summary);
        };
        summary.rows_written = batch.rows();
        summary.duplicates_dropped = batch.duplicates_dropped;
        if dry_run || batch.rows() == 0 {
            return Ok(summary);
        }
        let version = sink.committed_offset(&app_id).await?.unwrap_or(0) + 1;
        let adds = sink.write_files(&batch.batches).await?;
        let metadata = vec![(
            "bronze".to_string(),
            commit_info(&run_id, &batch_id, letters.len(), &summary),
        )];
        let txn = Transaction::new_with_last_update(
            app_id.clone(),
            version,
            Some(chrono::Utc::now().timestamp_millis()),
        );
        match sink
            .try_commit(
                &adds,
                vec![txn],
                metadata,
                batch.batches.first().map(|b| b.schema_ref().as_ref()),
            )
            .await?
        {
            Some(v) => {
                summary.table_version = Some(v);
                info!(dataset = %d.name, version = v, rows = summary.rows_written,
                    still_failing = ?summary.still_failing, "dead letters replayed");
                return Ok(summary);
            }
            // Another replay (or a stream) committed meanwhile: the table is checked again.
            None => sink.discard_files(&adds).await,
        }
    }
}

/// The `bronze` commit info of a replay commit.
fn commit_info(
    run_id: &str,
    batch_id: &str,
    rows_in: usize,
    summary: &ReplaySummary,
) -> serde_json::Value {
    serde_json::json!({
        "kind": "dlq_replay",
        "run_id": run_id,
        "batch_id": batch_id,
        "dataset": summary.dataset,
        "rows_in": rows_in,
        "rows_written": summary.rows_written,
        "duplicates_dropped": summary.duplicates_dropped,
        "still_failing": summary.still_failing,
    })
}

/// One dead letter through the streaming checks: into `buffer` if it passes now.
async fn admit_letter(
    d: &DatasetConfig,
    decoder: &Decoder,
    mapper: &mut Mapper,
    buffer: &mut DatasetBuffer,
    l: &DeadLetter,
    summary: &mut ReplaySummary,
) {
    let m = Message::of_dead_letter(l, chrono::Utc::now().timestamp_micros());
    // A message still unreadable after the wait stays a dead letter (`registry_unavailable`).
    let _ = admission::prepare_patiently(decoder, &m, admission::REGISTRY_PATIENCE).await;
    match admit(d, decoder, mapper, &m) {
        Admission::Row(row) => {
            pipeline::sync_columns(mapper, buffer);
            buffer.push(&l.topic, l.partition, *row, Instant::now())
        }
        Admission::Skip(_) => summary.skipped += 1,
        Admission::Reject(r) => {
            *summary
                .still_failing
                .entry(r.reason.to_string())
                .or_default() += 1
        }
    }
}

/// Which of the dead letters' (topic, partition, offset) are already rows of the table.
async fn offsets_in_table(
    uri: &str,
    options: &std::collections::HashMap<String, String>,
    letters: &[DeadLetter],
) -> Result<HashSet<(String, i32, i64)>, SinkError> {
    let (Some(min), Some(max)) = (
        letters.iter().map(|l| l.offset).min(),
        letters.iter().map(|l| l.offset).max(),
    ) else {
        return Ok(HashSet::new());
    };
    let Some(df) = scan::frame(uri, options).await? else {
        return Ok(HashSet::new());
    };
    let q = |e| scan::query_error(uri, e);
    let topics: Vec<_> = letters
        .iter()
        .map(|l| l.topic.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .map(lit)
        .collect();
    // File statistics on `_offset` prune most files before this reads anything.
    let batches = df
        .filter(
            col("_offset")
                .between(lit(min), lit(max))
                .and(col("_topic").in_list(topics, false)),
        )
        .and_then(|df| df.select_columns(&["_topic", "_partition", "_offset"]))
        .map_err(q)?
        .collect()
        .await
        .map_err(q)?;
    let mut out = HashSet::new();
    for b in batches {
        use arrow::array::AsArray;
        use arrow::datatypes::{DataType, Int32Type, Int64Type};
        let topic = scan::column_as(uri, &b, "_topic", &DataType::Utf8)?;
        let partition = scan::column_as(uri, &b, "_partition", &DataType::Int32)?;
        let offset = scan::column_as(uri, &b, "_offset", &DataType::Int64)?;
        let (topic, partition, offset) = (
            topic.as_string::<i32>(),
            partition.as_primitive::<Int32Type>(),
            offset.as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            out.insert((
                topic.value(i).to_string(),
                partition.value(i),
                offset.value(i),
            ));
        }
    }
    Ok(out)
}
