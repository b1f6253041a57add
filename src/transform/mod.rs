//! Transform: a decoded [`Change`] plus its Kafka context into a typed [`Row`] that matches the
//! dataset's contract: normalized names, coerced values, metadata, partition values and the dedup key.
//!
//! This room holds the [`Mapper`] (a dataset's contract, set up once, and the changes it takes on:
//! evolved, widened and adopted columns) and what a row is; `map` builds rows from changes, `drift`
//! is what a message showed beyond the contract, `partition` the time partitions, `coerce` one value
//! into its column's type.

mod coerce;
mod drift;
mod incoming;
mod map;
mod names;
mod partition;
mod unavailable;

use compact_str::CompactString;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{DatasetConfig, PartitionBy};
use crate::contract::{ColumnType, Contract, DriftAction, OnError};
use crate::decode::{Fields, Op};
use incoming::Incoming;

pub use coerce::{Cell, CoerceError};
use drift::observe;
pub use drift::{DriftEvent, DriftKind, Observations};
pub use names::snake_case;
pub use partition::{PartitionValues, partition_span, span_of_partitions};

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("column `{column}`: {source}")]
    Coerce {
        column: String,
        #[source]
        source: CoerceError,
        action: OnError,
    },
    #[error("column `{column}` is not nullable but the `{op}` event has no value for it")]
    MissingValue {
        column: String,
        op: &'static str,
        action: OnError,
    },
    /// Under `type_widening = "evolve"`: the table column must be widened before this message lands.
    #[error("column `{column}` must widen from {from} to {}", to.as_str())]
    Widen {
        column: String,
        from: &'static str,
        to: ColumnType,
        precision_scale: Option<(u8, i8)>,
    },
    #[error(
        "schema drift: {kind} `{column}` ({detail}); the contract's drift policy is `{policy}`"
    )]
    Drift {
        kind: DriftKind,
        column: String,
        detail: String,
        policy: &'static str,
        action: OnError,
    },
}

impl TransformError {
    pub fn kind(&self) -> &'static str {
        match self {
            TransformError::Coerce { .. } => "type_mismatch",
            TransformError::MissingValue { .. } => "missing_value",
            TransformError::Widen { .. } => "type_widening",
            TransformError::Drift { policy, .. } if *policy == "review" => "schema_review",
            TransformError::Drift { .. } => "schema_drift",
        }
    }

    /// The column's `on_error` rule: dead-letter the message or stop the partition.
    pub fn action(&self) -> OnError {
        match self {
            TransformError::Coerce { action, .. }
            | TransformError::MissingValue { action, .. }
            | TransformError::Drift { action, .. } => *action,
            // Only streaming can widen a table column; elsewhere the message waits as a dead letter.
            TransformError::Widen { .. } => OnError::DeadLetter,
        }
    }
}

/// Where an incoming field goes.
#[derive(Debug, Clone)]
enum Target {
    Column(usize),
    /// A column, through one of its `aliases`.
    Alias(usize),
    /// No column: its normalized name, for drift reports.
    Unknown(Arc<str>),
}

/// A stamp for a contract as a mapper holds it: every change takes a stamp never used before, so equal
/// stamps mean the same columns (see [`Mapper::generation`]).
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Why a dataset's mapping cannot be set up (reported by `bronze validate`).
#[derive(Debug, thiserror::Error)]
#[error("dataset `{dataset}`: {reason}")]
pub struct MappingError {
    pub dataset: String,
    /// The dataset key at fault, e.g. `key_columns`.
    pub key: &'static str,
    pub reason: String,
}

/// Value compared to keep the latest row per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum OrderValue {
    Null,
    Int(i64),
    Text(CompactString),
}

/// Where the partition time of a row comes from.
#[derive(Debug, Clone, Copy)]
enum TimeSource {
    SourceTs,
    IngestedAt,
    Column(usize),
}

