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

pub mod dead_letter_topic;
pub mod dead_letters;
pub mod delta_log;
mod dictionary;
mod orphans;
pub mod scan;
mod widen;

use std::collections::HashMap;
use std::time::Instant;

use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, MetadataExt, StructType, Transaction};
use deltalake::parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use object_store::ObjectStoreExt;
use serde_json::json;
use tracing::{info, warn};

use crate::buffer::{FlushBatch, OffsetRange, TopicPartition};
use crate::config::Compression;

pub use orphans::sweep_orphans;
pub use widen::Widened;

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
    pub fn app_id(&self, topic: &str, partition: i32) -> String {
        app_id(&self.group_id, topic, partition)
    }
}

/// The Delta `txn` application id under which a consumer group records a Kafka partition's offset.
pub fn app_id(group_id: &str, topic: &str, partition: i32) -> String {
    format!("{group_id}:{topic}:{partition}")
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

/// Failure injection for crash tests: `BRONZE_FAILPOINT=<name>` aborts the process at that point:
/// `after_upload` (Parquet files written, Delta commit not made), `after_dead_letters` (dead letters
/// committed, rows not).
pub(crate) fn failpoint(name: &str) {
    if std::env::var("BRONZE_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("bronze: failpoint `{name}` hit, aborting");
        std::process::abort();
    }
}

/// Failure injection for backpressure tests: while the file named by `BRONZE_FAIL_COMMITS_WHILE`
/// exists, every commit fails as a storage outage would (after the upload, like a failed log write).
fn injected_outage() -> bool {
    std::env::var_os("BRONZE_FAIL_COMMITS_WHILE").is_some_and(|p| std::path::Path::new(&p).exists())
}

/// Delay injection for tests of commits running in the background: while the file named by
/// `BRONZE_HOLD_COMMITS_WHILE` exists, a commit waits between its upload and its log write.
async fn held_commit() {
    let Some(path) = std::env::var_os("BRONZE_HOLD_COMMITS_WHILE") else {
        return;
    };
    while std::path::Path::new(&path).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Size of a table at its loaded version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStats {
    pub version: u64,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    pub partitions: usize,
    /// Files smaller than the threshold given to [`TableSink::stats`].
    pub small_files: usize,
}

/// Live file sizes of a table, by partition values (see [`TableSink::files_by_partition`]).
pub type PartitionFiles = std::collections::BTreeMap<Vec<(String, Option<String>)>, Vec<u64>>;

/// What `bronze validate` learns about a dataset's table location.
#[derive(Debug)]
pub enum Probe {
    /// The location is reachable and holds no table yet; `bronze run` creates it at start.
    Absent,
    /// A table with the expected schema exists.
    Present(TableStats),
}

/// `batches` in at most `parts` runs of about equal rows, cut where a run is full (slices share the
/// batches' memory). Fewer parts when there are fewer rows than parts.
fn split_rows(
    batches: Vec<arrow::array::RecordBatch>,
    parts: usize,
) -> Vec<Vec<arrow::array::RecordBatch>> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let per_part = rows.div_ceil(parts.max(1)).max(1);
    let mut out: Vec<Vec<arrow::array::RecordBatch>> = vec![Vec::new()];
    let mut room = per_part;
    for batch in batches {
        let mut start = 0;
        while start < batch.num_rows() {
            if room == 0 {
                out.push(Vec::new());
                room = per_part;
            }
            let len = room.min(batch.num_rows() - start);
            out.last_mut()
                .expect("one part at least")
                .push(batch.slice(start, len));
            (start, room) = (start + len, room - len);
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The URL of a table URI (`file://` paths are normalized the way delta-rs expects).
fn table_url(uri: &str) -> Result<url::Url, SinkError> {
    let delta = |source| SinkError::Delta {
        uri: uri.to_string(),
        source,
    };
    if uri.starts_with("file://") {
        deltalake::ensure_table_uri(uri).map_err(delta)
    } else {
        url::Url::parse(uri)
            .map_err(|e| delta(DeltaTableError::InvalidTableLocation(e.to_string())))
    }
}

/// The log of the table at `uri`, for reading single commits without loading a snapshot.
pub fn open_log(
    uri: &str,
    storage_options: &HashMap<String, String>,
) -> Result<deltalake::logstore::LogStoreRef, SinkError> {
    let delta = |source| SinkError::Delta {
        uri: uri.to_string(),
        source,
    };
    let table = DeltaTableBuilder::from_url(table_url(uri)?)
        .map_err(delta)?
        .with_storage_options(storage_options.clone())
        .build()
        .map_err(delta)?;
    Ok(table.log_store())
}

/// The table at `uri` at its newest version, or `None` when there is no table there (yet).
pub async fn load_existing(
    uri: &str,
    storage_options: &HashMap<String, String>,
) -> Result<Option<DeltaTable>, SinkError> {
    let delta = |source| SinkError::Delta {
        uri: uri.to_string(),
        source,
    };
    let builder = DeltaTableBuilder::from_url(table_url(uri)?)
        .map_err(delta)?
        .with_storage_options(storage_options.clone());
    match builder.load().await {
        Ok(t) => Ok(Some(t)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) => Err(delta(e)),
    }
}

/// Check a table location without creating anything.
pub async fn probe(
    uri: &str,
    schema: SchemaRef,
    partition_columns: &[&str],
    evolves: bool,
    storage_options: &HashMap<String, String>,
) -> Result<Probe, SinkError> {
    let delta = |source| SinkError::Delta {
        uri: uri.to_string(),
        source,
    };
    let url = url::Url::parse(uri)
        .map_err(|e| delta(DeltaTableError::InvalidTableLocation(e.to_string())))?;
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| delta(DeltaTableError::InvalidTableLocation(uri.to_string())))?;
        if !path.exists() {
            // Created on first write: the nearest existing ancestor must be a writable directory.
            let ancestor = path.ancestors().find(|p| p.exists()).unwrap_or(&path);
            let writable = std::fs::metadata(ancestor)
                .map(|m| m.is_dir() && !m.permissions().readonly())
                .unwrap_or(false);
            if !writable {
                return Err(delta(DeltaTableError::InvalidTableLocation(format!(
                    "{} is not a writable directory",
                    ancestor.display()
                ))));
            }
            return Ok(Probe::Absent);
        }
    }
    let builder = DeltaTableBuilder::from_url(url)
        .map_err(delta)?
        .with_storage_options(storage_options.clone());
    let table = builder.build().map_err(delta)?;
    match table.log_store().is_delta_table_location().await {
        Ok(false) => {
            // Reachability: listing must work even where no table exists yet.
            use futures::TryStreamExt;
            let store = table.object_store();
            let mut listing = store.list(None);
            listing
                .try_next()
                .await
                .map_err(|source| SinkError::Storage {
                    uri: uri.to_string(),
                    source,
                })?;
            return Ok(Probe::Absent);
        }
        Ok(true) => {}
        Err(e) => return Err(delta(e)),
    }
    let mut table = table;
    table.load().await.map_err(delta)?;
    let sink = TableSink {
        uri: uri.to_string(),
        table,
        storage_options: storage_options.clone(),
        writer_properties: writer_properties(Compression::default()),
        target_file_size: 0,
    };
    sink.check_schema(&schema, partition_columns, evolves)?;
    Ok(Probe::Present(sink.stats(0)?))
}

/// One dataset's Delta table.
pub struct TableSink {
    uri: String,
    table: DeltaTable,
    storage_options: HashMap<String, String>,
    writer_properties: WriterProperties,
    target_file_size: u64,
}

const MAX_COMMIT_ATTEMPTS: usize = 20;

impl TableSink {
    /// Open the table, creating it with `schema` and `partition_columns` if it does not exist. A table
    /// may have columns beyond `schema` only where the contract `evolves` (see [`TableSink::columns_beyond`]).
    pub async fn open(
        uri: &str,
        schema: SchemaRef,
        partition_columns: &[&str],
        evolves: bool,
        storage_options: &HashMap<String, String>,
        compression: Compression,
    ) -> Result<TableSink, SinkError> {
        let delta = |source| SinkError::Delta {
            uri: uri.to_string(),
            source,
        };
        let url = table_url(uri)?;
        let builder = || {
            DeltaTableBuilder::from_url(url.clone())
                .map(|b| b.with_storage_options(storage_options.clone()))
        };
        let table = match builder().map_err(delta)?.load().await {
            Ok(t) => t,
            Err(DeltaTableError::NotATable(_)) => {
                let fields: deltalake::kernel::StructType = schema
                    .as_ref()
                    .try_into_kernel()
                    .map_err(|e| delta(DeltaTableError::Generic(e.to_string())))?;
                let fresh = builder().map_err(delta)?.build().map_err(delta)?;
                let created = fresh
                    .create()
                    .with_columns(fields.fields().cloned())
                    .with_partition_columns(partition_columns.iter().map(|s| s.to_string()))
                    .with_save_mode(SaveMode::Ignore)
                    .await;
                match created {
                    Ok(t) => {
                        info!(table = uri, "created Delta table");
                        t
                    }
                    // Another process created it first.
                    Err(_) => builder().map_err(delta)?.load().await.map_err(delta)?,
                }
            }
            Err(e) => return Err(delta(e)),
        };
        let sink = TableSink {
            uri: uri.to_string(),
            table,
            storage_options: storage_options.clone(),
            writer_properties: writer_properties(compression),
            target_file_size: 128 * 1024 * 1024,
        };
        sink.check_schema(&schema, partition_columns, evolves)?;
        Ok(sink)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn delta_err(&self, source: DeltaTableError) -> SinkError {
        SinkError::Delta {
            uri: self.uri.clone(),
            source,
        }
    }

    /// The table must have every column of `schema` and the same partition columns; columns beyond
    /// those only where the contract `evolves`.
    fn check_schema(
        &self,
        schema: &SchemaRef,
        partition_columns: &[&str],
        evolves: bool,
    ) -> Result<(), SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        let existing: Vec<String> = snapshot
            .schema()
            .fields()
            .map(|f| f.name().to_string())
            .collect();
        let wanted: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let parts: Vec<String> = snapshot.metadata().partition_columns().to_vec();
        let missing = wanted.iter().any(|w| !existing.contains(w));
        let beyond: Vec<&String> = existing.iter().filter(|e| !wanted.contains(e)).collect();
        if missing || parts != partition_columns || (!beyond.is_empty() && !evolves) {
            let hint = if !missing && parts == partition_columns {
                format!(
                    "; the table has evolved columns {beyond:?}: add them to the contract or set `drift.new_column = \"evolve\"`"
                )
            } else {
                String::new()
            };
            return Err(SinkError::SchemaMismatch {
                uri: self.uri.clone(),
                detail: format!(
                    "table has columns {existing:?} partitioned by {parts:?}, the dataset expects {wanted:?} partitioned by {partition_columns:?}{hint}"
                ),
            });
        }
        Ok(())
    }

    /// Columns the table has beyond `schema`, in table order: added by schema evolution.
    pub fn columns_beyond(&self, schema: &Schema) -> Result<Vec<FieldRef>, SinkError> {
        Ok(self
            .arrow_schema()?
            .fields()
            .iter()
            .filter(|f| schema.field_with_name(f.name()).is_err())
            .cloned()
            .collect())
    }

    /// The table's current schema, partition columns included.
    pub fn arrow_schema(&self) -> Result<SchemaRef, SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        Ok(snapshot.snapshot().arrow_schema())
    }

    /// Data file `path` of this table as batches of `schema` (or of its fields named in `columns`):
    /// columns cast to the schema's types, columns the file predates (evolved later) as nulls, partition
    /// values as constant columns. One file in memory at a time.
    pub async fn read_file(
        &self,
        path: &str,
        partition_values: &HashMap<String, Option<String>>,
        schema: &SchemaRef,
        columns: Option<&[&str]>,
    ) -> Result<Vec<arrow::array::RecordBatch>, SinkError> {
        use deltalake::parquet::arrow::ProjectionMask;
        use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let storage = |source| SinkError::Storage {
            uri: self.uri.clone(),
            source,
        };
        let generic = |e: String| self.delta_err(DeltaTableError::Generic(format!("{path}: {e}")));
        let location =
            object_store::path::Path::from_url_path(path).map_err(|e| generic(e.to_string()))?;
        let bytes = self
            .table
            .object_store()
            .get(&location)
            .await
            .map_err(storage)?
            .bytes()
            .await
            .map_err(storage)?;
        let mut builder =
            ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| generic(e.to_string()))?;
        let out_schema = match columns {
            Some(names) => {
                let mask = ProjectionMask::columns(builder.parquet_schema(), names.iter().copied());
                builder = builder.with_projection(mask);
                let fields: Vec<Field> = schema
                    .fields()
                    .iter()
                    .filter(|f| names.contains(&f.name().as_str()))
                    .map(|f| f.as_ref().clone())
                    .collect();
                std::sync::Arc::new(Schema::new(fields))
            }
            None => schema.clone(),
        };
        let reader = builder.build().map_err(|e| generic(e.to_string()))?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| generic(e.to_string()))?;
            let columns = out_schema
                .fields()
                .iter()
                .map(|f| conform(&batch, f, partition_values))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| generic(e.to_string()))?;
            out.push(
                arrow::array::RecordBatch::try_new(out_schema.clone(), columns)
                    .map_err(|e| generic(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// The data files commit `version` added with `dataChange = true`, with their partition values;
    /// `None` when the log no longer has that version.
    pub async fn files_added_in(
        &self,
        version: u64,
    ) -> Result<Option<Vec<delta_log::AddedFile>>, SinkError> {
        delta_log::added_files(self.table.log_store().as_ref(), version)
            .await
            .map_err(|e| self.delta_err(e))
    }

    /// Columns of `schema` the table has in a wider type (widened by `type_widening = "evolve"`), with
    /// the table's type.
    pub fn widened_columns(
        &self,
        schema: &Schema,
    ) -> Result<Vec<(String, arrow::datatypes::DataType)>, SinkError> {
        Ok(self
            .arrow_schema()?
            .fields()
            .iter()
            .filter_map(|t| {
                let ours = schema.field_with_name(t.name()).ok()?;
                crate::contract::is_widening(ours.data_type(), t.data_type())
                    .then(|| (t.name().clone(), t.data_type().clone()))
            })
            .collect())
    }

    /// Add `field` to the table schema in a commit of its own (commitInfo `bronze.kind` = `kind`).
    pub async fn add_column(&mut self, field: Field, kind: &str) -> Result<u64, SinkError> {
        let name = field.name().clone();
        let schema = Schema::new(vec![field]);
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            self.refresh().await?;
            if self.evolution(&schema)?.is_none() {
                return Err(SinkError::SchemaMismatch {
                    uri: self.uri.clone(),
                    detail: format!("the table already has a column `{name}`"),
                });
            }
            let metadata = vec![(
                "bronze".to_string(),
                json!({ "kind": kind, "column": name }),
            )];
            if let Some(v) = self
                .try_commit(&[], Vec::new(), metadata, Some(&schema))
                .await?
            {
                return Ok(v);
            }
        }
        Err(SinkError::TooManyConflicts {
            uri: self.uri.clone(),
            attempts: MAX_COMMIT_ATTEMPTS,
        })
    }

    /// The metadata action that adds `schema`'s columns the table lacks, appended after its columns.
    /// `None` when the table has them all.
    fn evolution(&self, schema: &Schema) -> Result<Option<Action>, SinkError> {
        let generic = |e: String| self.delta_err(DeltaTableError::Generic(e));
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        let table_schema = snapshot.schema();
        // One conversion of the batch schema: this runs on every data commit.
        let batch: StructType = schema
            .try_into_kernel()
            .map_err(|e| generic(e.to_string()))?;
        let table_arrow = snapshot.snapshot().arrow_schema();
        let mut added = Vec::new();
        for f in batch.fields() {
            // A column another member widened: the batch is cast on writing.
            let widened = || {
                let theirs = table_arrow.field_with_name(&f.name).ok();
                let ours = schema.field_with_name(&f.name).ok();
                matches!((ours, theirs), (Some(o), Some(t)) if crate::contract::is_widening(o.data_type(), t.data_type()))
            };
            match table_schema.field(&f.name) {
                Some(existing) if existing.data_type() != f.data_type() && !widened() => {
                    return Err(SinkError::SchemaMismatch {
                        uri: self.uri.clone(),
                        detail: format!(
                            "column `{}` is {} in the table, the batch has {}",
                            f.name,
                            existing.data_type(),
                            f.data_type()
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    let mut f = f.clone();
                    f.nullable = true;
                    added.push(f);
                }
            }
        }
        if added.is_empty() {
            return Ok(None);
        }
        let names: Vec<&str> = added.iter().map(|f| f.name.as_str()).collect();
        info!(table = %self.uri, columns = ?names, "the commit adds columns to the table schema");
        let merged = StructType::try_new(table_schema.fields().cloned().chain(added))
            .map_err(|e| generic(e.to_string()))?;
        let metadata = snapshot
            .metadata()
            .clone()
            .with_schema(&merged)
            .map_err(|e| generic(e.to_string()))?;
        Ok(Some(Action::Metadata(metadata)))
    }

    /// Read the newest table version.
    pub async fn refresh(&mut self) -> Result<(), SinkError> {
        self.table
            .update_state()
            .await
            .map_err(|e| self.delta_err(e))
    }

    pub fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// Last offset of `app_id` recorded in the loaded snapshot.
    pub async fn committed_offset(&self, app_id: &str) -> Result<Option<i64>, SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        snapshot
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(|e| self.delta_err(e))
    }

    /// Write `flush` as Parquet, `writers` files at once (see [`TableSink::write_files_in`]), and
    /// commit it with its offsets.
    pub async fn commit(
        &mut self,
        flush: &FlushBatch,
        ctx: &CommitContext,
        batch_id: &str,
        writers: usize,
    ) -> Result<CommitOutcome, SinkError> {
        let adds = self.write_files_in(&flush.batches, writers).await?;
        failpoint("after_upload");
        held_commit().await;
        let result = if injected_outage() {
            Err(SinkError::InjectedOutage {
                uri: self.uri.clone(),
            })
        } else {
            self.commit_adds(&adds, flush, ctx, batch_id).await
        };
        match result {
            Ok(CommitOutcome::Stale { partitions }) => {
                self.discard_files(&adds).await;
                Ok(CommitOutcome::Stale { partitions })
            }
            Ok(done) => Ok(done),
            Err(e) => {
                // The caller keeps the batch and retries with fresh files; these would be orphans.
                self.discard_files(&adds).await;
                Err(e)
            }
        }
    }

    /// Write `batches` as Parquet files under the table (not committed yet).
    pub async fn write_files(
        &self,
        batches: &[arrow::array::RecordBatch],
    ) -> Result<Vec<Add>, SinkError> {
        self.write_files_in(batches, 1).await
    }

    /// [`TableSink::write_files`] with the rows split evenly between `writers` writers that encode at
    /// the same time, each on a task of its own: one file per writer and Delta partition. Encoding is
    /// the CPU of a commit; a batch with nothing left to overlap it (the last of a catch-up run) is
    /// written this much sooner on as many cores.
    pub async fn write_files_in(
        &self,
        batches: &[arrow::array::RecordBatch],
        writers: usize,
    ) -> Result<Vec<Add>, SinkError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        // The table's writer conforms batches to the table schema, and on partitioned tables silently
        // drops columns the table lacks; batches with evolved columns (or without the ones another
        // member added) are written with their own schema instead.
        let schema = batches[0].schema();
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        let table_schema = snapshot.snapshot().arrow_schema();
        let same_columns = table_schema.fields().len() == schema.fields().len()
            && schema
                .fields()
                .iter()
                .all(|f| table_schema.field_with_name(f.name()).is_ok());
        // Columns the table has widened since the batch was built (by another member) are cast up.
        let widened: Vec<(usize, arrow::datatypes::DataType)> = schema
            .fields()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let t = table_schema.field_with_name(f.name()).ok()?;
                crate::contract::is_widening(f.data_type(), t.data_type())
                    .then(|| (i, t.data_type().clone()))
            })
            .collect();
        let cast =
            |batch: &arrow::array::RecordBatch| -> Result<arrow::array::RecordBatch, SinkError> {
                if widened.is_empty() {
                    return Ok(batch.clone());
                }
                let arrow_err = |e| self.delta_err(DeltaTableError::Arrow { source: e });
                let mut fields: Vec<Field> = batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                let mut columns = batch.columns().to_vec();
                for (i, ty) in &widened {
                    columns[*i] = arrow::compute::cast(&columns[*i], ty).map_err(arrow_err)?;
                    fields[*i] = fields[*i].clone().with_data_type(ty.clone());
                }
                arrow::array::RecordBatch::try_new(
                    std::sync::Arc::new(Schema::new(fields)),
                    columns,
                )
                .map_err(arrow_err)
            };
        let batches = batches.iter().map(cast).collect::<Result<Vec<_>, _>>()?;
        let schema = batches.first().map_or(schema, |b| b.schema());
        let properties = dictionary::choose(&self.writer_properties, &batches);
        let new_writer = || -> Result<RecordBatchWriter, SinkError> {
            let writer = if same_columns {
                RecordBatchWriter::for_table(&self.table)
            } else {
                RecordBatchWriter::try_new(
                    table_url(&self.uri)?.as_str(),
                    schema.clone(),
                    Some(snapshot.metadata().partition_columns().to_vec()),
                    Some(self.storage_options.clone()),
                )
            };
            Ok(writer
                .map_err(|e| self.delta_err(e))?
                .with_writer_properties(properties.clone())
                .with_target_file_size(self.target_file_size))
        };
        async fn write_part(
            mut writer: RecordBatchWriter,
            part: Vec<arrow::array::RecordBatch>,
        ) -> Result<Vec<Add>, DeltaTableError> {
            for batch in part {
                writer.write(batch).await?;
            }
            writer.flush().await
        }
        let mut parts = split_rows(batches, writers);
        if parts.len() < 2 {
            let part = parts.pop().unwrap_or_default();
            return write_part(new_writer()?, part)
                .await
                .map_err(|e| self.delta_err(e));
        }
        // Every part on a task of its own, this one included: encoding does not yield, and a task
        // spawned from a busy worker waits in its slot that no other worker takes from.
        let tasks = parts
            .into_iter()
            .map(|part| Ok(tokio::spawn(write_part(new_writer()?, part))))
            .collect::<Result<Vec<_>, SinkError>>()?;
        let mut adds = Ok(Vec::new());
        for task in tasks {
            let done = match task.await {
                Ok(done) => done.map_err(|e| self.delta_err(e)),
                Err(e) => Err(SinkError::WriterTask {
                    uri: self.uri.clone(),
                    message: e.to_string(),
                }),
            };
            match (&mut adds, done) {
                (Ok(all), Ok(more)) => all.extend(more),
                // Files of the parts that were written are left to the orphan sweep, like those of a
                // write that fails half way.
                (Ok(_), Err(e)) => adds = Err(e),
                (Err(_), _) => {}
            }
        }
        adds
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
    async fn try_commit_actions(
        &mut self,
        actions: Vec<Action>,
        txns: Vec<Transaction>,
        metadata: Vec<(String, serde_json::Value)>,
        operation: DeltaOperation,
    ) -> Result<Option<u64>, SinkError> {
        let properties = CommitProperties::default()
            .with_application_transactions(txns)
            // Retrying is the caller's: it must re-verify its txn versions against every new version.
            .with_max_retries(0)
            .with_metadata(metadata);
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        let result = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await;
        match result {
            Ok(finalized) => {
                let version = finalized.version();
                self.table.update_incremental(Some(version)).await.ok();
                Ok(Some(version))
            }
            Err(e) if is_conflict(&e) => Ok(None),
            Err(e) => Err(self.delta_err(e)),
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
        let mut conflicts = 0;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            self.refresh().await?;
            let stale = self.stale_partitions(&flush.ranges, ctx).await?;
            if !stale.is_empty() {
                return Ok(CommitOutcome::Stale { partitions: stale });
            }
            let txns: Vec<Transaction> = flush
                .ranges
                .iter()
                .map(|r| {
                    Transaction::new_with_last_update(
                        ctx.app_id(&r.topic, r.partition),
                        r.last,
                        Some(chrono::Utc::now().timestamp_millis()),
                    )
                })
                .collect();
            match self
                .try_commit(
                    adds,
                    txns,
                    commit_metadata(flush, ctx, batch_id),
                    flush.batches.first().map(|b| b.schema_ref().as_ref()),
                )
                .await?
            {
                Some(version) => {
                    metrics::histogram!("bronze_commit_duration_seconds", "dataset" => ctx.dataset.clone())
                        .record(started.elapsed().as_secs_f64());
                    let table_files = self.table.snapshot().ok().map(|s| s.log_data().num_files());
                    return Ok(CommitOutcome::Committed {
                        version,
                        files: adds.iter().map(|a| a.size).collect(),
                        bytes: adds.iter().map(|a| a.size).sum(),
                        conflicts,
                        table_files,
                    });
                }
                None => {
                    conflicts += 1;
                    metrics::counter!("bronze_commit_conflicts_total", "dataset" => ctx.dataset.clone())
                        .increment(1);
                    warn!(table = %self.uri, "commit conflict, re-checking offsets and retrying");
                }
            }
        }
        Err(SinkError::TooManyConflicts {
            uri: self.uri.clone(),
            attempts: MAX_COMMIT_ATTEMPTS,
        })
    }

    async fn stale_partitions(
        &self,
        ranges: &[OffsetRange],
        ctx: &CommitContext,
    ) -> Result<Vec<TopicPartition>, SinkError> {
        let mut stale = Vec::new();
        for r in ranges {
            if let Some(v) = self
                .committed_offset(&ctx.app_id(&r.topic, r.partition))
                .await?
                && v >= r.first
            {
                stale.push((r.topic.clone(), r.partition));
            }
        }
        Ok(stale)
    }

    /// Delete files written by [`TableSink::write_files`] that will not be committed.
    pub async fn discard_files(&self, adds: &[Add]) {
        let store = self.table.object_store();
        for add in adds {
            let path = match object_store::path::Path::from_url_path(&add.path) {
                Ok(p) => p,
                Err(e) => {
                    warn!(file = %add.path, error = %e, "cannot parse path of an uncommitted file");
                    continue;
                }
            };
            if let Err(e) = store.delete(&path).await {
                warn!(file = %add.path, error = %e, "could not delete an uncommitted file; the start-up sweep will");
            }
        }
    }

    /// The existing table at `uri` (newest version), or `None` when there is none; for readers.
    pub async fn existing(
        uri: &str,
        storage_options: &HashMap<String, String>,
    ) -> Result<Option<TableSink>, SinkError> {
        Ok(load_existing(uri, storage_options)
            .await?
            .map(|table| TableSink {
                uri: uri.to_string(),
                table,
                storage_options: storage_options.clone(),
                writer_properties: writer_properties(Compression::default()),
                target_file_size: 0,
            }))
    }

    /// The newest commit's log entry (time, operation, what bronze recorded).
    pub async fn last_commit(&self) -> Result<Option<delta_log::LogEntry>, SinkError> {
        let Some(version) = self.version() else {
            return Ok(None);
        };
        delta_log::read_entry(self.table.log_store().as_ref(), version)
            .await
            .map_err(|e| self.delta_err(e))
    }

    /// Version, file, row and partition counts of the loaded snapshot; files under `small_file_bytes`
    /// are counted as small.
    pub fn stats(&self, small_file_bytes: u64) -> Result<TableStats, SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        let mut stats = TableStats {
            version: snapshot.version(),
            ..TableStats::default()
        };
        let mut partitions = std::collections::BTreeSet::new();
        for f in snapshot.log_data().iter() {
            stats.files += 1;
            stats.bytes += f.size().max(0) as u64;
            if (f.size().max(0) as u64) < small_file_bytes {
                stats.small_files += 1;
            }
            stats.rows += f.num_records().unwrap_or(0) as u64;
            let mut values: Vec<(String, Option<String>)> =
                f.partition_values_map().into_iter().collect();
            values.sort();
            partitions.insert(values);
        }
        stats.partitions = partitions.len();
        Ok(stats)
    }

    /// Sizes of the live files, by partition (partition column -> value, sorted by column).
    pub fn files_by_partition(&self) -> Result<PartitionFiles, SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        let mut out = PartitionFiles::new();
        for f in snapshot.log_data().iter() {
            let mut values: Vec<(String, Option<String>)> =
                f.partition_values_map().into_iter().collect();
            values.sort();
            out.entry(values).or_default().push(f.size().max(0) as u64);
        }
        Ok(out)
    }

    pub(crate) fn table(&self) -> &DeltaTable {
        &self.table
    }
}

