//! Avro decoding against the shared Debezium Avro fixtures (schemas as the Confluent AvroConverter
//! registers them, records in Avro's JSON encoding, turned into binary here) and hand-made edge cases.

use std::path::PathBuf;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema::ResolvedSchema;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use compact_str::CompactString;
use serde_json::{Value as Json, json};

use super::AvroField;
use crate::config::{Format, SchemaRegistryConfig};
use crate::decode::registry::Registry;
use crate::decode::{Change, Decoded, Decoder, Fields, Op, Skip};

const KEY_ID: u32 = 1;
const ENVELOPE_ID: u32 = 2;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/debezium/avro")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).expect("fixture (../shared/fixtures) present")
}

/// A registry client that is never asked: every schema is preloaded.
fn registry() -> Registry {
    Registry::new(&SchemaRegistryConfig {
        url: "http://127.0.0.1:9".into(),
        username: None,
        password: None,
        timeout: std::time::Duration::from_secs(1),
        max_backoff: std::time::Duration::from_secs(1),
    })
    .unwrap()
}

/// A value in Avro's JSON encoding (unions as `{"branch": value}`) as an Avro value of `schema`.
fn from_json_encoding(v: &Json, schema: &Schema, names: &ResolvedSchema<'_>) -> Avro {
    let schema = match schema {
        Schema::Ref { name } => names.get_names()[name],
        s => s,
    };
    match schema {
        Schema::Null => Avro::Null,
        Schema::Boolean => Avro::Boolean(v.as_bool().unwrap()),
        Schema::Int => Avro::Int(v.as_i64().unwrap() as i32),
        Schema::Long => Avro::Long(v.as_i64().unwrap()),
        Schema::Double => Avro::Double(v.as_f64().unwrap()),
        Schema::String => Avro::String(v.as_str().unwrap().to_string()),
        Schema::Bytes => Avro::Bytes(v.as_str().unwrap().chars().map(|c| c as u8).collect()),
        Schema::Record(r) => Avro::Record(
            r.fields
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        from_json_encoding(&v[&f.name], &f.schema, names),
                    )
                })
                .collect(),
        ),
        Schema::Union(u) => {
            let (branch, inner) = match v {
                Json::Null => ("null".to_string(), &Json::Null),
                Json::Object(o) => {
                    let (k, inner) = o.iter().next().unwrap();
                    (k.clone(), inner)
                }
                other => panic!("union value {other}"),
            };
            let (i, s) = u
                .variants()
                .iter()
                .enumerate()
                .find(|(_, s)| branch_name(s) == branch)
                .unwrap_or_else(|| panic!("no branch {branch}"));
            Avro::Union(i as u32, Box::new(from_json_encoding(inner, s, names)))
        }
        other => panic!("schema {other:?} not used by the fixtures"),
    }
}

fn branch_name(s: &Schema) -> String {
    match s {
        Schema::Null => "null".into(),
        Schema::Int => "int".into(),
        Schema::Long => "long".into(),
        Schema::String => "string".into(),
        Schema::Ref { name } => name.fullname(None),
        Schema::Record(r) => r.name.fullname(None),
        other => format!("{other:?}"),
    }
}

/// Confluent framing: magic byte, schema id, datum.
fn framed(id: u32, schema: &Schema, value: Avro) -> Vec<u8> {
    let datum = GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(datum);
    out
}

/// A Kafka message's key and value (`None`: a tombstone).
type Message = (Vec<u8>, Option<Vec<u8>>);

