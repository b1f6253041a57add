//! Building a flush's Arrow batch from the rows taken from a buffer: the segments finished, the latest
//! row per key kept (by the ordering column, then offset), the offset ranges and dead letters gathered.

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use compact_str::CompactString;

use super::{DeadLetter, FlushBatch, OffsetRange, PartitionBuffer, TopicPartition};
use crate::transform::OrderValue;

/// A buffer's rows, taken for a flush, before its Arrow batch is built.
pub struct Unbuilt {
    pub(super) schema: SchemaRef,
    pub(super) partitions: Vec<(TopicPartition, PartitionBuffer)>,
    pub(super) rows: usize,
    pub(super) bytes: usize,
}

impl Unbuilt {
    /// Rows, before duplicates are dropped.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes as the buffer counted them (see [`DatasetBuffer::bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// One deduplicated batch.
    pub fn build(self, batch_id: &str) -> Result<FlushBatch, ArrowError> {
        let mut ranges = Vec::with_capacity(self.partitions.len());
        let mut batches: Vec<RecordBatch> = Vec::with_capacity(self.partitions.len());
        let mut dedup: Vec<(Option<CompactString>, OrderValue, i64, i32)> = Vec::new();
        let mut dead_letters = Vec::new();
        let mut source_ids = Vec::new();
        for (TopicPartition { topic, partition }, buf) in self.partitions {
            ranges.push(OffsetRange {
                topic: topic.clone(),
                partition,
                first: buf.segments[0].first_offset,
                last: buf
                    .segments
                    .iter()
                    .map(|s| s.last_offset)
                    .max()
                    .unwrap_or_default(),
                rows: buf.rows(),
            });
            for mut seg in buf.segments {
                dead_letters.append(&mut seg.dead_letters);
                source_ids.append(&mut seg.source_ids);
                if seg.rows() == 0 {
                    continue;
                }
                batches.push(seg.finish(&self.schema, batch_id, &topic, partition, &mut dedup)?);
            }
        }
        let rows_in: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let keep = latest_per_key(&dedup);
        let duplicates_dropped = rows_in - keep.len();
        if duplicates_dropped > 0 {
            // `keep` holds ascending global row numbers; split them by batch.
            let mut start = 0usize;
            let mut next = keep.into_iter().peekable();
            for batch in &mut batches {
                let end = start + batch.num_rows();
                let mut local = Vec::new();
                while let Some(i) = next.next_if(|&i| (i as usize) < end) {
                    local.push(i - start as u32);
                }
                if local.len() < batch.num_rows() {
                    *batch = arrow::compute::take_record_batch(batch, &UInt32Array::from(local))?;
                }
                start = end;
            }
            batches.retain(|b| b.num_rows() > 0);
        }
        Ok(FlushBatch {
            batches,
            ranges,
            rows_in,
            duplicates_dropped,
            dead_letters,
            source_ids,
        })
    }
}

impl FlushBatch {
    /// Rows left after dedup.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// Memory held by the batches and the dead letters.
    pub fn memory_bytes(&self) -> usize {
        self.batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>()
            + self
                .dead_letters
                .iter()
                .map(DeadLetter::bytes)
                .sum::<usize>()
    }
}

/// Indices (ascending) of the rows to keep: every keyless row, and per key the row with the greatest
/// (order value, offset, partition).
fn latest_per_key(rows: &[(Option<CompactString>, OrderValue, i64, i32)]) -> Vec<u32> {
    // Sized for every row up front: growing it rehashes a flush's keys about twenty times.
    let mut best: foldhash::HashMap<&str, usize> =
        foldhash::HashMap::with_capacity_and_hasher(rows.len(), Default::default());
    let mut keep = Vec::with_capacity(rows.len());
    for (i, (key, order, offset, partition)) in rows.iter().enumerate() {
        let Some(key) = key else {
            keep.push(i as u32);
            continue;
        };
        match best.get_mut(key.as_str()) {
            None => {
                best.insert(key, i);
            }
            Some(j) => {
                let (_, o2, off2, p2) = &rows[*j];
                if (order, offset, partition) > (o2, off2, p2) {
                    *j = i;
                }
            }
        }
    }
    keep.extend(best.into_values().map(|i| i as u32));
    keep.sort_unstable();
    keep
}
