//! The latest view's answer to values the source did not deliver (`_unavailable_columns`): a key's
//! newest row takes such a column's value from the key's previous value, as the source still holds it.
//! Unchanged TOASTed columns are the case: an update of a Postgres row without `REPLICA IDENTITY FULL`
//! leaves them out, and only the key's earlier rows know them.
//!
//! The previous value is the newest earlier change of the key among the history files a refresh
//! applies that delivered the column (a *donor*), else the key's row in the view before the refresh
//! (which carried its own values forward the same way). A column neither knows stays null and stays
//! named in the view row's `_unavailable_columns`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListBuilder, RecordBatch, StringBuilder};
use arrow::datatypes::{Field, SchemaRef};
use arrow::error::ArrowError;

use super::MaintenanceError;
use super::latest::{Change, Sources, arrow_error, identities, read_identities, take_rows};
use crate::config::DatasetConfig;
use crate::contract::UNAVAILABLE_COLUMN;
use crate::sink::{SinkError, TableSink};

/// The names in row `i` of an `_unavailable_columns` array.
pub(super) fn names_at(column: Option<&ArrayRef>, i: usize) -> Vec<String> {
    let Some(list) = column.and_then(|c| c.as_list_opt::<i32>()) else {
        return Vec::new();
    };
    if list.is_null(i) {
        return Vec::new();
    }
    let values = list.value(i);
    let Some(names) = values.as_string_opt::<i32>() else {
        return Vec::new();
    };
    names.iter().flatten().map(str::to_string).collect()
}

/// Where the values for a bucket's newest rows come from: rows of earlier changes (by key and
/// column) and the keys' view rows before the refresh (by key), each as one batch of the history's
/// columns.
#[derive(Default)]
pub(super) struct Donors<'a> {
    pub earlier: Option<&'a RecordBatch>,
    pub by_column: Option<&'a HashMap<(String, String), usize>>,
    pub prior: Option<&'a RecordBatch>,
    pub by_key: HashMap<String, usize>,
}

/// The view rows taken as previous values, as one batch, and the row of each key in it.
pub(super) fn by_key(
    prior: &[RecordBatch],
    schema: &SchemaRef,
    d: &DatasetConfig,
) -> Result<(Option<RecordBatch>, HashMap<String, usize>), ArrowError> {
    if prior.is_empty() {
        return Ok((None, HashMap::new()));
    }
    let batch = arrow::compute::concat_batches(schema, prior)?;
    let rows = identities(&batch, d)
        .into_iter()
        .enumerate()
        .filter_map(|(j, id)| id.map(|(key, ..)| (key, j)))
        .collect();
    Ok((Some(batch), rows))
}

/// [`fill`] for a batch of the dataset's rows, keyed by its key columns.
pub(super) fn fill_rows(
    batch: &RecordBatch,
    d: &DatasetConfig,
    donors: &Donors<'_>,
) -> Result<RecordBatch, ArrowError> {
    if batch.column_by_name(UNAVAILABLE_COLUMN).is_none() {
        return Ok(batch.clone());
    }
    let keys: Vec<Option<String>> = identities(batch, d)
        .into_iter()
        .map(|id| id.map(|(key, ..)| key))
        .collect();
    fill(batch, &keys, donors)
}

