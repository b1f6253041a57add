//! Transform: a decoded [`Change`] plus its Kafka context into a typed [`Row`] that matches the
//! dataset's contract: normalized names, coerced values, metadata, partition values and the dedup key.

mod coerce;
mod incoming;
mod names;

use compact_str::CompactString;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Timelike};
use serde_json::{Map, Value};

use crate::config::{DatasetConfig, PartitionBy};
use crate::contract::{ColumnType, Contract, DriftAction, OnError, ReviewHold};
use crate::decode::{Change, Fields, Op};
use incoming::Incoming;

pub use coerce::{Cell, CoerceError};
pub use names::snake_case;

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

/// How a message differed from the contract's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftKind {
    NewColumn,
    MissingColumn,
    /// A field arrived under one of a column's `aliases`.
    Renamed,
    /// A value of a wider type than its column (int32→int64, float32→float64, date→timestamp, decimal
    /// precision up).
    TypeWidening,
    /// A value of a type its column cannot take (narrowing or incompatible); the column's `on_error`.
    TypeChange,
    /// A null for a column the contract says is not nullable (the source column became nullable); the
    /// column's `on_error`.
    Nullability,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::NewColumn => "new_column",
            DriftKind::MissingColumn => "missing_column",
            DriftKind::Renamed => "renamed",
            DriftKind::TypeWidening => "type_widening",
            DriftKind::TypeChange => "type_change",
            DriftKind::Nullability => "nullability",
        }
    }
}

impl std::fmt::Display for DriftKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriftKind::NewColumn => "new column",
            DriftKind::MissingColumn => "missing column",
            DriftKind::Renamed => "renamed column",
            DriftKind::TypeWidening => "wider type in column",
            DriftKind::TypeChange => "incompatible type in column",
            DriftKind::Nullability => "null in non-nullable column",
        })
    }
}

/// One kind of drift on one column, as seen over the messages since the last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftEvent {
    pub kind: DriftKind,
    pub column: String,
    /// What arrived (a JSON kind, or the field name for a rename).
    pub observed: String,
    /// What the contract says (its type, or the column name for a rename).
    pub expected: String,
    /// The policy applied: `ignore`, `quarantine`, `fail`, or `mapped` for renames.
    pub action: &'static str,
    pub messages: u64,
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

/// Count one message showing `kind` of drift on `column`. Runs per message, so it allocates only the
/// first time a column shows a kind of drift.
fn observe(
    drift: &mut BTreeMap<DriftKind, BTreeMap<String, DriftEvent>>,
    kind: DriftKind,
    column: &str,
    observed: &str,
    expected: &str,
    action: &'static str,
) {
    let by_column = drift.entry(kind).or_default();
    match by_column.get_mut(column) {
        Some(e) => e.messages += 1,
        None => {
            by_column.insert(
                column.to_string(),
                DriftEvent {
                    kind,
                    column: column.to_string(),
                    observed: observed.to_string(),
                    expected: expected.to_string(),
                    action,
                    messages: 1,
                },
            );
        }
    }
}

