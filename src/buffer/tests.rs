use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array, StringArray};

use super::*;
use crate::config::FlushLimits;
use crate::contract::{Column, ColumnType, Contract, OnError};
use crate::decode::Op;

fn contract() -> Contract {
    let mut id = Column::new("id", ColumnType::Int64);
    id.nullable = false;
    Contract {
        tracks_unavailable: false,
        on_error: OnError::default(),
        drift: Default::default(),
        columns: vec![id, Column::new("name", ColumnType::String)],
    }
}

fn buffer() -> DatasetBuffer {
    let c = contract();
    DatasetBuffer::new(c.table_schema(&["event_date"]), c.columns.len(), 1)
}

fn row(id: i64, name: &str, offset: i64, ts: Option<i64>) -> Row {
    Row {
        data: vec![Cell::Int64(id), Cell::Str(name.into())],
        op: Op::Update,
        offset,
        ingested_at_us: 1,
        source_ts_us: ts,
        source_pos: None,
        partition_values: vec!["2024-01-01".to_string()].into(),
        dedup_key: Some(format!("{id}\u{1f}").into()),
        order: ts.map_or(OrderValue::Null, OrderValue::Int),
        rescued: None,
        unavailable: Vec::new(),
    }
}

#[test]
fn flush_keeps_latest_row_per_key_by_order_then_offset() {
    let mut b = buffer();
    let now = Instant::now();
    b.push("t", 0, row(1, "old", 0, Some(10)), now);
    b.push("t", 0, row(2, "only", 1, Some(10)), now);
    // Same key, later offset but older source time: the source time wins.
    b.push("t", 0, row(1, "newest", 2, Some(30)), now);
    b.push("t", 0, row(1, "stale", 3, Some(20)), now);
    // Tie on source time: later offset wins.
    b.push("t", 1, row(3, "a", 5, Some(7)), now);
    b.push("t", 1, row(3, "b", 6, Some(7)), now);
    b.fill("t", 1, 7, now, |s| s.skip(7));
    let f = b.take("batch-1").unwrap().unwrap();
    assert_eq!(f.rows_in, 6);
    assert_eq!(f.duplicates_dropped, 3);
    assert_eq!(f.batches.len(), 2, "one batch per Kafka partition");
    assert_eq!(f.rows(), 3);
    let batch = arrow::compute::concat_batches(&f.batches[0].schema(), &f.batches).unwrap();
    let names: Vec<&str> = batch
        .column_by_name("name")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .iter()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(names, vec!["only", "newest", "b"]);
    let offsets = batch
        .column_by_name("_offset")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(offsets.values().to_vec(), vec![1, 2, 6]);
    let batch_ids = batch.column_by_name("_batch_id").unwrap();
    assert_eq!(batch_ids.len(), 3);
    assert_eq!(
        f.ranges,
        vec![
            OffsetRange {
                topic: "t".into(),
                partition: 0,
                first: 0,
                last: 3,
                rows: 4
            },
            OffsetRange {
                topic: "t".into(),
                partition: 1,
                first: 5,
                last: 7,
                rows: 2
            },
        ]
    );
    assert!(b.is_empty());
    assert_eq!((b.rows(), b.bytes()), (0, 0));
}

#[test]
fn limits_trigger_in_order_rows_bytes_age() {
    let mut b = buffer();
    let now = Instant::now();
    let limits = FlushLimits {
        max_rows: 3,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(5),
    };
    assert_eq!(b.due(&limits, now), None);
    b.push("t", 0, row(1, "x", 0, None), now);
    assert_eq!(b.due(&limits, now), None);
    assert_eq!(
        b.due(&limits, now + Duration::from_secs(6)),
        Some(FlushReason::Age)
    );
    b.push("t", 0, row(2, "x", 1, None), now);
    b.push("t", 0, row(3, "x", 2, None), now);
    assert_eq!(b.due(&limits, now), Some(FlushReason::Rows));
    let small = FlushLimits {
        max_rows: 100,
        max_bytes: 100,
        ..limits
    };
    assert_eq!(b.due(&small, now), Some(FlushReason::Bytes));
}

