use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;

/// The shared Debezium fixtures live beside the checkout: `../shared/fixtures/debezium/`.
fn fixture_dir() -> PathBuf {
    let dir = std::env::var_os("BRONZE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/debezium")
        });
    assert!(
        dir.is_dir(),
        "fixture directory {} is missing (set BRONZE_FIXTURES)",
        dir.display()
    );
    dir
}

/// Test values live for the whole test run, so decoded rows may borrow from them.
fn decode_value(v: &Value) -> Result<Decoded<'static>, DecodeError> {
    let bytes: Option<&'static [u8]> = if v.is_null() {
        None
    } else {
        Some(serde_json::to_vec(v).unwrap().leak())
    };
    decode(Format::DebeziumJson, bytes)
}

/// The op the file name promises: `debezium-<db>-<op>-...`.
fn expected_op(name: &str) -> &str {
    name.split('-')
        .nth(2)
        .expect("fixture name has an op segment")
}

/// The fixture files: name and parsed document.
fn fixtures() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let doc = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            out.push((name, doc));
        }
    }
    out
}

/// The Kafka records of a fixture: arrays and `{key, value}` files hold records in order; anything
/// else is one value.
fn records_of(doc: &Value) -> Vec<(Option<Value>, Value)> {
    match doc {
        Value::Array(items) => items
            .iter()
            .map(|r| (r.get("key").cloned(), r["value"].clone()))
            .collect(),
        Value::Object(m) if m.len() == 2 && m.contains_key("key") && m.contains_key("value") => {
            vec![(m.get("key").cloned(), m["value"].clone())]
        }
        _ => vec![(None, doc.clone())],
    }
}

