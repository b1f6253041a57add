//! Per-dataset and per-partition bookkeeping of a run.

use std::time::{Duration, Instant};

use arrow::error::ArrowError;

use crate::buffer::{DatasetBuffer, FlushBatch, FlushReason, RedeliveryWindow, Unbuilt};
use crate::config::DatasetConfig;
use crate::decode::Decoder;
use crate::sink::dead_letters::{DeadLetterSink, Recorded};
use crate::sink::{CommitOutcome, SinkError, TableSink};
use crate::transform::Mapper;

/// Counters of one dataset over a run.
#[derive(Debug, Clone, Default)]
pub struct DatasetSummary {
    pub events: u64,
    pub skipped: u64,
    pub errors: u64,
    pub dead_lettered: u64,
    pub rows_written: u64,
    pub duplicates_dropped: u64,
    /// Exact redeliveries of committed source events, dropped.
    pub redeliveries: u64,
    pub commits: u64,
    pub files: u64,
    pub bytes: u64,
}

/// What a run did, printed when it ends.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_id: String,
    pub elapsed: Duration,
    /// Name, counters and table version at the end.
    pub datasets: Vec<(String, DatasetSummary, Option<u64>)>,
}

impl RunSummary {
    /// Sums over all datasets, for the ledger's `run_finished` row.
    pub fn totals(&self) -> crate::audit::RunTotals {
        let mut t = crate::audit::RunTotals::default();
        for (_, s, _) in &self.datasets {
            t.rows_in += s.events;
            t.rows_written += s.rows_written;
            t.rows_deduplicated += s.duplicates_dropped;
            t.rows_dead_lettered += s.dead_lettered;
            t.files += s.files;
            t.bytes += s.bytes;
        }
        t
    }
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "run {} finished in {:.1}s",
            self.run_id,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "{:<20} {:>10} {:>10} {:>8} {:>10} {:>8} {:>8} {:>7} {:>12} {:>8}",
            "dataset",
            "events",
            "rows",
            "skipped",
            "duplicates",
            "dead",
            "errors",
            "files",
            "bytes",
            "version"
        )?;
        for (name, s, version) in &self.datasets {
            writeln!(
                f,
                "{:<20} {:>10} {:>10} {:>8} {:>10} {:>8} {:>8} {:>7} {:>12} {:>8}",
                name,
                s.events,
                s.rows_written,
                s.skipped,
                s.duplicates_dropped,
                s.dead_lettered,
                s.errors,
                s.files,
                s.bytes,
                version.map_or("-".to_string(), |v| v.to_string())
            )?;
        }
        Ok(())
    }
}

/// A batch taken from the buffer and not committed yet.
pub(super) struct PendingBatch {
    pub batch: FlushBatch,
    pub id: String,
    /// When it was taken from the buffer, ms since the epoch.
    pub started_ms: i64,
    /// Its dead letters are committed (only the rows are left to commit).
    pub dead_letters_done: bool,
    /// Files uploaded by a failed attempt, for the retry to commit (see [`crate::sink::Written`]).
    pub written: Option<crate::sink::Written>,
}

/// What a flush hands to its commit task: rows just taken from the buffer, whose batch the task builds,
/// or a batch kept from a failed attempt.
pub(super) enum Flushed {
    Taken {
        rows: Unbuilt,
        id: String,
        started_ms: i64,
    },
    Kept(PendingBatch),
}

impl Flushed {
    /// When its rows were taken from the buffer, ms since the epoch.
    pub fn started_ms(&self) -> i64 {
        match self {
            Flushed::Taken { started_ms, .. } => *started_ms,
            Flushed::Kept(batch) => batch.started_ms,
        }
    }

    /// Its memory and rows: as the buffer counted them until it is built, the Arrow memory after.
    pub fn size(&self) -> (usize, usize) {
        match self {
            Flushed::Taken { rows, .. } => (rows.bytes(), rows.rows()),
            Flushed::Kept(batch) => (batch.batch.memory_bytes(), batch.batch.rows()),
        }
    }

    /// The batch, built if it is not yet.
    pub fn build(self, dataset: &str) -> Result<PendingBatch, ArrowError> {
        match self {
            Flushed::Kept(batch) => Ok(batch),
            Flushed::Taken {
                rows,
                id,
                started_ms,
            } => {
                let started = Instant::now();
                let batch = rows.build(&id)?;
                metrics::histogram!("bronze_flush_build_seconds", "dataset" => dataset.to_string())
                    .record(started.elapsed().as_secs_f64());
                Ok(PendingBatch {
                    batch,
                    id,
                    started_ms,
                    dead_letters_done: false,
                    written: None,
                })
            }
        }
    }
}

