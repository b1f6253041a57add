//! Writing Parquet data files under a table (not committed yet), and deleting those that will not be.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::kernel::Add;
use deltalake::parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use object_store::ObjectStoreExt;
use tracing::warn;

use super::orphans::percent_decode;
use super::{SinkError, TableSink, dictionary, table_url};
use crate::config::Compression;

impl TableSink {
    /// Write `batches` as Parquet files under the table (not committed yet).
    pub async fn write_files(&self, batches: &[RecordBatch]) -> Result<Vec<Add>, SinkError> {
        self.write_files_in(batches, 1).await
    }

    /// [`TableSink::write_files`] with the rows split evenly between `writers` writers that encode at
    /// the same time, each on a task of its own: one file per writer and Delta partition. Encoding is
    /// the CPU of a commit; a batch with nothing left to overlap it (the last of a catch-up run) is
    /// written this much sooner on as many cores.
    pub async fn write_files_in(
        &self,
        batches: &[RecordBatch],
        writers: usize,
    ) -> Result<Vec<Add>, SinkError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let snapshot = self.table.snapshot().map_err(|e| self.delta_err(e))?;
        let table_schema = snapshot.snapshot().arrow_schema();
        let (batches, same_columns) = self.conform(batches, &table_schema)?;
        let schema = batches[0].schema();
        let properties = dictionary::choose(&self.writer_properties, &batches);
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let new_writer = || -> Result<RecordBatchWriter, SinkError> {
            let writer = if same_columns {
                RecordBatchWriter::for_table(&self.table)
            } else {
                RecordBatchWriter::try_new(
                    table_url(&self.uri)?.as_str(),
                    schema.clone(),
                    Some(partition_columns.clone()),
                    Some(self.storage_options.clone()),
                )
            };
            Ok(writer
                .map_err(|e| self.delta_err(e))?
                .with_writer_properties(properties.clone())
                .with_target_file_size(self.target_file_size))
        };
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

    /// `batches` as the table takes them, and whether they have exactly the table's columns.
    ///
    /// The table's writer conforms batches to the table schema, and on partitioned tables silently
    /// drops columns the table lacks; batches with evolved columns (or without the ones another
    /// member added) are written with their own schema instead. Columns the table has widened since
    /// the batch was built (by another member) are cast up.
    fn conform(
        &self,
        batches: &[RecordBatch],
        table_schema: &Schema,
    ) -> Result<(Vec<RecordBatch>, bool), SinkError> {
        let schema = batches[0].schema();
        let same_columns = table_schema.fields().len() == schema.fields().len()
            && schema
                .fields()
                .iter()
                .all(|f| table_schema.field_with_name(f.name()).is_ok());
        let widened: Vec<(usize, DataType)> = schema
            .fields()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let t = table_schema.field_with_name(f.name()).ok()?;
                crate::contract::is_widening(f.data_type(), t.data_type())
                    .then(|| (i, t.data_type().clone()))
            })
            .collect();
        if widened.is_empty() {
            return Ok((batches.to_vec(), same_columns));
        }
        let arrow_err = |e| self.delta_err(DeltaTableError::Arrow { source: e });
        let cast = |batch: &RecordBatch| -> Result<RecordBatch, SinkError> {
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
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow_err)
        };
        let batches = batches.iter().map(cast).collect::<Result<Vec<_>, _>>()?;
        Ok((batches, same_columns))
    }

    /// Delete files written by [`TableSink::write_files`] that will not be committed.
    ///
    /// A commit whose answer was lost (a timeout, a 500 after the log entry was written, a retried
    /// conditional PUT that finds its own entry) looks failed or stale to its writer although its
    /// files are in the table: deleting them would lose the rows. So the newest version is read
    /// first and files it references are kept; when it cannot be read (the store is down), nothing is
    /// deleted and the start-up sweep removes what no commit took.
    pub async fn discard_files(&self, adds: &[Add]) {
        if adds.is_empty() {
            return;
        }
        let mut latest = self.table.clone();
        match latest.update_state().await {
            Ok(()) => self.discard_files_not_in(adds, &latest).await,
            Err(e) => keep_for_sweep(&self.uri, adds, &e.to_string()),
        }
    }

    /// [`TableSink::discard_files`] against `latest`, a table just read: its files are kept.
    pub(super) async fn discard_files_not_in(&self, adds: &[Add], latest: &DeltaTable) {
        let live = match live_paths(latest) {
            Ok(live) => live,
            Err(e) => return keep_for_sweep(&self.uri, adds, &e.to_string()),
        };
        let store = self.table.object_store();
        for add in adds {
            if live.contains(&percent_decode(&add.path)) {
                warn!(table = %self.uri, file = %add.path,
                    "a file about to be discarded is in the table (a commit's answer was lost); kept");
                continue;
            }
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
}

/// Whether every file of `adds` is in `table`'s loaded version: a commit of them landed.
pub(super) fn all_live(table: &DeltaTable, adds: &[Add]) -> bool {
    live_paths(table).is_ok_and(|live| {
        !adds.is_empty() && adds.iter().all(|a| live.contains(&percent_decode(&a.path)))
    })
}

/// The (decoded) paths of the files in `table`'s loaded version.
fn live_paths(table: &DeltaTable) -> Result<std::collections::HashSet<String>, DeltaTableError> {
    Ok(table
        .snapshot()?
        .log_data()
        .iter()
        .map(|f| f.path().into_owned())
        .collect())
}

pub(super) fn keep_for_sweep(uri: &str, adds: &[Add], error: &str) {
    warn!(table = %uri, files = adds.len(), error = %error,
        "cannot read the table to tell whether these files were committed; left for the start-up sweep");
}

async fn write_part(
    mut writer: RecordBatchWriter,
    part: Vec<RecordBatch>,
) -> Result<Vec<Add>, DeltaTableError> {
    for batch in part {
        writer.write(batch).await?;
    }
    writer.flush().await
}

/// `batches` in at most `parts` runs of about equal rows, cut where a run is full (slices share the
/// batches' memory). Fewer parts when there are fewer rows than parts.
fn split_rows(batches: Vec<RecordBatch>, parts: usize) -> Vec<Vec<RecordBatch>> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let per_part = rows.div_ceil(parts.max(1)).max(1);
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new()];
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
    batches: &[RecordBatch],
) -> WriterProperties {
    dictionary::choose(&writer_properties(compression), batches)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::split_rows;
    use crate::sink::testing::int64_rows as batch;

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
        let sink = crate::sink::TableSink::open(
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
