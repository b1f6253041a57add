//! Reading a table back: data files as batches of a schema, the files a commit added, the newest log
//! entry, and the snapshot's size by file and partition.

use std::collections::HashMap;

use arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::DeltaTableError;
use object_store::ObjectStoreExt;

use super::{SinkError, TableSink, delta_log};

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

impl TableSink {
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

    /// Rows of the live files below `below` bytes in the partition `values` (sorted by column), as
    /// the table's schema, read until they hold enough for the dictionary choice (or 32 files): a
    /// sample of what a compaction of the partition will write. Empty when it has no such file.
    pub async fn sample_partition(
        &self,
        values: &[(String, Option<String>)],
        below: u64,
    ) -> Result<Vec<arrow::array::RecordBatch>, SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        let schema = snapshot.snapshot().arrow_schema();
        let files: Vec<(String, HashMap<String, Option<String>>)> = snapshot
            .log_data()
            .iter()
            .filter(|f| (f.size().max(0) as u64) < below)
            .filter_map(|f| {
                let map: HashMap<String, Option<String>> =
                    f.partition_values_map().into_iter().collect();
                let mut sorted: Vec<(String, Option<String>)> = map.clone().into_iter().collect();
                sorted.sort();
                (sorted == values).then(|| (f.path().to_string(), map))
            })
            .take(32)
            .collect();
        let mut sample = Vec::new();
        let mut rows = 0;
        for (path, map) in files {
            if rows >= super::dictionary::SAMPLE {
                break;
            }
            let batches = self.read_file(&path, &map, &schema, None).await?;
            rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
            sample.extend(batches);
        }
        Ok(sample)
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
