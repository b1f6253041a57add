//! The mapper's tests: every contract rule against the real Debezium fixtures and hand-made changes;
//! over 600 lines because each rule gets a case of its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::config::{
    DeadLetterConfig, FlushLimits, Format, InvalidMessage, Partitioning, TopicSelector,
};
use crate::contract::Column;
use crate::decode::{Change, decode_key};

fn col(name: &str, ty: ColumnType, nullable: bool) -> Column {
    let mut c = Column::new(name, ty);
    c.nullable = nullable;
    c
}

fn dataset() -> DatasetConfig {
    DatasetConfig {
        name: "customers".into(),
        topics: TopicSelector::Names(vec!["t".into()]),
        format: Format::DebeziumJson,
        table_uri: "file:///tmp/x".into(),
        schema_file: PathBuf::from("x"),
        contract: crate::config::ContractSource::File,
        key_columns: vec!["id".into()],
        ordering_column: "_source_ts".into(),
        normalize_names: true,
        key_from_message_key: true,
        header_columns: BTreeMap::from([("trace".to_string(), "traceparent".to_string())]),
        partitioning: Partitioning {
            by: PartitionBy::DateHour,
            time_column: "_source_ts".into(),
        },
        flush: FlushLimits::default(),
        dead_letters: DeadLetterConfig {
            table_uri: "file:///tmp/dlq".into(),
            on_invalid: InvalidMessage::DeadLetter,
            max_message_bytes: 1 << 20,
            require_key: false,
            topic: None,
        },
        redelivery_window: 0,
        unavailable_value: Some(crate::config::DEBEZIUM_UNAVAILABLE_VALUE.into()),
        extract: None,
        latest: None,
        schedule: None,
        drift: None,
        fan_out: None,
        control: Default::default(),
    }
}

/// A change of `op` whose row is `after`.
fn change_of(op: Op, after: serde_json::Value) -> Change<'static> {
    Change {
        op,
        row: after.as_object().cloned().map(Fields::from_json_map),
        source_ts_ms: Some(1),
        source_pos: None,
    }
}

fn mapper() -> Mapper {
    let contract = Contract {
        tracks_unavailable: false,
        on_error: OnError::default(),
        drift: Default::default(),
        columns: vec![
            col("id", ColumnType::Int64, false),
            col("first_name", ColumnType::String, false),
            col("trace", ColumnType::String, true),
        ],
    };
    Mapper::new(&dataset(), contract).unwrap()
}

fn ctx<'a>(
    key: &'a dyn Fn() -> Option<Fields<'static>>,
    header: &'a dyn Fn(&str) -> Option<String>,
) -> MessageContext<'a> {
    MessageContext {
        offset: 10,
        key,
        ingested_at_us: 1_700_000_000_000_000,
        header,
    }
}

fn change(op: Op, row: serde_json::Value) -> Change<'static> {
    Change {
        op,
        row: row.as_object().cloned().map(Fields::from_json_map),
        // 2019-05-28T09:38:24.863Z
        source_ts_ms: Some(1559036304863),
        source_pos: Some("1".into()),
    }
}

#[test]
fn maps_normalized_names_headers_partitions_and_key() {
    let mut m = mapper();
    let headers = |h: &str| (h == "traceparent").then(|| "abc".to_string());
    let mut unknown = 0;
    let row = m
        .map(
            change(
                Op::Create,
                json!({"id": 1, "firstName": "Ann", "extra": true}),
            ),
            &ctx(&|| None, &headers),
            &mut unknown,
        )
        .unwrap();
    assert_eq!(
        row.data,
        vec![
            Cell::Int64(1),
            Cell::Str("Ann".into()),
            Cell::Str("abc".into())
        ]
    );
    assert_eq!(unknown, 1);
    assert_eq!(
        row.partition_values,
        vec!["2019-05-28".to_string(), "09".to_string()].into()
    );
    assert_eq!(row.dedup_key.as_deref(), Some("1\u{1f}"));
    assert_eq!(row.order, OrderValue::Int(1559036304863000));
}

