//! Flushes and their commits, seen from the loop: a dataset's buffer taken as a batch and committed
//! by a task of its own while the loop reads on (one commit per dataset at a time), the outcome settled
//! back (positions and group offsets when it went in, a re-read when it was stale, a retry when it
//! failed), and the memory budget that decides when to flush or pause.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::state::{self, Attempt, Commit, Committed, DatasetState, Flushed};
use super::{PipelineError, Run};
use crate::audit::AuditRecord;
use crate::buffer::FlushReason;
use crate::sink::{self, CommitContext, CommitOutcome};
use crate::source;
use crate::txn::TopicPartition;

impl Run {
    pub(super) async fn flush_due(&mut self) -> Result<(), PipelineError> {
        let now = Instant::now();
        for d in 0..self.datasets.len() {
            let ds = &self.datasets[d];
            let retry_ready = ds.retry_at.is_none_or(|t| now >= t);
            if ds.has_kept() && retry_ready {
                self.flush(d, FlushReason::Age).await?;
            } else if let Some(reason) = ds.buffer.due(&ds.cfg.flush, now)
                && !ds.has_kept()
            {
                self.flush(d, reason).await?;
            }
        }
        Ok(())
    }

    /// Write and commit dataset `d`'s buffer (or a batch kept from a failed attempt) in the
    /// background: the loop goes on reading while the batch is encoded and committed. Batches commit
    /// one at a time and in order; with `commits_in_flight = 2` the next one is uploaded while one
    /// commits (see `upload_ahead`). When both are taken, the older is settled first (the wait is the
    /// backpressure).
    pub(super) async fn flush(
        &mut self,
        d: usize,
        reason: FlushReason,
    ) -> Result<(), PipelineError> {
        loop {
            let ds = &self.datasets[d];
            if ds.commit.is_none() && ds.upload.is_none() {
                break;
            }
            if self.can_upload_ahead(d) {
                self.upload_ahead(d, reason);
                return Ok(());
            }
            self.settle_one(d).await?;
        }
        let ds = &mut self.datasets[d];
        let flushed = match ds.pending.take().or_else(|| ds.queued.take()) {
            Some(batch) => Flushed::Kept(batch),
            None => match self.take_buffer(d) {
                Some(flushed) => flushed,
                None => return Ok(()),
            },
        };
        self.start_commit(d, flushed, reason);
        Ok(())
    }

    /// Dataset `d`'s buffered rows as a batch to build, their positions marked pending.
    pub(super) fn take_buffer(&mut self, d: usize) -> Option<Flushed> {
        let rows = self.datasets[d].buffer.take_unbuilt()?;
        self.positions.batch_taken(d);
        Some(Flushed::Taken {
            rows,
            id: uuid::Uuid::now_v7().to_string(),
            started_ms: chrono::Utc::now().timestamp_millis(),
        })
    }

    /// Commit `flushed` on a task of its own, lending it the dataset's sinks.
    pub(super) fn start_commit(&mut self, d: usize, flushed: Flushed, reason: FlushReason) {
        let ds = &mut self.datasets[d];
        let (memory, rows) = flushed.size();
        let ctx = CommitContext {
            group_id: self.group_id.clone(),
            run_id: self.run_id.clone(),
            dataset: ds.cfg.name.clone(),
            started_ms: flushed.started_ms(),
        };
        let writers = writers_for(&self.cfg.pipeline, reason, rows);
        let sinks = ds.lend_sinks();
        if self.cfg.pipeline.commits_in_flight > 1 {
            ds.uploader = Some(sinks.table.clone());
        }
        let turn = self.commit_turns.clone();
        let task = tokio::spawn(async move {
            // Waiting here, the batch is already counted against the memory budget: the wait is
            // backpressure like any other.
            let _turn = turn.acquire_owned().await;
            commit_batch(sinks, flushed, ctx, reason, writers).await
        });
        ds.commit = Some(Commit { task, memory });
    }

    /// Wait until nothing of dataset `d` is in flight, taking in every outcome.
    pub(super) async fn settle(&mut self, d: usize) -> Result<(), PipelineError> {
        while self.datasets[d].commit.is_some() || self.datasets[d].upload.is_some() {
            self.settle_one(d).await?;
        }
        Ok(())
    }

    /// Wait for dataset `d`'s running commit, if any, and take in its outcome; then the batch
    /// uploaded behind it becomes the running commit (or waits, when the one before it failed).
    pub(super) async fn settle_one(&mut self, d: usize) -> Result<(), PipelineError> {
        if let Some(commit) = self.datasets[d].commit.take() {
            let done = commit.task.await.map_err(|e| {
                PipelineError::Stopped(format!(
                    "dataset `{}`: the commit task failed: {e}",
                    self.datasets[d].cfg.name
                ))
            })?;
            self.committed(d, done).await?;
        }
        self.promote_upload(d).await
    }