#[derive(Debug, Clone, Copy)]
enum OrderSource {
    SourceTs,
    IngestedAt,
    Offset,
    Column(usize),
}

/// Kafka coordinates and extras of one message.
#[derive(Clone, Copy)]
pub struct MessageContext<'a> {
    pub offset: i64,
    /// The message key's fields, decoded on demand (only rows that lack a key column need them).
    pub key: &'a dyn Fn() -> Option<Fields<'static>>,
    pub ingested_at_us: i64,
    /// Header lookup: name -> first value.
    pub header: &'a dyn Fn(&str) -> Option<String>,
}

/// One row ready for a buffer.
#[derive(Debug, Clone)]
pub struct Row {
    pub data: Vec<Cell>,
    pub op: Op,
    pub offset: i64,
    pub ingested_at_us: i64,
    pub source_ts_us: Option<i64>,
    pub source_pos: Option<CompactString>,
    /// Shared by the rows of one hour (or day): made once per partition, not per row.
    pub partition_values: Arc<[String]>,
    /// `None` when the dataset has no keys or the row has none (truncate): never deduplicated.
    pub dedup_key: Option<CompactString>,
    pub order: OrderValue,
    /// JSON object of what the row could not place (contracts that rescue).
    pub rescued: Option<String>,
    /// Columns the source did not deliver a value for (its placeholder came instead): null here.
    pub unavailable: Vec<CompactString>,
}

/// Maps changes of one dataset onto its contract. A clone maps alike (on another thread, say) until
/// either changes its contract; [`Mapper::generation`] tells.
#[derive(Clone)]
pub struct Mapper {
    dataset: String,
    contract: Contract,
    normalize: bool,
    /// Incoming field name -> where it goes, memoized because field names repeat on every message.
    lookup: foldhash::HashMap<String, Target>,
    /// Per-message scratch: which columns got a value, and which the row carried at all.
    present: Vec<bool>,
    seen: Vec<bool>,
    /// The partition values last made and the time span `[start, end)` (µs) they cover.
    last_partition: Option<(i64, i64, Arc<[String]>)>,
    /// Columns of the message being mapped that arrived as an explicit null.
    nulls: Vec<usize>,
    /// The source's placeholder for a value it did not deliver, and the columns of the message being
    /// mapped that carried it.
    placeholder: Option<unavailable::Placeholder>,
    unavailable: Vec<usize>,
    /// Changes with the contract: evolved, widened or adopted columns.
    generation: u64,
    /// Coercion errors since the last [`Mapper::take_column_errors`].
    column_errors: Vec<(String, OnError)>,
    /// Drift seen since [`Mapper::take_drift`] was last called, by kind and column.
    drift: BTreeMap<DriftKind, BTreeMap<String, DriftEvent>>,
    key_columns: Vec<usize>,
    key_from_message_key: bool,
    headers: Vec<(usize, String)>,
    partition_by: PartitionBy,
    time: TimeSource,
    order: OrderSource,
}

fn mapping_error(dataset: &DatasetConfig, key: &'static str, reason: String) -> MappingError {
    MappingError {
        dataset: dataset.name.clone(),
        key,
        reason,
    }
}

/// The contract column a dataset setting (`key`) names.
fn column_index(
    dataset: &DatasetConfig,
    contract: &Contract,
    name: &str,
    key: &'static str,
    what: &str,
) -> Result<usize, MappingError> {
    contract.index_of(name).ok_or_else(|| {
        let file = dataset.schema_file.display();
        mapping_error(
            dataset,
            key,
            format!("{what} `{name}` is not a column of {file}"),
        )
    })
}

