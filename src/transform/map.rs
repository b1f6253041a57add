//! Mapping one change into a row: the change's fields (and, where the row lacks key columns, the
//! message key's) placed into the contract's columns and coerced, metadata and partition columns
//! filled, the dedup key and ordering value made. Runs for every message: it allocates only for what
//! it keeps.

use serde_json::{Map, Value};

use compact_str::CompactString;

use super::drift::{DriftKind, observe};
use super::incoming::Incoming;
use super::partition::partition_of;
use super::{
    Cell, CoerceError, KEY_SEPARATOR, Mapper, MessageContext, OrderSource, OrderValue, Row, Target,
    TimeSource, TransformError, type_text,
};
use crate::contract::{DriftAction, OnError, ReviewHold};
use crate::decode::{Change, Fields, Op};

/// The cells of one row being filled, and which of them the change named.
struct Slots<'a> {
    data: &'a mut Vec<Cell>,
    present: &'a mut Vec<bool>,
    /// Fields the row carried, null or not: absence is drift, null is a value.
    seen: &'a mut Vec<bool>,
}

impl Slots<'_> {
    fn grow_to(&mut self, len: usize) {
        self.data.resize(len, Cell::Null);
        self.present.resize(len, false);
        self.seen.resize(len, false);
    }
}

impl Mapper {
    /// Build the row for one change. `unknown_fields` counts fields the contract does not name.
    pub fn map(
        &mut self,
        change: Change<'_>,
        ctx: &MessageContext<'_>,
        unknown_fields: &mut u64,
    ) -> Result<Row, TransformError> {
        let ncols = self.contract.columns.len();
        self.nulls.clear();
        self.unavailable.clear();
        let mut data = vec![Cell::Null; ncols];
        let mut present = std::mem::take(&mut self.present);
        present.clear();
        present.resize(ncols, false);
        let mut seen = std::mem::take(&mut self.seen);
        seen.clear();
        seen.resize(ncols, false);
        let mut slots = Slots {
            data: &mut data,
            present: &mut present,
            seen: &mut seen,
        };
        let mut rescued = Map::new();
        let mut change = change;
        let row = change.row.take();
        let filled = self.fill_row(
            change.op,
            row,
            ctx,
            &mut slots,
            &mut rescued,
            unknown_fields,
        );
        (self.present, self.seen) = (present, seen);
        filled?;
        Ok(self.finish(data, change, ctx, rescued))
    }

    /// Everything that can refuse the change: its fields, the key's, headers, required columns.
    fn fill_row(
        &mut self,
        op: Op,
        row: Option<Fields<'_>>,
        ctx: &MessageContext<'_>,
        slots: &mut Slots<'_>,
        rescued: &mut Map<String, Value>,
        unknown_fields: &mut u64,
    ) -> Result<(), TransformError> {
        let full_row = matches!(op, Op::Create | Op::Update | Op::Read);
        if let Some(row) = row {
            self.fill(row, slots, rescued, unknown_fields)?;
            if full_row {
                self.check_missing(op, slots.seen)?;
            }
        }
        if self.key_from_message_key
            && op != Op::Truncate
            && self.key_columns.iter().any(|&k| !slots.present[k])
            && let Some(key) = (ctx.key)()
        {
            self.fill_key_columns(key, slots)?;
        }
        for (i, header) in &self.headers {
            if let Some(v) = (ctx.header)(header) {
                slots.data[*i] = Cell::Str(v.into());
            }
        }
        self.check_required(op, full_row, slots.data)
    }