    /// Take in the outcome of every commit that has finished, without waiting for the others.
    pub(super) async fn settle_finished(&mut self) -> Result<(), PipelineError> {
        for d in 0..self.datasets.len() {
            let ds = &self.datasets[d];
            let commit_done = ds.commit.as_ref().is_some_and(|c| c.task.is_finished());
            let upload_done =
                ds.commit.is_none() && ds.upload.as_ref().is_some_and(|u| u.task.is_finished());
            if commit_done || upload_done {
                self.settle_one(d).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn settle_all(&mut self) -> Result<(), PipelineError> {
        for d in 0..self.datasets.len() {
            self.settle(d).await?;
        }
        Ok(())
    }

    /// A commit's outcome: positions, group offsets and metrics when it went in; re-reading from the
    /// table when another member was first; the batch kept for a retry when it failed.
    async fn committed(&mut self, d: usize, done: Committed) -> Result<(), PipelineError> {
        let Committed {
            sinks,
            reason,
            attempt,
            elapsed,
        } = done;
        let ds = &mut self.datasets[d];
        ds.return_sinks(sinks);
        let Attempt {
            batch: pending,
            dead_letters,
            result,
        } = attempt.map_err(|e| {
            PipelineError::Stopped(format!(
                "dataset `{}`: cannot build the Arrow batch: {e}",
                ds.cfg.name
            ))
        })?;
        let batch_id = pending.id.as_str();
        if let Some(recorded) = dead_letters {
            for (reason, n) in &recorded.by_reason {
                metrics::counter!("bronze_dead_letters_total", "dataset" => ds.cfg.name.clone(), "reason" => reason.clone())
                    .increment(*n as u64);
            }
            ds.summary.dead_lettered += recorded.written() as u64;
            info!(dataset = %ds.cfg.name, written = recorded.written(), already_recorded = recorded.already_recorded,
                reasons = ?recorded.by_reason, batch_id = %batch_id, "dead letters committed");
        }
        match result {
            Ok(CommitOutcome::Committed {
                version,
                files,
                bytes,
                conflicts,
                table_files,
            }) => {
                let landed = Landed {
                    version,
                    files,
                    bytes,
                    conflicts,
                    table_files,
                };
                self.landed(d, &pending, landed, reason, elapsed);
            }
            Ok(CommitOutcome::Stale { partitions }) => {
                self.dropped_stale(d, &pending, &partitions).await?
            }
            Err(e) => self.failed(d, pending, e),
        }
        Ok(())
    }

    /// A batch went in: positions, group offsets, metrics.
    fn landed(
        &mut self,
        d: usize,
        pending: &state::PendingBatch,
        landed: Landed,
        reason: FlushReason,
        elapsed: Duration,
    ) {
        let Landed {
            version,
            files,
            bytes,
            conflicts,
            table_files,
        } = landed;
        let ds = &mut self.datasets[d];
        let (batch, batch_id) = (&pending.batch, pending.id.as_str());
        let rows = batch.rows();
        let name = ds.cfg.name.clone();
        metrics::counter!("bronze_flushes_total", "dataset" => name.clone(), "reason" => reason.as_str()).increment(1);
        metrics::counter!("bronze_rows_written_total", "dataset" => name.clone())
            .increment(rows as u64);
        metrics::counter!("bronze_bytes_written_total", "dataset" => name.clone())
            .increment(bytes.max(0) as u64);
        metrics::counter!("bronze_files_written_total", "dataset" => name.clone())
            .increment(files.len() as u64);
        for size in &files {
            metrics::histogram!("bronze_file_size_bytes", "dataset" => name.clone())
                .record(*size as f64);
        }
        if let Some(n) = table_files {
            metrics::gauge!("bronze_table_files", "dataset" => name.clone()).set(n as f64);
        }
        let files = files.len();
        metrics::counter!("bronze_duplicates_dropped_total", "dataset" => name.clone())
            .increment(batch.duplicates_dropped as u64);
        metrics::histogram!("bronze_flush_duration_seconds", "dataset" => name.clone())
            .record(elapsed.as_secs_f64());
        metrics::gauge!("bronze_last_commit_timestamp_seconds", "dataset" => name.clone())
            .set(chrono::Utc::now().timestamp() as f64);
        ds.redeliveries.extend(batch.source_ids.iter().copied());
        ds.adopt_table_columns();
        ds.summary.rows_written += rows as u64;
        ds.summary.duplicates_dropped += batch.duplicates_dropped as u64;
        ds.summary.files += files as u64;
        ds.summary.bytes += bytes.max(0) as u64;
        ds.summary.commits += 1;
        ds.retry_at = None;
        ds.failures = 0;
        self.options.health.commit_result(&name, None);
        info!(dataset = %name, version, rows, files, bytes, conflicts, duplicates = batch.duplicates_dropped,
            reason = reason.as_str(), batch_id = %batch_id, "committed");
        let positions: Vec<(TopicPartition, i64)> = batch
            .ranges
            .iter()
            .map(|r| (r.topic_partition(), r.last + 1))
            .filter(|(tp, _)| self.positions.contains(tp))
            .collect();
        for (tp, next) in &positions {
            if let Some(ps) = self.positions.get_mut(tp) {
                ps.committed = Some(*next);
            }
        }
        let ds = &self.datasets[d];
        let behind = ds.upload.is_some() || ds.queued.is_some();
        self.positions.batch_landed(d, &batch.ranges, behind);
        source::commit_group_offsets(&self.consumer, &positions);
    }

    /// Another member committed some of a batch's offsets first: the batch is dropped, with any
    /// uploaded behind it, and their partitions read again from the table.
    async fn dropped_stale(
        &mut self,
        d: usize,
        pending: &state::PendingBatch,
        partitions: &[TopicPartition],
    ) -> Result<(), PipelineError> {
        let later = self.take_later_batches(d).await?;
        let ds = &mut self.datasets[d];
        warn!(dataset = %ds.cfg.name, stale = %crate::txn::Listed(partitions), later = later.len(),
            "another member already committed some of these offsets; batch dropped, re-reading from the table");
        metrics::counter!("bronze_stale_batches_total", "dataset" => ds.cfg.name.clone())
            .increment(1 + later.len() as u64);
        let mut ranges = pending.batch.ranges.clone();
        for dropped in std::iter::once(pending).chain(&later) {
            if let Some(a) = &self.audit {
                a.record(AuditRecord::batch_dropped(
                    &self.run_id,
                    &ds.cfg.name,
                    &dropped.id,
                    dropped.batch.rows_in,
                ));
            }
        }
        ranges.extend(later.iter().flat_map(|b| b.batch.ranges.iter().cloned()));
        ds.needs_refresh = true;
        ds.retry_at = None;
        ds.failures = 0;
        // The whole batch is gone, so every partition in it that is still ours is read again from
        // the table's position, or from the batch's first offset where the table has none.
        for r in &ranges {
            self.datasets[d]
                .buffer
                .drop_partition(&r.topic, r.partition);
        }
        for (tp, first) in self.positions.after_stale(&ranges) {
            let pos = self.read_position(d, &tp).await?.unwrap_or(first);
            self.seek(&tp, pos)?;
        }
        Ok(())
    }

    /// A commit failed: the batch is kept and retried after a backoff.
    fn failed(&mut self, d: usize, pending: state::PendingBatch, e: crate::sink::SinkError) {
        let ds = &mut self.datasets[d];
        let batch_id = pending.id.as_str();
        ds.failures += 1;
        let backoff = Duration::from_millis(250 * 2u64.pow(ds.failures.min(4)));
        metrics::counter!("bronze_commit_errors_total", "dataset" => ds.cfg.name.clone())
            .increment(1);
        error!(dataset = %ds.cfg.name, error = %e, retry_in = ?backoff, "commit failed; batch kept for retry");
        if let Some(a) = &self.audit {
            a.record(AuditRecord::commit_failed(
                &self.run_id,
                &ds.cfg.name,
                batch_id,
                &e.to_string(),
            ));
        }
        self.options
            .health
            .commit_result(&ds.cfg.name, Some(e.to_string()));
        ds.retry_at = Some(Instant::now() + backoff);
        ds.pending = Some(pending);
    }

    /// `--until-caught-up`: commit what is buffered (or a kept batch, once its backoff is over) and wait
    /// for it; whether nothing is left uncommitted. Unlike [`Run::flush_all`], a failed commit keeps its
    /// batch for the next check: a member that cannot commit yet keeps waiting, as the members waiting
    /// for its partitions do, rather than end without its rows.
    pub(super) async fn commit_caught_up(&mut self) -> Result<bool, PipelineError> {
        let now = Instant::now();
        for d in 0..self.datasets.len() {
            if self.datasets[d].retry_at.is_none_or(|t| now >= t) {
                self.flush(d, FlushReason::CaughtUp).await?;
                self.settle(d).await?;
            }
        }
        Ok(self.datasets.iter().all(|ds| !ds.has_kept()))
    }

    pub(super) async fn flush_all(&mut self, reason: FlushReason) -> Result<(), PipelineError> {
        for d in 0..self.datasets.len() {
            for attempt in 0..5 {
                self.flush(d, reason).await?;
                self.settle(d).await?;
                if !self.datasets[d].has_kept() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
            if self.datasets[d].has_kept() {
                return Err(PipelineError::Stopped(format!(
                    "dataset `{}`: could not commit its last batch; it will be re-read on restart",
                    self.datasets[d].cfg.name
                )));
            }
        }
        Ok(())
    }

    /// Keep memory under the budget. Buffers and the batches being committed get half of it: a commit
    /// holds its rows twice for a while (Arrow and encoded Parquet), and builders over-allocate as they
    /// grow. Over half, a running commit is waited for, or else the largest buffer is flushed; over the
    /// whole budget (batches that cannot be committed right now), the partitions of those datasets are
    /// paused until their batches are committed.
    pub(super) async fn enforce_budget(&mut self) -> Result<(), PipelineError> {
        let used = |ds: &[DatasetState]| ds.iter().map(DatasetState::memory_bytes).sum::<usize>();
        let flush_at = self.budget / 2;
        let mut attempts = 0;
        while used(&self.datasets) >= flush_at && attempts < 2 * self.datasets.len() {
            attempts += 1;
            // Waiting frees the batch's memory; flushing another buffer now would only add a commit.
            if let Some(running) = (0..self.datasets.len())
                .find(|&d| self.datasets[d].commit.is_some() || self.datasets[d].upload.is_some())
            {
                self.settle_one(running).await?;
                continue;
            }
            let Some(largest) = (0..self.datasets.len())
                .filter(|&d| !self.datasets[d].has_kept() && !self.datasets[d].buffer.is_empty())
                .max_by_key(|&d| self.datasets[d].buffer.bytes())
            else {
                break;
            };
            self.flush(largest, FlushReason::Memory).await?;
        }
        let over = used(&self.datasets) >= self.budget;
        for (tp, ps) in self.positions.iter_mut() {
            // A waiting partition (registry, widening) is paused already and resumes on its own clock.
            let ds = &self.datasets[ps.dataset];
            // Also while a retry is running: the failed batch is in the commit then, not pending.
            let in_flight = ds.has_kept() || ds.commit.is_some() || ds.upload.is_some();
            let blocked = over && in_flight && ps.waiting_until.is_none();
            if blocked && !ps.paused_for_memory && !ps.stopped {
                source::pause(&self.consumer, tp);
                ps.paused_for_memory = true;
            } else if !blocked && ps.paused_for_memory {
                source::resume(&self.consumer, tp);
                ps.paused_for_memory = false;
            }
        }
        Ok(())
    }
}

/// Writers that encode a batch at once: the last flush of a catch-up run or a shutdown has nothing
/// left to overlap its encoding, so it takes the cores (see `final_flush_writers`).
pub(super) fn writers_for(
    cfg: &crate::config::PipelineConfig,
    reason: FlushReason,
    rows: usize,
) -> usize {
    match reason {
        FlushReason::CaughtUp | FlushReason::Shutdown => cfg.final_flush_writers_for(rows),
        _ => 1,
    }
}

/// What a commit that went in reports.
struct Landed {
    version: u64,
    files: Vec<i64>,
    bytes: i64,
    conflicts: usize,
    table_files: Option<usize>,
}

/// Commit one batch: its dead letters first (if the process dies before the rows' commit, the next
/// owner re-reads these offsets and finds their dead letters already recorded), then its rows with
/// their offsets. Runs as a task of its own, owning the dataset's sinks until it hands them back.
async fn commit_batch(
    mut sinks: Box<state::DatasetSinks>,
    flushed: Flushed,
    ctx: CommitContext,
    reason: FlushReason,
    writers: usize,
) -> Committed {
    let started = Instant::now();
    let mut batch = match flushed.build(&ctx.dataset) {
        Ok(batch) => batch,
        Err(e) => {
            return Committed {
                sinks,
                reason,
                attempt: Err(e),
                elapsed: started.elapsed(),
            };
        }
    };
    let mut dead_letters = None;
    let mut recorded = Ok(());
    if !batch.dead_letters_done && !batch.batch.dead_letters.is_empty() {
        match sinks
            .dead_letters
            .record(&batch.batch.dead_letters, &ctx, &batch.id)
            .await
        {
            Ok(r) => {
                dead_letters = Some(r);
                batch.dead_letters_done = true;
                sink::failpoint("after_dead_letters");
            }
            Err(e) => recorded = Err(e),
        }
    }
    let result = match recorded {
        Ok(()) => {
            sinks
                .table
                .commit(&batch.batch, &ctx, &batch.id, writers, &mut batch.written)
                .await
        }
        Err(e) => Err(e),
    };
    Committed {
        sinks,
        reason,
        attempt: Ok(Attempt {
            batch,
            dead_letters,
            result,
        }),
        elapsed: started.elapsed(),
    }
}