/// The row of an envelope as a generic JSON reading gives it: the whole document parsed, the
/// Connect wrapper taken off, `before` for deletes and `after` otherwise.
fn generic_row(value: &Value) -> Option<Map<String, Value>> {
    let envelope = match value.as_object() {
        Some(m) if m.len() == 2 && m.contains_key("schema") && m.contains_key("payload") => {
            &m["payload"]
        }
        _ => value,
    };
    let field = match envelope.get("op")?.as_str()? {
        "d" => "before",
        "c" | "u" | "r" => "after",
        _ => return None,
    };
    Some(
        envelope
            .get(field)?
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
}

/// The one-pass reader gives every fixture row exactly as a full JSON tree would, and holds to
/// JSON's rules where it differs in how it reads: escapes, duplicate names, field order, the wrapper,
/// numbers, text it skips.
#[test]
fn rows_match_a_generic_json_reading() {
    let check = |what: &str, bytes: &[u8]| {
        let generic: Value = serde_json::from_slice(bytes).unwrap();
        let Decoded::Change(c) = decode(Format::DebeziumJson, Some(bytes)).unwrap() else {
            panic!("{what}: not a change")
        };
        assert_eq!(
            c.row.as_ref().map(Fields::to_json_map),
            generic_row(&generic),
            "{what}"
        );
    };
    let mut rows = 0;
    for (name, doc) in fixtures() {
        if expected_op(&name) == "key" {
            continue;
        }
        for (i, (_, value)) in records_of(&doc).iter().enumerate() {
            if generic_row(value).is_some() {
                check(&format!("{name}[{i}]"), &serde_json::to_vec(value).unwrap());
                rows += 1;
            }
        }
    }
    assert!(rows >= 14, "only {rows} fixture rows");
    let crafted: [&[u8]; 5] = [
        br#"{"op":"c","after":{"na\u006de":"a\"b\u00e9","n":1,"t":"plain"}}"#,
        br#"{"op":"c","after":{"id":1,"id":2}}"#,
        br#"{"after":{"id":1},"before":{"id":0,"s":"x"},"op":"d"}"#,
        br#"{"op":"u","after":{"big":18446744073709551615,"neg":-5,"f":1.5e300,"d":0.1,"z":-0.0,"e":1E2}}"#,
        br#"{"op":"r","after":{"arr":[1,{"a":null}],"obj":{"k":[true]},"nul":null}}"#,
    ];
    for (i, bytes) in crafted.iter().enumerate() {
        check(&format!("crafted[{i}]"), bytes);
    }

    // A wrapper with fields beside `schema` and `payload` is no wrapper: the envelope is the object.
    let not_wrapped =
        br#"{"schema":{},"payload":{"op":"c","after":{"id":1}},"op":"c","after":{"id":9}}"#;
    let Decoded::Change(c) = decode(Format::DebeziumJson, Some(not_wrapped)).unwrap() else {
        panic!()
    };
    assert_eq!(
        c.row.unwrap().to_json_map(),
        json!({"id": 9}).as_object().unwrap().clone()
    );
    let null_payload = br#"{"payload":null,"schema":{"type":"struct"}}"#;
    assert!(matches!(
        decode(Format::DebeziumJson, Some(null_payload)).unwrap(),
        Decoded::Skip(Skip::Tombstone)
    ));
    // `source` that is not an object gives no position; the envelope's `ts_ms` stands in.
    let odd_source = br#"{"op":"c","after":{"id":1},"source":[1,2],"ts_ms":77}"#;
    let Decoded::Change(c) = decode(Format::DebeziumJson, Some(odd_source)).unwrap() else {
        panic!()
    };
    assert_eq!((c.source_ts_ms, c.source_pos), (Some(77), None));
    // Text bronze skips is held to UTF-8 as well, and nesting too deep for a reader is invalid.
    let bad_utf8 = b"{\"op\":\"c\",\"after\":{\"id\":1},\"source\":{\"db\":\"\xff\"}}";
    let deep = format!(
        r#"{{"op":"c","after":{{"a":{}{}}}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    for bytes in [&bad_utf8[..], deep.as_bytes()] {
        let err = decode(Format::DebeziumJson, Some(bytes)).unwrap_err();
        assert_eq!(err.kind(), "invalid_json", "{err}");
    }
}

#[test]
fn every_fixture_decodes_to_what_its_name_says() {
    let mut seen = 0;
    for (name, doc) in fixtures() {
        let text = doc.to_string();
        let op = expected_op(&name);
        seen += 1;
        let records = match records_of(&doc) {
            _ if op == "key" => {
                let key = decode_key(text.as_bytes()).expect("key decodes");
                assert!(
                    key.iter().any(|(k, _)| k == "id"),
                    "{name}: key has id: {key:?}"
                );
                continue;
            }
            records => records,
        };
        for (i, (key, value)) in records.iter().enumerate() {
            if let Some(k) = key {
                let k = decode_key(&serde_json::to_vec(k).unwrap())
                    .unwrap_or_else(|| panic!("{name}[{i}]: key does not decode"));
                assert!(!k.is_empty(), "{name}[{i}]: empty key");
            }
            let decoded = decode_value(value).unwrap_or_else(|e| panic!("{name}[{i}]: {e}"));
            match (op, &decoded) {
                ("tombstone", Decoded::Skip(Skip::Tombstone)) => {}
                ("m", Decoded::Skip(Skip::LogicalMessage)) => {}
                // `d-then-tombstone`: the delete, then its tombstone.
                ("d", Decoded::Skip(Skip::Tombstone)) if i > 0 => {}
                (op, Decoded::Change(c)) => {
                    assert_eq!(c.op.as_str(), op, "{name}[{i}]");
                    assert!(c.source_ts_ms.is_some(), "{name}[{i}]: source ts");
                    assert!(c.source_pos.is_some(), "{name}[{i}]: source position");
                    // What a fan-out names a table by (`{source.db}`, `{source.table}`).
                    let block = Decoder::new(Format::DebeziumJson, None)
                        .source_block(Some(&serde_json::to_vec(value).unwrap()))
                        .unwrap_or_else(|| panic!("{name}[{i}]: no source block"));
                    if name.contains("customers") {
                        assert_eq!(block["table"], "customers", "{name}[{i}]");
                    }
                    assert!(
                        block.get("db").is_some_and(|d| !d.is_empty())
                            && block.contains_key("table"),
                        "{name}[{i}]: {block:?}"
                    );
                    match c.op {
                        Op::Truncate => assert!(c.row.is_none(), "{name}"),
                        _ => {
                            let row = c.row.as_ref().map(Fields::to_json_map).unwrap();
                            assert!(
                                row.keys().any(|k| k.trim_start_matches('_') == "id"),
                                "{name}[{i}]: row has an id column: {row:?}"
                            );
                        }
                    }
                }
                (op, other) => panic!("{name}[{i}]: expected {op}, got {other:?}"),
            }
        }
    }
    assert!(seen >= 19, "only {seen} fixtures found");
}

#[test]
fn postgres_update_keeps_after_lsn_and_ts() {
    let path = fixture_dir().join("debezium-postgres-u-docs-customers-payload-noschema.json");
    let bytes = std::fs::read(path).unwrap();
    let Decoded::Change(c) = decode(Format::DebeziumJson, Some(&bytes)).unwrap() else {
        panic!("not a change")
    };
    assert_eq!(c.op, Op::Update);
    assert_eq!(c.source_ts_ms, Some(1559033904863));
    assert_eq!(c.source_pos.as_deref(), Some("24023128"));
    assert_eq!(
        c.row.as_ref().map(Fields::to_json_map).unwrap()["first_name"],
        json!("Anne Marie")
    );
}

#[test]
fn mysql_delete_takes_before_and_file_pos() {
    let path = fixture_dir().join("debezium-mysql-d-docs-customers-payload-noschema.json");
    let bytes = std::fs::read(path).unwrap();
    let Decoded::Change(c) = decode(Format::DebeziumJson, Some(&bytes)).unwrap() else {
        panic!("not a change")
    };
    assert_eq!(c.op, Op::Delete);
    assert_eq!(
        c.row.as_ref().map(Fields::to_json_map).unwrap()["id"],
        json!(1004)
    );
    // The docs keep the `{context}` placeholder in the binlog file name.
    assert_eq!(c.source_pos.as_deref(), Some("{context}-bin.000003:805"));
}

#[test]
fn wrapped_and_bare_envelopes_decode_alike() {
    let bare = json!({"op": "c", "before": null, "after": {"id": 1},
        "source": {"ts_ms": 5, "lsn": 9}});
    let wrapped = json!({"schema": {"type": "struct"}, "payload": bare.clone()});
    let a = decode_value(&bare).unwrap();
    let b = decode_value(&wrapped).unwrap();
    match (a, b) {
        (Decoded::Change(a), Decoded::Change(b)) => assert_eq!(a, b),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_input_is_an_error_with_a_reason() {
    let cases: Vec<(&[u8], &str)> = vec![
        (b"{not json", "invalid_json"),
        (b"[1,2]", "not_an_object"),
        (br#"{"after": {"id": 1}}"#, "bad_op"),
        (br#"{"op": "x", "after": {"id": 1}}"#, "bad_op"),
        (br#"{"op": "c", "after": null}"#, "bad_envelope"),
        (br#"{"op": "u", "after": [1]}"#, "bad_envelope"),
    ];
    for (bytes, kind) in cases {
        let err = decode(Format::DebeziumJson, Some(bytes)).unwrap_err();
        assert_eq!(err.kind(), kind, "{}", String::from_utf8_lossy(bytes));
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn delete_without_before_has_an_empty_row() {
    let v = json!({"op": "d", "before": null, "after": null, "source": {"ts_ms": 1}});
    let Decoded::Change(c) = decode_value(&v).unwrap() else {
        panic!()
    };
    assert_eq!(c.row, Some(Fields::Json(Vec::new())));
}

#[test]
fn plain_json_is_an_insert_and_must_be_an_object() {
    let Decoded::Change(c) = decode(Format::Json, Some(br#"{"a": 1}"#)).unwrap() else {
        panic!()
    };
    assert_eq!(c.op, Op::Create);
    assert!(decode(Format::Json, Some(b"3")).is_err());
    assert!(matches!(
        decode(Format::Json, None).unwrap(),
        Decoded::Skip(Skip::Tombstone)
    ));
}

/// MySQL's every column type as Debezium sends it (Decimal, Bits, bytes, Date, Timestamp,
/// MicroTimestamp, ZonedTimestamp, Json, Enum, Year, MicroTime, geometry structs), through a contract
/// into typed Arrow columns.
#[test]
fn alltypes_fixture_maps_onto_a_typed_contract() {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Decimal128Type, TimestampMicrosecondType};

    use crate::buffer::DatasetBuffer;
    use crate::config::Config;
    use crate::contract::Contract;
    use crate::transform::{Mapper, MessageContext};

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alltypes.toml"),
        r#"
[[columns]]
name = "id"
type = "int32"
nullable = false
[[columns]]
name = "pt"
type = "decimal"
precision = 2
scale = 1
[[columns]]
name = "bit"
type = "binary"
[[columns]]
name = "smallint"
type = "int32"
[[columns]]
name = "bigint_unsigned"
type = "decimal"
precision = 20
scale = 0
[[columns]]
name = "numeric"
type = "decimal"
precision = 8
scale = 3
[[columns]]
name = "big_decimal"
type = "decimal"
precision = 38
scale = 10
[[columns]]
name = "fixed"
type = "float64"
[[columns]]
name = "date"
type = "date"
[[columns]]
name = "datetime3"
type = "timestamp"
unit = "ms"
[[columns]]
name = "datetime6"
type = "timestamp"
unit = "us"
[[columns]]
name = "timestamp"
type = "timestamp"
[[columns]]
name = "bin"
type = "binary"
[[columns]]
name = "json"
type = "json"
[[columns]]
name = "enum"
type = "string"
[[columns]]
name = "year"
type = "int32"
[[columns]]
name = "time"
type = "int64"
[[columns]]
name = "point"
type = "json"
[[columns]]
name = "set"
type = "string"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bronze.toml"),
        r#"
schema_dir = "."
[kafka]
bootstrap_servers = "localhost:9092"
group_id = "g"
[storage]
root = "lake"
[[datasets]]
name = "alltypes"
topics = ["mysql.alltypes"]
format = "debezium-json"
schema = "alltypes.toml"
partitioning = { by = "none" }
"#,
    )
    .unwrap();
    let cfg = Config::load(&dir.path().join("bronze.toml")).unwrap();
    let d = &cfg.datasets[0];
    let contract = Contract::load(&d.schema_file).unwrap();
    let ncols = contract.columns.len();
    let mut mapper = Mapper::new(d, contract).unwrap();
    let schema = mapper.contract().table_schema(&[]);
    let bytes = std::fs::read(
        fixture_dir()
            .join("debezium-mysql-r-paimon-alltypes-value-with-schema-decimal-numeric.json"),
    )
    .unwrap();
    let Decoded::Change(change) = decode(Format::DebeziumJson, Some(&bytes)).unwrap() else {
        panic!("a snapshot read is a change")
    };
    let no_header = |_: &str| None;
    let ctx = MessageContext {
        offset: 0,
        key: &|| None,
        ingested_at_us: 0,
        header: &no_header,
    };
    let mut unknown = 0;
    let row = mapper.map(change, &ctx, &mut unknown).unwrap();
    assert!(
        unknown > 40,
        "the fields the contract leaves out are counted"
    );
    let mut buffer = DatasetBuffer::new(schema, ncols, 0);
    buffer.push("mysql.alltypes", 0, row, std::time::Instant::now());
    let batch = buffer.take("b").unwrap().unwrap().batches.remove(0);
    let col = |name: &str| batch.column_by_name(name).unwrap().clone();
    let dec = |name: &str| col(name).as_primitive::<Decimal128Type>().value(0);
    assert_eq!(col("numeric").data_type(), &DataType::Decimal128(8, 3));
    assert_eq!(dec("numeric"), 12_345_110);
    assert_eq!(dec("pt"), 11);
    assert_eq!(dec("bigint_unsigned"), 20_000_000_000);
    assert_eq!(dec("big_decimal"), 22_222_222_222_222_224 * 10i128.pow(21));
    assert_eq!(col("bin").as_binary::<i32>().value(0), b"bytes\0\0\0\0\0");
    assert_eq!(
        col("bit").as_binary::<i32>().value(0),
        [0xc7, 7, 0, 0, 0, 0, 0, 0]
    );
    let ts = |name: &str| {
        col(name)
            .as_primitive::<TimestampMicrosecondType>()
            .value(0)
    };
    assert_eq!(ts("datetime6"), 1_679_581_805_123_456);
    assert_eq!(ts("datetime3"), 1_679_581_805_123_000);
    // ZonedTimestamp 2023-03-23T22:00:10.123456Z
    assert_eq!(ts("timestamp"), 1_679_608_810_123_456);
    assert_eq!(
        col("year")
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(0),
        2023
    );
    assert!(col("point").as_string::<i32>().value(0).contains("\"wkb\""));
    assert_eq!(col("set").as_string::<i32>().value(0), "a,b");
    assert!(!col("fixed").is_null(0));
}
