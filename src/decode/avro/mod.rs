//! Confluent-framed Avro: `0x00`, a 4-byte big-endian schema id, then the binary datum written with that
//! schema. Datums are read with apache-avro and their fields turned into [`AvroField`]s with the help of
//! the writer schema (a decimal's scale lives there, not in the value), so the mapper types them without
//! going through JSON text.

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema};
use apache_avro::types::Value as Avro;
use base64::Engine;
use compact_str::{CompactString, ToCompactString, format_compact};
use serde_json::Value as Json;

mod plan;

pub use plan::Plan;
use plan::Side;

use super::registry::{Lookup, Registry, WriterSchema};
use super::{Change, DecodeError, Decoded, Fields, Op, Skip};

/// One field of an Avro row, as the mapper sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum AvroField {
    Null,
    Boolean(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
    /// Avro `decimal` (precision from the schema) or Debezium `VariableScaleDecimal` (no precision).
    Decimal {
        unscaled: i128,
        scale: i32,
        precision: Option<u8>,
    },
    /// Days since the epoch.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since the epoch (`timestamp-*`; `local-timestamp-*` read as UTC).
    Timestamp(i64),
    /// Records, maps, arrays, fixed and the like: only a JSON or string column takes them.
    Nested(Json),
}

impl AvroField {
    /// The Avro type, for messages and drift reports.
    pub fn kind(&self) -> &'static str {
        match self {
            AvroField::Null => "null",
            AvroField::Boolean(_) => "boolean",
            AvroField::Int(_) => "int",
            AvroField::Long(_) => "long",
            AvroField::Float(_) => "float",
            AvroField::Double(_) => "double",
            AvroField::String(_) => "string",
            AvroField::Bytes(_) => "bytes",
            AvroField::Decimal { .. } => "decimal",
            AvroField::Date(_) => "date",
            AvroField::Time(_) => "time",
            AvroField::Timestamp(_) => "timestamp",
            AvroField::Nested(Json::Array(_)) => "array",
            AvroField::Nested(_) => "record",
        }
    }

    /// The value in JSON, the way Kafka Connect's JsonConverter writes it for the scalar kinds (bytes as
    /// base64) and as ISO text for dates and times: for rescued data and text columns.
    pub fn to_json(&self) -> Json {
        match self {
            AvroField::Null => Json::Null,
            AvroField::Boolean(b) => Json::Bool(*b),
            AvroField::Int(i) => Json::from(*i),
            AvroField::Long(i) => Json::from(*i),
            AvroField::Float(f) => float_json(f64::from(*f)),
            AvroField::Double(f) => float_json(*f),
            AvroField::String(s) => Json::String(s.clone()),
            AvroField::Bytes(b) => {
                Json::String(base64::engine::general_purpose::STANDARD.encode(b))
            }
            AvroField::Decimal {
                unscaled, scale, ..
            } => Json::String(decimal_text(*unscaled, *scale)),
            AvroField::Date(d) => d
                .checked_add(EPOCH_DAYS_FROM_CE)
                .and_then(chrono::NaiveDate::from_num_days_from_ce_opt)
                .map_or(Json::from(*d), |d| Json::String(d.to_string())),
            AvroField::Time(us) => Json::from(*us),
            AvroField::Timestamp(us) => chrono::DateTime::from_timestamp_micros(*us)
                .map_or(Json::from(*us), |t| {
                    Json::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                }),
            AvroField::Nested(v) => v.clone(),
        }
    }
}

/// 1970-01-01 counted in days from 0001-01-01 (chrono's "CE" day 1).
const EPOCH_DAYS_FROM_CE: i32 = 719_163;

fn float_json(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or_else(|| Json::String(f.to_string()), Json::Number)
}

/// `unscaled × 10^-scale` as plain decimal text.
fn decimal_text(unscaled: i128, scale: i32) -> String {
    if scale <= 0 {
        let zeros = "0".repeat(scale.unsigned_abs() as usize);
        return format!("{unscaled}{zeros}");
    }
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if unscaled < 0 { "-" } else { "" };
    format!("{sign}{int}.{frac}")
}

/// The schema id of a Confluent-framed message and the datum after the header.
pub fn frame(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match bytes {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [0, ..] => Err(DecodeError::ShortAvro(bytes.len())),
        [first, ..] => Err(DecodeError::MagicByte(*first)),
        [] => Err(DecodeError::ShortAvro(0)),
    }
}