/// The fixture records as Kafka payloads, and the registry holding their schemas.
fn fixture_messages() -> (Registry, Vec<Message>) {
    let (key_text, env_text) = (
        read("debezium-postgres-orders-key.avsc"),
        read("debezium-postgres-orders-envelope.avsc"),
    );
    let registry = registry();
    registry.preload(KEY_ID, &key_text).unwrap();
    registry.preload(ENVELOPE_ID, &env_text).unwrap();
    let key_schema = Schema::parse_str(&key_text).unwrap();
    let env_schema = Schema::parse_str(&env_text).unwrap();
    let (key_names, env_names) = (
        ResolvedSchema::try_from(&key_schema).unwrap(),
        ResolvedSchema::try_from(&env_schema).unwrap(),
    );
    let records: Vec<Json> = serde_json::from_str(&read(
        "debezium-postgres-orders-records-avro-json-encoding.json",
    ))
    .unwrap();
    let messages = records
        .iter()
        .map(|r| {
            let key = framed(
                KEY_ID,
                &key_schema,
                from_json_encoding(&r["key"], &key_schema, &key_names),
            );
            let value = (!r["value"].is_null()).then(|| {
                framed(
                    ENVELOPE_ID,
                    &env_schema,
                    from_json_encoding(&r["value"], &env_schema, &env_names),
                )
            });
            (key, value)
        })
        .collect();
    (registry, messages)
}

fn avro_row<'a>(c: &'a Change<'_>) -> &'a [(CompactString, AvroField)] {
    match c.row.as_ref().expect("row") {
        Fields::Avro(f) => f,
        Fields::Json(_) => panic!("expected Avro fields"),
    }
}

fn field<'a>(row: &'a [(CompactString, AvroField)], name: &str) -> &'a AvroField {
    &row.iter().find(|(n, _)| n == name).expect(name).1
}

#[test]
fn every_fixture_record_decodes() {
    let (registry, messages) = fixture_messages();
    let records: Vec<Json> = serde_json::from_str(&read(
        "debezium-postgres-orders-records-avro-json-encoding.json",
    ))
    .unwrap();
    assert_eq!(messages.len(), 6);
    let decoder = Decoder::new(Format::DebeziumAvro, Some(Arc::new(registry)));
    let mut ops = Vec::new();
    for ((key, value), record) in messages.iter().zip(&records) {
        let order_id = record["key"]["order_id"].as_i64().unwrap() as i32;
        assert_eq!(
            decoder.decode_key(Some(key)),
            Some(Fields::Avro(vec![(
                "order_id".into(),
                AvroField::Int(order_id)
            )]))
        );
        match decoder.decode(value.as_deref()).unwrap() {
            Decoded::Skip(s) => {
                assert_eq!(s, Skip::Tombstone);
                ops.push("tombstone");
            }
            Decoded::Change(c) => {
                ops.push(c.op.as_str());
                let source = &record["value"]["source"];
                assert_eq!(c.source_ts_ms, source["ts_ms"].as_i64());
                // What a fan-out names a table by: the block's scalars as text, unions unwrapped.
                let block = decoder
                    .source_block(value.as_deref())
                    .expect("a source block");
                assert_eq!(Some(block["table"].as_str()), source["table"].as_str());
                assert_eq!(Some(block["schema"].as_str()), source["schema"].as_str());
                assert_eq!(
                    block["lsn"],
                    source["lsn"]["long"].as_i64().unwrap().to_string()
                );
                assert_eq!(
                    c.source_pos,
                    Some(source["lsn"]["long"].as_i64().unwrap().to_string().into())
                );
                let row = avro_row(&c);
                assert_eq!(field(row, "order_id"), &AvroField::Int(order_id));
                if c.op == Op::Delete {
                    // `before` has only the key non-null.
                    assert_eq!(field(row, "customer_name"), &AvroField::Null);
                } else {
                    let after = &record["value"]["after"]["postgres.public.orders.Value"];
                    assert_eq!(
                        field(row, "order_date"),
                        &AvroField::Long(after["order_date"]["long"].as_i64().unwrap())
                    );
                    assert_eq!(
                        field(row, "customer_name"),
                        &AvroField::String(
                            after["customer_name"]["string"].as_str().unwrap().into()
                        )
                    );
                    assert_eq!(field(row, "price"), &AvroField::Null);
                    assert_eq!(field(row, "order_status"), &AvroField::Int(1));
                }
            }
        }
    }
    assert_eq!(ops, ["r", "r", "r", "u", "d", "tombstone"]);
}

