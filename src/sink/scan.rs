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

/// The newest `limit` rows of the table by `_ingested_at` (then `_offset`), oldest first, with `columns`
/// cast to `types`.
/// Looks back an hour, then a day, a week and the whole table until it has `limit` rows, so the scan is
/// pruned by file and row-group statistics on `_ingested_at` where the recent rows suffice.
pub async fn newest_rows(
    uri: &str,
    storage_options: &HashMap<String, String>,
    columns: &[(&str, DataType)],
    limit: usize,
) -> Result<Vec<RecordBatch>, SinkError> {
    let Some(df) = frame(uri, storage_options).await? else {
        return Ok(Vec::new());
    };
    let now = chrono::Utc::now().timestamp_micros();
    let hour = 3_600_000_000i64;
    for lookback in [Some(hour), Some(24 * hour), Some(7 * 24 * hour), None] {
        let mut q = df.clone();
        if let Some(back) = lookback {
            q = q
                .filter(at_or_after("_ingested_at", now - back))
                .map_err(|e| query_error(uri, e))?;
        }
        let mut select: Vec<Expr> = columns.iter().map(|(c, _)| col(*c)).collect();
        select.extend([col("_ingested_at"), col("_offset")]);
        let batches = q
            .select(select)
            // Rows of one poll share their ingest time; the later offset is the newer event.
            .and_then(|q| {
                q.sort(vec![
                    col("_ingested_at").sort(false, true),
                    col("_offset").sort(false, true),
                ])
            })
            .and_then(|q| q.limit(0, Some(limit)))
            .map_err(|e| query_error(uri, e))?
            .collect()
            .await
            .map_err(|e| query_error(uri, e))?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows < limit && lookback.is_some() {
            continue;
        }
        let mut out = Vec::with_capacity(batches.len());
        // Newest first from the sort: reversed, row by row, to oldest first.
        for b in batches.iter().rev() {
            let arrays = columns
                .iter()
                .map(|(c, ty)| column_as(uri, b, c, ty))
                .collect::<Result<Vec<_>, _>>()?;
            let indices =
                arrow::array::UInt32Array::from_iter_values((0..b.num_rows() as u32).rev());
            let arrays = arrays
                .iter()
                .map(|a| arrow::compute::take(a.as_ref(), &indices, None))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| query_error(uri, e))?;
            let fields: Vec<arrow::datatypes::Field> = columns
                .iter()
                .map(|(c, ty)| arrow::datatypes::Field::new(*c, ty.clone(), true))
                .collect();
            out.push(
                RecordBatch::try_new(
                    std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
                    arrays,
                )
                .map_err(|e| query_error(uri, e))?,
            );
        }
        return Ok(out);
    }
    Ok(Vec::new())
}
