//! Which columns of a file get a Parquet dictionary.
//!
//! The Parquet writer dictionary-encodes every column until its dictionary outgrows the page limit
//! (1 MiB), then falls back to plain encoding for the rest of the column chunk. On a column of mostly
//! distinct values (keys, timestamps, offsets, amounts) that means hashing and storing every value up
//! to the limit for nothing: a third of the encode time of a typical CDC table. A strided sample of
//! the rows estimates each column's distinct values; where the dictionary would outgrow the limit or
//! be larger than the values it replaces, the column is written plain from the start. Where values
//! repeat, or the estimate cannot tell, the writer's default stands.

use arrow::array::{Array, ArrayData, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;

/// Values sampled per column: enough for a few collisions in a column of a few hundred thousand
/// distinct values, a few milliseconds for a whole batch.
pub(super) const SAMPLE: usize = 4096;

/// Fewer non-null values than this in the sample tell nothing; the default stands.
const MIN_SAMPLE: usize = 64;

/// `base` with the dictionary turned off for the columns of `batches` (one schema) that would not
/// profit from one.
pub(crate) fn choose(base: &WriterProperties, batches: &[RecordBatch]) -> WriterProperties {
    let Some(first) = batches.first() else {
        return base.clone();
    };
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let sample = sample_rows(batches, rows);
    let limit = base.dictionary_page_size_limit();
    let plain: Vec<String> = first
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(c, f)| {
            let path = ColumnPath::new(vec![f.name().clone()]);
            base.dictionary_enabled(&path)
                && estimate(batches, *c, &sample, rows).is_some_and(|e| !e.pays(limit))
        })
        .map(|(_, f)| f.name().clone())
        .collect();
    if plain.is_empty() {
        return base.clone();
    }
    plain
        .into_iter()
        .fold(base.clone().into_builder(), |b, name| {
            b.set_column_dictionary_enabled(ColumnPath::new(vec![name]), false)
        })
        .build()
}

/// (batch, row) of every `rows / SAMPLE`-th row across `batches`: spread over the whole flush, which
/// is ordered by partition and offset, not just its first partition's first rows.
fn sample_rows(batches: &[RecordBatch], rows: usize) -> Vec<(usize, usize)> {
    let stride = rows.div_ceil(SAMPLE).max(1);
    let mut picked = Vec::with_capacity(rows.min(SAMPLE));
    let mut next = 0;
    let mut start = 0;
    for (b, batch) in batches.iter().enumerate() {
        let end = start + batch.num_rows();
        while next < end {
            picked.push((b, next - start));
            next += stride;
        }
        start = end;
    }
    picked
}

/// What the sample says about one column's dictionary.
#[derive(Debug, PartialEq)]
struct Estimate {
    /// Distinct values expected in the whole column chunk.
    distinct: f64,
    /// Non-null values expected in the whole column chunk.
    values: f64,
    /// Mean bytes per dictionary entry.
    width: f64,
}

impl Estimate {
    /// Whether a dictionary is worth building: it stays under the page limit (beyond it the writer
    /// falls back to plain anyway) and holds at most half as many entries as there are values (a
    /// dictionary of mostly distinct values is larger than the values plus nothing saved).
    fn pays(&self, limit: usize) -> bool {
        self.distinct * self.width <= limit as f64 && self.distinct * 2.0 <= self.values
    }
}

