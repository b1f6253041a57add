//! The commit protocol of streaming batches (upload, verify the txn versions, commit data and offsets
//! together) and the single commit attempts every other writer builds on.

use std::time::Instant;

use arrow::datatypes::Schema;
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt as _;
use serde_json::json;
use tracing::warn;

use super::failpoints::{failpoint, held_commit, injected_outage};
use super::{SinkError, TableSink, write};
use crate::buffer::FlushBatch;
use crate::txn::{OffsetRange, TopicPartition};

/// Identity of the writer, recorded in every commit.
#[derive(Debug, Clone)]
pub struct CommitContext {
    pub group_id: String,
    pub run_id: String,
    pub dataset: String,
    /// When the flush began (ms since the epoch), so the ledger can tell how long it took.
    pub started_ms: i64,
}

impl CommitContext {
    /// The txn app id of streaming rows of `range`'s partition (see [`crate::txn::streaming`]).
    pub fn app_id(&self, range: &OffsetRange) -> String {
        crate::txn::streaming(&self.group_id, &range.topic_partition())
    }
}

#[derive(Debug)]
pub enum CommitOutcome {
    Committed {
        version: u64,
        /// Size in bytes of each file added.
        files: Vec<i64>,
        bytes: i64,
        conflicts: usize,
        /// Live files in the table after this commit, when the snapshot could tell.
        table_files: Option<usize>,
    },
    /// Some partitions' offsets were already in the table: nothing was committed.
    Stale { partitions: Vec<TopicPartition> },
}

/// Files of a batch uploaded by an attempt whose commit failed, kept with the batch for its retry.
///
/// A failed commit may still land: its log entry written and the answer lost, or its PUT still on
/// its way. Deleting its files would then lose rows, and uploading new ones for each retry would
/// leave one orphan per attempt through an outage; so the retry commits these same files (and finds
/// them in the table if the first attempt landed after all).
#[derive(Debug, Clone)]
pub struct Written {
    adds: Vec<Add>,
    /// The table schema the files were conformed to: once it changes, the files are written anew.
    table_schema: arrow::datatypes::SchemaRef,
}

impl Written {
    pub fn files(&self) -> usize {
        self.adds.len()
    }
}

impl TableSink {
    /// Write `flush` as Parquet, `writers` files at once (see [`TableSink::write_files_in`]), and
    /// commit it with its offsets. `written` holds the files of an earlier failed attempt, reused
    /// while the table schema is the same; after a failure it holds this attempt's files.
    pub async fn commit(
        &mut self,
        flush: &FlushBatch,
        ctx: &CommitContext,
        batch_id: &str,
        writers: usize,
        written: &mut Option<Written>,
    ) -> Result<CommitOutcome, SinkError> {
        let table_schema = self.arrow_schema()?;
        let adds = match written.take() {
            Some(w) if w.table_schema == table_schema => w.adds,
            stale => {
                if let Some(w) = stale {
                    // The schema changed, so the table moved past the version the failed attempt
                    // aimed at: that attempt can no longer land, and its files can go.
                    self.discard_files(&w.adds).await;
                }
                let adds = self.write_files_in(&flush.batches, writers).await?;
                failpoint("after_upload");
                adds
            }
        };
        held_commit().await;
        let result = if injected_outage() {
            Err(SinkError::InjectedOutage {
                uri: self.uri.clone(),
            })
        } else {
            self.commit_adds(&adds, flush, ctx, batch_id).await
        };
        if matches!(result, Ok(CommitOutcome::Committed { .. })) {
            return result;
        }
        // Stale or failed: either may hide an earlier attempt of this batch that landed with its
        // answer lost. One read of the newest version tells, and serves the discard.
        let reread = self.refresh().await;
        if reread.is_ok() && write::all_live(&self.table, &adds) {
            return Ok(self.landed_unanswered(&adds));
        }
        match result {
            Ok(stale) => {
                match reread {
                    Ok(()) => self.discard_files_not_in(&adds, &self.table).await,
                    Err(e) => write::keep_for_sweep(&self.uri, &adds, &e.to_string()),
                }
                Ok(stale)
            }
            Err(e) => {
                *written = Some(Written { adds, table_schema });
                Err(e)
            }
        }
    }

    /// Upload `flush`'s files ahead of its commit (while the batch before it commits): the commit,
    /// given them as `written`, only writes the log entry.
    pub async fn upload(&self, flush: &FlushBatch, writers: usize) -> Result<Written, SinkError> {
        let table_schema = self.arrow_schema()?;
        let adds = self.write_files_in(&flush.batches, writers).await?;
        failpoint("after_upload");
        Ok(Written { adds, table_schema })
    }