/// The fixture envelope with a `price` (Debezium VariableScaleDecimal) set on its first record.
#[test]
fn variable_scale_decimal_and_mapping_into_a_contract() {
    let (registry, _) = fixture_messages();
    let env_text = read("debezium-postgres-orders-envelope.avsc");
    let schema = Schema::parse_str(&env_text).unwrap();
    let names = ResolvedSchema::try_from(&schema).unwrap();
    let mut records: Vec<Json> = serde_json::from_str(&read(
        "debezium-postgres-orders-records-avro-json-encoding.json",
    ))
    .unwrap();
    // -12345.678 at scale 3: the unscaled -12345678 as big-endian two's complement.
    let unscaled: String = (-12_345_678i32)
        .to_be_bytes()
        .iter()
        .map(|b| *b as char)
        .collect();
    records[0]["value"]["after"]["postgres.public.orders.Value"]["price"] =
        json!({"io.debezium.data.VariableScaleDecimal": {"scale": 3, "value": unscaled}});
    let value = framed(
        ENVELOPE_ID,
        &schema,
        from_json_encoding(&records[0]["value"], &schema, &names),
    );
    let decoder = Decoder::new(Format::DebeziumAvro, Some(Arc::new(registry)));
    let Decoded::Change(c) = decoder.decode(Some(&value)).unwrap() else {
        panic!("a change");
    };
    assert_eq!(
        field(avro_row(&c), "price"),
        &AvroField::Decimal {
            unscaled: -12_345_678,
            scale: 3,
            precision: None
        }
    );
    assert_eq!(field(avro_row(&c), "price").to_json(), json!("-12345.678"));
}

