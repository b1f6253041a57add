//! Table maintenance: compaction of small files and vacuum of files the table no longer references.
//!
//! Compaction runs per partition with delta-rs's bin-packing `optimize`: files below the target size are
//! rewritten into files of about the target size, committed with `dataChange = false` (readers and
//! change feeds see no new data). By default only "sealed" time partitions are touched — those whose
//! time range ended longer ago than `compaction.sealed_after` — so it does not fight live appends; when
//! it does meet one (late data, `--all-partitions`), the appends only add files and the optimize commit
//! only removes the files it read, so both commits stand (Delta's conflict check lets a compaction and a
//! blind append through in either order); two compactions of the same files conflict and the loser
//! gives up that partition until the next round.

mod carry_forward;
pub mod latest;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use chrono::Utc;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::{FilterOp, FilterValue};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::{Config, ConfigUpdates, DatasetConfig};
use crate::sink::{self, PartitionFiles, SinkError, TableSink};

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Sink(Box<SinkError>),
    #[error("table {uri}: {operation} failed: {source}")]
    Delta {
        uri: String,
        operation: &'static str,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error(
        "retention {asked} is below vacuum.min_retention ({min}): readers of recent table versions may still need those files"
    )]
    RetentionTooShort { asked: String, min: String },
    #[error("dataset `{0}` has no `[datasets.latest]` view")]
    NotConfigured(String),
}

impl From<SinkError> for MaintenanceError {
    fn from(e: SinkError) -> Self {
        MaintenanceError::Sink(Box::new(e))
    }
}

/// Which partitions a compaction may rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Time partitions whose range ended more than `compaction.sealed_after` ago (unpartitioned tables:
    /// the whole table).
    Sealed,
    AllPartitions,
}

/// What one compaction of one dataset did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CompactionReport {
    pub dataset: String,
    pub partitions_compacted: usize,
    /// Partitions with small files left alone because they are not sealed yet.
    pub partitions_skipped_unsealed: usize,
    pub files_before: usize,
    pub files_after: usize,
    pub files_removed: u64,
    pub files_added: u64,
    pub bytes_rewritten: u64,
    pub conflicts: usize,
    pub duration_ms: u64,
    pub dry_run: bool,
}

/// A partition's values, as `files_by_partition` keys them.
type PartitionValues = Vec<(String, Option<String>)>;

/// Compact the small files of `d`'s table within `scope`.
pub async fn compact(
    cfg: &Config,
    d: &DatasetConfig,
    scope: Scope,
    dry_run: bool,
) -> Result<CompactionReport, MaintenanceError> {
    let started = Instant::now();
    let options = cfg.storage_options();
    let mut report = CompactionReport {
        dataset: d.name.clone(),
        dry_run,
        ..CompactionReport::default()
    };
    let Some(sink) = TableSink::existing(&d.table_uri, &options).await? else {
        return Ok(report);
    };
    let partitions = sink.files_by_partition()?;
    report.files_before = partitions.values().map(Vec::len).sum();
    report.files_after = report.files_before;
    let candidates = candidates(cfg, &partitions, scope, &mut report);
    if dry_run {
        report.partitions_compacted = candidates.len();
        report.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }
    let mut table = sink.table().clone();
    for values in &candidates {
        let properties = rewrite_properties(cfg, &sink, values).await;
        table = compact_partition(cfg, d, table, values, properties, &mut report).await?;
    }
    report.files_after = (report.files_before as u64 + report.files_added)
        .saturating_sub(report.files_removed) as usize;
    report.duration_ms = started.elapsed().as_millis() as u64;
    record_compaction(cfg, d, &report).await;
    Ok(report)
}

/// Partitions with at least two small files (a bin needs two to be worth a rewrite), within `scope`.
fn candidates(
    cfg: &Config,
    partitions: &PartitionFiles,
    scope: Scope,
    report: &mut CompactionReport,
) -> Vec<PartitionValues> {
    let target = cfg.compaction.target_file_bytes;
    let now = now_since_epoch(Utc::now());
    let mut candidates = Vec::new();
    for (values, sizes) in partitions {
        if sizes.iter().filter(|s| **s < target).count() < 2 {
            continue;
        }
        let open = partition_end(values).is_some_and(|end| end + cfg.compaction.sealed_after > now);
        if scope == Scope::Sealed && open {
            report.partitions_skipped_unsealed += 1;
            continue;
        }
        candidates.push(values.clone());
    }
    candidates
}