/// A stamp for a contract as a mapper holds it: every change takes a stamp never used before, so equal
/// stamps mean the same columns (see [`Mapper::generation`]).
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What mapping messages observed beyond their rows, for the caller to count.
#[derive(Debug, Default)]
pub struct Observations {
    /// Drift, one event per kind and column (see [`Mapper::take_drift`]).
    pub drift: Vec<DriftEvent>,
    /// Values that broke their column's contract: column and the rule applied.
    pub column_errors: Vec<(String, OnError)>,
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

impl Mapper {
    pub fn new(dataset: &DatasetConfig, contract: Contract) -> Result<Mapper, MappingError> {
        let err = |key: &'static str, reason: String| MappingError {
            dataset: dataset.name.clone(),
            key,
            reason,
        };
        let column = |name: &str, key: &'static str, what: &str| {
            contract.index_of(name).ok_or_else(|| {
                err(
                    key,
                    format!(
                        "{what} `{name}` is not a column of {}",
                        dataset.schema_file.display()
                    ),
                )
            })
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
                    other => Err(err(
                        "header_columns",
                        format!("header column `{col}` must be a string column, not {other:?}"),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let time = match dataset.partitioning.time_column.as_str() {
            "_source_ts" => TimeSource::SourceTs,
            "_ingested_at" => TimeSource::IngestedAt,
            name => {
                let i = column(name, "partitioning.time_column", "partition time column")?;
                let ty = contract.columns[i].ty;
                if !matches!(ty, ColumnType::Timestamp | ColumnType::Date) {
                    return Err(err(
                        "partitioning.time_column",
                        format!(
                            "partition time column `{name}` must be a timestamp or date, not {ty:?}"
                        ),
                    ));
                }
                if dataset.partitioning.by == PartitionBy::DateHour && ty == ColumnType::Date {
                    return Err(err(
                        "partitioning.time_column",
                        format!("partition time column `{name}` is a date and cannot give an hour"),
                    ));
                }
                TimeSource::Column(i)
            }
        };
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

    /// The error for drift the policy does not let pass.
    fn drift_error(
        kind: DriftKind,
        column: &str,
        detail: String,
        policy: DriftAction,
    ) -> Option<TransformError> {
        let action = match policy {
            DriftAction::Ignore
            | DriftAction::Rescue
            | DriftAction::Evolve
            | DriftAction::Review => return None,
            DriftAction::Quarantine => OnError::DeadLetter,
            DriftAction::Fail => OnError::Fail,
        };
        Some(TransformError::Drift {
            kind,
            column: column.to_string(),
            detail,
            policy: policy.as_str(),
            action,
        })
    }

    /// Build the row for one change. `unknown_fields` counts fields the contract does not name.
    pub fn map(
        &mut self,
        change: Change<'_>,
        ctx: &MessageContext<'_>,
        unknown_fields: &mut u64,
    ) -> Result<Row, TransformError> {
        let ncols = self.contract.columns.len();
        self.nulls.clear();
        let data = vec![Cell::Null; ncols];
        let mut present = std::mem::take(&mut self.present);
        present.clear();
        present.resize(ncols, false);
        // Fields the row carried, null or not: absence is drift, null is a value.
        let mut seen = std::mem::take(&mut self.seen);
        seen.clear();
        seen.resize(ncols, false);
        let row = self.map_into(change, ctx, unknown_fields, data, &mut present, &mut seen);
        (self.present, self.seen) = (present, seen);
        row
    }

    fn map_into(
        &mut self,
        change: Change<'_>,
        ctx: &MessageContext<'_>,
        unknown_fields: &mut u64,
        mut data: Vec<Cell>,
        present: &mut Vec<bool>,
        seen: &mut Vec<bool>,
    ) -> Result<Row, TransformError> {
        let full_row = matches!(change.op, Op::Create | Op::Update | Op::Read);
        let had_row = change.row.is_some();
        let mut rescued = Map::new();
        if let Some(row) = change.row {
            self.fill(row, &mut data, present, seen, &mut rescued, unknown_fields)?;
        }
        if full_row && had_row {
            let policy = self.contract.drift.missing_column;
            for (i, c) in self.contract.columns.iter().enumerate() {
                let filled_elsewhere = self.headers.iter().any(|(h, _)| *h == i)
                    || (self.key_from_message_key && self.key_columns.contains(&i));
                if seen[i] || filled_elsewhere {
                    continue;
                }
                let ty = c.ty.as_str();
                observe(
                    &mut self.drift,
                    DriftKind::MissingColumn,
                    &c.name,
                    "absent",
                    ty,
                    policy.as_str(),
                );
                if let Some(e) = Self::drift_error(
                    DriftKind::MissingColumn,
                    &c.name,
                    format!(
                        "expected {ty}, the `{}` event has no such field",
                        change.op.as_str()
                    ),
                    policy,
                ) {
                    return Err(e);
                }
            }
        }
        if self.key_from_message_key
            && change.op != Op::Truncate
            && self.key_columns.iter().any(|&k| !present[k])
            && let Some(key) = (ctx.key)()
        {
            let mut ignored = 0;
            // Columns may have evolved while the row was filled.
            let ncols = self.contract.columns.len();
            let mut key_cells = vec![Cell::Null; ncols];
            let mut key_present = vec![false; ncols];
            let mut key_seen = vec![false; ncols];
            self.fill_key(
                key,
                &mut key_cells,
                &mut key_present,
                &mut key_seen,
                &mut ignored,
            )?;
            for &k in &self.key_columns {
                if !present[k] && key_present[k] {
                    data[k] = std::mem::replace(&mut key_cells[k], Cell::Null);
                    present[k] = true;
                }
            }
        }
        for (i, header) in &self.headers {
            if let Some(v) = (ctx.header)(header) {
                data[*i] = Cell::Str(v.into());
            }
        }
        // Deletes may carry only the key and truncates nothing, so only full rows are held to `nullable`.
        for (i, c) in self.contract.columns.iter().enumerate() {
            let required = !c.nullable && (full_row || self.key_columns.contains(&i));
            if required && change.op != Op::Truncate && matches!(data[i], Cell::Null) {
                // `null` is refused for non-nullable columns when the contract loads.
                let action = c.on_error(self.contract.on_error);
                self.column_errors.push((c.name.clone(), action));
                if self.nulls.contains(&i) {
                    observe(
                        &mut self.drift,
                        DriftKind::Nullability,
                        &c.name,
                        "null",
                        "not null",
                        action.as_str(),
                    );
                }
                return Err(TransformError::MissingValue {
                    column: c.name.clone(),
                    op: change.op.as_str(),
                    action,
                });
            }
        }
        let source_ts_us = change.source_ts_ms.and_then(|ms| ms.checked_mul(1000));
        let dedup_key = if self.key_columns.is_empty() || change.op == Op::Truncate {
            None
        } else {
            let mut k = CompactString::default();
            for &i in &self.key_columns {
                data[i].write_key(&mut k);
                k.push(KEY_SEPARATOR);
            }
            Some(k)
        };
        let order = match self.order {
            OrderSource::SourceTs => source_ts_us.map_or(OrderValue::Null, OrderValue::Int),
            OrderSource::IngestedAt => OrderValue::Int(ctx.ingested_at_us),
            OrderSource::Offset => OrderValue::Int(ctx.offset),
            OrderSource::Column(i) => data[i].order_value(),
        };
        let time_us = match self.time {
            TimeSource::SourceTs => source_ts_us,
            TimeSource::IngestedAt => None,
            TimeSource::Column(i) => match data[i] {
                Cell::Timestamp(us) => Some(us),
                Cell::Date(days) => Some(i64::from(days) * 86_400_000_000),
                _ => None,
            },
        }
        .unwrap_or(ctx.ingested_at_us);
        let partition_values = match &self.last_partition {
            Some((start, end, values)) if (*start..*end).contains(&time_us) => values.clone(),
            _ => {
                let (start, end, values) = partition_of(self.partition_by, time_us);
                self.last_partition = Some((start, end, values.clone()));
                values
            }
        };
        Ok(Row {
            data,
            op: change.op,
            offset: ctx.offset,
            ingested_at_us: ctx.ingested_at_us,
            source_ts_us,
            source_pos: change.source_pos,
            partition_values,
            dedup_key,
            order,
            rescued: (!rescued.is_empty()).then(|| Value::Object(rescued).to_string()),
        })
    }

    /// Fill from the message key: fields it has beyond the key columns are not drift.
    fn fill_key(
        &mut self,
        key: Fields<'_>,
        data: &mut Vec<Cell>,
        present: &mut Vec<bool>,
        seen: &mut Vec<bool>,
        unknown_fields: &mut u64,
    ) -> Result<(), TransformError> {
        let known = |this: &mut Self, f: &str| !matches!(this.column_of(f), Target::Unknown(_));
        let key = match key {
            Fields::Json(m) => {
                Fields::Json(m.into_iter().filter(|(f, _)| known(self, f)).collect())
            }
            Fields::Avro(v) => {
                Fields::Avro(v.into_iter().filter(|(f, _)| known(self, f)).collect())
            }
        };
        self.fill(key, data, present, seen, &mut Map::new(), unknown_fields)
    }

    fn fill(
        &mut self,
        row: Fields<'_>,
        data: &mut Vec<Cell>,
        present: &mut Vec<bool>,
        seen: &mut Vec<bool>,
        rescued: &mut Map<String, Value>,
        unknown_fields: &mut u64,
    ) -> Result<(), TransformError> {
        match row {
            Fields::Json(m) => self.fill_from(m, data, present, seen, rescued, unknown_fields),
            Fields::Avro(v) => self.fill_from(v, data, present, seen, rescued, unknown_fields),
        }
    }

    fn fill_from<K: AsRef<str> + Into<String>, V: Incoming>(
        &mut self,
        row: impl IntoIterator<Item = (K, V)>,
        data: &mut Vec<Cell>,
        present: &mut Vec<bool>,
        seen: &mut Vec<bool>,
        rescued: &mut Map<String, Value>,
        unknown_fields: &mut u64,
    ) -> Result<(), TransformError> {
        for (field, value) in row {
            let i = match self.column_of(field.as_ref()) {
                Target::Column(i) => i,
                Target::Alias(i) => {
                    let column = &self.contract.columns[i].name;
                    observe(
                        &mut self.drift,
                        DriftKind::Renamed,
                        column,
                        field.as_ref(),
                        column,
                        "mapped",
                    );
                    i
                }
                Target::Unknown(name) => {
                    *unknown_fields += 1;
                    let policy = self.contract.drift.new_column;
                    if policy == DriftAction::Review {
                        // Null says nothing of the type and loses nothing: only values are held.
                        let Some((ty, _)) = value.infer() else {
                            continue;
                        };
                        observe(
                            &mut self.drift,
                            DriftKind::NewColumn,
                            &name,
                            ty.as_str(),
                            "absent",
                            policy.as_str(),
                        );
                        if self.contract.drift.review_hold == ReviewHold::Rescue {
                            rescued.insert(field.into(), value.into_json());
                            continue;
                        }
                        return Err(TransformError::Drift {
                            kind: DriftKind::NewColumn,
                            column: name.to_string(),
                            detail: format!(
                                "{} field awaiting review (`bronze schema approve`)",
                                ty.as_str()
                            ),
                            policy: policy.as_str(),
                            action: OnError::DeadLetter,
                        });
                    }
                    if policy == DriftAction::Evolve {
                        match self.evolve(&name, &value) {
                            Some(i) => {
                                data.resize(i + 1, Cell::Null);
                                present.resize(i + 1, false);
                                seen.resize(i + 1, false);
                                i
                            }
                            // Null says nothing of the type; the column waits for a value.
                            None => continue,
                        }
                    } else {
                        let kind = value.kind();
                        observe(
                            &mut self.drift,
                            DriftKind::NewColumn,
                            &name,
                            kind,
                            "absent",
                            policy.as_str(),
                        );
                        if let Some(e) = Self::drift_error(
                            DriftKind::NewColumn,
                            &name,
                            format!("{kind} field the contract does not name"),
                            policy,
                        ) {
                            return Err(e);
                        }
                        if policy == DriftAction::Rescue {
                            rescued.insert(field.into(), value.into_json());
                        }
                        continue;
                    }
                }
            };
            seen[i] = true;
            let col = &self.contract.columns[i];
            if !col.nullable && value.is_null() {
                self.nulls.push(i);
            }
            if let Some((to, ps)) = value.widening(col) {
                let policy = self.contract.drift.type_widening;
                let (from, wider) = (col.ty.as_str(), type_text(to, ps));
                observe(
                    &mut self.drift,
                    DriftKind::TypeWidening,
                    &col.name,
                    &wider,
                    from,
                    policy.as_str(),
                );
                if policy == DriftAction::Evolve {
                    return Err(TransformError::Widen {
                        column: col.name.clone(),
                        from,
                        to,
                        precision_scale: ps,
                    });
                }
                if let Some(e) = Self::drift_error(
                    DriftKind::TypeWidening,
                    &col.name,
                    format!("{wider} value in a {from} column"),
                    policy,
                ) {
                    return Err(e);
                }
            }
            let col = &self.contract.columns[i];
            let action = col.on_error(self.contract.on_error);
            let kind = value.kind();
            // Only rescuing columns pay for a copy of each value.
            let original = (action == OnError::Rescue).then(|| value.clone());
            data[i] = match value.coerce(col).and_then(Cell::in_delta_range) {
                Ok(cell) => cell,
                Err(source) => {
                    self.column_errors.push((col.name.clone(), action));
                    if matches!(source, CoerceError::Mismatch { .. }) {
                        observe(
                            &mut self.drift,
                            DriftKind::TypeChange,
                            &col.name,
                            kind,
                            col.ty.as_str(),
                            action.as_str(),
                        );
                    }
                    match (action, original) {
                        (OnError::Null, _) => {}
                        (OnError::Rescue, Some(v)) => {
                            rescued.insert(field.into(), v.into_json());
                        }
                        _ => {
                            return Err(TransformError::Coerce {
                                column: col.name.clone(),
                                source,
                                action,
                            });
                        }
                    }
                    Cell::Null
                }
            };
            present[i] = !matches!(data[i], Cell::Null);
        }
        Ok(())
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

/// A table partition as its sorted (column, value) pairs, e.g. `[("event_date", "2026-11-01")]`.
pub type PartitionValues = Vec<(String, Option<String>)>;

/// The time range `[start, end)` in µs since the epoch of a partition made by [`partition_values`]: the
/// day of `event_date`, or the hour of `event_date` and `event_hour`. `None` for any other partition.
pub fn partition_span(values: &[(String, Option<String>)]) -> Option<(i64, i64)> {
    let get = |k: &str| {
        values
            .iter()
            .find(|(c, _)| c == k)
            .and_then(|(_, v)| v.as_deref())
    };
    let day = chrono::NaiveDate::parse_from_str(get("event_date")?, "%Y-%m-%d").ok()?;
    let (hour, len) = match get("event_hour") {
        Some(h) => (h.parse().ok()?, 3_600_000_000),
        None => (0, 86_400_000_000),
    };
    let start = day.and_hms_opt(hour, 0, 0)?.and_utc().timestamp_micros();
    Some((start, start + len))
}

/// The smallest range covering every one of `partitions` (see [`partition_span`]).
pub fn span_of_partitions<'a>(
    partitions: impl IntoIterator<Item = &'a PartitionValues>,
) -> Option<(i64, i64)> {
    partitions
        .into_iter()
        .map(|p| partition_span(p))
        .try_fold(None, |acc: Option<(i64, i64)>, span| {
            let (start, end) = span?;
            Some(Some(
                acc.map_or((start, end), |(a, b)| (a.min(start), b.max(end))),
            ))
        })
        .flatten()
}

/// `event_date` (and `event_hour`) of a time in microseconds since the epoch, UTC, with the span
/// `[start, end)` of times that share them.
fn partition_of(by: PartitionBy, time_us: i64) -> (i64, i64, Arc<[String]>) {
    const HOUR: i64 = 3_600_000_000;
    let len = match by {
        PartitionBy::None => return (i64::MIN, i64::MAX, Arc::new([])),
        PartitionBy::Date => 24 * HOUR,
        PartitionBy::DateHour => HOUR,
    };
    let (t, start, end) = match DateTime::from_timestamp_micros(time_us) {
        Some(t) => {
            let start = time_us.div_euclid(len) * len;
            (t, start, start.saturating_add(len))
        }
        // Beyond chrono's range: the epoch's values, for this time alone.
        None => (DateTime::default(), time_us, time_us.saturating_add(1)),
    };
    let date = t.format("%Y-%m-%d").to_string();
    let values = match by {
        PartitionBy::DateHour => vec![date, format!("{:02}", t.hour())],
        _ => vec![date],
    };
    (start, end, values.into())
}

#[cfg(test)]
mod tests;