#[test]
fn framing_and_datum_errors_have_their_own_kinds() {
    let (registry, messages) = fixture_messages();
    let decoder = Decoder::new(Format::DebeziumAvro, Some(Arc::new(registry)));
    let good = messages[0].1.clone().unwrap();
    let kind = |bytes: &[u8]| decoder.decode(Some(bytes)).unwrap_err().kind();
    assert_eq!(kind(br#"{"op":"c"}"#), "bad_magic_byte");
    assert_eq!(kind(&[0, 0, 0]), "invalid_avro");
    assert_eq!(kind(&good[..good.len() / 2]), "invalid_avro");
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[1, 2, 3]);
    assert_eq!(kind(&trailing), "invalid_avro");
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&77u32.to_be_bytes());
    // Never looked up: the caller skipped `prepare`.
    assert_eq!(kind(&unknown), "registry_unavailable");
    // A JSON key on an Avro dataset still gives its fields.
    assert_eq!(
        decoder.decode_key(Some(br#"{"order_id": 5}"#)),
        Some(Fields::from_json_map(
            json!({"order_id": 5}).as_object().unwrap().clone()
        ))
    );
}

/// A plain `avro` row with the logical types, mapped onto contract columns of each type.
#[test]
fn logical_types_coerce_into_columns() {
    let schema_text = r#"{"type": "record", "name": "Row", "namespace": "t", "fields": [
        {"name": "id", "type": "long"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "at_us", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "DONE"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {"name": "blob", "type": "bytes"},
        {"name": "ratio", "type": "float"},
        {"name": "small", "type": "int"}
    ]}"#;
    let registry = registry();
    registry.preload(9, schema_text).unwrap();
    let schema = Schema::parse_str(schema_text).unwrap();
    let uuid = uuid::Uuid::parse_str("8f1e2a10-6a3b-4c5d-9e7f-0123456789ab").unwrap();
    let value = Avro::Record(vec![
        ("id".into(), Avro::Long(42)),
        (
            "amount".into(),
            Avro::Decimal(apache_avro::Decimal::from(12_345i32.to_be_bytes())),
        ),
        ("at".into(), Avro::TimestampMillis(1_700_000_000_123)),
        (
            "at_us".into(),
            Avro::Union(1, Box::new(Avro::TimestampMicros(1_700_000_000_123_456))),
        ),
        ("day".into(), Avro::Date(19_000)),
        ("uid".into(), Avro::Uuid(uuid)),
        ("status".into(), Avro::Enum(1, "DONE".into())),
        (
            "tags".into(),
            Avro::Array(vec![Avro::String("a".into()), Avro::String("b".into())]),
        ),
        (
            "attrs".into(),
            Avro::Map([("k".to_string(), Avro::Long(1))].into()),
        ),
        ("blob".into(), Avro::Bytes(vec![0xde, 0xad])),
        ("ratio".into(), Avro::Float(0.5)),
        ("small".into(), Avro::Int(7)),
    ]);
    let bytes = framed(9, &schema, value);
    assert_eq!(
        super::decode(&registry, &bytes, false).unwrap(),
        super::decode_tree(&registry, &bytes, false).unwrap(),
        "plan and value tree agree"
    );
    let decoder = Decoder::new(Format::Avro, Some(Arc::new(registry)));
    let Decoded::Change(c) = decoder.decode(Some(&bytes)).unwrap() else {
        panic!("a change");
    };
    assert_eq!(c.op, Op::Create);
    let row = avro_row(&c);
    assert_eq!(
        field(row, "amount"),
        &AvroField::Decimal {
            unscaled: 12_345,
            scale: 2,
            precision: Some(10)
        }
    );
    assert_eq!(
        field(row, "at"),
        &AvroField::Timestamp(1_700_000_000_123_000)
    );
    assert_eq!(
        field(row, "at_us"),
        &AvroField::Timestamp(1_700_000_000_123_456)
    );
    assert_eq!(field(row, "day"), &AvroField::Date(19_000));
    assert_eq!(field(row, "uid"), &AvroField::String(uuid.to_string()));
    assert_eq!(field(row, "status"), &AvroField::String("DONE".into()));
    assert_eq!(field(row, "tags"), &AvroField::Nested(json!(["a", "b"])));
    assert_eq!(field(row, "attrs"), &AvroField::Nested(json!({"k": 1})));
    assert_eq!(field(row, "blob"), &AvroField::Bytes(vec![0xde, 0xad]));
    assert_eq!(field(row, "day").to_json(), json!("2022-01-08"));
    assert_eq!(
        field(row, "at").to_json(),
        json!("2023-11-14T22:13:20.123Z")
    );
}

/// The plan reads every fixture message, and a row of every logical type, exactly as apache-avro's
/// value tree does; and it is the plan that reads them.
#[test]
fn the_plan_reads_what_the_value_tree_reads() {
    let (registry, messages) = fixture_messages();
    for id in [KEY_ID, ENVELOPE_ID] {
        let Some(super::Lookup::Found(w)) = registry.cached(id) else {
            panic!("schema {id} preloaded");
        };
        assert!(w.plan.is_some(), "schema {id} compiles to a plan");
    }
    for (key, value) in &messages {
        assert_eq!(
            super::decode_key(&registry, key),
            super::decode_key_tree(&registry, key)
        );
        let Some(value) = value else { continue };
        assert_eq!(
            super::decode(&registry, value, true).unwrap(),
            super::decode_tree(&registry, value, true).unwrap()
        );
        // The same datum cut anywhere is an Avro error, never a panic or a row.
        for cut in 5..value.len() {
            let planned = super::decode(&registry, &value[..cut], true);
            assert!(
                matches!(planned, Err(crate::decode::DecodeError::Avro(_))),
                "cut at {cut}: {planned:?}"
            );
        }
    }
}