#[test]
fn dropping_a_partition_releases_its_rows_and_bytes() {
    let mut b = buffer();
    let now = Instant::now();
    b.push("t", 0, row(1, "x", 0, None), now);
    let one = b.bytes();
    b.push("t", 1, row(2, "y", 0, None), now);
    b.drop_partition("t", 0);
    assert_eq!(b.rows(), 1);
    assert_eq!(b.bytes(), one);
    let f = b.take("b").unwrap().unwrap();
    assert_eq!(f.ranges.len(), 1);
    assert_eq!(f.ranges[0].partition, 1);
}

#[test]
fn tombstones_only_give_offsets_without_a_batch() {
    let mut b = buffer();
    b.fill("t", 2, 40, Instant::now(), |s| s.skip(40));
    b.fill("t", 2, 41, Instant::now(), |s| s.skip(41));
    let f = b.take("b").unwrap().unwrap();
    assert!(f.batches.is_empty());
    assert_eq!(f.ranges[0].first, 40);
    assert_eq!(f.ranges[0].last, 41);
}

/// Hold `l` as a dead letter of its partition.
fn hold(b: &mut DatasetBuffer, l: DeadLetter) {
    let (partition, offset) = (l.partition, l.offset);
    b.fill("t", partition, offset, Instant::now(), |s| s.dead_letter(l));
}

fn letter(partition: i32, offset: i64) -> DeadLetter {
    DeadLetter {
        topic: "t".into(),
        partition,
        offset,
        timestamp_ms: 0,
        key: None,
        value: Some(vec![b'{'; 100]),
        headers: Vec::new(),
        reason: "invalid_json".into(),
        error: "EOF".into(),
    }
}

#[test]
fn dead_letters_travel_with_the_flush_that_covers_them() {
    let mut b = buffer();
    let now = Instant::now();
    b.push("t", 0, row(1, "a", 0, Some(1)), now);
    hold(&mut b, letter(0, 1));
    hold(&mut b, letter(1, 9));
    assert!(b.bytes() > 200, "dead letters count against the budget");
    // Dropping a revoked partition drops its dead letters too: the next owner re-reads them.
    b.drop_partition("t", 1);
    let f = b.take("b").unwrap().unwrap();
    assert_eq!(f.rows(), 1);
    assert_eq!(f.dead_letters, vec![letter(0, 1)]);
    assert_eq!((f.ranges[0].first, f.ranges[0].last), (0, 1));
    assert!(f.memory_bytes() >= f.dead_letters[0].bytes());
    // A partition with only dead letters still moves its position.
    hold(&mut b, letter(2, 4));
    let f = b.take("c").unwrap().unwrap();
    assert!(f.batches.is_empty());
    assert_eq!((f.ranges[0].partition, f.ranges[0].last), (2, 4));
}

#[test]
fn evolving_the_buffer_back_fills_nulls() {
    let mut c = contract();
    let mut b = buffer();
    let now = Instant::now();
    b.push("t", 0, row(1, "a", 0, Some(1)), now);
    c.add_evolved("tier", ColumnType::String, None);
    b.evolve(c.table_schema(&["event_date"]), c.columns.len());
    assert_eq!(b.data_columns(), 3);
    let mut r = row(2, "b", 1, Some(2));
    r.data.push(Cell::Str("gold".into()));
    b.push("t", 0, r, now);
    // A partition first seen after the evolution, and a row mapped before it.
    b.push("t", 1, row(3, "c", 0, Some(3)), now);
    let f = b.take("batch").unwrap().unwrap();
    let batch = arrow::compute::concat_batches(&f.batches[0].schema(), &f.batches).unwrap();
    assert_eq!(batch.schema().field(2).name(), "tier");
    let tier = batch
        .column_by_name("tier")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(tier.iter().collect::<Vec<_>>(), [None, Some("gold"), None]);
}

