//! Buffer: rows of one dataset accumulate in Arrow builders, one set per Kafka partition (so a
//! revoked partition's rows can be dropped without touching the others) — or a few segments of one,
//! filled by different lanes — until a flush limit is hit. A flush keeps only the latest row per key
//! across them all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int32Array, Int32Builder, Int64Builder, RecordBatch,
    StringArray, StringBuilder, TimestampMicrosecondBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use compact_str::CompactString;

mod dead_letter;
mod redelivery;

pub use dead_letter::DeadLetter;
pub use redelivery::{RedeliveryWindow, event_ids_of, source_event_id};

use crate::config::FlushLimits;
use crate::contract::RESCUED_COLUMN;
use crate::transform::{Cell, OrderValue, Row};

/// Bytes charged per row on top of its values: builders' offsets, validity and side tables.
const ROW_OVERHEAD_BYTES: usize = 96;

pub use crate::txn::{OffsetRange, TopicPartition};

/// What a flush hands to the sink: deduplicated Arrow batches, one per Kafka partition or segment of
/// one (not concatenated, which would copy every value once more at the memory peak of a flush).
#[derive(Debug)]
pub struct FlushBatch {
    pub batches: Vec<RecordBatch>,
    pub ranges: Vec<OffsetRange>,
    pub rows_in: usize,
    pub duplicates_dropped: usize,
    /// Messages of these ranges that could not be ingested, in offset order per partition.
    pub dead_letters: Vec<DeadLetter>,
    /// Source event ids of the rows (see [`source_event_id`]), for the redelivery window once committed.
    pub source_ids: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    Rows,
    Bytes,
    Age,
    Memory,
    Shutdown,
    CaughtUp,
    /// Before a column of the table is widened.
    SchemaChange,
}

impl FlushReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Rows => "rows",
            FlushReason::Bytes => "bytes",
            FlushReason::Age => "age",
            FlushReason::Memory => "memory",
            FlushReason::Shutdown => "shutdown",
            FlushReason::CaughtUp => "caught_up",
            FlushReason::SchemaChange => "schema_change",
        }
    }
}

enum ColumnBuilder {
    Str(StringBuilder),
    Bool(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Decimal(Decimal128Builder),
    Binary(BinaryBuilder),
}

impl ColumnBuilder {
    /// The builder for a contract column's Arrow type (see `Column::arrow_type`).
    fn new(ty: &DataType) -> Self {
        Self::with_capacity(ty, 0, 0)
    }

