//! The second batch in flight (`pipeline.commits_in_flight = 2`): while a dataset's batch commits,
//! the next one is built, encoded and uploaded, so against a store that answers in tens of
//! milliseconds a commit costs about one log write rather than an upload and a log write in turn.
//!
//! Order and exactly-once are kept by when the uploaded batch may commit, not by how: only after the
//! batch before it landed, with the files it uploaded and the usual txn checks. When that batch
//! failed, the uploaded one waits behind it (`queued`); when it was stale (another member committed
//! its offsets), the uploaded one goes with it: its files are deleted and its partitions read again
//! from the table.

use tracing::{debug, warn};

use super::state::{Flushed, PendingBatch, Upload};
use super::{PipelineError, Run};
use crate::buffer::FlushReason;

impl Run {
    /// Whether dataset `d`'s next flush can upload while its commit runs: a second slot is allowed
    /// and free, nothing older waits to commit, and there are rows.
    pub(super) fn can_upload_ahead(&self, d: usize) -> bool {
        let ds = &self.datasets[d];
        self.cfg.pipeline.commits_in_flight > 1
            && ds.commit.is_some()
            && ds.upload.is_none()
            && !ds.has_kept()
            && ds.uploader.is_some()
            && !ds.buffer.is_empty()
    }

    /// Take dataset `d`'s buffer as the next batch and build and upload it on a task of its own.
    pub(super) fn upload_ahead(&mut self, d: usize, reason: FlushReason) {
        let Some(flushed) = self.take_buffer(d) else {
            return;
        };
        let ds = &mut self.datasets[d];
        let Some(uploader) = ds.uploader.clone() else {
            return;
        };
        let (memory, rows) = flushed.size();
        let writers = super::flush::writers_for(&self.cfg.pipeline, reason, rows);
        let dataset = ds.cfg.name.clone();
        let turn = self.commit_turns.clone();
        let task = tokio::spawn(async move {
            let _turn = turn.acquire_owned().await;
            let mut batch = flushed.build(&dataset)?;
            match uploader.upload(&batch.batch, writers).await {
                Ok(written) => {
                    debug!(dataset = %dataset, batch_id = %batch.id, files = written.files(),
                        "uploaded ahead of the commit before it");
                    batch.written = Some(written);
                }
                // Its commit writes the files then, as a retry does.
                Err(e) => {
                    warn!(dataset = %dataset, error = %e, "upload ahead of the commit failed; the commit will write the files")
                }
            }
            Ok(batch)
        });
        ds.upload = Some(Upload {
            task,
            memory,
            reason,
        });
    }

    /// Once dataset `d` has no commit running: its uploaded batch, if any, commits now when nothing
    /// before it waits for a retry, else it waits behind that batch.
    pub(super) async fn promote_upload(&mut self, d: usize) -> Result<(), PipelineError> {
        if self.datasets[d].commit.is_some() {
            return Ok(());
        }
        let reason = self.datasets[d].upload.as_ref().map(|u| u.reason);
        if let (Some(reason), Some(batch)) = (reason, self.finish_upload(d).await?) {
            let ds = &mut self.datasets[d];
            if ds.pending.is_some() {
                ds.queued = Some(batch);
            } else {
                self.start_commit(d, Flushed::Kept(batch), reason);
            }
        } else if self.datasets[d].pending.is_none()
            && let Some(batch) = self.datasets[d].queued.take()
        {
            // The batch it waited behind has landed.
            self.start_commit(d, Flushed::Kept(batch), FlushReason::Age);
        }
        Ok(())
    }

    /// The batches after a stale one (uploading or queued), taken out of the dataset: they go with
    /// it, their files deleted.
    pub(super) async fn take_later_batches(
        &mut self,
        d: usize,
    ) -> Result<Vec<PendingBatch>, PipelineError> {
        let mut later: Vec<PendingBatch> = self.finish_upload(d).await?.into_iter().collect();
        later.extend(self.datasets[d].queued.take());
        for batch in &later {
            if let Some(written) = &batch.written {
                self.datasets[d].sink().discard_written(written).await;
            }
        }
        Ok(later)
    }

    /// Wait for dataset `d`'s upload, if any: its batch.
    async fn finish_upload(&mut self, d: usize) -> Result<Option<PendingBatch>, PipelineError> {
        let ds = &mut self.datasets[d];
        let Some(upload) = ds.upload.take() else {
            return Ok(None);
        };
        let name = ds.cfg.name.clone();
        let batch = upload
            .task
            .await
            .map_err(|e| {
                PipelineError::Stopped(format!("dataset `{name}`: the upload task failed: {e}"))
            })?
            .map_err(|e| {
                PipelineError::Stopped(format!(
                    "dataset `{name}`: cannot build the Arrow batch: {e}"
                ))
            })?;
        Ok(Some(batch))
    }
}