/// A committed row read back from its Arrow batch has the source-event id it had as a row, for every key
/// type: that is what lets a restart seed the redelivery window from the table.
#[test]
fn event_ids_read_back_from_batches_match_the_rows() {
    let types = [
        (ColumnType::Int64, Cell::Int64(-42)),
        (ColumnType::String, Cell::Str("k\u{e9}y".into())),
        (ColumnType::Int32, Cell::Int32(7)),
        (ColumnType::Date, Cell::Date(19_000)),
        (
            ColumnType::Timestamp,
            Cell::Timestamp(1_700_000_000_123_456),
        ),
        (ColumnType::Decimal, Cell::Decimal(-12_345)),
        (ColumnType::Bool, Cell::Bool(true)),
        (ColumnType::Binary, Cell::Binary(vec![0, 255])),
    ];
    let columns: Vec<Column> = types
        .iter()
        .enumerate()
        .map(|(i, (ty, _))| {
            let mut c = Column::new(&format!("k{i}"), *ty);
            (c.precision, c.scale) = (Some(10), Some(2));
            c
        })
        .collect();
    let contract = Contract {
        tracks_unavailable: false,
        on_error: OnError::default(),
        drift: Default::default(),
        columns,
    };
    let mut b = DatasetBuffer::new(contract.table_schema(&[]), types.len(), 0);
    let mut key = String::new();
    for (_, cell) in &types {
        cell.write_key(&mut key);
        key.push('\u{1f}');
    }
    let mut r = row(1, "x", 0, Some(1));
    r.data = types.iter().map(|(_, c)| c.clone()).collect();
    r.partition_values = Vec::new().into();
    r.dedup_key = Some(key.into());
    r.source_pos = Some("0/16B3748".into());
    let expected = source_event_id(&r).unwrap();
    b.push("t", 0, r, Instant::now());
    let f = b.take("batch").unwrap().unwrap();
    let batch = &f.batches[0];
    let mut projected: Vec<arrow::array::ArrayRef> = (0..types.len())
        .map(|i| batch.column_by_name(&format!("k{i}")).unwrap().clone())
        .collect();
    projected.push(batch.column_by_name("_source_pos").unwrap().clone());
    projected.push(batch.column_by_name("_op").unwrap().clone());
    let fields: Vec<arrow::datatypes::Field> = projected
        .iter()
        .enumerate()
        .map(|(i, a)| arrow::datatypes::Field::new(format!("c{i}"), a.data_type().clone(), true))
        .collect();
    let read_back = arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        projected,
    )
    .unwrap();
    assert_eq!(event_ids_of(&[read_back], types.len()), [expected]);
}

#[test]
fn a_partition_starts_as_large_as_its_last_flush() {
    let mut b = buffer();
    let now = Instant::now();
    for i in 0..1000 {
        b.push("t", 0, row(i, "twelve bytes", i, None), now);
    }
    b.push("t", 1, row(0, "x", 0, None), now);
    b.take("batch-1").unwrap().unwrap();
    b.push("t", 0, row(1, "y", 1000, None), now);
    b.push("t", 2, row(1, "y", 0, None), now);
    let capacity = |p: i32| {
        let i = b.position_of("t", p).unwrap();
        let buf = &b.partitions[i].1.segments[0];
        let ColumnBuilder::Int64(id) = &buf.data[0] else {
            panic!("id is an int64 column")
        };
        (buf.offsets.capacity(), id.capacity())
    };
    // 1,000 rows, with an eighth more room: no builder of it grows before 1,125 rows.
    let (offsets, ids) = capacity(0);
    assert!(offsets >= 1125 && ids >= 1125, "{offsets} {ids}");
    // A partition never flushed before starts small.
    assert!(capacity(2).0 < 1000);
}

#[test]
fn rows_taken_for_a_flush_leave_an_empty_buffer_and_build_later() {
    let mut b = buffer();
    let now = Instant::now();
    for i in 0..10 {
        b.push("t", i % 2, row(i as i64 % 4, "v", i as i64 / 2, None), now);
    }
    let bytes = b.bytes();
    let taken = b.take_unbuilt().unwrap();
    assert_eq!((taken.rows(), taken.bytes()), (10, bytes));
    assert!(b.is_empty() && b.bytes() == 0 && b.take_unbuilt().is_none());
    // The buffer fills again while the taken rows wait to be built.
    b.push("t", 0, row(9, "w", 5, None), now);
    let batch = taken.build("batch-1").unwrap();
    // Keys 0..4 over ten rows: six duplicates dropped across both partitions.
    assert_eq!(
        (batch.rows_in, batch.duplicates_dropped, batch.rows()),
        (10, 6, 4)
    );
    assert_eq!(batch.ranges.len(), 2);
    assert_eq!(b.rows(), 1);
}

