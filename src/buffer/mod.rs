//! Buffer: rows of one dataset accumulate in Arrow builders, one set per Kafka partition (so a
//! revoked partition's rows can be dropped without touching the others) — or a few segments of one,
//! filled by different lanes — until a flush limit is hit. A flush keeps only the latest row per key
//! across them all.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int32Array, Int32Builder, Int64Builder, ListBuilder,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::error::ArrowError;
use compact_str::CompactString;

mod build;
mod dataset;
mod dead_letter;
mod redelivery;

pub use build::Unbuilt;
pub use dataset::DatasetBuffer;
pub use dead_letter::DeadLetter;
pub use redelivery::{RedeliveryWindow, event_ids_of, source_event_id};

use crate::contract::{RESCUED_COLUMN, UNAVAILABLE_COLUMN};
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
    /// `_unavailable_columns`, in tables whose source has a placeholder for values it did not deliver.
    unavailable: Option<ListBuilder<StringBuilder>>,
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

/// The optional columns between the metadata and the partition columns a buffer's schema has.
#[derive(Debug, Clone, Copy)]
pub(super) struct Optional {
    /// `_rescued_data`.
    rescues: bool,
    /// `_unavailable_columns`.
    unavailable: bool,
}

impl Optional {
    fn of(schema: &arrow::datatypes::Schema) -> Self {
        Optional {
            rescues: schema.field_with_name(RESCUED_COLUMN).is_ok(),
            unavailable: schema.field_with_name(UNAVAILABLE_COLUMN).is_ok(),
        }
    }
}

impl Segment {
    fn new(
        types: &[DataType],
        optional: Optional,
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
            rescued: optional.rescues.then(|| strings(hint.rescued)),
            unavailable: optional.unavailable.then(|| {
                ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
                    "element",
                    DataType::Utf8,
                    true,
                )))
            }),
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
            + row.unavailable.iter().map(|c| c.len()).sum::<usize>()
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
        if let Some(b) = &mut self.unavailable {
            if row.unavailable.is_empty() {
                b.append_null();
            } else {
                for name in &row.unavailable {
                    b.values().append_value(name);
                }
                b.append(true);
            }
        }
        for (b, v) in self
            .partition_values
            .iter_mut()
            .zip(row.partition_values.iter())
        {
            b.append_value(v);
        }
        // A row that lacks values (`_unavailable_columns`) neither replaces nor is replaced by another
        // row of its key in the flush: the row it would replace may be the only one that has them.
        let key = if row.unavailable.is_empty() {
            row.dedup_key
        } else {
            None
        };
        self.dedup.push((key, row.order));
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
        if let Some(b) = &mut self.unavailable {
            columns.push(Arc::new(b.finish()));
        }
        for b in &mut self.partition_values {
            columns.push(Arc::new(b.finish()));
        }
        RecordBatch::try_new(schema.clone(), columns)
    }
}

#[cfg(test)]
mod tests;
