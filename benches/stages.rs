//! Micro-benchmarks of the data path's stages on a realistic 20-column Debezium orders row (ints,
//! strings, decimals, a date, timestamps, a boolean, a nullable JSON column), ~750 B of JSON per event:
//! decode (Debezium JSON envelope), map (decode + coercion into typed cells), the same two for the same
//! events as Confluent-framed Debezium Avro (decimals as Avro `decimal`), buffer (Arrow builders, in-flush
//! dedup by key, batch build) and Parquet encode (snappy, page statistics, as the sink writes).
//!
//! `cargo bench --bench stages` (criterion; rows/s and bytes/s per stage).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use apache_avro::Schema;
use apache_avro::types::Value as Avro;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use bronze::buffer::DatasetBuffer;
use bronze::config::{Compression, Config, Format};
use bronze::contract::Contract;
use bronze::decode::registry::Registry;
use bronze::decode::{self, Decoded, Decoder};
use bronze::transform::{Mapper, MessageContext, Row};

const EVENTS: usize = 10_000;

/// Deterministic pseudo-random numbers, so every run benchmarks the same bytes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.next(xs.len() as u64) as usize]
    }
}

fn events() -> Vec<Vec<u8>> {
    let mut rng = Lcg(7);
    let base_ms: i64 = 1_767_225_600_000;
    (0..EVENTS as i64)
        .map(|i| {
            let ts = base_ms + i * 7;
            let cents = |rng: &mut Lcg, max: u64| rng.next(max * 100) as f64 / 100.0;
            let notes = match rng.next(4) {
                0 => serde_json::Value::Null,
                n => ["", "leave at door", "gift wrap", "call first"][n as usize].into(),
            };
            let row = serde_json::json!({
                "id": i, "customer_id": rng.next(200_000), "store_id": rng.next(500),
                "status": rng.pick(&["new", "paid", "shipped", "delivered"]),
                "currency": rng.pick(&["EUR", "USD", "GBP"]), "amount": cents(&mut rng, 5000),
                "tax": cents(&mut rng, 500), "discount": cents(&mut rng, 50), "quantity": rng.next(20),
                "sku": format!("SKU-{:05}", rng.next(99_999)),
                "channel": rng.pick(&["web", "app", "store"]),
                "country": rng.pick(&["DE", "FR", "US", "GB", "NL"]),
                "city": rng.pick(&["Berlin", "Paris", "Austin", "Leeds", "Utrecht"]),
                "email": format!("user{}@example.com", rng.next(1_000_000)), "is_gift": rng.next(10) == 0,
                "order_date": ts / 86_400_000, "created_at": (ts - 60_000) * 1000, "updated_at": ts * 1000,
                "notes": notes,
                "attributes": serde_json::json!({"promo": rng.pick(&["", "BF", "XMAS"]), "items": rng.next(9)}).to_string(),
            });
            serde_json::to_vec(&serde_json::json!({
                "before": null, "after": row, "op": "c", "ts_ms": ts + 3, "transaction": null,
                "source": {"version": "3.0.0.Final", "connector": "postgresql", "name": "shop", "ts_ms": ts,
                           "snapshot": "false", "db": "shop", "schema": "public", "table": "orders",
                           "txId": i, "lsn": 10_000_000 + i * 64, "xmin": null},
            }))
            .expect("serializable")
        })
        .collect()
}

/// The row as the Confluent AvroConverter writes it for Debezium with `decimal.handling.mode=precise`.
const AVRO_ENVELOPE: &str = include_str!("schemas/wide_orders_envelope.avsc");

const AVRO_SCHEMA_ID: u32 = 1;

/// A JSON event as the Avro value of `schema` (decimals from their JSON numbers).
fn to_avro(v: &serde_json::Value, schema: &Schema, value_record: &Schema) -> Avro {
    use serde_json::Value as J;
    match (schema, v) {
        (Schema::Ref { .. }, v) => to_avro(v, value_record, value_record),
        (Schema::Null, _) => Avro::Null,
        (Schema::Union(_), J::Null) => Avro::Union(0, Box::new(Avro::Null)),
        (Schema::Union(u), v) => {
            Avro::Union(1, Box::new(to_avro(v, &u.variants()[1], value_record)))
        }
        (Schema::Record(r), J::Object(o)) => Avro::Record(
            r.fields
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        to_avro(&o[&f.name], &f.schema, value_record),
                    )
                })
                .collect(),
        ),
        (Schema::Decimal(_), J::Number(n)) => {
            let unscaled = (n.as_f64().expect("number") * 100.0).round() as i64;
            Avro::Decimal(apache_avro::Decimal::from(unscaled.to_be_bytes()))
        }
        (Schema::Int, J::Number(n)) => Avro::Int(n.as_i64().expect("int") as i32),
        (Schema::Long, J::Number(n)) => Avro::Long(n.as_i64().expect("long")),
        (Schema::Boolean, J::Bool(b)) => Avro::Boolean(*b),
        (Schema::String, J::String(s)) => Avro::String(s.clone()),
        (s, v) => panic!("bench event {v} does not fit {s:?}"),
    }
}