    /// The builder for `ty`, with room for `rows` values of `bytes` in all (variable-size types).
    fn with_capacity(ty: &DataType, rows: usize, bytes: usize) -> Self {
        match ty {
            DataType::Boolean => ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows)),
            DataType::Int32 => ColumnBuilder::Int32(Int32Builder::with_capacity(rows)),
            DataType::Int64 => ColumnBuilder::Int64(Int64Builder::with_capacity(rows)),
            DataType::Float32 => ColumnBuilder::Float32(Float32Builder::with_capacity(rows)),
            DataType::Float64 => ColumnBuilder::Float64(Float64Builder::with_capacity(rows)),
            DataType::Date32 => ColumnBuilder::Date(Date32Builder::with_capacity(rows)),
            DataType::Timestamp(..) => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows))
            }
            DataType::Decimal128(p, s) => ColumnBuilder::Decimal(
                Decimal128Builder::with_capacity(rows).with_data_type(DataType::Decimal128(*p, *s)),
            ),
            DataType::Binary => ColumnBuilder::Binary(BinaryBuilder::with_capacity(rows, bytes)),
            // Strings and JSON text.
            _ => ColumnBuilder::Str(StringBuilder::with_capacity(rows, bytes)),
        }
    }

    /// Bytes of the values of a variable-size column so far (0 for fixed-size types).
    fn value_bytes(&self) -> usize {
        match self {
            ColumnBuilder::Str(b) => b.values_slice().len(),
            ColumnBuilder::Binary(b) => b.values_slice().len(),
            _ => 0,
        }
    }

    /// The mapper produced `cell` for this column's type, so a mismatch is a bug, not bad input.
    fn append(&mut self, cell: Cell) {
        match (self, cell) {
            (ColumnBuilder::Str(b), Cell::Str(s)) => b.append_value(s),
            (ColumnBuilder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (ColumnBuilder::Int32(b), Cell::Int32(v)) => b.append_value(v),
            (ColumnBuilder::Int64(b), Cell::Int64(v)) => b.append_value(v),
            (ColumnBuilder::Float32(b), Cell::Float32(v)) => b.append_value(v),
            (ColumnBuilder::Float64(b), Cell::Float64(v)) => b.append_value(v),
            (ColumnBuilder::Date(b), Cell::Date(v)) => b.append_value(v),
            (ColumnBuilder::Timestamp(b), Cell::Timestamp(v)) => b.append_value(v),
            (ColumnBuilder::Decimal(b), Cell::Decimal(v)) => b.append_value(v),
            (ColumnBuilder::Binary(b), Cell::Binary(v)) => b.append_value(v),
            (b, Cell::Null) => b.append_null(),
            (_, cell) => unreachable!("cell {cell:?} does not match its column builder"),
        }
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::Str(b) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
            ColumnBuilder::Decimal(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Str(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish().with_timezone("UTC")),
            ColumnBuilder::Decimal(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
        }
    }
}

/// The rows of one Kafka partition: one segment, or several when a turn of the lanes split the
/// partition's messages over threads (each part filling a segment of its own). Segments follow each
/// other in offset order; rows are appended to the last.
struct PartitionBuffer {
    segments: Vec<Segment>,
}

impl PartitionBuffer {
    fn rows(&self) -> usize {
        self.segments.iter().map(Segment::rows).sum()
    }

    fn bytes(&self) -> usize {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Whether any of its offsets was consumed (a row, a skip or a dead letter).
    fn consumed(&self) -> bool {
        self.segments.iter().any(Segment::consumed)
    }

    fn tail(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a partition buffer has a segment")
    }
}

/// Rows in Arrow builders: a partition's, or a stretch of them.
pub struct Segment {
    data: Vec<ColumnBuilder>,
    ingested_at: TimestampMicrosecondBuilder,
    offsets: Int64Builder,
    ops: StringBuilder,
    source_ts: TimestampMicrosecondBuilder,
    source_pos: StringBuilder,
    /// `_rescued_data`, in tables whose contract rescues.
    rescued: Option<StringBuilder>,
    partition_values: Vec<StringBuilder>,
    dedup: Vec<(Option<CompactString>, OrderValue)>,
    dead_letters: Vec<DeadLetter>,
    source_ids: Vec<u64>,
    first_offset: i64,
    last_offset: i64,
    bytes: usize,
}

/// How large a partition's last flush was: its next buffer starts that large (with some room), so a
/// steady stream's builders are not grown by doubling, each step copying every value so far. Capacity
/// not written to yet is not resident memory.
#[derive(Debug, Clone, Default)]
struct SizeHint {
    rows: usize,
    /// Value bytes of each variable-size contract column (0 for the others), in schema order.
    data: Vec<usize>,
    source_pos: usize,
    rescued: usize,
    partition_values: Vec<usize>,
}

impl SizeHint {
    fn of(buf: &PartitionBuffer) -> Self {
        let sum = |f: &dyn Fn(&Segment) -> Vec<usize>| {
            buf.segments.iter().map(f).fold(Vec::new(), |mut acc, v| {
                acc.resize(acc.len().max(v.len()), 0);
                acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                acc
            })
        };
        SizeHint {
            rows: buf.rows(),
            data: sum(&|s| s.data.iter().map(ColumnBuilder::value_bytes).collect()),
            source_pos: buf
                .segments
                .iter()
                .map(|s| s.source_pos.values_slice().len())
                .sum(),
            rescued: buf
                .segments
                .iter()
                .map(|s| s.rescued.as_ref().map_or(0, |b| b.values_slice().len()))
                .sum(),
            partition_values: sum(&|s| {
                s.partition_values
                    .iter()
                    .map(|b| b.values_slice().len())
                    .collect()
            }),
        }
    }

    /// The same shape for `rows` rows.
    fn scaled(&self, rows: usize) -> SizeHint {
        let scale = |n: usize| n.checked_div(self.rows).map_or(0, |per_row| per_row * rows);
        SizeHint {
            rows,
            data: self.data.iter().map(|&n| scale(n)).collect(),
            source_pos: scale(self.source_pos),
            rescued: scale(self.rescued),
            partition_values: self.partition_values.iter().map(|&n| scale(n)).collect(),
        }
    }
}

/// Room over the last flush's size: an eighth.
fn with_room(n: usize) -> usize {
    n + n / 8
}

impl Segment {
    fn new(
        types: &[DataType],
        rescues: bool,
        partition_columns: usize,
        first_offset: i64,
        hint: &SizeHint,
    ) -> Self {
        let rows = with_room(hint.rows);
        let bytes = |v: Option<&usize>| with_room(v.copied().unwrap_or(0));
        let strings = |n: usize| StringBuilder::with_capacity(rows, with_room(n));
        Segment {
            data: types
                .iter()
                .enumerate()
                .map(|(i, ty)| ColumnBuilder::with_capacity(ty, rows, bytes(hint.data.get(i))))
                .collect(),
            ingested_at: TimestampMicrosecondBuilder::with_capacity(rows),
            offsets: Int64Builder::with_capacity(rows),
            // `c`, `u`, `d`, `r`: one byte a row.
            ops: StringBuilder::with_capacity(rows, rows),
            source_ts: TimestampMicrosecondBuilder::with_capacity(rows),
            source_pos: strings(hint.source_pos),
            rescued: rescues.then(|| strings(hint.rescued)),
            partition_values: (0..partition_columns)
                .map(|i| strings(hint.partition_values.get(i).copied().unwrap_or(0)))
                .collect(),
            dedup: Vec::new(),
            dead_letters: Vec::new(),
            source_ids: Vec::new(),
            first_offset,
            // Nothing consumed yet.
            last_offset: first_offset - 1,
            bytes: 0,
        }
    }

    fn rows(&self) -> usize {
        self.offsets.len()
    }

    fn consumed(&self) -> bool {
        self.last_offset >= self.first_offset
    }

    /// Record that `offset` was consumed but produced no row (tombstone, logical message).
    pub fn skip(&mut self, offset: i64) {
        self.last_offset = self.last_offset.max(offset);
    }

    /// Hold a message that cannot be ingested; it is committed with the flush that covers its offset.
    pub fn dead_letter(&mut self, letter: DeadLetter) {
        self.bytes += letter.bytes();
        self.skip(letter.offset);
        self.dead_letters.push(letter);
    }

    /// Append a row.
    pub fn push(&mut self, row: Row) {
        let bytes = ROW_OVERHEAD_BYTES
            + row.data.iter().map(Cell::approx_bytes).sum::<usize>()
            + row.source_pos.as_ref().map_or(0, |s| s.len())
            + row.rescued.as_ref().map_or(0, String::len)
            + row.dedup_key.as_ref().map_or(0, |s| s.len());
        self.skip(row.offset);
        self.source_ids.extend(source_event_id(&row));
        let cells = row.data.len();
        for (b, cell) in self.data.iter_mut().zip(row.data) {
            b.append(cell);
        }
        // A row mapped before a column evolved has no cell for it.
        for b in self.data.iter_mut().skip(cells) {
            b.append_null();
        }
        self.ingested_at.append_value(row.ingested_at_us);
        self.offsets.append_value(row.offset);
        self.ops.append_value(row.op.as_str());
        self.source_ts.append_option(row.source_ts_us);
        self.source_pos.append_option(row.source_pos);
        if let Some(b) = &mut self.rescued {
            b.append_option(row.rescued);
        }
        for (b, v) in self
            .partition_values
            .iter_mut()
            .zip(row.partition_values.iter())
        {
            b.append_value(v);
        }
        self.dedup.push((row.dedup_key, row.order));
        self.bytes += bytes;
    }

    /// The segment's rows as a batch of `schema`; each row's dedup key and ordering value go to `dedup`
    /// with its offset and partition, in row order.
    fn finish(
        &mut self,
        schema: &SchemaRef,
        batch_id: &str,
        topic: &str,
        partition: i32,
        dedup: &mut Vec<(Option<CompactString>, OrderValue, i64, i32)>,
    ) -> Result<RecordBatch, ArrowError> {
        let rows = self.rows();
        let mut columns: Vec<ArrayRef> = self.data.iter_mut().map(ColumnBuilder::finish).collect();
        columns.push(Arc::new(self.ingested_at.finish().with_timezone("UTC")));
        columns.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(batch_id, rows),
        )));
        columns.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(topic, rows),
        )));
        columns.push(Arc::new(Int32Array::from_value(partition, rows)));
        let offsets = self.offsets.finish();
        dedup.extend(
            self.dedup
                .drain(..)
                .zip(offsets.values().iter())
                .map(|((k, o), off)| (k, o, *off, partition)),
        );
        columns.push(Arc::new(offsets));
        columns.push(Arc::new(self.ops.finish()));
        columns.push(Arc::new(self.source_ts.finish().with_timezone("UTC")));
        columns.push(Arc::new(self.source_pos.finish()));
        if let Some(b) = &mut self.rescued {
            columns.push(Arc::new(b.finish()));
        }
        for b in &mut self.partition_values {
            columns.push(Arc::new(b.finish()));
        }
        RecordBatch::try_new(schema.clone(), columns)
    }
}