    /// Delete the files of a batch that will not commit (see [`TableSink::discard_files`]).
    pub async fn discard_written(&self, written: &Written) {
        self.discard_files(&written.adds).await;
    }

    /// Every file of `adds` is in the newest version (just read): an earlier attempt of this batch
    /// landed though its writer was told otherwise (a lost answer), so the batch is committed.
    fn landed_unanswered(&self, adds: &[Add]) -> CommitOutcome {
        warn!(table = %self.uri, files = adds.len(),
            "a commit of this batch landed although its answer was lost; counted as committed");
        metrics::counter!("bronze_commits_landed_unanswered_total").increment(1);
        CommitOutcome::Committed {
            version: self.version().unwrap_or_default(),
            files: adds.iter().map(|a| a.size).collect(),
            bytes: adds.iter().map(|a| a.size).sum(),
            conflicts: 0,
            table_files: self.table.snapshot().ok().map(|s| s.log_data().num_files()),
        }
    }

    /// One commit attempt of `adds` with `txns`, against the loaded snapshot: `Ok(None)` when a
    /// concurrent commit won (the caller re-reads and decides again).
    /// `schema`, the schema of the rows added, evolves the table where it has columns the table lacks.
    pub async fn try_commit(
        &mut self,
        adds: &[Add],
        txns: Vec<Transaction>,
        metadata: Vec<(String, serde_json::Value)>,
        schema: Option<&Schema>,
    ) -> Result<Option<u64>, SinkError> {
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let mut actions: Vec<Action> = match schema {
            Some(schema) => self.evolution(schema)?.into_iter().collect(),
            None => Vec::new(),
        };
        actions.extend(adds.iter().cloned().map(Action::Add));
        self.try_commit_actions(actions, txns, metadata, operation)
            .await
    }