/// The writer schema of `id`, from the registry's cache (which [`super::Decoder::prepare`] fills).
fn writer(registry: &Registry, id: u32) -> Result<std::sync::Arc<WriterSchema>, DecodeError> {
    match registry.cached(id) {
        Some(Lookup::Found(w)) => Ok(w),
        Some(Lookup::Unknown(why)) => Err(DecodeError::UnknownSchema(why)),
        Some(Lookup::Invalid(why)) => Err(DecodeError::BadWriterSchema(why)),
        None => Err(DecodeError::SchemaNotLoaded(id)),
    }
}

/// Read one framed datum: the value and its writer schema.
fn read(
    registry: &Registry,
    bytes: &[u8],
) -> Result<(Avro, std::sync::Arc<WriterSchema>), DecodeError> {
    let (id, mut datum) = frame(bytes)?;
    let w = writer(registry, id)?;
    let value = w
        .reader
        .read_value(&mut datum)
        .map_err(|e| DecodeError::Avro(e.to_string()))?;
    if !datum.is_empty() {
        return Err(DecodeError::Avro(format!(
            "{} bytes left after the datum of schema {id}",
            datum.len()
        )));
    }
    Ok((value, w))
}

/// Decode an `avro` (row per message) or `debezium-avro` (envelope) value: along the writer
/// schema's plan (see `plan`), or its value tree when it has none.
pub fn decode(
    registry: &Registry,
    value: &[u8],
    envelope: bool,
) -> Result<Decoded<'static>, DecodeError> {
    let (id, datum) = frame(value)?;
    if let Some(plan) = &writer(registry, id)?.plan {
        return decode_planned(plan, datum, envelope);
    }
    decode_tree(registry, value, envelope)
}

fn decode_planned(
    plan: &Plan,
    datum: &[u8],
    envelope: bool,
) -> Result<Decoded<'static>, DecodeError> {
    let not_a_record = DecodeError::NotAnObject("non-record Avro value");
    if !envelope {
        let row = plan.row(datum)?.ok_or(not_a_record)?;
        return Ok(Decoded::Change(Change {
            op: Op::Create,
            row: Some(Fields::Avro(row)),
            source_ts_ms: None,
            source_pos: None,
        }));
    }
    let e = plan.envelope(datum)?.ok_or(not_a_record)?;
    let op_str = e.op.ok_or(DecodeError::MissingOp)?;
    if op_str == "m" {
        return Ok(Decoded::Skip(Skip::LogicalMessage));
    }
    let op = Op::parse(&op_str).ok_or(DecodeError::UnknownOp(op_str))?;
    let row_of = |side: Option<(usize, usize)>, field: &'static str| {
        let read = match side {
            Some(side) => plan.side(datum, side)?,
            None => Side::Null,
        };
        match read {
            Side::Row(fields) => Ok(Fields::Avro(fields)),
            // A delete without `before` still carries its key in the message key.
            Side::Null if op == Op::Delete => Ok(Fields::Avro(Vec::new())),
            Side::Null => Err(DecodeError::MissingRow {
                op: op.as_str(),
                field,
            }),
            Side::NotARecord => Err(DecodeError::RowNotObject {
                field,
                found: "non-record Avro value",
            }),
        }
    };
    let row = match op {
        Op::Truncate => None,
        Op::Delete => Some(row_of(e.before, "before")?),
        Op::Create | Op::Update | Op::Read => Some(row_of(e.after, "after")?),
    };
    Ok(Decoded::Change(Change {
        op,
        row,
        source_ts_ms: e.source_ts_ms.or(e.ts_ms),
        source_pos: e.source_pos,
    }))
}