#[test]
fn delete_with_key_only_takes_key_from_message_key() {
    let mut m = mapper();
    let no_headers = |_: &str| None;
    let key = br#"{"schema": {}, "payload": {"id": 7}}"#;
    let mut unknown = 0;
    let row = m
        .map(
            change(Op::Delete, json!({})),
            &ctx(&|| decode_key(key).map(Fields::Json), &no_headers),
            &mut unknown,
        )
        .unwrap();
    assert_eq!(row.data[0], Cell::Int64(7));
    assert_eq!(row.data[1], Cell::Null);
    assert_eq!(row.op, Op::Delete);
}

#[test]
fn missing_required_value_and_bad_type_are_errors() {
    let mut m = mapper();
    let no_headers = |_: &str| None;
    let mut unknown = 0;
    let e = m
        .map(
            change(Op::Create, json!({"id": 1})),
            &ctx(&|| None, &no_headers),
            &mut unknown,
        )
        .unwrap_err();
    assert_eq!(e.kind(), "missing_value");
    assert!(e.to_string().contains("first_name"), "{e}");
    let e = m
        .map(
            change(Op::Update, json!({"id": "x1", "first_name": "a"})),
            &ctx(&|| None, &no_headers),
            &mut unknown,
        )
        .unwrap_err();
    assert_eq!(e.kind(), "type_mismatch");
    assert!(e.to_string().contains("`id`"), "{e}");
}

#[test]
fn truncate_has_no_key_and_falls_back_to_ingest_time_without_source_ts() {
    let mut m = mapper();
    let no_headers = |_: &str| None;
    let mut unknown = 0;
    let mut c = change(Op::Truncate, serde_json::Value::Null);
    c.source_ts_ms = None;
    let row = m.map(c, &ctx(&|| None, &no_headers), &mut unknown).unwrap();
    assert!(row.dedup_key.is_none());
    // 1_700_000_000 s = 2023-11-14T22:13:20Z
    assert_eq!(
        row.partition_values,
        vec!["2023-11-14".to_string(), "22".to_string()].into()
    );
}

#[test]
fn unknown_key_or_ordering_columns_are_rejected() {
    let contract = Contract {
        tracks_unavailable: false,
        on_error: OnError::default(),
        drift: Default::default(),
        columns: vec![col("id", ColumnType::Int64, false)],
    };
    let mut d = dataset();
    d.header_columns.clear();
    d.key_columns = vec!["nope".into()];
    let e = Mapper::new(&d, contract.clone()).err().unwrap();
    assert!(e.to_string().contains("key column `nope`"), "{e}");
    let mut d = dataset();
    d.header_columns.clear();
    d.ordering_column = "missing".into();
    assert!(Mapper::new(&d, contract).is_err());
}

