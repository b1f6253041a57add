//! Widening a column's type (`type_widening = "evolve"`): int32→int64, float32→float64, date→timestamp,
//! decimal precision up at the same scale.
//!
//! Delta's `typeWidening` table feature would change only the schema, but delta-rs 1.1 (and so every
//! bronze reader) refuses to read tables that use it. So the column is widened the portable way: one
//! commit with the new schema, every live file removed and rewritten with the column cast, all with
//! `dataChange = false` (the rows are the same rows). The cost is one read and write of the table, file
//! by file (one file in memory at a time); it is paid once per widening.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use deltalake::DeltaTableError;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{Action, Add, MetadataExt, StructType};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use serde_json::json;
use tracing::info;

use super::{SinkError, TableSink, table_url};
use crate::contract::is_widening;

/// A file live at the version an attempt starts from.
struct LiveFile {
    path: String,
    partition_values: HashMap<String, Option<String>>,
    /// Its remove action, for the widening commit.
    remove: deltalake::kernel::Remove,
}

/// What a widening did.
#[derive(Debug, Clone, Copy)]
pub struct Widened {
    /// The commit, or `None` when the table had the type already (another member widened it).
    pub version: Option<u64>,
    pub files: usize,
}

impl TableSink {
    /// Give column `name` the type `to`, rewriting the table's files in the same commit. Retried against
    /// concurrent commits (files rewritten in an earlier attempt are reused while they are still live).
    pub async fn widen_column(&mut self, name: &str, to: &DataType) -> Result<Widened, SinkError> {
        // Old file path -> its rewritten files.
        let mut rewritten: HashMap<String, Vec<Add>> = HashMap::new();
        let outcome = self.widen_attempts(name, to, &mut rewritten).await;
        // Rewritten files no commit took: the attempts that lost, a widening another member made, or
        // an attempt that failed.
        self.discard_files(&rewritten.into_values().flatten().collect::<Vec<_>>())
            .await;
        outcome
    }

    /// [`TableSink::widen_column`]'s attempts; files in `rewritten` once committed are taken out of it.
    async fn widen_attempts(
        &mut self,
        name: &str,
        to: &DataType,
        rewritten: &mut HashMap<String, Vec<Add>>,
    ) -> Result<Widened, SinkError> {
        let generic = |e: String| DeltaTableError::Generic(e);
        let mut retry = self.retry("widen_column");
        loop {
            retry.next(self).await?;
            let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
            let Some(widened) =
                self.widened_schema(&snapshot.snapshot().arrow_schema(), name, to)?
            else {
                // Another member widened it first.
                return Ok(Widened {
                    version: None,
                    files: 0,
                });
            };
            let partition_columns = snapshot.metadata().partition_columns().to_vec();
            let live: Vec<LiveFile> = snapshot
                .log_data()
                .iter()
                .map(|f| LiveFile {
                    path: f.path().to_string(),
                    partition_values: f.partition_values_map().into_iter().collect(),
                    remove: f.remove_action(false),
                })
                .collect();
            self.rewrite_live(&live, rewritten, &widened, &partition_columns)
                .await?;
            let kernel: StructType = widened
                .as_ref()
                .try_into_kernel()
                .map_err(|e| self.delta_err(generic(e.to_string())))?;
            let metadata = snapshot
                .metadata()
                .clone()
                .with_schema(&kernel)
                .map_err(|e| self.delta_err(generic(e.to_string())))?;
            let mut actions = vec![Action::Metadata(metadata)];
            actions.extend(live.iter().map(|f| Action::Remove(f.remove.clone())));
            actions.extend(rewritten.values().flatten().cloned().map(Action::Add));
            let info = vec![(
                "bronze".to_string(),
                json!({ "kind": "widen_column", "column": name, "to": to.to_string() }),
            )];
            let operation = DeltaOperation::Write {
                mode: SaveMode::Overwrite,
                partition_by: None,
                predicate: None,
            };
            if let Some(version) = self
                .try_commit_actions(actions, Vec::new(), info, operation)
                .await?
            {
                info!(table = %self.uri, column = name, to = %to, version, files = live.len(), "column widened");
                // Taken by the commit: not to be discarded.
                rewritten.clear();
                return Ok(Widened {
                    version: Some(version),
                    files: live.len(),
                });
            }
        }
    }

    /// The table schema with `name` as `to`, or `None` when the column has that type already.
    fn widened_schema(
        &self,
        table_schema: &Schema,
        name: &str,
        to: &DataType,
    ) -> Result<Option<Arc<Schema>>, SinkError> {
        let Ok(field) = table_schema.field_with_name(name) else {
            return Err(self.mismatch(format!("the table has no column `{name}` to widen")));
        };
        if field.data_type() == to {
            return Ok(None);
        }
        if !is_widening(field.data_type(), to) {
            return Err(self.mismatch(format!(
                "column `{name}` is {} in the table; {to} is not a widening of it",
                field.data_type()
            )));
        }
        let fields: Vec<Field> = table_schema
            .fields()
            .iter()
            .map(|f| match f.name() == name {
                true => f.as_ref().clone().with_data_type(to.clone()),
                false => f.as_ref().clone(),
            })
            .collect();
        Ok(Some(Arc::new(Schema::new(fields))))
    }

    /// Make `rewritten` hold a rewrite of exactly the `live` files: rewrites of files a concurrent
    /// commit removed are deleted, live files not rewritten yet are.
    async fn rewrite_live(
        &self,
        live: &[LiveFile],
        rewritten: &mut HashMap<String, Vec<Add>>,
        widened: &Arc<Schema>,
        partition_columns: &[String],
    ) -> Result<(), SinkError> {
        let gone: Vec<String> = rewritten
            .keys()
            .filter(|p| !live.iter().any(|f| &f.path == *p))
            .cloned()
            .collect();
        for p in gone {
            if let Some(adds) = rewritten.remove(&p) {
                self.discard_files(&adds).await;
            }
        }
        for f in live {
            if !rewritten.contains_key(&f.path) {
                let adds = self
                    .rewrite_file(&f.path, &f.partition_values, widened, partition_columns)
                    .await?;
                rewritten.insert(f.path.clone(), adds);
            }
        }
        Ok(())
    }

    /// One live file as new files of the `widened` schema (see [`TableSink::read_file`]).
    async fn rewrite_file(
        &self,
        path: &str,
        partition_values: &HashMap<String, Option<String>>,
        widened: &Arc<Schema>,
        partition_columns: &[String],
    ) -> Result<Vec<Add>, SinkError> {
        let batches = self
            .read_file(path, partition_values, widened, None)
            .await?;
        let mut writer = RecordBatchWriter::try_new(
            table_url(&self.uri)?.as_str(),
            widened.clone(),
            Some(partition_columns.to_vec()),
            Some(self.storage_options.clone()),
        )
        .map_err(|e| self.delta_err(e))?
        .with_writer_properties(self.writer_properties.clone())
        .with_target_file_size(self.target_file_size);
        for batch in batches {
            writer.write(batch).await.map_err(|e| self.delta_err(e))?;
        }
        let mut adds = writer.flush().await.map_err(|e| self.delta_err(e))?;
        for a in &mut adds {
            a.data_change = false;
        }
        Ok(adds)
    }

    fn mismatch(&self, detail: String) -> SinkError {
        SinkError::SchemaMismatch {
            uri: self.uri.clone(),
            detail,
        }
    }
}
