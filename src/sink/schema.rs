//! The table's schema: what it has beyond the contract, which columns it widened, and the metadata
//! actions that add columns (alone, or with a commit's data).

use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use deltalake::DeltaTableError;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{Action, MetadataExt, StructType};
use serde_json::json;
use tracing::info;

use super::{SinkError, TableSink};

impl TableSink {
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
        let mut retry = self.retry("add_column");
        loop {
            retry.next(self).await?;
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
    }

    /// The metadata action that adds `schema`'s columns the table lacks, appended after its columns.
    /// `None` when the table has them all.
    pub(super) fn evolution(&self, schema: &Schema) -> Result<Option<Action>, SinkError> {
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
}