/// [`decode`] through apache-avro's value tree.
fn decode_tree(
    registry: &Registry,
    value: &[u8],
    envelope: bool,
) -> Result<Decoded<'static>, DecodeError> {
    let (value, w) = read(registry, value)?;
    let names = Names(&w);
    let Avro::Record(fields) = value else {
        return Err(DecodeError::NotAnObject("non-record Avro value"));
    };
    let Some(record) = names.record(w.schema) else {
        return Err(DecodeError::NotAnObject("non-record Avro value"));
    };
    if !envelope {
        return Ok(Decoded::Change(Change {
            op: Op::Create,
            row: Some(Fields::Avro(names.fields(record, fields))),
            source_ts_ms: None,
            source_pos: None,
        }));
    }
    let mut op = None;
    let mut before = None;
    let mut after = None;
    let mut source = None;
    let mut ts_ms = None;
    for ((name, v), field) in fields.into_iter().zip(&record.fields) {
        match name.as_str() {
            "op" => op = text(v),
            "before" => before = Some((v, &field.schema)),
            "after" => after = Some((v, &field.schema)),
            "source" => source = Some(v),
            "ts_ms" => ts_ms = long(v),
            _ => {}
        }
    }
    let op_str = op.ok_or(DecodeError::MissingOp)?;
    if op_str == "m" {
        return Ok(Decoded::Skip(Skip::LogicalMessage));
    }
    let op = Op::parse(&op_str).ok_or(DecodeError::UnknownOp(op_str))?;
    let (source_ts_ms, source_pos) = match source {
        Some(Avro::Record(s)) => source_info(s),
        _ => (None, None),
    };
    let row_of = |side: Option<(Avro, &Schema)>, field: &'static str| {
        let (v, schema) = match side {
            Some((v, schema)) => unwrap_union(v, schema, &names),
            None => (Avro::Null, None),
        };
        match (v, schema.and_then(|s| names.record(s))) {
            (Avro::Record(fields), Some(r)) => Ok(Fields::Avro(names.fields(r, fields))),
            // A delete without `before` still carries its key in the message key.
            (Avro::Null, _) if op == Op::Delete => Ok(Fields::Avro(Vec::new())),
            (Avro::Null, _) => Err(DecodeError::MissingRow {
                op: op.as_str(),
                field,
            }),
            _ => Err(DecodeError::RowNotObject {
                field,
                found: "non-record Avro value",
            }),
        }
    };
    let row = match op {
        Op::Truncate => None,
        Op::Delete => Some(row_of(before, "before")?),
        Op::Create | Op::Update | Op::Read => Some(row_of(after, "after")?),
    };
    Ok(Decoded::Change(Change {
        op,
        row,
        source_ts_ms: source_ts_ms.or(ts_ms),
        source_pos,
    }))
}

/// The fields of a framed Avro key record; `None` when the key is not one.
pub fn decode_key(registry: &Registry, key: &[u8]) -> Option<Fields<'static>> {
    let (id, datum) = frame(key).ok()?;
    if let Some(plan) = &writer(registry, id).ok()?.plan {
        return plan.row(datum).ok()?.map(Fields::Avro);
    }
    decode_key_tree(registry, key)
}

/// [`decode_key`] through apache-avro's value tree.
fn decode_key_tree(registry: &Registry, key: &[u8]) -> Option<Fields<'static>> {
    let (value, w) = read(registry, key).ok()?;
    let names = Names(&w);
    match value {
        Avro::Record(fields) => Some(Fields::Avro(names.fields(names.record(w.schema)?, fields))),
        _ => None,
    }
}

/// The row fields a writer schema declares, with their Avro types (`int`, `long`, `["null","string"]`
/// as `string?`, ...): the record itself (`avro`) or the `after` branch of the envelope (`debezium-avro`).
pub fn row_fields(w: &WriterSchema, envelope: bool) -> Option<Vec<(String, String)>> {
    let names = Names(w);
    let top = names.record(w.schema)?;
    let row = if envelope {
        let after = top.fields.iter().find(|f| f.name == "after")?;
        match names.deref(&after.schema) {
            Schema::Union(u) => u.variants().iter().find_map(|v| names.record(v))?,
            other => names.record(other)?,
        }
    } else {
        top
    };
    Some(
        row.fields
            .iter()
            .map(|f| (f.name.clone(), type_name(names.deref(&f.schema), &names)))
            .collect(),
    )
}

fn type_name(schema: &Schema, names: &Names<'_>) -> String {
    match schema {
        Schema::Union(u) => {
            let non_null: Vec<&Schema> = u
                .variants()
                .iter()
                .filter(|v| !matches!(v, Schema::Null))
                .collect();
            let nullable = non_null.len() < u.variants().len();
            let inner = match non_null.as_slice() {
                [one] => type_name(names.deref(one), names),
                _ => "union".to_string(),
            };
            if nullable { format!("{inner}?") } else { inner }
        }
        Schema::Record(r) => r.name.name().to_string(),
        Schema::Decimal(d) => format!("decimal({},{})", d.precision, d.scale),
        Schema::Ref { name } => name.name().to_string(),
        other => {
            let text = format!("{other:?}");
            text.split(['(', ' ', '{'])
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        }
    }
}