#[test]
fn on_error_rules_decide_per_column() {
    let mut lenient = col("trace", ColumnType::Int32, true);
    lenient.on_error = Some(OnError::Null);
    let mut strict = col("first_name", ColumnType::Bool, true);
    strict.on_error = Some(OnError::Fail);
    let contract = Contract {
        tracks_unavailable: false,
        on_error: OnError::DeadLetter,
        drift: Default::default(),
        columns: vec![col("id", ColumnType::Int64, false), strict, lenient],
    };
    let mut d = dataset();
    d.header_columns.clear();
    let mut m = Mapper::new(&d, contract).unwrap();
    let no_header = |_: &str| None;
    let change = |after| change_of(Op::Create, after);
    let mut unknown = 0;
    // `null`: the bad value becomes null and the row lands.
    let row = m
        .map(
            change(json!({"id": 1, "trace": "x"})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap();
    assert!(matches!(row.data[2], Cell::Null));
    // `fail` on its column stops the partition.
    let e = m
        .map(
            change(json!({"id": 1, "first_name": "maybe"})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap_err();
    assert_eq!((e.kind(), e.action()), ("type_mismatch", OnError::Fail));
    // The contract-wide default dead-letters the rest.
    let e = m
        .map(
            change(json!({"id": "one"})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap_err();
    assert_eq!(e.action(), OnError::DeadLetter);
    let e = m
        .map(
            change(json!({"trace": 1})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.action()),
        ("missing_value", OnError::DeadLetter)
    );
}

#[test]
fn drift_is_observed_and_the_policy_decides() {
    use crate::contract::{DriftAction, DriftPolicy};
    let mut email = col("email_address", ColumnType::String, true);
    email.aliases = vec!["email".into()];
    let contract = Contract {
        tracks_unavailable: false,
        on_error: OnError::DeadLetter,
        drift: DriftPolicy {
            new_column: DriftAction::Quarantine,
            missing_column: DriftAction::Ignore,
            review_hold: Default::default(),
            type_widening: Default::default(),
        },
        columns: vec![col("id", ColumnType::Int64, false), email],
    };
    let mut d = dataset();
    d.header_columns.clear();
    d.key_from_message_key = false;
    let mut m = Mapper::new(&d, contract.clone()).unwrap();
    let no_header = |_: &str| None;
    let change = |after| change_of(Op::Update, after);
    let mut unknown = 0;
    // A renamed source column lands in its new home and is reported as a rename.
    let row = m
        .map(
            change(json!({"id": 1, "email": "a@b"})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap();
    assert_eq!(row.data[1], Cell::Str("a@b".into()));
    // A missing column is ignored by policy (null), a new one quarantined.
    m.map(
        change(json!({"id": 2})),
        &ctx(&|| None, &no_header),
        &mut unknown,
    )
    .unwrap();
    let e = m
        .map(
            change(json!({"id": 3, "email_address": "x", "tier": "gold"})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.action()),
        ("schema_drift", OnError::DeadLetter)
    );
    assert!(e.to_string().contains("new column `tier`"), "{e}");
    let drift = m.take_drift();
    let kinds: Vec<_> = drift
        .iter()
        .map(|e| (e.kind, e.column.as_str(), e.action, e.messages))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (DriftKind::NewColumn, "tier", "quarantine", 1),
            (DriftKind::MissingColumn, "email_address", "ignore", 1),
            (DriftKind::Renamed, "email_address", "mapped", 1),
        ]
    );
    assert!(m.take_drift().is_empty(), "reported once");
    // `fail` stops the partition on a missing column; deletes carrying only the key are not drift.
    let mut strict = contract;
    strict.drift.missing_column = DriftAction::Fail;
    let mut m = Mapper::new(&d, strict).unwrap();
    let e = m
        .map(
            change(json!({"id": 4})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap_err();
    assert_eq!(e.action(), OnError::Fail);
    let delete = change_of(Op::Delete, json!({"id": 5}));
    m.map(delete, &ctx(&|| None, &no_header), &mut unknown)
        .unwrap();
}

/// A dataset without header or message-key columns and a contract of one `id` column that evolves.
fn evolving() -> (DatasetConfig, Contract) {
    use crate::contract::{DriftAction, DriftPolicy};
    let contract = Contract {
        tracks_unavailable: false,
        on_error: OnError::DeadLetter,
        drift: DriftPolicy {
            new_column: DriftAction::Evolve,
            missing_column: DriftAction::Ignore,
            review_hold: Default::default(),
            type_widening: Default::default(),
        },
        columns: vec![col("id", ColumnType::Int64, false)],
    };
    let mut d = dataset();
    d.header_columns.clear();
    d.key_from_message_key = false;
    (d, contract)
}

/// A clone maps like its original until either changes its contract (stamps are never reused), and
/// what a clone observed counts, once handed over, as if the original had seen it.
#[test]
fn clones_map_alike_until_a_contract_change_and_hand_over_what_they_saw() {
    let (d, contract) = evolving();
    let no_header = |_: &str| None;
    let map = |m: &mut Mapper, after| {
        m.map(
            change_of(Op::Update, after),
            &ctx(&|| None, &no_header),
            &mut 0,
        )
    };
    let mut original = Mapper::new(&d, contract).unwrap();
    let (mut evolving, mut erring) = (original.clone(), original.clone());
    assert_eq!(evolving.generation(), original.generation());
    map(&mut evolving, json!({"id": 1, "extra": 5})).unwrap();
    assert_ne!(evolving.generation(), original.generation());

    let bad = json!({"id": "x"});
    assert_eq!(
        map(&mut erring, bad.clone()).unwrap_err().kind(),
        "type_mismatch"
    );
    assert_eq!(erring.generation(), original.generation());
    let seen = erring.take_observations();
    assert!(erring.take_observations().drift.is_empty());
    assert_eq!(
        seen.column_errors,
        [("id".to_string(), OnError::DeadLetter)]
    );
    original.absorb_drift(seen.drift);
    map(&mut original, bad).unwrap_err();
    let drift = original.take_drift();
    assert_eq!(drift.len(), 1);
    assert_eq!(
        (drift[0].kind, drift[0].column.as_str(), drift[0].messages),
        (DriftKind::TypeChange, "id", 2)
    );

    // The same change made on both sides still gives different stamps: each is its own lineage.
    map(&mut original, json!({"id": 2, "extra": 5})).unwrap();
    assert_ne!(original.generation(), evolving.generation());
    let stamp = original.generation();
    original.adopt(&[]).unwrap();
    assert_eq!(
        original.generation(),
        stamp,
        "adopting nothing changes nothing"
    );
}

#[test]
fn evolve_adds_typed_columns_and_waits_for_a_value() {
    let (d, contract) = evolving();
    let mut m = Mapper::new(&d, contract).unwrap();
    let no_header = |_: &str| None;
    let mut unknown = 0;
    let mut map = |after| {
        m.map(
            change_of(Op::Update, after),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
    };
    // A null says nothing of the type: no column yet.
    let row = map(json!({"id": 1, "loyaltyTier": null})).unwrap();
    assert_eq!(row.data.len(), 1);
    let row = map(json!({"id": 2, "loyaltyTier": "gold", "points": 7, "tags": ["a"]})).unwrap();
    assert_eq!(
        row.data[1..],
        [
            Cell::Str("gold".into()),
            Cell::Int64(7),
            Cell::Str(r#"["a"]"#.into())
        ]
    );
    // Later values go through the evolved column's coercion like any other.
    let e = map(json!({"id": 3, "points": "many"})).unwrap_err();
    assert_eq!(e.kind(), "type_mismatch");
    let names: Vec<(&str, ColumnType)> = m
        .contract()
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.ty))
        .collect();
    assert_eq!(
        names,
        [
            ("id", ColumnType::Int64),
            ("loyalty_tier", ColumnType::String),
            ("points", ColumnType::Int64),
            ("tags", ColumnType::Json)
        ]
    );
    let drift: Vec<_> = m
        .take_drift()
        .into_iter()
        .map(|e| (e.column, e.observed, e.action))
        .collect();
    assert!(drift.contains(&("points".into(), "int64".into(), "evolve")));
    // Columns the table already has (another member or an earlier run evolved them) are taken on.
    let mut fresh = Mapper::new(&d, m.contract().clone()).unwrap();
    fresh
        .adopt(&[std::sync::Arc::new(arrow::datatypes::Field::new(
            "amount",
            arrow::datatypes::DataType::Decimal128(10, 2),
            true,
        ))])
        .unwrap();
    let row = fresh
        .map(
            change_of(Op::Update, json!({"id": 4, "amount": "1.50"})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap();
    assert_eq!(row.data[4], Cell::Decimal(150));
}

#[test]
fn review_holds_new_fields_until_the_table_has_their_column() {
    use crate::contract::{DriftAction, DriftPolicy, ReviewHold};
    let mut contract = Contract {
        tracks_unavailable: false,
        on_error: OnError::DeadLetter,
        drift: DriftPolicy {
            new_column: DriftAction::Review,
            missing_column: DriftAction::Ignore,
            review_hold: ReviewHold::Quarantine,
            type_widening: Default::default(),
        },
        columns: vec![col("id", ColumnType::Int64, false)],
    };
    let mut d = dataset();
    d.header_columns.clear();
    d.key_from_message_key = false;
    let no_header = |_: &str| None;
    let mut unknown = 0;
    let mut m = Mapper::new(&d, contract.clone()).unwrap();
    let e = m
        .map(
            change_of(Op::Update, json!({"id": 1, "tier": "gold"})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.action()),
        ("schema_review", OnError::DeadLetter)
    );
    // A null field holds nothing back.
    m.map(
        change_of(Op::Update, json!({"id": 2, "tier": null})),
        &ctx(&|| None, &no_header),
        &mut unknown,
    )
    .unwrap();
    let drift = m.take_drift();
    assert_eq!(
        (
            drift[0].column.as_str(),
            drift[0].observed.as_str(),
            drift[0].action
        ),
        ("tier", "string", "review")
    );
    // Approved: the table has the column, and the field lands in it.
    m.adopt(&[std::sync::Arc::new(arrow::datatypes::Field::new(
        "tier",
        arrow::datatypes::DataType::Utf8,
        true,
    ))])
    .unwrap();
    let row = m
        .map(
            change_of(Op::Update, json!({"id": 3, "tier": "gold"})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap();
    assert_eq!(row.data[1], Cell::Str("gold".into()));
    // Held in `_rescued_data` instead, when the contract says so.
    contract.drift.review_hold = ReviewHold::Rescue;
    assert!(contract.rescues());
    let mut m = Mapper::new(&d, contract).unwrap();
    let row = m
        .map(
            change_of(Op::Update, json!({"id": 4, "tier": "gold"})),
            &ctx(&|| None, &no_header),
            &mut unknown,
        )
        .unwrap();
    assert_eq!(row.rescued.as_deref(), Some(r#"{"tier":"gold"}"#));
}

/// Avro fields land in contract columns without passing through JSON; text and epoch numbers follow
/// the same column rules as JSON; evolution types new columns from the Avro type.
#[test]
fn avro_fields_coerce_by_type_and_evolve_typed_columns() {
    use crate::contract::{DriftAction, DriftPolicy, EpochUnit};
    use crate::decode::AvroField as A;
    let mut amount = col("amount", ColumnType::Decimal, true);
    (amount.precision, amount.scale) = (Some(12), Some(4));
    let mut at = col("at", ColumnType::Timestamp, true);
    at.unit = EpochUnit::Ms;
    let contract = Contract {
        tracks_unavailable: false,
        on_error: OnError::DeadLetter,
        drift: DriftPolicy {
            new_column: DriftAction::Evolve,
            missing_column: DriftAction::Ignore,
            review_hold: Default::default(),
            type_widening: Default::default(),
        },
        columns: vec![
            col("id", ColumnType::Int64, false),
            amount,
            at,
            col("day", ColumnType::Date, true),
            col("small", ColumnType::Int32, true),
            col("doc", ColumnType::Json, true),
            col("label", ColumnType::String, true),
            col("created", ColumnType::Timestamp, true),
        ],
    };
    let mut d = dataset();
    d.header_columns.clear();
    d.key_from_message_key = false;
    let mut m = Mapper::new(&d, contract).unwrap();
    let no_header = |_: &str| None;
    let map = |m: &mut Mapper, fields: Vec<(&str, A)>| {
        let row = Fields::Avro(fields.into_iter().map(|(n, v)| (n.into(), v)).collect());
        let change = Change {
            op: Op::Create,
            row: Some(row),
            source_ts_ms: Some(1),
            source_pos: None,
        };
        m.map(change, &ctx(&|| None, &no_header), &mut 0)
    };
    let row = map(
        &mut m,
        vec![
            ("id", A::Int(7)),
            (
                "amount",
                A::Decimal {
                    unscaled: 12_345,
                    scale: 2,
                    precision: Some(10),
                },
            ),
            ("at", A::Long(1_700_000_000_123)),
            ("day", A::Int(19_000)),
            ("small", A::Long(5)),
            ("doc", A::Nested(json!({"a": [1, 2]}))),
            (
                "label",
                A::Decimal {
                    unscaled: -5,
                    scale: 1,
                    precision: None,
                },
            ),
            ("created", A::Date(1)),
            (
                "rating",
                A::Decimal {
                    unscaled: 45,
                    scale: 1,
                    precision: Some(3),
                },
            ),
            ("flag", A::Boolean(true)),
        ],
    )
    .unwrap();
    assert_eq!(
        row.data,
        [
            Cell::Int64(7),
            Cell::Decimal(1_234_500),
            Cell::Timestamp(1_700_000_000_123_000),
            Cell::Date(19_000),
            Cell::Int32(5),
            Cell::Str(r#"{"a":[1,2]}"#.into()),
            Cell::Str("-0.5".into()),
            Cell::Timestamp(86_400_000_000),
            Cell::Decimal(45),
            Cell::Bool(true),
        ]
    );
    let evolved: Vec<_> = m.contract().columns[8..]
        .iter()
        .map(|c| (c.name.as_str(), c.ty, c.precision, c.scale))
        .collect();
    assert_eq!(
        evolved,
        [
            ("rating", ColumnType::Decimal, Some(3), Some(1)),
            ("flag", ColumnType::Bool, None, None)
        ]
    );
    // A long beyond int32 and a timestamp into a date column are refused, naming the Avro type.
    let e = map(&mut m, vec![("id", A::Int(1)), ("small", A::Long(1 << 40))]).unwrap_err();
    assert_eq!(e.kind(), "type_mismatch");
    assert!(e.to_string().contains("out of range for int32"), "{e}");
    let e = map(&mut m, vec![("id", A::Int(1)), ("day", A::Timestamp(5))]).unwrap_err();
    assert!(e.to_string().contains("found timestamp"), "{e}");
}

/// Wider values: `ignore` takes those that fit, `evolve` asks for the wider column first, `quarantine`
/// dead-letters; every sighting is a `type_widening` drift event. Values of another type are
/// `type_change` drift and follow the column's `on_error`.
#[test]
fn type_widening_and_type_change_are_classified() {
    use crate::contract::{DriftAction, DriftPolicy};
    use crate::decode::AvroField as A;
    let contract = |policy| Contract {
        tracks_unavailable: false,
        on_error: OnError::DeadLetter,
        drift: DriftPolicy {
            type_widening: policy,
            ..Default::default()
        },
        columns: vec![
            col("id", ColumnType::Int64, false),
            col("qty", ColumnType::Int32, true),
        ],
    };
    let mut d = dataset();
    d.header_columns.clear();
    d.key_from_message_key = false;
    let no_header = |_: &str| None;
    let avro = |qty: A| Change {
        op: Op::Create,
        row: Some(Fields::Avro(vec![
            ("id".into(), A::Long(1)),
            ("qty".into(), qty),
        ])),
        source_ts_ms: Some(1),
        source_pos: None,
    };
    let map = |m: &mut Mapper, c: Change| m.map(c, &ctx(&|| None, &no_header), &mut 0);

    let mut ignore = Mapper::new(&d, contract(DriftAction::Ignore)).unwrap();
    assert_eq!(
        map(&mut ignore, avro(A::Long(5))).unwrap().data[1],
        Cell::Int32(5)
    );
    let e = map(&mut ignore, avro(A::Long(1 << 40))).unwrap_err();
    assert_eq!(e.kind(), "type_mismatch");
    let e = map(&mut ignore, avro(A::String("x".into()))).unwrap_err();
    assert_eq!(e.kind(), "type_mismatch");
    let drift: Vec<_> = ignore
        .take_drift()
        .into_iter()
        .map(|e| {
            (
                e.kind.as_str(),
                e.observed,
                e.expected,
                e.action,
                e.messages,
            )
        })
        .collect();
    assert_eq!(
        drift,
        [
            ("type_widening", "int64".into(), "int32".into(), "ignore", 2),
            (
                "type_change",
                "string".into(),
                "int32".into(),
                "dead_letter",
                1
            )
        ]
    );

    let mut evolve = Mapper::new(&d, contract(DriftAction::Evolve)).unwrap();
    let e = map(&mut evolve, avro(A::Long(5))).unwrap_err();
    assert!(
        matches!(&e, TransformError::Widen { column, to: ColumnType::Int64, .. } if column == "qty")
    );
    // JSON has no writer types: only a value beyond int32 asks for the wider column.
    assert!(
        map(
            &mut evolve,
            change_of(Op::Create, json!({"id": 1, "qty": 5}))
        )
        .is_ok()
    );
    let e = map(
        &mut evolve,
        change_of(Op::Create, json!({"id": 1, "qty": 1u64 << 33})),
    )
    .unwrap_err();
    assert_eq!(e.kind(), "type_widening");
    evolve.widen("qty", ColumnType::Int64, None);
    let row = map(&mut evolve, avro(A::Long(1 << 40))).unwrap();
    assert_eq!(row.data[1], Cell::Int64(1 << 40));

    let mut quarantine = Mapper::new(&d, contract(DriftAction::Quarantine)).unwrap();
    let e = map(&mut quarantine, avro(A::Long(5))).unwrap_err();
    assert_eq!(
        (e.kind(), e.action()),
        ("schema_drift", OnError::DeadLetter)
    );
}

/// An explicit null for a non-nullable column is `nullability` drift (the source column became
/// nullable) under the column's `on_error`; an absent field is `missing_column` drift.
#[test]
fn explicit_nulls_in_non_nullable_columns_are_nullability_drift() {
    let mut d = dataset();
    d.header_columns.clear();
    d.key_from_message_key = false;
    let contract = Contract {
        tracks_unavailable: false,
        on_error: OnError::DeadLetter,
        drift: Default::default(),
        columns: vec![
            col("id", ColumnType::Int64, false),
            col("name", ColumnType::String, false),
        ],
    };
    let mut m = Mapper::new(&d, contract).unwrap();
    let no_header = |_: &str| None;
    let e = m
        .map(
            change_of(Op::Create, json!({"id": 1, "name": null})),
            &ctx(&|| None, &no_header),
            &mut 0,
        )
        .unwrap_err();
    assert_eq!(e.kind(), "missing_value");
    let e = m
        .map(
            change_of(Op::Create, json!({"id": 2})),
            &ctx(&|| None, &no_header),
            &mut 0,
        )
        .unwrap_err();
    assert_eq!(e.kind(), "missing_value");
    let drift: Vec<_> = m
        .take_drift()
        .into_iter()
        .map(|e| (e.kind.as_str(), e.column, e.action, e.messages))
        .collect();
    assert_eq!(
        drift,
        [
            ("missing_column", "name".to_string(), "ignore", 1),
            ("nullability", "name".to_string(), "dead_letter", 1)
        ]
    );
}

#[test]
fn debezium_placeholders_are_not_values() {
    let mut m = mapper();
    let mut unknown = 0;
    let none = |_: &str| None;
    // An update of a row whose TOASTed columns did not change: a required one and an optional one.
    let row = m
        .map(
            change(
                Op::Update,
                json!({"id": 1, "first_name": "__debezium_unavailable_value",
                       "trace": ["__debezium_unavailable_value"], "blob": "__debezium_unavailable_value"}),
            ),
            &ctx(&|| None, &none),
            &mut unknown,
        )
        .unwrap();
    assert_eq!(row.data, vec![Cell::Int64(1), Cell::Null, Cell::Null]);
    assert_eq!(row.unavailable, vec!["first_name", "trace"]);
    assert_eq!(unknown, 0, "a placeholder says nothing of an unknown field");
    assert!(
        m.contract()
            .table_schema(&[])
            .field_with_name("_unavailable_columns")
            .is_ok()
    );
    let row = m
        .map(
            change(
                Op::Update,
                json!({"id": 1, "first_name": "Ann", "trace": "t"}),
            ),
            &ctx(&|| None, &none),
            &mut unknown,
        )
        .unwrap();
    assert!(row.unavailable.is_empty());
    // Turned off (`unavailable_value = ""`, or a format without one), the placeholder is text.
    let mut d = dataset();
    d.unavailable_value = None;
    let mut plain = Mapper::new(&d, mapper().contract().clone()).unwrap();
    let row = plain
        .map(
            change(
                Op::Update,
                json!({"id": 1, "first_name": "__debezium_unavailable_value"}),
            ),
            &ctx(&|| None, &none),
            &mut unknown,
        )
        .unwrap();
    assert_eq!(
        row.data[1],
        Cell::Str("__debezium_unavailable_value".into())
    );
    assert!(
        plain
            .contract()
            .table_schema(&[])
            .field_with_name("_unavailable_columns")
            .is_err()
    );
}