/// The same events, Confluent-framed Avro, and a decoder whose registry already holds their schema.
fn avro_events(events: &[Vec<u8>]) -> (Decoder, Vec<Vec<u8>>) {
    let schema = Schema::parse_str(AVRO_ENVELOPE).expect("bench schema");
    let Schema::Record(r) = &schema else {
        panic!("record")
    };
    let Schema::Union(u) = &r.fields[0].schema else {
        panic!("union")
    };
    let value_record = u.variants()[1].clone();
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .expect("writer");
    let framed = events
        .iter()
        .map(|e| {
            let json: serde_json::Value = serde_json::from_slice(e).expect("event");
            let datum = writer
                .write_value_to_vec(to_avro(&json, &schema, &value_record))
                .expect("bench event encodes");
            let mut out = vec![0];
            out.extend_from_slice(&AVRO_SCHEMA_ID.to_be_bytes());
            out.extend(datum);
            out
        })
        .collect();
    let registry = Registry::new(&bronze::config::SchemaRegistryConfig {
        url: "http://127.0.0.1:9".into(),
        username: None,
        password: None,
        timeout: std::time::Duration::from_secs(1),
        max_backoff: std::time::Duration::from_secs(1),
    })
    .expect("registry client");
    registry
        .preload(AVRO_SCHEMA_ID, AVRO_ENVELOPE)
        .expect("bench schema");
    (
        Decoder::new(Format::DebeziumAvro, Some(Arc::new(registry))),
        framed,
    )
}

/// The bench dataset: `benches/schemas/wide_orders.toml`, keyed by `id`, partitioned by date.
fn mapper(dir: &std::path::Path) -> Mapper {
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/schemas");
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        format!(
            "schema_dir = \"{schemas}\"\n[kafka]\nbootstrap_servers = \"localhost:9092\"\ngroup_id = \"bench\"\n\
             [storage]\nroot = \"lake\"\n[[datasets]]\nname = \"orders\"\ntopics = [\"orders\"]\n\
             format = \"debezium-json\"\nschema = \"wide_orders.toml\"\nkey_columns = [\"id\"]\n"
        ),
    )
    .expect("temp config");
    let cfg = Config::load(&path).expect("bench config");
    let d = &cfg.datasets[0];
    Mapper::new(d, Contract::load(&d.schema_file).expect("bench contract")).expect("mapper")
}

fn map_all(mapper: &mut Mapper, decoder: &Decoder, payloads: &[Vec<u8>]) -> Vec<Row> {
    let no_header = |_: &str| None;
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let Ok(Decoded::Change(change)) = decoder.decode(Some(p)) else {
                panic!("bench events decode")
            };
            let ctx = MessageContext {
                offset: i as i64,
                key: &|| None,
                ingested_at_us: 0,
                header: &no_header,
            };
            mapper.map(change, &ctx, &mut 0).expect("bench events map")
        })
        .collect()
}

fn stages(c: &mut Criterion) {
    let payloads = events();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mapper = mapper(dir.path());
    let schema = mapper.contract().table_schema(mapper.partition_columns());
    let ncols = mapper.contract().columns.len();
    let pcols = mapper.partition_columns().len();
    let json = Decoder::new(Format::DebeziumJson, None);
    let (avro, avro_payloads) = avro_events(&payloads);
    let avro_bytes: usize = avro_payloads.iter().map(Vec::len).sum();
    let rows = map_all(&mut mapper, &json, &payloads);
    assert_eq!(
        map_all(&mut mapper, &avro, &avro_payloads)
            .iter()
            .map(|r| &r.data)
            .collect::<Vec<_>>(),
        rows.iter().map(|r| &r.data).collect::<Vec<_>>(),
        "Avro and JSON events map to the same cells"
    );
    let batch = {
        let mut b = DatasetBuffer::new(schema.clone(), ncols, pcols);
        let now = Instant::now();
        for r in rows.clone() {
            b.push("orders", 0, r, now);
        }
        arrow::compute::concat_batches(&schema, &b.take("b").expect("take").expect("rows").batches)
            .expect("concat")
    };

    let mut g = c.benchmark_group("stages");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("decode_debezium_json", |b| {
        b.iter(|| {
            for p in &payloads {
                black_box(decode::decode(Format::DebeziumJson, Some(p)).expect("decode"));
            }
        })
    });
    g.bench_function("decode_and_coerce", |b| {
        b.iter(|| black_box(map_all(&mut mapper, &json, &payloads)))
    });
    g.throughput(Throughput::Bytes(avro_bytes as u64));
    g.bench_function("decode_debezium_avro", |b| {
        b.iter(|| {
            for p in &avro_payloads {
                black_box(avro.decode(Some(p)).expect("decode"));
            }
        })
    });
    g.bench_function("decode_and_coerce_avro", |b| {
        b.iter(|| black_box(map_all(&mut mapper, &avro, &avro_payloads)))
    });
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("buffer_dedup_build_arrow", |b| {
        b.iter_batched(
            || rows.clone(),
            |rows| {
                let mut buf = DatasetBuffer::new(schema.clone(), ncols, pcols);
                let now = Instant::now();
                for r in rows {
                    buf.push("orders", (r.offset % 6) as i32, r, now);
                }
                black_box(buf.take("b").expect("take"))
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("parquet_encode_snappy", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(bytes / 4);
            // As the sink writes a file: the dictionary choice (a sample of the batch) included.
            let props = bronze::sink::writer_properties_for(
                Compression::Snappy,
                std::slice::from_ref(&batch),
            );
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props))
                .expect("writer");
            w.write(&batch).expect("write");
            w.close().expect("close");
            black_box(out.len())
        })
    });
    // The writer's default, every column dictionary-encoded until its dictionary outgrows a page: what
    // the choice above saves.
    g.bench_function("parquet_encode_snappy_every_dictionary", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(bytes / 4);
            let props = bronze::sink::writer_properties(Compression::Snappy);
            let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props))
                .expect("writer");
            w.write(&batch).expect("write");
            w.close().expect("close");
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