/// Distinct values of column `c` from the sampled rows. For a sample of `s` values of which `d` are
/// distinct, drawn from a column of `D` values about equally frequent, about `s²/(2D)` pairs collide,
/// so `D ≈ s²/(2(s-d))`. Skewed columns collide more and look smaller: the estimate errs towards
/// keeping the dictionary, the writer's default.
fn estimate(
    batches: &[RecordBatch],
    c: usize,
    sample: &[(usize, usize)],
    rows: usize,
) -> Option<Estimate> {
    let mut seen = foldhash::HashSet::<u64>::default();
    let mut values = 0usize;
    let mut bytes = 0usize;
    // The sample is in batch order: each batch's column is opened once.
    let mut open: Option<(usize, Column<'_>)> = None;
    for &(b, i) in sample {
        if open.as_ref().is_none_or(|(ob, _)| *ob != b) {
            open = Some((b, Column::of(batches[b].column(c).as_ref())?));
        }
        let Some((_, column)) = &open else {
            continue;
        };
        let Some((hash, width)) = column.value(i) else {
            continue;
        };
        seen.insert(hash);
        values += 1;
        bytes += width;
    }
    if values < MIN_SAMPLE {
        return None;
    }
    let (s, d) = (values as f64, seen.len() as f64);
    let whole = sample.len() == rows;
    let non_null = rows as f64 * s / sample.len() as f64;
    let distinct = if whole {
        d
    } else if s > d {
        (s * s / (2.0 * (s - d))).clamp(d, non_null)
    } else {
        non_null
    };
    Some(Estimate {
        distinct,
        values: non_null,
        width: bytes as f64 / s,
    })
}

/// One batch's column, read for its values' hashes; `None` from [`Column::of`] for types left to the
/// writer's default (nested, boolean, dictionary-encoded already).
enum Column<'a> {
    Fixed { data: ArrayData, width: usize },
    Bytes(&'a dyn Array),
}

impl<'a> Column<'a> {
    fn of(array: &'a dyn Array) -> Option<Self> {
        match array.data_type() {
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView => Some(Column::Bytes(array)),
            t if t.is_primitive() => Some(Column::Fixed {
                width: t.primitive_width()?,
                data: array.to_data(),
            }),
            _ => None,
        }
    }

    /// A hash of value `i` and its size in a dictionary page; `None` for a null.
    fn value(&self, i: usize) -> Option<(u64, usize)> {
        use std::hash::BuildHasher;
        let hasher = foldhash::fast::FixedState::with_seed(0);
        match self {
            Column::Fixed { data, width } => {
                if data.is_null(i) {
                    return None;
                }
                let start = (data.offset() + i) * width;
                let value = data
                    .buffers()
                    .first()?
                    .as_slice()
                    .get(start..start + width)?;
                Some((hasher.hash_one(value), *width))
            }
            Column::Bytes(array) => {
                if array.is_null(i) {
                    return None;
                }
                let bytes: &[u8] = match array.data_type() {
                    DataType::Utf8 => array.as_string::<i32>().value(i).as_bytes(),
                    DataType::LargeUtf8 => array.as_string::<i64>().value(i).as_bytes(),
                    DataType::Utf8View => array.as_string_view().value(i).as_bytes(),
                    DataType::Binary => array.as_binary::<i32>().value(i),
                    DataType::LargeBinary => array.as_binary::<i64>().value(i),
                    _ => array.as_binary_view().value(i),
                };
                // A byte array's dictionary entry carries a 4-byte length.
                Some((hasher.hash_one(bytes), bytes.len() + 4))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .expect("batch")
    }

    fn plain_columns(props: &WriterProperties, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .filter(|n| !props.dictionary_enabled(&ColumnPath::new(vec![n.to_string()])))
            .map(|n| n.to_string())
            .collect()
    }

    /// A deterministic scatter of `0..modulo`, so every sample sees a fair spread.
    fn scatter(i: i64, modulo: i64) -> i64 {
        (i * 2_654_435_761).rem_euclid(modulo)
    }

    #[test]
    fn distinct_and_repeating_columns_are_told_apart() {
        let n = 300_000i64;
        let b = batch(vec![
            ("id", Arc::new(Int64Array::from_iter_values(0..n))),
            (
                "customer",
                Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|i| scatter(i, 200_000)),
                )),
            ),
            (
                "status",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["new", "paid", "shipped"][(i % 3) as usize]),
                )),
            ),
            // 2,000 values of ~10 bytes: a 28 KB dictionary for 300k rows, as the writer would do.
            (
                "sku",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("SKU-{:05}", scatter(i, 2_000))),
                )),
            ),
            (
                "email",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("user{}@example.com", scatter(i, 1_000_003))),
                )),
            ),
            (
                "gift",
                Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(i % 7 == 0)))),
            ),
        ]);
        let props = choose(&WriterProperties::default(), &[b]);
        let names = ["id", "customer", "status", "sku", "email", "gift"];
        assert_eq!(plain_columns(&props, &names), ["id", "customer", "email"]);
    }

    #[test]
    fn the_sample_spans_every_batch_of_a_flush() {
        // The first partition's rows repeat one value; the rest are distinct: together mostly distinct.
        let head = batch(vec![(
            "v",
            Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(7, 1_000))),
        )]);
        let tail = batch(vec![(
            "v",
            Arc::new(Int64Array::from_iter_values(0..200_000)),
        )]);
        let props = choose(&WriterProperties::default(), &[head, tail]);
        assert_eq!(plain_columns(&props, &["v"]), ["v"]);
    }

    #[test]
    fn small_flushes_are_counted_exactly() {
        // 3,000 rows, every one sampled: 1,000 distinct values each three times keep the dictionary;
        // 3,000 distinct do not.
        let b = batch(vec![
            (
                "thrice",
                Arc::new(Int64Array::from_iter_values((0..3_000).map(|i| i % 1_000))),
            ),
            ("once", Arc::new(Int64Array::from_iter_values(0..3_000))),
        ]);
        let props = choose(&WriterProperties::default(), &[b]);
        assert_eq!(plain_columns(&props, &["thrice", "once"]), ["once"]);
    }

    #[test]
    fn nulls_and_settings_keep_the_default() {
        // Mostly null: too few values to judge. A column the settings already write plain stays so.
        let b = batch(vec![
            (
                "sparse",
                Arc::new(Int64Array::from_iter(
                    (0..100_000).map(|i| (i % 5_000 == 0).then_some(i)),
                )),
            ),
            ("id", Arc::new(Int64Array::from_iter_values(0..100_000))),
        ]);
        let base = WriterProperties::builder()
            .set_column_dictionary_enabled(ColumnPath::new(vec!["id".into()]), false)
            .build();
        let props = choose(&base, &[b]);
        assert_eq!(plain_columns(&props, &["sparse", "id"]), ["id"]);
        assert!(props.dictionary_enabled(&ColumnPath::new(vec!["sparse".into()])));
    }
}