/// `batch` (history columns, one newest row per key; `keys[i]` is row i's key) with the values its
/// unavailable columns lack filled from `donors`, and its `_unavailable_columns` cut to what is still
/// not known.
pub(super) fn fill(
    batch: &RecordBatch,
    keys: &[Option<String>],
    donors: &Donors<'_>,
) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let Ok(list_index) = schema.index_of(UNAVAILABLE_COLUMN) else {
        return Ok(batch.clone());
    };
    let wanted: Vec<Vec<String>> = (0..batch.num_rows())
        .map(|i| names_at(Some(batch.column(list_index)), i))
        .collect();
    if wanted.iter().all(Vec::is_empty) {
        return Ok(batch.clone());
    }
    // Sources for `interleave`: 0 the batch itself, 1 earlier changes, 2 view rows.
    let prior_names: HashMap<usize, Vec<String>> = donors
        .prior
        .map(|p| {
            let column = p.column_by_name(UNAVAILABLE_COLUMN);
            (0..p.num_rows())
                .map(|j| (j, names_at(column, j)))
                .collect()
        })
        .unwrap_or_default();
    let mut still: Vec<Vec<String>> = vec![Vec::new(); batch.num_rows()];
    let mut picks: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (i, names) in wanted.iter().enumerate() {
        for name in names {
            let key = keys[i].as_deref().unwrap_or_default();
            let pick = donors
                .by_column
                .and_then(|m| m.get(&(key.to_string(), name.clone())))
                .map(|&j| (1, j))
                .or_else(|| {
                    let j = *donors.by_key.get(key)?;
                    let unknown = prior_names.get(&j).is_some_and(|n| n.contains(name));
                    (!unknown).then_some((2, j))
                });
            match pick {
                Some(p) => {
                    picks
                        .entry(name.as_str())
                        .or_insert_with(|| (0..batch.num_rows()).map(|r| (0, r)).collect())[i] = p
                }
                None => still[i].push(name.clone()),
            }
        }
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for (name, indices) in picks {
        let Ok(c) = schema.index_of(name) else {
            continue;
        };
        let own = batch.column(c).as_ref();
        let from = |b: Option<&RecordBatch>| -> Result<ArrayRef, ArrowError> {
            match b.and_then(|b| b.column_by_name(name)) {
                Some(a) if a.data_type() == own.data_type() => Ok(a.clone()),
                Some(a) => arrow::compute::cast(a, own.data_type()),
                None => Ok(arrow::array::new_null_array(
                    own.data_type(),
                    b.map_or(0, RecordBatch::num_rows),
                )),
            }
        };
        let (earlier, prior) = (from(donors.earlier)?, from(donors.prior)?);
        columns[c] =
            arrow::compute::interleave(&[own, earlier.as_ref(), prior.as_ref()], &indices)?;
    }
    columns[list_index] = names_array(&schema, list_index, &still);
    RecordBatch::try_new(schema, columns)
}

/// An `_unavailable_columns` array of these names per row (null where none).
fn names_array(schema: &SchemaRef, index: usize, rows: &[Vec<String>]) -> ArrayRef {
    let item = match schema.field(index).data_type() {
        arrow::datatypes::DataType::List(f) => f.clone(),
        _ => Arc::new(Field::new(
            "element",
            arrow::datatypes::DataType::Utf8,
            true,
        )),
    };
    let mut b = ListBuilder::new(StringBuilder::new()).with_field(item);
    for names in rows {
        if names.is_empty() {
            b.append_null();
        } else {
            for n in names {
                b.values().append_value(n);
            }
            b.append(true);
        }
    }
    Arc::new(b.finish())
}

/// A key and one column of it.
pub(super) type KeyColumn = (String, String);