/// All buffered rows of one dataset.
pub struct DatasetBuffer {
    schema: SchemaRef,
    /// Arrow types of the contract's columns (the schema's first fields).
    types: Vec<DataType>,
    /// The schema has `_rescued_data` after the metadata columns.
    rescues: bool,
    partition_columns: usize,
    /// Sorted by topic and partition: found without making a key (every row looks its partition up).
    partitions: Vec<(TopicPartition, PartitionBuffer)>,
    rows: usize,
    bytes: usize,
    /// When the oldest unflushed message arrived.
    oldest: Option<Instant>,
    /// Per partition, how large its last flush was.
    hints: std::collections::HashMap<TopicPartition, SizeHint>,
}

impl DatasetBuffer {
    /// A buffer for `schema`: `data_columns` contract columns, then the metadata columns (and
    /// `_rescued_data` if the schema has it), then `partition_columns` partition columns.
    pub fn new(schema: SchemaRef, data_columns: usize, partition_columns: usize) -> Self {
        let types = schema
            .fields()
            .iter()
            .take(data_columns)
            .map(|f| f.data_type().clone())
            .collect();
        let rescues = schema.field_with_name(RESCUED_COLUMN).is_ok();
        DatasetBuffer {
            rescues,
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

    fn position_of(&self, topic: &str, partition: i32) -> Result<usize, usize> {
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
            self.rescues,
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

/// A buffer's rows, taken for a flush, before its Arrow batch is built.
pub struct Unbuilt {
    schema: SchemaRef,
    partitions: Vec<(TopicPartition, PartitionBuffer)>,
    rows: usize,
    bytes: usize,
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

#[cfg(test)]
mod tests;