fn is_conflict(e: &DeltaTableError) -> bool {
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

/// Column `field` of a file's batch: from the file (cast), a partition value, or nulls.
fn conform(
    batch: &arrow::array::RecordBatch,
    field: &Field,
    partition_values: &HashMap<String, Option<String>>,
) -> Result<arrow::array::ArrayRef, arrow::error::ArrowError> {
    let rows = batch.num_rows();
    if let Some(c) = batch.column_by_name(field.name()) {
        return arrow::compute::cast(c.as_ref(), field.data_type());
    }
    match partition_values.get(field.name()) {
        Some(value) => {
            let column = arrow::array::StringArray::from(vec![value.clone(); rows]);
            arrow::compute::cast(&column as &dyn arrow::array::Array, field.data_type())
        }
        None => Ok(arrow::array::new_null_array(field.data_type(), rows)),
    }
}

/// Parquet settings of every data file: the codec, page statistics, truncated long statistics.
pub fn writer_properties(compression: Compression) -> WriterProperties {
    let codec = match compression {
        Compression::Snappy => ParquetCompression::SNAPPY,
        Compression::Zstd => ParquetCompression::ZSTD(ZstdLevel::default()),
        Compression::Lz4 => ParquetCompression::LZ4_RAW,
        Compression::Gzip => ParquetCompression::GZIP(Default::default()),
        Compression::None => ParquetCompression::UNCOMPRESSED,
    };
    WriterProperties::builder()
        .set_compression(codec)
        .set_statistics_enabled(EnabledStatistics::Page)
        // Long text values would otherwise be copied whole into footers and Delta stats.
        .set_statistics_truncate_length(Some(64))
        .set_column_index_truncate_length(Some(64))
        .build()
}

/// [`writer_properties`] for a file of `batches`, as the sink writes it: a dictionary only for the
/// columns whose values repeat (see `dictionary`).
pub fn writer_properties_for(
    compression: Compression,
    batches: &[arrow::array::RecordBatch],
) -> WriterProperties {
    dictionary::choose(&writer_properties(compression), batches)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::split_rows;

    fn batch(values: std::ops::Range<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(values))]).unwrap()
    }

    fn values(part: &[RecordBatch]) -> Vec<i64> {
        part.iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    #[test]
    fn rows_are_split_in_order_into_even_parts() {
        // Kafka partitions of 7, 2 and 6 rows between two writers: 8 and 7 rows, the first cut
        // inside the third batch.
        let parts = split_rows(vec![batch(0..7), batch(7..9), batch(9..15)], 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(values(&parts[0]), (0..8).collect::<Vec<_>>());
        assert_eq!(values(&parts[1]), (8..15).collect::<Vec<_>>());
        assert!(
            parts
                .iter()
                .flatten()
                .all(|b| b.num_rows() > 0 && b.column(0).null_count() == 0)
        );
        // One writer: the batches as they are.
        let one = split_rows(vec![batch(0..7), batch(7..9)], 1);
        assert_eq!((one.len(), one[0].len()), (1, 2));
        // Fewer rows than writers: one part per row, none empty.
        assert_eq!(split_rows(vec![batch(0..2)], 4).len(), 2);
        assert!(split_rows(Vec::new(), 2).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_carry_a_dictionary_only_where_values_repeat() {
        use deltalake::parquet::basic::Encoding;
        use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};

        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("status", DataType::Utf8, false),
        ]));
        let uri = format!("file://{}", dir.path().display());
        let sink = super::TableSink::open(
            &uri,
            schema.clone(),
            &[],
            false,
            &Default::default(),
            crate::config::Compression::Snappy,
        )
        .await
        .unwrap();
        let n = 200_000;
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(arrow::array::StringArray::from_iter_values(
                    (0..n).map(|i| ["new", "paid", "shipped"][(i % 3) as usize]),
                )),
            ],
        )
        .unwrap();
        let adds = sink.write_files(&[batch]).await.unwrap();
        assert_eq!(adds.len(), 1);
        let file = std::fs::File::open(dir.path().join(&adds[0].path)).unwrap();
        let meta = SerializedFileReader::new(file).unwrap().metadata().clone();
        let dictionary = |c: usize| {
            (0..meta.num_row_groups()).all(|r| {
                meta.row_group(r)
                    .column(c)
                    .encodings()
                    .any(|e| e == Encoding::RLE_DICTIONARY)
            })
        };
        assert!(!dictionary(0), "a unique key is written plain");
        assert!(dictionary(1), "a repeating status keeps its dictionary");
    }
}