/// A fixed-scale decimal with the precision and scale of its schema.
fn decimal_field(d: &apache_avro::Decimal, schema: Option<&Schema>) -> AvroField {
    let (precision, scale) = match schema {
        Some(Schema::Decimal(ds)) => (
            u8::try_from(ds.precision).ok(),
            i32::try_from(ds.scale).unwrap_or(0),
        ),
        _ => (None, 0),
    };
    match Vec::<u8>::try_from(d).ok().and_then(|b| unscaled(&b)) {
        Some(unscaled) => AvroField::Decimal {
            unscaled,
            scale,
            precision,
        },
        None => AvroField::Nested(Json::String(format!(
            "decimal wider than 38 digits (scale {scale})"
        ))),
    }
}

/// `source.ts_ms`, and the position: Postgres `lsn`, MySQL `file:pos[:row]`.
fn source_info(fields: Vec<(String, Avro)>) -> (Option<i64>, Option<CompactString>) {
    let (mut ts, mut lsn, mut file, mut pos, mut row) = (None, None, None, None, None);
    for (name, v) in fields {
        match name.as_str() {
            "ts_ms" => ts = long(v),
            "lsn" => lsn = long(v),
            "file" => file = text(v),
            "pos" => pos = long(v),
            "row" => row = long(v),
            _ => {}
        }
    }
    (ts, source_position(lsn, file, pos, row))
}

/// The source position: Postgres `lsn`, MySQL `file:pos[:row]`.
fn source_position(
    lsn: Option<i64>,
    file: Option<String>,
    pos: Option<i64>,
    row: Option<i64>,
) -> Option<CompactString> {
    match (lsn, file, pos) {
        (Some(lsn), _, _) => Some(lsn.to_compact_string()),
        (None, Some(file), Some(pos)) => Some(match row.filter(|r| *r > 0) {
            Some(row) => format_compact!("{file}:{pos}:{row}"),
            None => format_compact!("{file}:{pos}"),
        }),
        _ => None,
    }
}

/// The scalar fields of a framed `debezium-avro` value's `source` block, as text.
pub fn source_block(registry: &Registry, value: &[u8]) -> Option<crate::config::SourceBlock> {
    let (value, _) = read(registry, value).ok()?;
    let Avro::Record(fields) = value else {
        return None;
    };
    let (_, mut source) = fields.into_iter().find(|(name, _)| name == "source")?;
    while let Avro::Union(_, inner) = source {
        source = *inner;
    }
    let Avro::Record(fields) = source else {
        return None;
    };
    let scalar = |v: Avro| {
        text(v.clone())
            .or_else(|| long(v.clone()).map(|i| i.to_string()))
            .or(match v {
                Avro::Boolean(b) => Some(b.to_string()),
                _ => None,
            })
    };
    Some(
        fields
            .into_iter()
            .filter_map(|(k, v)| scalar(v).map(|t| (k, t)))
            .collect(),
    )
}

fn long(v: Avro) -> Option<i64> {
    match v {
        Avro::Union(_, v) => long(*v),
        Avro::Long(i) | Avro::TimestampMillis(i) => Some(i),
        Avro::Int(i) => Some(i64::from(i)),
        _ => None,
    }
}

fn text(v: Avro) -> Option<String> {
    match v {
        Avro::Union(_, v) => text(*v),
        Avro::String(s) | Avro::Enum(_, s) => Some(s),
        _ => None,
    }
}

/// Strip unions, returning the value and the schema of the branch it was written with.
fn unwrap_union<'a>(v: Avro, schema: &'a Schema, names: &Names<'a>) -> (Avro, Option<&'a Schema>) {
    let schema = names.deref(schema);
    match (v, schema) {
        (Avro::Union(i, inner), Schema::Union(u)) => match u.variants().get(i as usize) {
            Some(s) => unwrap_union(*inner, s, names),
            None => (*inner, None),
        },
        (Avro::Union(_, inner), _) => (*inner, None),
        (v, s) => (v, Some(s)),
    }
}

/// Named-type lookup of one writer schema.
struct Names<'a>(&'a WriterSchema);

