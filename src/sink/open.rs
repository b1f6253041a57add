//! Finding a table: its URL, opening (or creating) it with the dataset's schema, probing a location
//! without creating anything.

use std::collections::HashMap;

use arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use tracing::info;

use super::retry::DEFAULT_COMMIT_ATTEMPTS;
use super::write::writer_properties;
use super::{SinkError, TableSink, TableStats};

/// Size at which a data file of a streaming commit is cut.
const TARGET_FILE_BYTES: u64 = 128 * 1024 * 1024;
use crate::config::Compression;

/// What `bronze validate` learns about a dataset's table location.
#[derive(Debug)]
pub enum Probe {
    /// The location is reachable and holds no table yet; `bronze run` creates it at start.
    Absent,
    /// A table with the expected schema exists.
    Present(TableStats),
}

/// The URL of a table URI (`file://` paths are normalized the way delta-rs expects).
pub(crate) fn table_url(uri: &str) -> Result<url::Url, SinkError> {
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
    let sink = TableSink::reader(uri, table, storage_options);
    sink.check_schema(&schema, partition_columns, evolves)?;
    Ok(Probe::Present(sink.stats(0)?))
}

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
            writer_properties: writer_properties(compression),
            target_file_size: TARGET_FILE_BYTES,
            ..TableSink::reader(uri, table, storage_options)
        };
        sink.check_schema(&schema, partition_columns, evolves)?;
        Ok(sink)
    }

    /// The existing table at `uri` (newest version), or `None` when there is none; for readers.
    pub async fn existing(
        uri: &str,
        storage_options: &HashMap<String, String>,
    ) -> Result<Option<TableSink>, SinkError> {
        Ok(load_existing(uri, storage_options)
            .await?
            .map(|table| TableSink::reader(uri, table, storage_options)))
    }

    /// A sink over a loaded `table` with the default Parquet settings and attempt limit: for reading
    /// and for the writers that need no tuned files (ledger, dead letters set their own).
    fn reader(uri: &str, table: DeltaTable, storage_options: &HashMap<String, String>) -> Self {
        TableSink {
            uri: uri.to_string(),
            table,
            storage_options: storage_options.clone(),
            writer_properties: writer_properties(Compression::default()),
            target_file_size: 0,
            commit_attempts: DEFAULT_COMMIT_ATTEMPTS,
            txns: Default::default(),
            own_commit_snapshot: false,
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
        // A table made before `_unavailable_columns` existed gets it with its next commit.
        let missing = wanted
            .iter()
            .any(|w| !existing.contains(w) && w != crate::contract::UNAVAILABLE_COLUMN);
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
}