/// A dataset's table and its dead-letter table: they travel together to the task that commits a batch.
pub(super) struct DatasetSinks {
    pub table: TableSink,
    pub dead_letters: DeadLetterSink,
}

/// A batch being committed in the background, while the loop goes on reading.
pub(super) struct Commit {
    pub task: tokio::task::JoinHandle<Committed>,
    /// The batch's memory: as the buffer counted its rows until the task builds it, the Arrow memory
    /// of a batch kept from a failed attempt (the Parquet writer's buffers come on top).
    pub memory: usize,
}

/// The next batch of a dataset, encoded and uploaded while the one before it commits
/// (`pipeline.commits_in_flight = 2`). It commits, with these files, only once that one has landed.
pub(super) struct Upload {
    pub task: tokio::task::JoinHandle<Result<PendingBatch, ArrowError>>,
    /// As [`Commit::memory`].
    pub memory: usize,
    pub reason: FlushReason,
}

/// What a background commit hands back: the sinks and how it went.
pub(super) struct Committed {
    pub sinks: Box<DatasetSinks>,
    pub reason: FlushReason,
    /// The attempt, or why the batch could not be built (nothing was written then).
    pub attempt: Result<Attempt, ArrowError>,
    pub elapsed: Duration,
}

/// One attempt to commit a batch.
pub(super) struct Attempt {
    pub batch: PendingBatch,
    /// The batch's dead letters recorded by this attempt (none when there were none, or earlier).
    pub dead_letters: Option<Recorded>,
    pub result: Result<CommitOutcome, SinkError>,
}

pub struct DatasetState {
    pub(super) cfg: DatasetConfig,
    pub(super) decoder: Decoder,
    pub(super) mapper: Mapper,
    /// Clones of `mapper` for the lanes (see `lanes`), kept while its contract holds.
    pub(super) spares: Vec<Mapper>,
    pub(super) buffer: DatasetBuffer,
    /// Here between commits, away (in `commit`) while one runs: the loop settles a commit before it
    /// touches the table again.
    sinks: Option<Box<DatasetSinks>>,
    pub(super) commit: Option<Commit>,
    /// The batch after the committing one, uploading meanwhile (see [`Upload`]).
    pub(super) upload: Option<Upload>,
    /// A copy of the table as the running commit found it, which writes the uploading batch's files.
    pub(super) uploader: Option<TableSink>,
    /// Source events committed recently, to drop exact redeliveries.
    pub(super) redeliveries: RedeliveryWindow,
    /// A taken batch whose commit failed, kept to retry (its rows are no longer in `buffer`).
    pub(super) pending: Option<PendingBatch>,
    /// A batch uploaded ahead of `pending`, waiting for it to land: batches commit in order.
    pub(super) queued: Option<PendingBatch>,
    pub(super) retry_at: Option<Instant>,
    pub(super) failures: u32,
    /// The table must be re-read before its txn versions are trusted (after a rebalance).
    pub(super) needs_refresh: bool,
    /// Drift already reported in this run: (kind, column, action).
    pub(super) drift_reported: std::collections::HashSet<(&'static str, String, &'static str)>,
    /// New columns held for review in this run and not approved yet.
    pub(super) review_pending: std::collections::BTreeSet<String>,
    pub(super) summary: DatasetSummary,
}

impl DatasetState {
    pub(super) fn new(
        cfg: DatasetConfig,
        decoder: Decoder,
        mapper: Mapper,
        buffer: DatasetBuffer,
        sink: TableSink,
        dead_letter_sink: DeadLetterSink,
    ) -> Self {
        DatasetState {
            redeliveries: RedeliveryWindow::new(cfg.redelivery_window),
            cfg,
            decoder,
            mapper,
            spares: Vec::new(),
            buffer,
            sinks: Some(Box::new(DatasetSinks {
                table: sink,
                dead_letters: dead_letter_sink,
            })),
            commit: None,
            pending: None,
            queued: None,
            upload: None,
            uploader: None,
            retry_at: None,
            failures: 0,
            needs_refresh: true,
            drift_reported: Default::default(),
            review_pending: Default::default(),
            summary: DatasetSummary::default(),
        }
    }