/// Phase one and a half, only when some newest change lacks columns: per key and such column, the
/// newest earlier change among the new files that has it (positions only).
pub(super) async fn earlier_donors(
    src: &Sources<'_>,
    changes: &HashMap<String, Change>,
) -> Result<HashMap<KeyColumn, Change>, SinkError> {
    let mut out: HashMap<KeyColumn, Change> = HashMap::new();
    if changes.values().all(|c| c.unavailable.is_empty()) {
        return Ok(out);
    }
    for (f, file) in src.files.iter().enumerate() {
        let mut row = 0;
        for batch in read_identities(src, file).await? {
            let unavailable = batch.column_by_name(UNAVAILABLE_COLUMN);
            for (i, id) in identities(&batch, src.d).into_iter().enumerate() {
                row += 1;
                let Some((key, order, offset, delete)) = id else {
                    continue;
                };
                let Some(newest) = changes.get(&key).filter(|c| !c.unavailable.is_empty()) else {
                    continue;
                };
                let candidate = Change {
                    bucket: newest.bucket,
                    order,
                    version: file.version,
                    offset,
                    delete,
                    file: f,
                    row: row - 1,
                    unavailable: names_at(unavailable, i),
                };
                if delete || !newest.newer_than(&candidate) {
                    continue;
                }
                for column in &newest.unavailable {
                    if candidate.unavailable.contains(column) {
                        continue;
                    }
                    let slot = (key.clone(), column.clone());
                    if out.get(&slot).is_none_or(|best| candidate.newer_than(best)) {
                        out.insert(slot, candidate.clone());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The earlier changes (rows of the new files) that give the pass's newest changes the columns they
/// lack, as one batch, and where each (key, column) finds its value in it.
pub(super) async fn earlier_rows(
    src: &Sources<'_>,
    view: &TableSink,
    pass: &[u32],
    earlier: &HashMap<KeyColumn, Change>,
) -> Result<(Option<RecordBatch>, HashMap<KeyColumn, usize>), MaintenanceError> {
    let mut by_file: BTreeMap<usize, Vec<(usize, &KeyColumn)>> = BTreeMap::new();
    for (slot, c) in earlier.iter().filter(|(_, c)| pass.contains(&c.bucket)) {
        by_file.entry(c.file).or_default().push((c.row, slot));
    }
    let mut batches = Vec::new();
    let mut at = HashMap::new();
    let mut n = 0;
    for (f, rows) in by_file {
        let file = &src.files[f];
        let read = src
            .history
            .read_file(&file.path, &file.partition_values, src.history_schema, None)
            .await?;
        let whole = arrow::compute::concat_batches(src.history_schema, &read)
            .map_err(|e| arrow_error(view, e))?;
        let indices: Vec<u32> = rows.iter().map(|(r, _)| *r as u32).collect();
        batches.push(take_rows(&whole, &indices).map_err(|e| arrow_error(view, e))?);
        for (_, slot) in rows {
            at.insert((*slot).clone(), n);
            n += 1;
        }
    }
    if batches.is_empty() {
        return Ok((None, at));
    }
    let batch = arrow::compute::concat_batches(src.history_schema, &batches)
        .map_err(|e| arrow_error(view, e))?;
    Ok((Some(batch), at))
}

/// Rows of a view batch whose key's newest change lacks columns: the previous values it takes.
pub(super) fn rows_lacking(
    batch: &RecordBatch,
    d: &DatasetConfig,
    changed: &HashMap<&String, &Change>,
) -> Vec<u32> {
    identities(batch, d)
        .into_iter()
        .enumerate()
        .filter(|(_, id)| {
            id.as_ref()
                .is_some_and(|(k, ..)| changed.get(k).is_some_and(|c| !c.unavailable.is_empty()))
        })
        .map(|(i, _)| i as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Schema};

    fn batch(rows: &[(i64, Option<&str>, &[&str])]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("notes", DataType::Utf8, true),
            Field::new(
                UNAVAILABLE_COLUMN,
                crate::contract::unavailable_type(),
                true,
            ),
        ]));
        let names: Vec<Vec<String>> = rows
            .iter()
            .map(|r| r.2.iter().map(|s| s.to_string()).collect())
            .collect();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                names_array(&schema, 2, &names),
            ],
        )
        .unwrap()
    }

    #[test]
    fn unavailable_values_come_from_earlier_changes_then_the_view() {
        // Keys 1, 2, 3 updated without their notes; 4 delivered them.
        let newest = batch(&[
            (1, None, &["notes"]),
            (2, None, &["notes"]),
            (3, None, &["notes"]),
            (4, Some("d"), &[]),
        ]);
        let keys: Vec<Option<String>> = (1..=4).map(|k| Some(k.to_string())).collect();
        // Key 1 was inserted with its notes in the same refresh.
        let earlier = batch(&[(1, Some("from history"), &[])]);
        let by_column = HashMap::from([(("1".to_string(), "notes".to_string()), 0)]);
        // Key 2's view row knows them; key 3's view row did not know them either.
        let prior = batch(&[(2, Some("from view"), &[]), (3, None, &["notes"])]);
        let donors = Donors {
            earlier: Some(&earlier),
            by_column: Some(&by_column),
            prior: Some(&prior),
            by_key: HashMap::from([("2".to_string(), 0), ("3".to_string(), 1)]),
        };
        let out = fill(&newest, &keys, &donors).unwrap();
        let notes: Vec<Option<&str>> = out.column(1).as_string::<i32>().iter().collect();
        assert_eq!(
            notes,
            vec![Some("from history"), Some("from view"), None, Some("d")]
        );
        let still: Vec<Vec<String>> = (0..4).map(|i| names_at(Some(out.column(2)), i)).collect();
        assert_eq!(
            still,
            vec![vec![], vec![], vec!["notes".to_string()], vec![]]
        );
    }

    #[test]
    fn a_batch_without_unavailable_columns_is_left_as_it_is() {
        let b = batch(&[(1, Some("a"), &[])]);
        let out = fill(&b, &[Some("1".into())], &Donors::default()).unwrap();
        assert_eq!(out, b);
    }
}