/// The Parquet settings of a partition's rewrite: the sink's, with the dictionary only for columns
/// whose values repeat in a sample of the partition (one of its small files), as the sink chooses
/// for each flush. Without a sample (the file cannot be read), every column keeps its dictionary.
async fn rewrite_properties(
    cfg: &Config,
    sink: &TableSink,
    values: &PartitionValues,
) -> deltalake::parquet::file::properties::WriterProperties {
    match sink
        .sample_partition(values, cfg.compaction.target_file_bytes)
        .await
    {
        Ok(sample) => sink::writer_properties_for(cfg.storage.compression, &sample),
        Err(e) => {
            warn!(table = %sink.uri(), partition = ?values, error = %e,
                "cannot sample the partition for its dictionary choice; every column keeps one");
            sink::writer_properties(cfg.storage.compression)
        }
    }
}

/// One partition's bin-packing commit. A conflict (another member compacted these files first)
/// leaves the partition for the next round.
async fn compact_partition(
    cfg: &Config,
    d: &DatasetConfig,
    table: deltalake::DeltaTable,
    values: &PartitionValues,
    properties: deltalake::parquet::file::properties::WriterProperties,
    report: &mut CompactionReport,
) -> Result<deltalake::DeltaTable, MaintenanceError> {
    let delta_error = |source| MaintenanceError::Delta {
        uri: d.table_uri.clone(),
        operation: "compaction",
        source,
    };
    let filters: Vec<_> = values
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), FilterOp::Eq, FilterValue::Scalar(v.as_deref()?))))
        .collect();
    let metadata =
        serde_json::json!({ "kind": "compaction", "dataset": d.name, "partition": values });
    let target_size = NonZeroU64::new(cfg.compaction.target_file_bytes).unwrap_or(NonZeroU64::MIN);
    let result = table
        .clone()
        .optimize()
        .with_filters(&filters)
        .with_target_size(target_size)
        .with_writer_properties(properties)
        .with_commit_properties(
            CommitProperties::default().with_metadata([("bronze".to_string(), metadata)]),
        )
        .await;
    match result {
        Ok((table, m)) => {
            report.partitions_compacted += usize::from(m.num_files_removed > 0);
            report.files_removed += m.num_files_removed;
            report.files_added += m.num_files_added;
            report.bytes_rewritten += m.files_removed.total_size.max(0) as u64;
            Ok(table)
        }
        Err(e) if sink::is_conflict(&e) => {
            report.conflicts += 1;
            warn!(dataset = %d.name, partition = ?values, error = %e, "compaction conflict; partition left for the next round");
            let mut table = table;
            table.update_state().await.map_err(delta_error)?;
            Ok(table)
        }
        Err(source) => Err(delta_error(source)),
    }
}

/// Metrics and the log line of one compaction, and what is left small after it (each rewritten
/// bin may leave one small file behind).
async fn record_compaction(cfg: &Config, d: &DatasetConfig, report: &CompactionReport) {
    let labels = [("dataset", d.name.clone())];
    metrics::counter!("bronze_compaction_runs_total", &labels).increment(1);
    metrics::counter!("bronze_compaction_files_removed_total", &labels)
        .increment(report.files_removed);
    metrics::counter!("bronze_compaction_files_added_total", &labels).increment(report.files_added);
    metrics::counter!("bronze_compaction_bytes_rewritten_total", &labels)
        .increment(report.bytes_rewritten);
    let target = cfg.compaction.target_file_bytes;
    if let Ok(Some(after)) = TableSink::existing(&d.table_uri, &cfg.storage_options()).await
        && let Ok(files) = after.files_by_partition()
    {
        let small = files.values().flatten().filter(|s| **s < target).count();
        metrics::gauge!("bronze_table_small_files", &labels).set(small as f64);
        metrics::gauge!("bronze_table_files", &labels)
            .set(files.values().map(Vec::len).sum::<usize>() as f64);
    }
    if report.files_removed > 0 {
        info!(dataset = %d.name, partitions = report.partitions_compacted, files_removed = report.files_removed,
            files_added = report.files_added, bytes = report.bytes_rewritten, ms = report.duration_ms, "compacted");
    }
}

fn now_since_epoch(now: chrono::DateTime<Utc>) -> Duration {
    Duration::from_millis(now.timestamp_millis().max(0) as u64)
}

