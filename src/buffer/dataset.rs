//! A dataset's buffer: the partition buffers of every Kafka partition it reads, their flush limits and
//! memory, and the segments it lends to a turn of the lanes.

use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;

use super::{
    ColumnBuilder, FlushBatch, FlushReason, Optional, PartitionBuffer, Segment, SizeHint,
    TopicPartition, Unbuilt,
};
use crate::config::FlushLimits;
use crate::transform::Row;

/// All buffered rows of one dataset.
pub struct DatasetBuffer {
    schema: SchemaRef,
    /// Arrow types of the contract's columns (the schema's first fields).
    types: Vec<DataType>,
    /// The columns the schema has after the metadata columns.
    optional: Optional,
    partition_columns: usize,
    /// Sorted by topic and partition: found without making a key (every row looks its partition up).
    pub(super) partitions: Vec<(TopicPartition, PartitionBuffer)>,
    rows: usize,
    bytes: usize,
    /// When the oldest unflushed message arrived.
    oldest: Option<Instant>,
    /// Per partition, how large its last flush was.
    hints: std::collections::HashMap<TopicPartition, SizeHint>,
}

impl DatasetBuffer {
    /// A buffer for `schema`: `data_columns` contract columns, then the metadata columns (and
    /// `_rescued_data` and `_unavailable_columns` where the schema has them), then `partition_columns` partition columns.
    pub fn new(schema: SchemaRef, data_columns: usize, partition_columns: usize) -> Self {
        let types = schema
            .fields()
            .iter()
            .take(data_columns)
            .map(|f| f.data_type().clone())
            .collect();
        DatasetBuffer {
            optional: Optional::of(&schema),
            schema,
            types,
            partition_columns,
            partitions: Vec::new(),
            rows: 0,
            bytes: 0,
            oldest: None,
            hints: Default::default(),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Contract columns the buffer holds (the schema's first fields).
    pub fn data_columns(&self) -> usize {
        self.types.len()
    }

    /// Take on a schema with more contract columns (evolved while rows were buffered): rows already
    /// buffered get nulls in them.
    pub fn evolve(&mut self, schema: SchemaRef, data_columns: usize) {
        let added: Vec<DataType> = schema
            .fields()
            .iter()
            .take(data_columns)
            .skip(self.types.len())
            .map(|f| f.data_type().clone())
            .collect();
        for seg in self
            .partitions
            .iter_mut()
            .flat_map(|(_, buf)| buf.segments.iter_mut())
        {
            let rows = seg.rows();
            for ty in &added {
                let mut b = ColumnBuilder::new(ty);
                for _ in 0..rows {
                    b.append_null();
                }
                seg.data.push(b);
            }
        }
        self.types.extend(added);
        self.schema = schema;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    pub fn age(&self, now: Instant) -> Duration {
        self.oldest
            .map_or(Duration::ZERO, |t| now.duration_since(t))
    }

    /// Where the partition's buffer is, made (from `first_offset`) if missing: sized for `rows` rows
    /// when that is all it is known to take (a lane's chunk), else as large as the partition's last
    /// flush.
    fn ensure(
        &mut self,
        topic: &str,
        partition: i32,
        first_offset: i64,
        rows: Option<usize>,
        now: Instant,
    ) -> usize {
        self.oldest.get_or_insert(now);
        match self.position_of(topic, partition) {
            Ok(i) => i,
            Err(i) => {
                let segments = vec![self.new_segment(topic, partition, first_offset, rows)];
                self.partitions.insert(
                    i,
                    (
                        TopicPartition::new(topic, partition),
                        PartitionBuffer { segments },
                    ),
                );
                i
            }
        }
    }

    pub(super) fn position_of(&self, topic: &str, partition: i32) -> Result<usize, usize> {
        self.partitions.binary_search_by(
            |(
                TopicPartition {
                    topic: t,
                    partition: p,
                },
                _,
            )| (t.as_str(), *p).cmp(&(topic, partition)),
        )
    }

    /// Put one message into the partition's last segment with `fill` (its row, skip or dead letter; the
    /// segment is made from `offset` if the partition has none), counting what it adds.
    pub fn fill<R>(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        now: Instant,
        fill: impl FnOnce(&mut Segment) -> R,
    ) -> R {
        let i = self.ensure(topic, partition, offset, None, now);
        let seg = self.partitions[i].1.tail();
        let (rows, bytes) = (seg.rows(), seg.bytes);
        let out = fill(seg);
        self.rows += seg.rows() - rows;
        self.bytes += seg.bytes - bytes;
        out
    }

    pub fn push(&mut self, topic: &str, partition: i32, row: Row, now: Instant) {
        let offset = row.offset;
        self.fill(topic, partition, offset, now, |seg| seg.push(row));
    }

    /// The last segments of these partitions (topic, partition, first offset to come, rows to come),
    /// made where missing, in the order asked: to be filled on other threads. Call
    /// [`DatasetBuffer::recount`] once they are returned.
    pub fn lend(&mut self, wanted: &[(&str, i32, i64, usize)], now: Instant) -> Vec<&mut Segment> {
        for &(topic, partition, offset, rows) in wanted {
            self.ensure(topic, partition, offset, Some(rows), now);
        }
        let mut lent: Vec<Option<&mut Segment>> = wanted.iter().map(|_| None).collect();
        for (TopicPartition { topic, partition }, buf) in &mut self.partitions {
            if let Some(i) = wanted
                .iter()
                .position(|&(t, p, _, _)| (t, p) == (topic.as_str(), *partition))
            {
                lent[i] = Some(buf.tail());
            }
        }
        lent.into_iter()
            .map(|b| b.expect("every partition asked for was made above"))
            .collect()
    }

    /// A segment to follow the partition's last one, from `first_offset`, sized for `rows` rows of the
    /// partition's last flush. Only for `rows`: the partition's next chunk (next poll) starts a
    /// segment of its own, so room for the rest of the flush would never be written, yet counts
    /// against the memory budget as the batch's capacity (a 134 MB buffer held 535 MB of capacity).
    pub fn segment(&self, topic: &str, partition: i32, first_offset: i64, rows: usize) -> Segment {
        self.new_segment(topic, partition, first_offset, Some(rows))
    }

    /// An empty segment of the partition from `first_offset`, sized for `rows` rows of the shape of the
    /// partition's last flush, or for all of that flush when `rows` is not known.
    fn new_segment(
        &self,
        topic: &str,
        partition: i32,
        first_offset: i64,
        rows: Option<usize>,
    ) -> Segment {
        let hint = self
            .hints
            .get(&TopicPartition::new(topic, partition))
            .cloned()
            .unwrap_or_default();
        let hint = match rows {
            Some(rows) => hint.scaled(rows),
            None => hint,
        };
        Segment::new(
            &self.types,
            self.optional,
            self.partition_columns,
            first_offset,
            &hint,
        )
    }

    /// Append `segment` after the partition's last one (the partition has a buffer: its earlier
    /// messages were lent). Call [`DatasetBuffer::recount`] after.
    pub fn attach(&mut self, topic: &str, partition: i32, segment: Segment) {
        if let Ok(i) = self.position_of(topic, partition) {
            self.partitions[i].1.segments.push(segment);
        }
    }

    /// Take the row and byte counts of lent partition buffers in; forget those that consumed nothing
    /// (their first message was left to the loop): a buffer claims the offsets it covers.
    pub fn recount(&mut self) {
        self.partitions.retain(|(_, b)| b.consumed());
        if self.partitions.is_empty() {
            self.oldest = None;
        }
        self.rows = self.partitions.iter().map(|(_, b)| b.rows()).sum();
        self.bytes = self.partitions.iter().map(|(_, b)| b.bytes()).sum();
    }

    /// Forget a partition's rows (revoked, or to be re-read from the table's offset).
    pub fn drop_partition(&mut self, topic: &str, partition: i32) {
        if let Ok(i) = self.position_of(topic, partition) {
            let (_, buf) = self.partitions.remove(i);
            self.rows -= buf.rows();
            self.bytes -= buf.bytes();
        }
        if self.partitions.is_empty() {
            self.oldest = None;
        }
    }

    /// The first limit reached, if any.
    pub fn due(&self, limits: &FlushLimits, now: Instant) -> Option<FlushReason> {
        if self.is_empty() {
            return None;
        }
        if self.rows >= limits.max_rows {
            Some(FlushReason::Rows)
        } else if self.bytes >= limits.max_bytes {
            Some(FlushReason::Bytes)
        } else if self.age(now) >= limits.max_age {
            Some(FlushReason::Age)
        } else {
            None
        }
    }

    /// Empty the buffer into one deduplicated batch.
    pub fn take(&mut self, batch_id: &str) -> Result<Option<FlushBatch>, ArrowError> {
        self.take_unbuilt().map(|t| t.build(batch_id)).transpose()
    }

    /// Empty the buffer, leaving the Arrow batch to be built by [`Unbuilt::build`] (elsewhere: it is
    /// most of a flush's work on the loop, tens of milliseconds while the lanes would wait).
    pub fn take_unbuilt(&mut self) -> Option<Unbuilt> {
        if self.partitions.is_empty() {
            return None;
        }
        let partitions = std::mem::take(&mut self.partitions);
        let (rows, bytes) = (self.rows, self.bytes);
        self.rows = 0;
        self.bytes = 0;
        self.oldest = None;
        for (TopicPartition { topic, partition }, buf) in &partitions {
            if buf.rows() > 0 {
                self.hints.insert(
                    TopicPartition::new(topic.clone(), *partition),
                    SizeHint::of(buf),
                );
            }
        }
        Some(Unbuilt {
            schema: self.schema.clone(),
            partitions,
            rows,
            bytes,
        })
    }
}
