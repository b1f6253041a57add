//! Reading tables back with DataFusion (ledger listings, dead-letter replay, offset checks), from any
//! machine that can read the storage, while writers go on.

use std::collections::HashMap;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::DataType;
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::prelude::{DataFrame, Expr, SessionContext, col, lit};

use super::{SinkError, load_existing};

/// A failed query on the table at `uri`.
pub fn query_error(uri: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Query {
        uri: uri.to_string(),
        message: e.to_string(),
    }
}

/// `column >= us`, for a UTC microsecond timestamp column.
pub fn at_or_after(column: &str, us: i64) -> Expr {
    col(column).gt_eq(lit(ScalarValue::TimestampMicrosecond(
        Some(us),
        Some("UTC".into()),
    )))
}

/// Column `name` of a scanned batch as `ty`: scans may hand back other physical types (string views,
/// dictionaries) than the table's schema names.
pub fn column_as(
    uri: &str,
    batch: &RecordBatch,
    name: &str,
    ty: &DataType,
) -> Result<ArrayRef, SinkError> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| query_error(uri, format!("column `{name}` missing")))?;
    arrow::compute::cast(c, ty).map_err(|e| query_error(uri, e))
}

/// A DataFrame over the newest version of the table at `uri`; `None` when there is no table.
pub async fn frame(
    uri: &str,
    storage_options: &HashMap<String, String>,
) -> Result<Option<DataFrame>, SinkError> {
    let Some(table) = load_existing(uri, storage_options).await? else {
        return Ok(None);
    };
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| query_error(uri, e))?;
    let provider = table
        .table_provider()
        .await
        .map_err(|e| query_error(uri, e))?;
    let df = ctx.read_table(provider).map_err(|e| query_error(uri, e))?;
    Ok(Some(df))
}