    /// A full row without a field the contract names is missing-column drift.
    fn check_missing(&mut self, op: Op, seen: &[bool]) -> Result<(), TransformError> {
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
            let detail = format!(
                "expected {ty}, the `{}` event has no such field",
                op.as_str()
            );
            if let Some(e) = Self::drift_error(DriftKind::MissingColumn, &c.name, detail, policy) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Key columns the row lacked, taken from the message key.
    fn fill_key_columns(
        &mut self,
        key: Fields<'_>,
        slots: &mut Slots<'_>,
    ) -> Result<(), TransformError> {
        // Columns may have evolved while the row was filled.
        let ncols = self.contract.columns.len();
        let mut key_cells = vec![Cell::Null; ncols];
        let mut key_present = vec![false; ncols];
        let mut key_seen = vec![false; ncols];
        let mut key_slots = Slots {
            data: &mut key_cells,
            present: &mut key_present,
            seen: &mut key_seen,
        };
        self.fill_key(key, &mut key_slots, &mut 0)?;
        for &k in &self.key_columns {
            if !slots.present[k] && key_present[k] {
                slots.data[k] = std::mem::replace(&mut key_cells[k], Cell::Null);
                slots.present[k] = true;
            }
        }
        Ok(())
    }

    /// Deletes may carry only the key and truncates nothing, so only full rows are held to
    /// `nullable`.
    fn check_required(
        &mut self,
        op: Op,
        full_row: bool,
        data: &[Cell],
    ) -> Result<(), TransformError> {
        if op == Op::Truncate {
            return Ok(());
        }
        for (i, c) in self.contract.columns.iter().enumerate() {
            let required = !c.nullable && (full_row || self.key_columns.contains(&i));
            if !required || !matches!(data[i], Cell::Null) || self.unavailable.contains(&i) {
                continue;
            }
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
                op: op.as_str(),
                action,
            });
        }
        Ok(())
    }

    /// The accepted row (its fields already taken) with what the buffer needs beside the cells:
    /// dedup key, order, partition.
    fn finish(
        &mut self,
        data: Vec<Cell>,
        change: Change<'_>,
        ctx: &MessageContext<'_>,
        rescued: Map<String, Value>,
    ) -> Row {
        let op = change.op;
        let source_ts_us = change.source_ts_ms.and_then(|ms| ms.checked_mul(1000));
        let dedup_key = (!self.key_columns.is_empty() && op != Op::Truncate).then(|| {
            let mut k = CompactString::default();
            for &i in &self.key_columns {
                data[i].write_key(&mut k);
                k.push(KEY_SEPARATOR);
            }
            k
        });
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
        Row {
            partition_values: self.partition_values(time_us),
            data,
            op,
            offset: ctx.offset,
            ingested_at_us: ctx.ingested_at_us,
            source_ts_us,
            source_pos: change.source_pos,
            dedup_key,
            order,
            rescued: (!rescued.is_empty()).then(|| Value::Object(rescued).to_string()),
            unavailable: self
                .unavailable
                .iter()
                .map(|&i| CompactString::from(self.contract.columns[i].name.as_str()))
                .collect(),
        }
    }

    /// Consecutive rows mostly fall in one partition: its bounds are remembered.
    fn partition_values(&mut self, time_us: i64) -> std::sync::Arc<[String]> {
        match &self.last_partition {
            Some((start, end, values)) if (*start..*end).contains(&time_us) => values.clone(),
            _ => {
                let (start, end, values) = partition_of(self.partition_by, time_us);
                self.last_partition = Some((start, end, values.clone()));
                values
            }
        }
    }

    /// Fill from the message key: fields it has beyond the key columns are not drift.
    fn fill_key(
        &mut self,
        key: Fields<'_>,
        slots: &mut Slots<'_>,
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
        self.fill(key, slots, &mut Map::new(), unknown_fields)
    }

    fn fill(
        &mut self,
        row: Fields<'_>,
        slots: &mut Slots<'_>,
        rescued: &mut Map<String, Value>,
        unknown_fields: &mut u64,
    ) -> Result<(), TransformError> {
        match row {
            Fields::Json(m) => self.fill_from(m, slots, rescued, unknown_fields),
            Fields::Avro(v) => self.fill_from(v, slots, rescued, unknown_fields),
        }
    }

    fn fill_from<K: AsRef<str> + Into<String>, V: Incoming>(
        &mut self,
        row: impl IntoIterator<Item = (K, V)>,
        slots: &mut Slots<'_>,
        rescued: &mut Map<String, Value>,
        unknown_fields: &mut u64,
    ) -> Result<(), TransformError> {
        for (field, value) in row {
            // Not a value: nothing to place, type or evolve.
            let placeholder = self
                .placeholder
                .as_ref()
                .is_some_and(|p| value.is_placeholder(p));
            let i = match self.column_of(field.as_ref()) {
                Target::Column(i) => i,
                Target::Alias(i) => {
                    let column = &self.contract.columns[i].name;
                    let field = field.as_ref();
                    observe(
                        &mut self.drift,
                        DriftKind::Renamed,
                        column,
                        field,
                        column,
                        "mapped",
                    );
                    i
                }
                Target::Unknown(_) if placeholder => continue,
                Target::Unknown(name) => {
                    *unknown_fields += 1;
                    if self.contract.drift.new_column != DriftAction::Evolve {
                        self.unknown_field(&name, field, value, rescued)?;
                        continue;
                    }
                    // Null says nothing of the type; the column waits for a value.
                    let Some(i) = self.evolve(&name, &value) else {
                        continue;
                    };
                    slots.grow_to(i + 1);
                    i
                }
            };
            if placeholder {
                slots.seen[i] = true;
                self.unavailable.push(i);
                continue;
            }
            self.fill_cell(i, field, value, slots, rescued)?;
        }
        Ok(())
    }

    /// A field the contract does not name and will not grow a column for: rescued, held for
    /// review, ignored or refused, as the new-column policy says.
    fn unknown_field<K: Into<String>, V: Incoming>(
        &mut self,
        name: &str,
        field: K,
        value: V,
        rescued: &mut Map<String, Value>,
    ) -> Result<(), TransformError> {
        let policy = self.contract.drift.new_column;
        match policy {
            DriftAction::Review => {
                // Null says nothing of the type and loses nothing: only values are held.
                let Some((ty, _)) = value.infer() else {
                    return Ok(());
                };
                let (ty, p) = (ty.as_str(), policy.as_str());
                observe(&mut self.drift, DriftKind::NewColumn, name, ty, "absent", p);
                if self.contract.drift.review_hold == ReviewHold::Rescue {
                    rescued.insert(field.into(), value.into_json());
                    return Ok(());
                }
                Err(TransformError::Drift {
                    kind: DriftKind::NewColumn,
                    column: name.to_string(),
                    detail: format!("{ty} field awaiting review (`bronze schema approve`)"),
                    policy: policy.as_str(),
                    action: OnError::DeadLetter,
                })
            }
            _ => {
                let kind = value.kind();
                let p = policy.as_str();
                observe(
                    &mut self.drift,
                    DriftKind::NewColumn,
                    name,
                    kind,
                    "absent",
                    p,
                );
                let detail = format!("{kind} field the contract does not name");
                if let Some(e) = Self::drift_error(DriftKind::NewColumn, name, detail, policy) {
                    return Err(e);
                }
                if policy == DriftAction::Rescue {
                    rescued.insert(field.into(), value.into_json());
                }
                Ok(())
            }
        }
    }

    /// One value into column `i`: widening checked, coerced under the column's error rule.
    fn fill_cell<K: Into<String>, V: Incoming>(
        &mut self,
        i: usize,
        field: K,
        value: V,
        slots: &mut Slots<'_>,
        rescued: &mut Map<String, Value>,
    ) -> Result<(), TransformError> {
        slots.seen[i] = true;
        if !self.contract.columns[i].nullable && value.is_null() {
            self.nulls.push(i);
        }
        self.check_widening(i, &value)?;
        let col = &self.contract.columns[i];
        let action = col.on_error(self.contract.on_error);
        let kind = value.kind();
        // Only rescuing columns pay for a copy of each value.
        let original = (action == OnError::Rescue).then(|| value.clone());
        let cell = match value.coerce(col).and_then(Cell::in_delta_range) {
            Ok(cell) => cell,
            Err(source) => {
                self.column_errors.push((col.name.clone(), action));
                if matches!(source, CoerceError::Mismatch { .. }) {
                    let (name, ty) = (&col.name, col.ty.as_str());
                    let a = action.as_str();
                    observe(&mut self.drift, DriftKind::TypeChange, name, kind, ty, a);
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
        slots.present[i] = !matches!(cell, Cell::Null);
        slots.data[i] = cell;
        Ok(())
    }

    /// A value wider than its column, under the type-widening policy.
    fn check_widening<V: Incoming>(&mut self, i: usize, value: &V) -> Result<(), TransformError> {
        let col = &self.contract.columns[i];
        let Some((to, ps)) = value.widening(col) else {
            return Ok(());
        };
        let policy = self.contract.drift.type_widening;
        let (from, wider) = (col.ty.as_str(), type_text(to, ps));
        let p = policy.as_str();
        observe(
            &mut self.drift,
            DriftKind::TypeWidening,
            &col.name,
            &wider,
            from,
            p,
        );
        if policy == DriftAction::Evolve {
            return Err(TransformError::Widen {
                column: col.name.clone(),
                from,
                to,
                precision_scale: ps,
            });
        }
        let detail = format!("{wider} value in a {from} column");
        match Self::drift_error(DriftKind::TypeWidening, &col.name, detail, policy) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