impl<'a> Names<'a> {
    fn deref(&self, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => self.named(name).unwrap_or(schema),
            other => other,
        }
    }

    fn named(&self, name: &Name) -> Option<&'a Schema> {
        self.0.names.get_names().get(name).copied()
    }

    fn record(&self, schema: &'a Schema) -> Option<&'a RecordSchema> {
        match self.deref(schema) {
            Schema::Record(r) => Some(r),
            _ => None,
        }
    }

    /// A record's fields as (name, field); Avro writes them in schema order.
    fn fields(
        &self,
        record: &'a RecordSchema,
        values: Vec<(String, Avro)>,
    ) -> Vec<(CompactString, AvroField)> {
        values
            .into_iter()
            .zip(&record.fields)
            .map(|((name, v), f)| (name.into(), self.field(v, &f.schema)))
            .collect()
    }

    fn field(&self, v: Avro, schema: &'a Schema) -> AvroField {
        let (v, schema) = unwrap_union(v, schema, self);
        match v {
            Avro::Null => AvroField::Null,
            Avro::Boolean(b) => AvroField::Boolean(b),
            Avro::Int(i) => AvroField::Int(i),
            Avro::Long(i) => AvroField::Long(i),
            Avro::Float(f) => AvroField::Float(f),
            Avro::Double(f) => AvroField::Double(f),
            Avro::String(s) | Avro::Enum(_, s) => AvroField::String(s),
            Avro::Bytes(b) => AvroField::Bytes(b),
            Avro::Uuid(u) => AvroField::String(u.as_hyphenated().to_string()),
            Avro::Date(d) => AvroField::Date(d),
            Avro::TimeMillis(ms) => AvroField::Time(i64::from(ms) * 1000),
            Avro::TimeMicros(us) => AvroField::Time(us),
            Avro::TimestampMillis(ms) | Avro::LocalTimestampMillis(ms) => ms
                .checked_mul(1000)
                .map_or(AvroField::Long(ms), AvroField::Timestamp),
            Avro::TimestampMicros(us) | Avro::LocalTimestampMicros(us) => AvroField::Timestamp(us),
            Avro::TimestampNanos(ns) | Avro::LocalTimestampNanos(ns) => {
                AvroField::Timestamp(ns.div_euclid(1000))
            }
            Avro::Decimal(d) => decimal_field(&d, schema),
            Avro::BigDecimal(d) => AvroField::String(d.to_string()),
            Avro::Record(fields) => self.record_field(fields, schema),
            Avro::Array(items) => {
                let item = match schema {
                    Some(Schema::Array(a)) => Some(a.items.as_ref()),
                    _ => None,
                };
                AvroField::Nested(Json::Array(
                    items.into_iter().map(|v| self.nested(v, item)).collect(),
                ))
            }
            Avro::Map(entries) => {
                let item = match schema {
                    Some(Schema::Map(m)) => Some(m.types.as_ref()),
                    _ => None,
                };
                let mut sorted: Vec<_> = entries.into_iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                AvroField::Nested(Json::Object(
                    sorted
                        .into_iter()
                        .map(|(k, v)| (k, self.nested(v, item)))
                        .collect(),
                ))
            }
            Avro::Fixed(_, bytes) => AvroField::Bytes(bytes),
            Avro::Duration(d) => AvroField::Bytes(<[u8; 12]>::from(d).to_vec()),
            Avro::Union(_, inner) => self.field(*inner, &Schema::Null),
        }
    }

    /// A record value: a variable-scale decimal, or a nested object.
    fn record_field(&self, fields: Vec<(String, Avro)>, schema: Option<&'a Schema>) -> AvroField {
        let record = schema.and_then(|s| self.record(s));
        if let Some(d) = variable_scale_decimal(record, &fields) {
            return d;
        }
        let mut object = serde_json::Map::new();
        for (i, (name, v)) in fields.into_iter().enumerate() {
            let fs = record.and_then(|r| r.fields.get(i)).map(|f| &f.schema);
            object.insert(name, self.nested(v, fs));
        }
        AvroField::Nested(Json::Object(object))
    }

    fn nested(&self, v: Avro, schema: Option<&'a Schema>) -> Json {
        self.field(v, schema.unwrap_or(&Schema::Null)).to_json()
    }
}

/// Debezium's `io.debezium.data.VariableScaleDecimal`: a record `{scale: int, value: bytes}`.
fn variable_scale_decimal(
    record: Option<&RecordSchema>,
    fields: &[(String, Avro)],
) -> Option<AvroField> {
    let named = record.is_some_and(|r| r.name.name() == "VariableScaleDecimal");
    let [(a, Avro::Int(scale)), (b, Avro::Bytes(value))] = fields else {
        return None;
    };
    if !(named || a == "scale" && b == "value") {
        return None;
    }
    Some(match unscaled(value) {
        Some(unscaled) => AvroField::Decimal {
            unscaled,
            scale: *scale,
            precision: None,
        },
        None => AvroField::Nested(Json::String("decimal wider than 38 digits".to_string())),
    })
}

/// A big-endian two's-complement integer of at most 16 bytes.
pub(crate) fn unscaled(bytes: &[u8]) -> Option<i128> {
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    Some(i128::from_be_bytes(buf))
}

#[cfg(test)]
mod tests;