/// When a time partition's range ends, since the epoch. `None` for partitions that are not time ranges.
fn partition_end(values: &[(String, Option<String>)]) -> Option<Duration> {
    let (_, end) = crate::transform::partition_span(values)?;
    Some(Duration::from_micros(end.max(0) as u64))
}

/// What a vacuum of one dataset did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct VacuumReport {
    pub dataset: String,
    pub files_deleted: usize,
    pub dry_run: bool,
    pub retention_s: u64,
}

/// Delete the files `d`'s table removed (compaction, replaces) longer ago than `retention` (default
/// `vacuum.retention`), never less than `vacuum.min_retention`.
pub async fn vacuum(
    cfg: &Config,
    d: &DatasetConfig,
    retention: Option<Duration>,
    dry_run: bool,
) -> Result<VacuumReport, MaintenanceError> {
    let retention = retention.unwrap_or(cfg.vacuum.retention);
    if retention < cfg.vacuum.min_retention {
        return Err(MaintenanceError::RetentionTooShort {
            asked: humantime::format_duration(retention).to_string(),
            min: humantime::format_duration(cfg.vacuum.min_retention).to_string(),
        });
    }
    let mut report = VacuumReport {
        dataset: d.name.clone(),
        dry_run,
        retention_s: retention.as_secs(),
        ..VacuumReport::default()
    };
    let Some(sink) = TableSink::existing(&d.table_uri, &cfg.storage_options()).await? else {
        return Ok(report);
    };
    let err = |source| MaintenanceError::Delta {
        uri: d.table_uri.clone(),
        operation: "vacuum",
        source,
    };
    let period = chrono::Duration::from_std(retention)
        .map_err(|e| err(deltalake::DeltaTableError::Generic(e.to_string())))?;
    // bronze's guard replaces delta-rs's (the table's deletedFileRetentionDuration, 7 days by default).
    let (_, metrics) = sink
        .table()
        .clone()
        .vacuum()
        .with_retention_period(period)
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Lite)
        .with_dry_run(dry_run)
        .await
        .map_err(err)?;
    report.files_deleted = metrics.files_deleted.len();
    if !dry_run {
        metrics::counter!("bronze_vacuum_files_deleted_total", "dataset" => d.name.clone())
            .increment(report.files_deleted as u64);
        info!(dataset = %d.name, files = report.files_deleted, retention = %humantime::format_duration(retention), "vacuumed");
    }
    Ok(report)
}

/// The background compaction of `bronze run`: every `compaction.interval`, the sealed partitions of
/// every dataset. Aborted at shutdown (an interrupted rewrite leaves only uncommitted files, which the
/// start-up sweep removes).
pub fn spawn_background(updates: ConfigUpdates) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = updates.borrow().clone();
    if !cfg.compaction.enabled {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.compaction.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: wait a full interval so start-up is not slowed by it.
        tick.tick().await;
        let mut last_error: HashMap<String, String> = HashMap::new();
        loop {
            tick.tick().await;
            // The tables fan-outs made since the last pass too.
            let cfg = updates.borrow().clone();
            for d in &cfg.datasets {
                match compact(&cfg, d, Scope::Sealed, false).await {
                    Ok(_) => {
                        last_error.remove(&d.name);
                    }
                    Err(e) => {
                        metrics::counter!("bronze_compaction_errors_total", "dataset" => d.name.clone())
                            .increment(1);
                        let text = e.to_string();
                        if last_error.get(&d.name) != Some(&text) {
                            warn!(dataset = %d.name, error = %text, "background compaction failed; retrying next interval");
                            last_error.insert(d.name.clone(), text);
                        }
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
    }

    #[test]
    fn partition_ranges_end_after_their_day_or_hour() {
        let day = partition_end(&values(&[("event_date", "1970-01-02")])).unwrap();
        assert_eq!(day.as_secs(), 2 * 86_400);
        let hour = partition_end(&values(&[
            ("event_date", "1970-01-02"),
            ("event_hour", "05"),
        ]));
        assert_eq!(hour.unwrap().as_secs(), 86_400 + 6 * 3600);
        assert_eq!(partition_end(&values(&[("region", "eu")])), None);
        assert_eq!(
            partition_end(&values(&[("event_date", "not a date")])),
            None
        );
    }
}
