//! Sink: Parquet files into a Delta table, committed together with the Kafka offsets they cover.
//!
//! Exactly-once rests on three rules:
//! * every commit carries one `txn` action per Kafka partition, app id `<group>:<topic>:<partition>`,
//!   version = the last offset included, in the same atomic log entry as the data files;
//! * before committing, each partition's txn version in the newest snapshot must be below the first
//!   offset of the batch; otherwise another process already wrote (some of) these offsets, and the
//!   batch is dropped and its files deleted (the caller re-reads from the table's position);
//! * a concurrent commit that touched the same app ids between our read and our write makes delta-rs
//!   refuse ours (conflict checking), and the verification runs again on the new snapshot.
//!
//! The rooms follow a table's life: [`open`](TableSink::open) (find or create it), `schema` (what it
//! has beyond the contract, adding columns), `write` (Parquet files not committed yet), `commit` (the
//! streaming commit protocol and single attempts), `retry` (the one optimistic-commit loop every
//! writer goes through), `read` (files, log entries, sizes), `widen` (type widening), `failpoints`
//! (fault injection for tests); dead letters have their table (`dead_letters`) and topic
//! (`dead_letter_topic`).

mod commit;
pub mod dead_letter_topic;
pub mod dead_letters;
pub mod delta_log;
mod dictionary;
mod failpoints;
mod open;
mod orphans;
mod read;
mod retry;
pub mod scan;
mod schema;
#[cfg(test)]
mod testing;
mod txn_versions;
mod widen;
mod write;

use std::collections::HashMap;

use deltalake::parquet::file::properties::WriterProperties;
use deltalake::{DeltaTable, DeltaTableError};

pub(crate) use commit::is_conflict;
pub use commit::{CommitContext, CommitOutcome, Written};
pub(crate) use failpoints::failpoint;
pub(crate) use open::table_url;
pub use open::{Probe, load_existing, open_log, probe};
pub use orphans::sweep_orphans;
pub use read::{PartitionFiles, TableStats};
pub use retry::{DEFAULT_COMMIT_ATTEMPTS, Retry};
pub use widen::Widened;
pub use write::{writer_properties, writer_properties_for};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("table {uri}: {source}")]
    Delta {
        uri: String,
        #[source]
        source: DeltaTableError,
    },
    #[error("table {uri} exists with a different schema: {detail}")]
    SchemaMismatch { uri: String, detail: String },
    #[error("table {uri}: commit still conflicting after {attempts} attempts")]
    TooManyConflicts { uri: String, attempts: usize },
    #[error("table {uri}: commit refused: storage outage injected by BRONZE_FAIL_COMMITS_WHILE")]
    InjectedOutage { uri: String },
    #[error("table {uri}: query failed: {message}")]
    Query { uri: String, message: String },
    #[error("table {uri}: a Parquet writer task failed: {message}")]
    WriterTask { uri: String, message: String },
    #[error("table {uri}: {source}")]
    Storage {
        uri: String,
        #[source]
        source: object_store::Error,
    },
}

/// One dataset's Delta table. A clone shares the store and starts from the same snapshot (the
/// pipeline's upload of the next batch writes through one while the table commits).
#[derive(Clone)]
pub struct TableSink {
    uri: String,
    table: DeltaTable,
    storage_options: HashMap<String, String>,
    writer_properties: WriterProperties,
    target_file_size: u64,
    /// Limit of [`TableSink::commit_with_retry`].
    commit_attempts: usize,
    /// Txn versions looked up, kept current (the stale check of every commit asks for them).
    txns: txn_versions::TxnVersions,
    /// The loaded snapshot is the one this sink's own last commit made: the next attempt can go
    /// ahead without re-reading the table (a newer version makes it conflict, and retry re-read).
    own_commit_snapshot: bool,
}

impl TableSink {
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn delta_err(&self, source: DeltaTableError) -> SinkError {
        SinkError::Delta {
            uri: self.uri.clone(),
            source,
        }
    }

    /// Read the newest table version.
    pub async fn refresh(&mut self) -> Result<(), SinkError> {
        self.own_commit_snapshot = false;
        self.table
            .update_state()
            .await
            .map_err(|e| self.delta_err(e))
    }

    pub fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// Last offset of `app_id` recorded in the loaded snapshot (see `txn_versions`).
    pub async fn committed_offset(&self, app_id: &str) -> Result<Option<i64>, SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        let version = snapshot.version();
        let log = self.table.log_store();
        if let Some(known) = self
            .txns
            .get(log.as_ref(), version, app_id)
            .await
            .map_err(|e| self.delta_err(e))?
        {
            return Ok(known);
        }
        let txn = snapshot
            .transaction_version(log.as_ref(), app_id)
            .await
            .map_err(|e| self.delta_err(e))?;
        self.txns.learned(version, app_id, txn);
        Ok(txn)
    }

    pub(crate) fn table(&self) -> &DeltaTable {
        &self.table
    }
}
