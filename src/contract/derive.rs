//! Contracts derived from the schema a source already publishes: the Kafka Connect schema of Debezium
//! JSON with the schema wrapper, or the Avro schema of Debezium Avro. The row's columns come from the
//! envelope's `after` (or `before`) struct, or from the top-level fields of a flattened record; the
//! keys from the key schema; nullability from `optional` (a union with `null` in Avro).
//!
//! Debezium's logical types decide the column type (`Decimal` → decimal, `Date` → date, the
//! timestamps → timestamp in their unit, `Json` → json, `Uuid`/`Enum` → string, `Bits` → binary,
//! geometry, arrays, maps and structs → json). Where no contract type is exact the column still gets
//! one and the derivation says why in a note (written as a comment beside it).

use serde_json::Value;

use super::column::{Column, ColumnType, EpochUnit};

/// A contract derived from a source schema: columns in source order, key columns, notes.
#[derive(Debug, Clone, Default)]
pub struct Derived {
    pub columns: Vec<Column>,
    pub keys: Vec<String>,
    /// Per column (by index), why its type is not exact.
    pub notes: Vec<(usize, String)>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot derive a contract: {0}")]
pub struct DeriveError(String);

/// One source column as a schema describes it, in Connect terms.
struct SourceField {
    name: String,
    /// Connect type: int8..int64, float32, float64, boolean, string, bytes, struct, array, map.
    base: String,
    /// Connect (or Avro logical) type name, e.g. `io.debezium.time.MicroTimestamp`.
    logical: Option<String>,
    precision: Option<u32>,
    scale: Option<i32>,
    optional: bool,
}

/// From a Kafka Connect JSON schema (the `schema` of `{"schema", "payload"}`) of the value and,
/// optionally, of the key. `normalize` gives a source field name its column name.
pub fn from_connect(
    value: &Value,
    key: Option<&Value>,
    normalize: &dyn Fn(&str) -> String,
) -> Result<Derived, DeriveError> {
    let row = connect_row(value)
        .ok_or_else(|| DeriveError("no struct of fields in the value schema".into()))?;
    let fields: Vec<SourceField> = row.iter().filter_map(connect_field).collect();
    let keys = key
        .and_then(connect_row)
        .map(|k| {
            k.iter()
                .filter_map(|f| f.get("field")?.as_str().map(normalize))
                .collect()
        })
        .unwrap_or_default();
    Ok(build(fields, keys, normalize))
}

/// From a Debezium (or plain) Avro value schema and, optionally, its key schema.
pub fn from_avro(
    value: &Value,
    key: Option<&Value>,
    normalize: &dyn Fn(&str) -> String,
) -> Result<Derived, DeriveError> {
    let row = avro_row(value).ok_or_else(|| DeriveError("no record in the value schema".into()))?;
    let fields: Vec<SourceField> = row.iter().filter_map(avro_field).collect();
    let keys = key
        .and_then(avro_row)
        .map(|k| {
            k.iter()
                .filter_map(|f| f.get("name")?.as_str().map(normalize))
                .collect()
        })
        .unwrap_or_default();
    Ok(build(fields, keys, normalize))
}

fn build(
    fields: Vec<SourceField>,
    keys: Vec<String>,
    normalize: &dyn Fn(&str) -> String,
) -> Derived {
    let mut out = Derived {
        keys,
        ..Derived::default()
    };
    for f in fields {
        let (mut column, note) = column_of(&f);
        column.name = normalize(&f.name);
        // A key column always has a value, whatever the schema says of the row.
        column.nullable = f.optional && !out.keys.contains(&column.name);
        if let Some(n) = note {
            out.notes.push((out.columns.len(), n));
        }
        out.columns.push(column);
    }
    out
}

/// The envelope's row struct (`after`, else `before`) or, for a flattened record, its own fields.
fn connect_row(schema: &Value) -> Option<&Vec<Value>> {
    let fields = schema.get("fields")?.as_array()?;
    let named = |n: &str| {
        fields
            .iter()
            .find(|f| f.get("field").and_then(Value::as_str) == Some(n))
    };
    match named("after").or_else(|| named("before")) {
        Some(row) => row.get("fields")?.as_array(),
        None => Some(fields),
    }
}

fn connect_field(f: &Value) -> Option<SourceField> {
    let param = |k: &str| -> Option<i64> { f.get("parameters")?.get(k)?.as_str()?.parse().ok() };
    Some(SourceField {
        name: f.get("field")?.as_str()?.to_string(),
        base: f.get("type")?.as_str()?.to_string(),
        logical: f.get("name").and_then(Value::as_str).map(str::to_string),
        precision: param("connect.decimal.precision").and_then(|p| u32::try_from(p).ok()),
        scale: param("scale").and_then(|s| i32::try_from(s).ok()),
        optional: f.get("optional").and_then(Value::as_bool).unwrap_or(true),
    })
}

/// The record of the envelope's `before` (where Debezium defines `Value`; `after` names it), or the
/// schema's own fields for a flattened record.
fn avro_row(schema: &Value) -> Option<&Vec<Value>> {
    let fields = schema.get("fields")?.as_array()?;
    let named = |n: &str| {
        fields
            .iter()
            .find(|f| f.get("name").and_then(Value::as_str) == Some(n))
    };
    let is_envelope =
        named("op").is_some() && (named("before").is_some() || named("after").is_some());
    if !is_envelope {
        return Some(fields);
    }
    ["before", "after"]
        .into_iter()
        .filter_map(named)
        .find_map(|f| record_in(f.get("type")?))
}

/// The record a type is or holds (a union with null).
fn record_in(ty: &Value) -> Option<&Vec<Value>> {
    match ty {
        Value::Array(branches) => branches.iter().find_map(record_in),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("record") => {
            o.get("fields")?.as_array()
        }
        _ => None,
    }
}

fn avro_field(f: &Value) -> Option<SourceField> {
    let name = f.get("name")?.as_str()?.to_string();
    let (ty, optional) = match f.get("type")? {
        Value::Array(branches) => {
            let optional = branches.iter().any(|b| b.as_str() == Some("null"));
            (
                branches.iter().find(|b| b.as_str() != Some("null"))?,
                optional,
            )
        }
        other => (other, false),
    };
    let (base, logical, precision, scale) = match ty {
        Value::String(t) => (t.clone(), None, None, None),
        Value::Object(o) => {
            let get = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
            let num = |k: &str| o.get(k).and_then(Value::as_i64);
            let base = get("connect.type")
                .or_else(|| get("type"))
                .unwrap_or_default();
            let logical = get("connect.name").or_else(|| get("logicalType"));
            let param = |k: &str| {
                o.get("connect.parameters")?
                    .get(k)?
                    .as_str()?
                    .parse::<i64>()
                    .ok()
            };
            let precision = num("precision").or_else(|| param("connect.decimal.precision"));
            let scale = num("scale").or_else(|| param("scale"));
            (
                base,
                logical,
                precision.and_then(|p| u32::try_from(p).ok()),
                scale.and_then(|s| i32::try_from(s).ok()),
            )
        }
        _ => return None,
    };
    let base = match base.as_str() {
        "int" => "int32".to_string(),
        "long" => "int64".to_string(),
        "float" => "float32".to_string(),
        "double" => "float64".to_string(),
        "record" => "struct".to_string(),
        "enum" => "string".to_string(),
        "fixed" => "bytes".to_string(),
        _ => base,
    };
    Some(SourceField {
        name,
        base,
        logical,
        precision,
        scale,
        optional,
    })
}

/// The contract column for a source column, and a note where the type is not exact.
fn column_of(f: &SourceField) -> (Column, Option<String>) {
    let col = |ty| Column::new(&f.name, ty);
    let timestamp = |unit| {
        let mut c = col(ColumnType::Timestamp);
        c.unit = unit;
        c
    };
    let logical = f.logical.as_deref().unwrap_or_default();
    match logical {
        "org.apache.kafka.connect.data.Decimal" | "decimal" => {
            let mut c = col(ColumnType::Decimal);
            let scale = f.scale.unwrap_or(0).clamp(0, 38) as i8;
            let precision = f.precision.unwrap_or(38);
            c.scale = Some(scale);
            c.precision = Some(precision.clamp(u32::from(scale as u8).max(1), 38) as u8);
            let note = (precision > 38).then(|| {
                format!(
                    "precision {precision} is beyond Delta's 38: larger values become dead letters"
                )
            });
            (c, note)
        }
        "io.debezium.data.VariableScaleDecimal" => {
            let mut c = col(ColumnType::Decimal);
            (c.precision, c.scale) = (Some(38), Some(10));
            let note = "a variable scale (numeric without precision): decimal(38, 10); values with more \
                        digits after the point become dead letters";
            (c, Some(note.to_string()))
        }
        "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" | "date" => {
            (col(ColumnType::Date), None)
        }
        "io.debezium.time.Timestamp"
        | "org.apache.kafka.connect.data.Timestamp"
        | "timestamp-millis" => (timestamp(EpochUnit::Ms), None),
        "io.debezium.time.MicroTimestamp" | "timestamp-micros" => (timestamp(EpochUnit::Us), None),
        "io.debezium.time.NanoTimestamp" => (timestamp(EpochUnit::Ns), None),
        "io.debezium.time.ZonedTimestamp" => (col(ColumnType::Timestamp), None),
        "io.debezium.time.Time"
        | "io.debezium.time.MicroTime"
        | "io.debezium.time.NanoTime"
        | "org.apache.kafka.connect.data.Time"
        | "time-millis"
        | "time-micros" => {
            let unit = match logical {
                "io.debezium.time.MicroTime" | "time-micros" => "µs",
                "io.debezium.time.NanoTime" => "ns",
                _ => "ms",
            };
            let ty = if f.base == "int32" {
                ColumnType::Int32
            } else {
                ColumnType::Int64
            };
            (
                col(ty),
                Some(format!("a time of day, kept as {unit} since midnight")),
            )
        }
        "io.debezium.data.Json" => (col(ColumnType::Json), None),
        "io.debezium.data.Uuid"
        | "io.debezium.data.Enum"
        | "io.debezium.data.EnumSet"
        | "io.debezium.time.ZonedTime"
        | "io.debezium.time.Interval"
        | "io.debezium.data.Xml" => (col(ColumnType::String), None),
        "io.debezium.data.Bits" => (col(ColumnType::Binary), None),
        l if l.starts_with("io.debezium.data.geometry.") => (
            col(ColumnType::Json),
            Some("geometry: its struct (wkb, srid) as JSON".to_string()),
        ),
        _ => (col(base_type(&f.base)), None),
    }
}

fn base_type(base: &str) -> ColumnType {
    match base {
        "int8" | "int16" | "int32" => ColumnType::Int32,
        "int64" => ColumnType::Int64,
        "float32" => ColumnType::Float32,
        "float64" | "double" => ColumnType::Float64,
        "boolean" => ColumnType::Bool,
        "bytes" => ColumnType::Binary,
        "string" => ColumnType::String,
        // struct, array, map: as JSON.
        _ => ColumnType::Json,
    }
}

impl Derived {
    /// The contract as TOML (`schemas/*.toml`), notes as comments, for review and commit.
    pub fn to_toml(&self, source: &str) -> String {
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut out = format!("# Derived by `bronze contract generate` from {source}.\n");
        if !self.keys.is_empty() {
            let keys: Vec<String> = self.keys.iter().map(|k| quote(k)).collect();
            out.push_str(&format!(
                "# Key columns (the key schema): key_columns = [{}]\n",
                keys.join(", ")
            ));
        }
        for (i, c) in self.columns.iter().enumerate() {
            out.push('\n');
            for (_, note) in self.notes.iter().filter(|(j, _)| *j == i) {
                out.push_str(&format!("# {note}\n"));
            }
            out.push_str(&format!(
                "[[columns]]\nname = {}\ntype = \"{}\"\n",
                quote(&c.name),
                c.ty.as_str()
            ));
            if !c.nullable {
                out.push_str("nullable = false\n");
            }
            if let (Some(p), Some(s)) = (c.precision, c.scale) {
                out.push_str(&format!("precision = {p}\nscale = {s}\n"));
            }
            if c.ty == ColumnType::Timestamp && c.unit != EpochUnit::Ms {
                let unit = match c.unit {
                    EpochUnit::S => "s",
                    EpochUnit::Ms => "ms",
                    EpochUnit::Us => "us",
                    EpochUnit::Ns => "ns",
                };
                out.push_str(&format!("unit = \"{unit}\"\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::contract::Contract;

    fn fixtures() -> PathBuf {
        std::env::var_os("BRONZE_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/debezium")
            })
    }

    fn read(name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
    }

    fn same(s: &str) -> String {
        s.to_string()
    }

    fn column<'a>(d: &'a Derived, name: &str) -> &'a Column {
        d.columns
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    /// The contract it writes loads as a contract, column for column.
    fn round_trips(d: &Derived) {
        let back: Contract = toml::from_str(&d.to_toml("a test")).unwrap();
        assert_eq!(back.columns.len(), d.columns.len());
        for (a, b) in back.columns.iter().zip(&d.columns) {
            assert_eq!(
                (&a.name, a.ty, a.nullable, a.precision, a.scale, a.unit),
                (&b.name, b.ty, b.nullable, b.precision, b.scale, b.unit)
            );
        }
    }

    #[test]
    fn every_fixture_with_a_schema_derives_the_columns_of_its_rows() {
        let mut derived = 0;
        for entry in std::fs::read_dir(fixtures()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with("with-schema.json") {
                continue;
            }
            let v = read(&name);
            let messages: Vec<&Value> = match &v {
                Value::Array(items) => items.iter().map(|m| m.get("value").unwrap_or(m)).collect(),
                one => vec![one],
            };
            for m in messages {
                let (Some(schema), Some(payload)) = (m.get("schema"), m.get("payload")) else {
                    continue;
                };
                let d = from_connect(schema, None, &same).unwrap();
                let row = payload
                    .get("after")
                    .filter(|r| r.is_object())
                    .or(payload.get("before"))
                    .unwrap_or(payload);
                if let Some(fields) = row.as_object() {
                    let names: Vec<&str> = d.columns.iter().map(|c| c.name.as_str()).collect();
                    for f in fields.keys() {
                        assert!(names.contains(&f.as_str()), "{name}: no column for {f}");
                    }
                }
                round_trips(&d);
                derived += 1;
            }
        }
        assert!(derived >= 4, "only {derived} schemas derived");
    }

    #[test]
    fn debezium_logical_types_become_contract_types() {
        let v = read("debezium-mysql-r-paimon-alltypes-value-with-schema-decimal-numeric.json");
        let d = from_connect(&v["schema"], None, &same).unwrap();
        let c = column(&d, "pt");
        assert_eq!(
            (c.ty, c.precision, c.scale),
            (ColumnType::Decimal, Some(2), Some(1))
        );
        let c = column(&d, "_fixed");
        assert_eq!(
            (c.ty, c.precision, c.scale),
            (ColumnType::Decimal, Some(38), Some(3))
        );
        let fixed = d.columns.iter().position(|c| c.name == "_fixed").unwrap();
        assert!(
            d.notes
                .iter()
                .any(|(i, n)| *i == fixed && n.contains("precision 40"))
        );
        let c = column(&d, "_bigint_unsigned");
        assert_eq!(
            (c.ty, c.precision, c.scale),
            (ColumnType::Decimal, Some(38), Some(0))
        );
        assert_eq!(column(&d, "_date").ty, ColumnType::Date);
        assert_eq!(
            (column(&d, "_datetime").ty, column(&d, "_datetime").unit),
            (ColumnType::Timestamp, EpochUnit::Ms)
        );
        assert_eq!(column(&d, "_datetime6").unit, EpochUnit::Us);
        assert_eq!(column(&d, "_timestamp").ty, ColumnType::Timestamp);
        assert_eq!(column(&d, "_bit").ty, ColumnType::Binary);
        assert_eq!(column(&d, "_tinyint1").ty, ColumnType::Int32);
        assert_eq!(column(&d, "_double").ty, ColumnType::Float64);
        assert_eq!(column(&d, "_text").ty, ColumnType::String);
        assert!(!column(&d, "_id").nullable && column(&d, "_text").nullable);
        round_trips(&d);
    }

    #[test]
    fn keys_come_from_the_key_schema_and_are_never_null() {
        let v = read("debezium-mysql-r-tutorial-customers-key-value-with-schema.json");
        let m = &v[0];
        let normalize = |s: &str| s.to_lowercase();
        let d = from_connect(&m["value"]["schema"], Some(&m["key"]["schema"]), &normalize).unwrap();
        assert_eq!(d.keys, vec!["id"]);
        assert!(!column(&d, "id").nullable);
        assert!(d.to_toml("t").contains("key_columns = [\"id\"]"));
    }

    #[test]
    fn debezium_avro_schemas_derive_alike() {
        let value = read("avro/debezium-postgres-orders-envelope.avsc");
        let key = read("avro/debezium-postgres-orders-key.avsc");
        let d = from_avro(&value, Some(&key), &same).unwrap();
        let names: Vec<&str> = d.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "order_id",
                "order_date",
                "customer_name",
                "price",
                "product_id",
                "order_status"
            ]
        );
        assert_eq!(d.keys, vec!["order_id"]);
        assert!(!column(&d, "order_id").nullable && column(&d, "customer_name").nullable);
        let price = column(&d, "price");
        assert_eq!(
            (price.ty, price.precision, price.scale),
            (ColumnType::Decimal, Some(38), Some(10))
        );
        assert_eq!(
            column(&d, "order_status").ty,
            ColumnType::Int32,
            "connect.type int16"
        );
        assert_eq!(column(&d, "order_date").ty, ColumnType::Int64);
        round_trips(&d);
    }
}