#[test]
fn a_lane_chunk_gets_room_for_its_own_rows_only() {
    // The partition's next chunk goes to a segment of its own: room for the rest of a flush would
    // stay unwritten, yet count against the memory budget.
    let mut b = buffer();
    let now = Instant::now();
    for i in 0..1000 {
        b.push("t", 0, row(i, "twelve bytes", i, None), now);
    }
    b.take("batch-1").unwrap().unwrap();
    let next = b.segment("t", 0, 1050, 50);
    assert!(
        (50..1000).contains(&next.offsets.capacity()),
        "{}",
        next.offsets.capacity()
    );
    let lent = b.lend(&[("t", 0, 1000, 50)], now);
    let capacity = lent[0].offsets.capacity();
    assert!((50..1000).contains(&capacity), "{capacity}");
}

#[test]
fn segments_of_a_partition_flush_as_one_range_and_dedup_across() {
    let mut b = buffer();
    let now = Instant::now();
    b.push("t", 0, row(1, "first", 0, None), now);
    // A turn splits offsets 1..=4 of partition 0: 1..=2 to its last segment, 3..=4 to a new one;
    // partition 1 is lent but its first message is left to the loop.
    let mut tail_of_next = b.segment("t", 0, 3, 2);
    {
        let lent = b.lend(&[("t", 0, 1, 2), ("t", 1, 0, 2)], now);
        let mut lent = lent.into_iter();
        let tail = lent.next().unwrap();
        tail.push(row(2, "a", 1, None));
        tail.skip(2);
        assert!(lent.next().is_some());
    }
    tail_of_next.push(row(1, "latest", 3, None));
    tail_of_next.dead_letter(DeadLetter {
        topic: "t".into(),
        partition: 0,
        offset: 4,
        timestamp_ms: 0,
        key: None,
        value: Some(b"x".to_vec()),
        headers: Vec::new(),
        reason: "invalid_json".into(),
        error: "bad".into(),
    });
    b.attach("t", 0, tail_of_next);
    b.recount();
    assert_eq!(b.rows(), 3);
    // Rows appended after the split go to the new segment, after its rows.
    b.push("t", 0, row(3, "after", 5, None), now);
    let f = b.take("batch-1").unwrap().unwrap();
    assert_eq!(
        f.ranges,
        vec![OffsetRange {
            topic: "t".into(),
            partition: 0,
            first: 0,
            last: 5,
            rows: 4
        }],
        "partition 1 consumed nothing and claims nothing"
    );
    assert_eq!(f.batches.len(), 2, "one batch per segment");
    assert_eq!(f.duplicates_dropped, 1, "key 1 across segments");
    assert_eq!(f.dead_letters.len(), 1);
    let batch = arrow::compute::concat_batches(&f.batches[0].schema(), &f.batches).unwrap();
    let offsets: Vec<i64> = batch
        .column_by_name("_offset")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .to_vec();
    assert_eq!(offsets, vec![1, 3, 5]);
}

#[test]
fn a_row_lacking_values_keeps_the_row_before_it() {
    let mut b = buffer();
    let now = Instant::now();
    b.push("t", 0, row(1, "with notes", 0, Some(10)), now);
    let mut lacking = row(1, "without", 1, Some(20));
    lacking.unavailable = vec!["notes".into()];
    b.push("t", 0, lacking, now);
    // Another key: the usual rule.
    b.push("t", 0, row(2, "old", 2, Some(10)), now);
    b.push("t", 0, row(2, "new", 3, Some(20)), now);
    let f = b.take("batch-1").unwrap().unwrap();
    assert_eq!((f.rows_in, f.duplicates_dropped, f.rows()), (4, 1, 3));
}
