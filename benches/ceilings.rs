//! The raw ceilings the end-to-end bench compares `bronze` with, on the same topic and the same contract
//! (run by `benches/e2e_throughput.py`; built with `cargo build --release --example ceilings`):
//!
//! * `consume`: librdkafka reading every message of the topic (assign from the beginning, no group, no
//!   decoding) — the most any Kafka consumer on this machine gets;
//! * `decode`: Debezium JSON decode + coercion into typed cells, on messages already in memory;
//! * `write`: Arrow batch build + Parquet encode + write to the same local storage (no Delta commit).
//!
//! Each runs on one thread; it prints one JSON object with events/s and CPU seconds per stage.

use std::time::{Duration, Instant};

use bronze::buffer::DatasetBuffer;
use bronze::config::{Compression, Config};
use bronze::contract::Contract;
use bronze::decode::{self, Decoded};
use bronze::sink::TableSink;
use bronze::transform::{Mapper, MessageContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

struct Args {
    config: std::path::PathBuf,
    events: usize,
    keep: usize,
    lake: std::path::PathBuf,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        config: "bronze.toml".into(),
        events: 0,
        keep: 200_000,
        lake: std::env::temp_dir().join("bronze-ceilings"),
    };
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--config" => a.config = v.into(),
            "--events" => a.events = v.parse().expect("--events N"),
            "--keep" => a.keep = v.parse().expect("--keep N"),
            "--lake" => a.lake = v.into(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Wall and CPU seconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let out = f();
    (out, wall.elapsed().as_secs_f64(), cpu_seconds() - cpu)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let cfg = Config::load(&a.config).expect("config");
    let d = &cfg.datasets[0];
    let topic = match &d.topics {
        bronze::config::TopicSelector::Names(n) => n[0].clone(),
        bronze::config::TopicSelector::Pattern(_) => panic!("ceilings need a topic name"),
    };

    // consume-only
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.bootstrap_servers)
        .set("group.id", "bronze-ceilings")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let ((kept, bytes), consume_wall, consume_cpu) = timed(|| {
        let (mut n, mut bytes, mut kept) = (0usize, 0usize, Vec::new());
        while n < a.events {
            match consumer.poll(Duration::from_secs(5)) {
                Some(Ok(m)) => {
                    n += 1;
                    let payload = m.payload().unwrap_or_default();
                    bytes += payload.len();
                    if kept.len() < a.keep {
                        kept.push(payload.to_vec());
                    }
                }
                Some(Err(e)) => panic!("consume: {e}"),
                None => panic!("no message for 5 s after {n} of {}", a.events),
            }
        }
        (kept, bytes)
    });

    // decode-only (+ coercion), on the kept messages
    let mut mapper =
        Mapper::new(d, Contract::load(&d.schema_file).expect("contract")).expect("mapper");
    let no_header = |_: &str| None;
    let map = |mapper: &mut Mapper, i: usize, p: &[u8]| match decode::decode(d.format, Some(p)) {
        Ok(Decoded::Change(c)) => {
            let ctx = MessageContext {
                offset: i as i64,
                key: &|| None,
                ingested_at_us: 0,
                header: &no_header,
            };
            mapper.map(c, &ctx, &mut 0).ok()
        }
        _ => None,
    };
    // Rows are dropped as they are made, as the pipeline hands them on: holding all of them would time
    // the allocator rather than the mapping.
    let (_, decode_wall, decode_cpu) = timed(|| {
        kept.iter()
            .enumerate()
            .filter_map(|(i, p)| map(&mut mapper, i, p))
            .count()
    });
    let rows: Vec<_> = kept
        .iter()
        .enumerate()
        .filter_map(|(i, p)| map(&mut mapper, i, p))
        .collect();

    // write-only: Arrow build + Parquet encode + upload to the same kind of storage, no commit
    let pcols = mapper.partition_columns();
    let schema = mapper.contract().table_schema(pcols);
    let ncols = mapper.contract().columns.len();
    let lake = a.lake.join("ceiling");
    let uri = format!("file://{}", lake.display());
    let sink = TableSink::open(
        &uri,
        schema.clone(),
        pcols,
        false,
        &Default::default(),
        Compression::Snappy,
    )
    .await
    .expect("table");
    let n_rows = rows.len();
    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
    let mut buffer = DatasetBuffer::new(schema, ncols, pcols.len());
    let now = Instant::now();
    for r in rows {
        buffer.push(&topic, 0, r, now);
    }
    let batch = buffer.take("ceiling").expect("arrow").expect("rows");
    let adds = sink.write_files(&batch.batches).await.expect("parquet");
    let (write_wall, write_cpu) = (wall0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    sink.discard_files(&adds).await;

    let per = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    println!(
        "{}",
        serde_json::json!({
            "consume": {"events": a.events, "bytes": bytes, "wall_s": consume_wall, "cpu_s": consume_cpu,
                        "events_per_s": per(a.events, consume_wall)},
            "decode": {"events": kept.len(), "wall_s": decode_wall, "cpu_s": decode_cpu,
                       "events_per_s": per(kept.len(), decode_wall)},
            "write": {"events": n_rows, "files": adds.len(), "wall_s": write_wall, "cpu_s": write_cpu,
                      "events_per_s": per(n_rows, write_wall)},
        })
    );
}
