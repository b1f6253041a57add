//! Reading the ledger back, for `bronze runs` and `bronze status`, with DataFusion over the Delta table
//! (so it works while `bronze run` is writing it, from any machine that can read the storage).

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use deltalake::datafusion::functions_aggregate::expr_fn::{count, sum};
use deltalake::datafusion::prelude::{DataFrame, Expr, col, lit};

use super::AuditError;
use crate::config::Config;
use crate::sink;

/// Which ledger rows `bronze runs` prints.
#[derive(Debug, Clone, Default)]
pub struct RunsFilter {
    pub dataset: Option<String>,
    /// Only rows finished at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
    pub status: Option<String>,
    pub kind: Option<String>,
    pub limit: usize,
}

/// Columns `bronze runs` shows, in order.
const RUN_COLUMNS: &[&str] = &[
    "finished_at",
    "kind",
    "status",
    "dataset",
    "table_version",
    "rows_in",
    "rows_written",
    "rows_deduplicated",
    "files_added",
    "bytes",
    "duration_ms",
    "run_id",
    "error",
];

/// The newest rows matching `filter`, newest first; `None` when the ledger does not exist yet.
pub async fn runs(
    cfg: &Config,
    filter: &RunsFilter,
) -> Result<Option<Vec<RecordBatch>>, AuditError> {
    let Some(df) = ledger_frame(cfg).await? else {
        return Ok(None);
    };
    let q = |e: deltalake::datafusion::error::DataFusionError| query_err(cfg, e);
    let mut predicates = Vec::new();
    if let Some(d) = &filter.dataset {
        predicates.push(col("dataset").eq(lit(d.clone())));
    }
    if let Some(s) = &filter.status {
        predicates.push(col("status").eq(lit(s.clone())));
    }
    if let Some(k) = &filter.kind {
        predicates.push(col("kind").eq(lit(k.clone())));
    }
    if let Some(since) = filter.since_us {
        predicates.push(sink::scan::at_or_after("finished_at", since));
    }
    let df = apply(df, predicates).map_err(q)?;
    let batches = df
        .sort(vec![col("finished_at").sort(false, true)])
        .and_then(|df| df.limit(0, Some(filter.limit)))
        .and_then(|df| df.select_columns(RUN_COLUMNS))
        .map_err(q)?
        .collect()
        .await
        .map_err(q)?;
    Ok(Some(batches))
}

/// Per dataset and kind, the number of ledger rows since `since_us` and the dead-lettered rows they
/// report: what `bronze status` shows for drift and dead letters.
pub async fn recent_counts(
    cfg: &Config,
    since_us: i64,
) -> Result<HashMap<(String, String), (i64, i64)>, AuditError> {
    let Some(df) = ledger_frame(cfg).await? else {
        return Ok(HashMap::new());
    };
    let q = |e: deltalake::datafusion::error::DataFusionError| query_err(cfg, e);
    let batches = df
        .filter(sink::scan::at_or_after("finished_at", since_us))
        .and_then(|df| {
            df.aggregate(
                vec![col("dataset"), col("kind")],
                vec![
                    count(lit(1)).alias("n"),
                    sum(col("rows_dead_lettered")).alias("dead"),
                ],
            )
        })
        .map_err(q)?
        .collect()
        .await
        .map_err(q)?;
    let mut out = HashMap::new();
    for b in &batches {
        let text = |i: usize| arrow::compute::cast(b.column(i), &DataType::Utf8);
        let (datasets, kinds) = (text(0)?, text(1)?);
        let n = arrow::compute::cast(b.column(2), &DataType::Int64)?;
        let dead = arrow::compute::cast(b.column(3), &DataType::Int64)?;
        let (datasets, kinds) = (datasets.as_string::<i32>(), kinds.as_string::<i32>());
        let (n, dead) = (
            n.as_primitive::<Int64Type>(),
            dead.as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            if datasets.is_null(i) {
                continue;
            }
            let dead = if dead.is_null(i) { 0 } else { dead.value(i) };
            out.insert(
                (datasets.value(i).to_string(), kinds.value(i).to_string()),
                (n.value(i), dead),
            );
        }
    }
    Ok(out)
}

/// A schema-related ledger row: a drift sighting or an operator's decision.
#[derive(Debug, Clone)]
pub struct SchemaEvent {
    pub dataset: String,
    /// `drift`, `schema_approved` or `schema_rejected`.
    pub kind: String,
    pub at_us: i64,
    pub rows_in: i64,
    pub detail: serde_json::Value,
}

/// Drift sightings and schema decisions, oldest first.
pub async fn schema_events(
    cfg: &Config,
    dataset: Option<&str>,
) -> Result<Vec<SchemaEvent>, AuditError> {
    let Some(df) = ledger_frame(cfg).await? else {
        return Ok(Vec::new());
    };
    let q = |e: deltalake::datafusion::error::DataFusionError| query_err(cfg, e);
    let kinds = ["drift", "schema_approved", "schema_rejected"]
        .into_iter()
        .map(lit)
        .collect();
    let mut predicates = vec![col("kind").in_list(kinds, false)];
    if let Some(d) = dataset {
        predicates.push(col("dataset").eq(lit(d.to_string())));
    }
    let batches = apply(df, predicates)
        .and_then(|df| df.sort(vec![col("finished_at").sort(true, true)]))
        .and_then(|df| df.select_columns(&["dataset", "kind", "finished_at", "rows_in", "detail"]))
        .map_err(q)?
        .collect()
        .await
        .map_err(q)?;
    let mut out = Vec::new();
    for b in &batches {
        let text = |i: usize| arrow::compute::cast(b.column(i), &DataType::Utf8);
        let (datasets, kinds, details) = (text(0)?, text(1)?, text(4)?);
        let at = arrow::compute::cast(b.column(2), &DataType::Int64)?;
        let rows = arrow::compute::cast(b.column(3), &DataType::Int64)?;
        let (datasets, kinds, details) = (
            datasets.as_string::<i32>(),
            kinds.as_string::<i32>(),
            details.as_string::<i32>(),
        );
        let (at, rows) = (
            at.as_primitive::<Int64Type>(),
            rows.as_primitive::<Int64Type>(),
        );
        for i in 0..b.num_rows() {
            if datasets.is_null(i) {
                continue;
            }
            out.push(SchemaEvent {
                dataset: datasets.value(i).to_string(),
                kind: kinds.value(i).to_string(),
                at_us: at.value(i),
                rows_in: if rows.is_null(i) { 0 } else { rows.value(i) },
                detail: if details.is_null(i) {
                    serde_json::Value::Null
                } else {
                    serde_json::from_str(details.value(i)).unwrap_or_default()
                },
            });
        }
    }
    Ok(out)
}

async fn ledger_frame(cfg: &Config) -> Result<Option<DataFrame>, AuditError> {
    Ok(sink::scan::frame(&cfg.audit.table_uri, &cfg.storage_options()).await?)
}

fn apply(
    df: DataFrame,
    predicates: Vec<Expr>,
) -> Result<DataFrame, deltalake::datafusion::error::DataFusionError> {
    predicates.into_iter().try_fold(df, |df, p| df.filter(p))
}

fn query_err(cfg: &Config, e: impl std::fmt::Display) -> AuditError {
    AuditError::Query {
        uri: cfg.audit.table_uri.clone(),
        message: e.to_string(),
    }
}