    /// Replace files: `removes` (from the loaded snapshot) and `adds` in one commit attempt (a
    /// replaceWhere when `predicate` names the partitions); `schema`, the rows added, evolves the table
    /// where it has columns the table lacks. `Ok(None)` when another commit came first.
    pub async fn try_commit_replace(
        &mut self,
        removes: Vec<deltalake::kernel::Remove>,
        adds: &[Add],
        txns: Vec<Transaction>,
        metadata: Vec<(String, serde_json::Value)>,
        predicate: Option<String>,
        schema: Option<&Schema>,
    ) -> Result<Option<u64>, SinkError> {
        let operation = DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: None,
            predicate,
        };
        let mut actions: Vec<Action> = match schema {
            Some(schema) => self.evolution(schema)?.into_iter().collect(),
            None => Vec::new(),
        };
        actions.extend(removes.into_iter().map(Action::Remove));
        actions.extend(adds.iter().cloned().map(Action::Add));
        self.try_commit_actions(actions, txns, metadata, operation)
            .await
    }

    /// Every live file of the partitions `targets` (sorted partition values), as remove actions.
    pub fn removes_in(
        &self,
        targets: &std::collections::BTreeSet<Vec<(String, Option<String>)>>,
    ) -> Result<Vec<deltalake::kernel::Remove>, SinkError> {
        self.removes_where(|values| targets.contains(values))
    }

    /// Every live file whose sorted partition values satisfy `replaced`, as remove actions.
    pub fn removes_where(
        &self,
        replaced: impl Fn(&Vec<(String, Option<String>)>) -> bool,
    ) -> Result<Vec<deltalake::kernel::Remove>, SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        Ok(snapshot
            .log_data()
            .iter()
            .filter(|f| {
                let mut values: Vec<(String, Option<String>)> =
                    f.partition_values_map().into_iter().collect();
                values.sort();
                replaced(&values)
            })
            .map(|f| f.remove_action(true))
            .collect())
    }

    /// One commit attempt against the loaded snapshot: `Ok(None)` when another commit came first.
    pub(super) async fn try_commit_actions(
        &mut self,
        actions: Vec<Action>,
        txns: Vec<Transaction>,
        metadata: Vec<(String, serde_json::Value)>,
        operation: DeltaOperation,
    ) -> Result<Option<u64>, SinkError> {
        let committed_txns = txns.clone();
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        // delta-rs cleans up expired log entries after every commit, listing the whole log each
        // time (a round trip per commit); entries can only go once a checkpoint covers them, so the
        // commit that writes one (every `checkpointInterval`) cleans up, and the others do not.
        let config = snapshot.table_config();
        let checkpoints =
            (snapshot.version() + 2).is_multiple_of(config.checkpoint_interval().get());
        let properties = CommitProperties::default()
            .with_application_transactions(txns)
            // Retrying is the caller's: it must re-verify its txn versions against every new version.
            .with_max_retries(0)
            .with_cleanup_expired_logs(Some(config.enable_expired_log_cleanup() && checkpoints))
            .with_metadata(metadata);
        let result = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await;
        match result {
            Ok(finalized) => {
                // The post-commit snapshot delta-rs read is the table as of this commit: taking it
                // saves reading the entry again.
                let version = finalized.version();
                self.table.state = Some(finalized.snapshot);
                self.own_commit_snapshot = true;
                self.txns.committed(version, &committed_txns);
                Ok(Some(version))
            }
            Err(e) if is_conflict(&e) => {
                self.own_commit_snapshot = false;
                Ok(None)
            }
            Err(e) => {
                self.own_commit_snapshot = false;
                Err(self.delta_err(e))
            }
        }
    }

    async fn commit_adds(
        &mut self,
        adds: &[Add],
        flush: &FlushBatch,
        ctx: &CommitContext,
        batch_id: &str,
    ) -> Result<CommitOutcome, SinkError> {
        let started = Instant::now();
        let mut retry = self.retry("streaming");
        loop {
            retry.next(self).await?;
            let stale = self.stale_partitions(&flush.ranges, ctx).await?;
            if !stale.is_empty() {
                return Ok(CommitOutcome::Stale { partitions: stale });
            }
            let now_ms = Some(chrono::Utc::now().timestamp_millis());
            let txns: Vec<Transaction> = flush
                .ranges
                .iter()
                .map(|r| Transaction::new_with_last_update(ctx.app_id(r), r.last, now_ms))
                .collect();
            let metadata = commit_metadata(flush, ctx, batch_id);
            let schema = flush.batches.first().map(|b| b.schema_ref().as_ref());
            let Some(version) = self.try_commit(adds, txns, metadata, schema).await? else {
                if !retry.unread() {
                    metrics::counter!("bronze_commit_conflicts_total", "dataset" => ctx.dataset.clone())
                        .increment(1);
                }
                continue;
            };
            metrics::histogram!("bronze_commit_duration_seconds", "dataset" => ctx.dataset.clone())
                .record(started.elapsed().as_secs_f64());
            let table_files = self.table.snapshot().ok().map(|s| s.log_data().num_files());
            return Ok(CommitOutcome::Committed {
                version,
                files: adds.iter().map(|a| a.size).collect(),
                bytes: adds.iter().map(|a| a.size).sum(),
                conflicts: retry.conflicts(),
                table_files,
            });
        }
    }

    async fn stale_partitions(
        &self,
        ranges: &[OffsetRange],
        ctx: &CommitContext,
    ) -> Result<Vec<TopicPartition>, SinkError> {
        let mut stale = Vec::new();
        for r in ranges {
            if let Some(v) = self.committed_offset(&ctx.app_id(r)).await?
                && v >= r.first
            {
                stale.push(r.topic_partition());
            }
        }
        Ok(stale)
    }
}

pub(crate) fn is_conflict(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(_)
                | TransactionError::VersionAlreadyExists(_)
                | TransactionError::MaxCommitAttempts(_)
        }
    ) || matches!(e, DeltaTableError::VersionAlreadyExists(_))
}