    /// The dataset's table. Only between commits: callers settle a running commit first.
    pub(super) fn sink(&mut self) -> &mut TableSink {
        &mut self
            .sinks
            .as_mut()
            .expect("a running commit is settled before the table is used")
            .table
    }

    /// Hand the sinks to a commit task.
    pub(super) fn lend_sinks(&mut self) -> Box<DatasetSinks> {
        self.sinks
            .take()
            .expect("one commit at a time: the running one is settled first")
    }

    pub(super) fn return_sinks(&mut self, sinks: Box<DatasetSinks>) {
        self.sinks = Some(sinks);
    }

    /// Whether a batch waits to commit (a failed one kept for its retry, or one uploaded behind it).
    pub(super) fn has_kept(&self) -> bool {
        self.pending.is_some() || self.queued.is_some()
    }

    /// The table version loaded, when no commit is running.
    pub(super) fn version(&self) -> Option<u64> {
        self.sinks.as_ref().and_then(|s| s.table.version())
    }

    /// Take on columns the table gained from elsewhere (another member evolved it, an operator approved a
    /// proposal), so their fields land in them from the next message on.
    pub(super) fn adopt_table_columns(&mut self) {
        let schema = self
            .mapper
            .contract()
            .table_schema(self.mapper.partition_columns());
        // The buffer's builders have the old types: only an empty buffer can take a widened column.
        if self.buffer.is_empty() {
            match self.sink().widened_columns(&schema) {
                Ok(widened) if !widened.is_empty() => {
                    super::start::adopt_widened(&mut self.mapper, &widened);
                    self.buffer = super::buffer_for(&self.mapper);
                    tracing::info!(dataset = %self.cfg.name, columns = ?widened, "taking on columns the table widened");
                }
                _ => {}
            }
        }
        if !self.mapper.contract().evolves() {
            return;
        }
        let extra = match self.sink().columns_beyond(&schema) {
            Ok(extra) if !extra.is_empty() => extra,
            _ => return,
        };
        let names: Vec<&str> = extra.iter().map(|f| f.name().as_str()).collect();
        match self.mapper.adopt(&extra) {
            Ok(()) => {
                tracing::info!(dataset = %self.cfg.name, columns = ?names, "taking on columns the table gained");
                self.review_pending.retain(|c| !names.contains(&c.as_str()));
                metrics::gauge!("bronze_schema_proposals_pending", "dataset" => self.cfg.name.clone())
                    .set(self.review_pending.len() as f64);
                super::sync_columns(&self.mapper, &mut self.buffer);
            }
            Err(e) => {
                tracing::warn!(dataset = %self.cfg.name, error = %e, "cannot take on the table's new columns")
            }
        }
    }

    /// Fill the redelivery window with the newest committed source events of the table, so exact
    /// redeliveries are also caught across a restart (and for rows other members committed before).
    pub(super) async fn seed_redeliveries(
        &mut self,
        storage_options: &std::collections::HashMap<String, String>,
    ) -> Result<usize, crate::sink::SinkError> {
        if self.cfg.redelivery_window == 0 || self.cfg.key_columns.is_empty() {
            return Ok(0);
        }
        let uri = self.sink().uri().to_string();
        let contract = self.mapper.contract();
        let mut columns: Vec<(&str, arrow::datatypes::DataType)> = Vec::new();
        for k in &self.cfg.key_columns {
            let Some(i) = contract.index_of(k) else {
                return Ok(0);
            };
            columns.push((k.as_str(), contract.columns[i].arrow_type()));
        }
        columns.push(("_source_pos", arrow::datatypes::DataType::Utf8));
        columns.push(("_op", arrow::datatypes::DataType::Utf8));
        let batches = crate::sink::scan::newest_rows(
            &uri,
            storage_options,
            &columns,
            self.cfg.redelivery_window,
        )
        .await?;
        let ids = crate::buffer::event_ids_of(&batches, self.cfg.key_columns.len());
        let n = ids.len();
        self.redeliveries.extend(ids);
        Ok(n)
    }

    /// Buffered bytes plus the Arrow memory of a batch waiting to be committed or being committed.
    pub(super) fn memory_bytes(&self) -> usize {
        self.buffer.bytes()
            + self.pending.as_ref().map_or(0, |p| p.batch.memory_bytes())
            + self.commit.as_ref().map_or(0, |c| c.memory)
            + self.upload.as_ref().map_or(0, |u| u.memory)
            + self.queued.as_ref().map_or(0, |p| p.batch.memory_bytes())
    }
}
