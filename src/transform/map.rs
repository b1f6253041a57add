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