fn commit_metadata(
    flush: &FlushBatch,
    ctx: &CommitContext,
    batch_id: &str,
) -> Vec<(String, serde_json::Value)> {
    let ranges: Vec<serde_json::Value> = flush
        .ranges
        .iter()
        .map(|r| {
            json!({"topic": r.topic, "partition": r.partition, "first_offset": r.first,
                   "last_offset": r.last, "rows": r.rows})
        })
        .collect();
    vec![(
        "bronze".to_string(),
        json!({
            "run_id": ctx.run_id,
            "batch_id": batch_id,
            "dataset": ctx.dataset,
            "flush_started_ms": ctx.started_ms,
            "offsets": ranges,
            "rows_in": flush.rows_in,
            "rows_written": flush.rows(),
            "duplicates_dropped": flush.duplicates_dropped,
        }),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::testing::{int64_rows, int64_table as open};

    /// A flush of partition `t[0]` offsets `first..=last`, one row per offset.
    fn flush(first: i64, last: i64) -> FlushBatch {
        FlushBatch {
            batches: vec![int64_rows(first..=last)],
            ranges: vec![OffsetRange {
                topic: "t".into(),
                partition: 0,
                first,
                last,
                rows: (last - first + 1) as usize,
            }],
            rows_in: (last - first + 1) as usize,
            duplicates_dropped: 0,
            dead_letters: Vec::new(),
            source_ids: Vec::new(),
        }
    }

    fn ctx(run: &str) -> CommitContext {
        CommitContext {
            group_id: "g".into(),
            run_id: run.into(),
            dataset: "d".into(),
            started_ms: 0,
        }
    }

    fn parquet_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            })
            .count()
    }

    #[tokio::test]
    async fn a_zombies_batch_of_offsets_the_new_owner_committed_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // Both loaded the table before either committed: the zombie lost t[0] in a rebalance but
        // still holds a batch of it.
        let mut owner = open(dir.path()).await;
        let mut zombie = open(dir.path()).await;
        let done = owner
            .commit(&flush(0, 9), &ctx("owner"), "b1", 1, &mut None)
            .await
            .unwrap();
        assert!(
            matches!(done, CommitOutcome::Committed { version: 1, .. }),
            "{done:?}"
        );
        let stale = zombie
            .commit(&flush(5, 14), &ctx("zombie"), "b2", 1, &mut None)
            .await
            .unwrap();
        let CommitOutcome::Stale { partitions } = stale else {
            panic!("a zombie's batch must not commit: {stale:?}");
        };
        assert_eq!(partitions, vec![TopicPartition::new("t", 0)]);
        // Nothing doubled: the table has the owner's rows and position only, and the zombie's upload
        // is deleted (not left as an orphan).
        zombie.refresh().await.unwrap();
        assert_eq!(zombie.stats(0).unwrap().rows, 10);
        let app_id = crate::txn::streaming("g", &TopicPartition::new("t", 0));
        assert_eq!(zombie.committed_offset(&app_id).await.unwrap(), Some(9));
        assert_eq!(parquet_files(dir.path()), 1);
        // The offsets after the owner's position are not stale: the next batch commits.
        let next = zombie
            .commit(&flush(10, 14), &ctx("owner"), "b3", 1, &mut None)
            .await
            .unwrap();
        assert!(
            matches!(next, CommitOutcome::Committed { version: 2, .. }),
            "{next:?}"
        );
        assert_eq!(zombie.committed_offset(&app_id).await.unwrap(), Some(14));
    }

    #[tokio::test]
    async fn a_commit_that_landed_unanswered_is_found_not_dropped() {
        // The log entry was written but the writer saw an error (a 500 after the PUT, a timeout):
        // its retry, with the same files, must find them in the table and neither drop nor delete
        // them (the stale check alone would call the batch another member's).
        let dir = tempfile::tempdir().unwrap();
        let mut sink = open(dir.path()).await;
        let mut landed_by = open(dir.path()).await;
        let batch = flush(0, 9);
        let adds = sink.write_files(&batch.batches).await.unwrap();
        let app_id = ctx("r").app_id(&batch.ranges[0]);
        let txns = vec![Transaction::new(app_id.clone(), 9)];
        let first = landed_by.try_commit(&adds, txns, Vec::new(), None).await;
        assert_eq!(first.unwrap(), Some(1));
        let mut written = Some(Written {
            adds: adds.clone(),
            table_schema: sink.arrow_schema().unwrap(),
        });
        let retry = sink
            .commit(&batch, &ctx("r"), "b", 1, &mut written)
            .await
            .unwrap();
        assert!(
            matches!(retry, CommitOutcome::Committed { version: 1, .. }),
            "{retry:?}"
        );
        assert!(written.is_none());
        assert_eq!(sink.stats(0).unwrap().rows, 10);
        assert_eq!(sink.committed_offset(&app_id).await.unwrap(), Some(9));
        assert_eq!(parquet_files(dir.path()), 1, "the committed file is kept");
    }

    #[tokio::test]
    async fn a_batch_committed_twice_is_stale_the_second_time() {
        // A retry after a commit that landed but whose answer was lost (a timeout on the log write).
        let dir = tempfile::tempdir().unwrap();
        let mut sink = open(dir.path()).await;
        let batch = flush(0, 4);
        sink.commit(&batch, &ctx("r"), "b", 1, &mut None)
            .await
            .unwrap();
        let again = sink
            .commit(&batch, &ctx("r"), "b", 1, &mut None)
            .await
            .unwrap();
        assert!(matches!(again, CommitOutcome::Stale { .. }), "{again:?}");
        assert_eq!(sink.stats(0).unwrap().rows, 5);
    }
}