/// Where a row's partition time comes from: a metadata value, or a timestamp or date column.
fn time_source(dataset: &DatasetConfig, contract: &Contract) -> Result<TimeSource, MappingError> {
    const KEY: &str = "partitioning.time_column";
    let name = dataset.partitioning.time_column.as_str();
    match name {
        "_source_ts" => return Ok(TimeSource::SourceTs),
        "_ingested_at" => return Ok(TimeSource::IngestedAt),
        _ => {}
    }
    let i = column_index(dataset, contract, name, KEY, "partition time column")?;
    let ty = contract.columns[i].ty;
    if !matches!(ty, ColumnType::Timestamp | ColumnType::Date) {
        let reason =
            format!("partition time column `{name}` must be a timestamp or date, not {ty:?}");
        return Err(mapping_error(dataset, KEY, reason));
    }
    if dataset.partitioning.by == PartitionBy::DateHour && ty == ColumnType::Date {
        let reason = format!("partition time column `{name}` is a date and cannot give an hour");
        return Err(mapping_error(dataset, KEY, reason));
    }
    Ok(TimeSource::Column(i))
}

impl Mapper {
    pub fn new(dataset: &DatasetConfig, mut contract: Contract) -> Result<Mapper, MappingError> {
        contract.tracks_unavailable = dataset.unavailable_value.is_some();
        let column = |name: &str, key: &'static str, what: &str| {
            column_index(dataset, &contract, name, key, what)
        };
        let key_columns = dataset
            .key_columns
            .iter()
            .map(|k| column(k, "key_columns", "key column"))
            .collect::<Result<Vec<_>, _>>()?;
        let headers = dataset
            .header_columns
            .iter()
            .map(|(col, header)| {
                let i = column(col, "header_columns", "header column")?;
                match contract.columns[i].ty {
                    ColumnType::String | ColumnType::Json => Ok((i, header.clone())),
                    other => Err(mapping_error(
                        dataset,
                        "header_columns",
                        format!("header column `{col}` must be a string column, not {other:?}"),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let time = time_source(dataset, &contract)?;
        let order = match dataset.ordering_column.as_str() {
            "_source_ts" => OrderSource::SourceTs,
            "_ingested_at" => OrderSource::IngestedAt,
            "_offset" => OrderSource::Offset,
            name => OrderSource::Column(column(name, "ordering_column", "ordering column")?),
        };
        Ok(Mapper {
            dataset: dataset.name.clone(),
            contract,
            normalize: dataset.normalize_names,
            lookup: foldhash::HashMap::default(),
            present: Vec::new(),
            seen: Vec::new(),
            last_partition: None,
            generation: next_generation(),
            column_errors: Vec::new(),
            nulls: Vec::new(),
            placeholder: dataset
                .unavailable_value
                .as_deref()
                .map(unavailable::Placeholder::new),
            unavailable: Vec::new(),
            drift: BTreeMap::new(),
            key_columns,
            key_from_message_key: dataset.key_from_message_key,
            headers,
            partition_by: dataset.partitioning.by,
            time,
            order,
        })
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// The key columns rows are deduplicated by, in order.
    pub fn key_names(&self) -> Vec<String> {
        self.key_columns
            .iter()
            .map(|&i| self.contract.columns[i].name.clone())
            .collect()
    }

    pub fn partition_columns(&self) -> &'static [&'static str] {
        self.partition_by.columns()
    }

    fn column_of(&mut self, field: &str) -> Target {
        if let Some(hit) = self.lookup.get(field) {
            return hit.clone();
        }
        let name = self.normalized(field);
        let target = match self.contract.resolve(&name) {
            Some((i, false)) => Target::Column(i),
            Some((i, true)) => Target::Alias(i),
            None => Target::Unknown(name.into()),
        };
        self.lookup.insert(field.to_string(), target.clone());
        target
    }

    fn normalized(&self, field: &str) -> String {
        if self.normalize {
            snake_case(field)
        } else {
            field.to_string()
        }
    }

    /// Add a column for an unknown field (policy `evolve`), typed from `value`; `None` while the value is
    /// null. The sink adds the column to the table with the first rows that carry it.
    fn evolve(&mut self, name: &str, value: &impl Incoming) -> Option<usize> {
        let (ty, ps) = value.infer()?;
        let i = self.contract.add_evolved(name, ty, ps);
        self.generation = next_generation();
        // Field spellings that normalize to this name now land in the new column.
        self.lookup
            .retain(|_, t| !matches!(t, Target::Unknown(n) if n.as_ref() == name));
        observe(
            &mut self.drift,
            DriftKind::NewColumn,
            name,
            ty.as_str(),
            "absent",
            DriftAction::Evolve.as_str(),
        );
        Some(i)
    }

    /// Give column `name` the wider type the table now has (this run widened it, or another member did).
    pub fn widen(&mut self, name: &str, ty: ColumnType, precision_scale: Option<(u8, i8)>) {
        if let Some(i) = self.contract.index_of(name) {
            self.contract.widen(i, ty, precision_scale);
            self.generation = next_generation();
        }
    }

    /// Take on columns the table has beyond the contract (evolved by an earlier run or another member),
    /// so their fields keep landing in them. Fails for a type no contract column can hold.
    pub fn adopt(&mut self, fields: &[arrow::datatypes::FieldRef]) -> Result<(), MappingError> {
        for f in fields {
            let (ty, ps) = ColumnType::from_arrow(f.data_type()).ok_or_else(|| MappingError {
                dataset: self.dataset.clone(),
                key: "schema",
                reason: format!(
                    "the table has a column `{}` of type {} that no contract type maps to",
                    f.name(),
                    f.data_type()
                ),
            })?;
            self.contract.add_evolved(f.name(), ty, ps);
        }
        if !fields.is_empty() {
            self.lookup.clear();
            self.generation = next_generation();
        }
        Ok(())
    }

    /// The contract's stamp: two mappers with the same stamp map every message alike (same columns,
    /// types and rules); any change of columns takes a new one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The values that broke their column's contract since the last call (column, rule applied).
    pub fn take_column_errors(&mut self) -> Vec<(String, OnError)> {
        std::mem::take(&mut self.column_errors)
    }

    /// Drift and errors since the last call, for mapping done on a clone.
    pub fn take_observations(&mut self) -> Observations {
        Observations {
            drift: self.take_drift(),
            column_errors: self.take_column_errors(),
        }
    }

    /// Count drift a clone saw as if seen here.
    pub fn absorb_drift(&mut self, events: Vec<DriftEvent>) {
        for e in events {
            let by_column = self.drift.entry(e.kind).or_default();
            match by_column.get_mut(&e.column) {
                Some(mine) => mine.messages += e.messages,
                None => {
                    by_column.insert(e.column.clone(), e);
                }
            }
        }
    }

    /// The drift seen since the last call, one event per kind and column.
    pub fn take_drift(&mut self) -> Vec<DriftEvent> {
        std::mem::take(&mut self.drift)
            .into_values()
            .flat_map(BTreeMap::into_values)
            .collect()
    }
}

/// The dedup key of row `i` of table columns (the key columns, in order), exactly as [`Mapper::map`]
/// makes a row's, into `out`; `false` for a column of a type no contract column has.
pub fn key_of_arrow(columns: &[&dyn arrow::array::Array], i: usize, out: &mut String) -> bool {
    out.clear();
    for c in columns {
        let Some(cell) = Cell::from_arrow(*c, i) else {
            return false;
        };
        cell.write_key(out);
        out.push(KEY_SEPARATOR);
    }
    true
}

/// Ends each key column's text in a dedup key.
const KEY_SEPARATOR: char = '\u{1f}';

/// A column type as contracts write it, with a decimal's precision and scale.
/// Borrowed unless it names a decimal: it runs for every message with a wider value.
fn type_text(ty: ColumnType, precision_scale: Option<(u8, i8)>) -> std::borrow::Cow<'static, str> {
    match precision_scale {
        Some((p, s)) => format!("{}({p},{s})", ty.as_str()).into(),
        None => ty.as_str().into(),
    }
}

#[cfg(test)]
mod tests;
