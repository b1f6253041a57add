//! Tables for the sink's unit tests: one `v int64` column, on the local filesystem.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};

use super::TableSink;

/// The table at `dir` (created if needed) with the single column `v int64`.
pub async fn int64_table(dir: &std::path::Path) -> TableSink {
    TableSink::open(
        &format!("file://{}", dir.display()),
        int64_rows(0..0).schema(),
        &[],
        false,
        &Default::default(),
        crate::config::Compression::Snappy,
    )
    .await
    .expect("a local test table opens")
}

/// Rows of `v` with the given values.
pub fn int64_rows(values: impl IntoIterator<Item = i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(values))])
        .expect("one int64 column")
}
