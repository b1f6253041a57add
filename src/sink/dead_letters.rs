//! Dead letters: messages a dataset cannot ingest, kept byte for byte (key, value, headers) with the
//! reason, in a Delta table per dataset (`_dead_letters/<dataset>` under the root by default).
//!
//! Exactly once: a flush commits its dead letters here *before* committing its rows to the dataset
//! table, with one `txn` per Kafka partition (app id `<group>:<topic>:<partition>:dead_letters`,
//! version = the last offset dead-lettered). A crash between the two commits makes the next owner
//! re-read those offsets from the dataset table's position; their dead letters are already recorded
//! (offset ≤ the txn version) and are not written again, while their good rows land with the data
//! commit. So every message ends up in the dataset table or here, once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    StructBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use deltalake::kernel::Transaction;

use super::{CommitContext, SinkError, TableSink};
use crate::buffer::DeadLetter;
use crate::config::Compression;
use crate::contract::timestamp_type;
use crate::txn::{self, TopicPartition};

/// What a dead-letter commit did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Dead letters written, by reason.
    pub by_reason: BTreeMap<String, usize>,
    /// Dead letters already in the table from an earlier attempt at the same offsets.
    pub already_recorded: usize,
    pub version: Option<u64>,
}

impl Recorded {
    pub fn written(&self) -> usize {
        self.by_reason.values().sum()
    }
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, true),
        Field::new("value", DataType::Binary, true),
    ])
}

fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "element",
        DataType::Struct(header_fields()),
        true,
    )))
}

/// The dead-letter table's schema.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dataset", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new("kafka_timestamp", timestamp_type(), true),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("headers", headers_type(), true),
        Field::new("run_id", DataType::Utf8, true),
        Field::new("batch_id", DataType::Utf8, true),
        Field::new("dead_lettered_at", timestamp_type(), true),
        Field::new("event_date", DataType::Utf8, true),
    ]))
}

const PARTITION_COLUMNS: &[&str] = &["event_date"];

fn to_batch(
    letters: &[&DeadLetter],
    ctx: &CommitContext,
    batch_id: &str,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let now = chrono::Utc::now();
    let date = now.format("%Y-%m-%d").to_string();
    let n = letters.len();
    let constant = |v: &str| {
        let mut b = StringBuilder::with_capacity(n, n * v.len());
        for _ in 0..n {
            b.append_value(v);
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let mut reason = StringBuilder::new();
    let mut error = StringBuilder::new();
    let mut topic = StringBuilder::new();
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n);
    let mut key = BinaryBuilder::new();
    let mut value = BinaryBuilder::new();
    let struct_builder = StructBuilder::new(
        header_fields(),
        vec![
            Box::new(StringBuilder::new()) as Box<dyn arrow::array::ArrayBuilder>,
            Box::new(BinaryBuilder::new()),
        ],
    );
    let DataType::List(item) = headers_type() else {
        unreachable!("headers_type is a list")
    };
    let mut headers = ListBuilder::new(struct_builder).with_field(item);
    let mut at = TimestampMicrosecondBuilder::with_capacity(n);
    for l in letters {
        reason.append_value(&l.reason);
        error.append_value(&l.error);
        topic.append_value(&l.topic);
        partition.append_value(l.partition);
        offset.append_value(l.offset);
        ts.append_value(l.timestamp_ms.saturating_mul(1000));
        key.append_option(l.key.as_deref());
        value.append_option(l.value.as_deref());
        let entries = headers.values();
        for (k, v) in &l.headers {
            entries
                .field_builder::<StringBuilder>(0)
                .expect("header key builder")
                .append_value(k);
            entries
                .field_builder::<BinaryBuilder>(1)
                .expect("header value builder")
                .append_option(v.as_deref());
            entries.append(true);
        }
        headers.append(true);
        at.append_value(now.timestamp_micros());
    }
    let columns: Vec<ArrayRef> = vec![
        constant(&ctx.dataset),
        Arc::new(reason.finish()),
        Arc::new(error.finish()),
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(ts.finish().with_timezone("UTC")),
        Arc::new(key.finish()),
        Arc::new(value.finish()),
        Arc::new(headers.finish()),
        constant(&ctx.run_id),
        constant(batch_id),
        Arc::new(at.finish().with_timezone("UTC")),
        constant(&date),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// Which dead letters [`read`] returns.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only those dead-lettered at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
    pub reason: Option<String>,
    /// Only those of these flushes (the `batch_id` a dead-letter commit records).
    pub batch_ids: Option<Vec<String>>,
}

/// The dead letters in the table at `uri` that match `filter`, ordered by topic, partition and offset.
pub async fn read(
    uri: &str,
    storage_options: &HashMap<String, String>,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, SinkError> {
    Ok(read_with_batch(uri, storage_options, filter)
        .await?
        .into_iter()
        .map(|(l, _)| l)
        .collect())
}

/// [`read`], each dead letter with the `batch_id` of the flush that committed it.
pub async fn read_with_batch(
    uri: &str,
    storage_options: &HashMap<String, String>,
    filter: &DeadLetterFilter,
) -> Result<Vec<(DeadLetter, String)>, SinkError> {
    use super::scan::{at_or_after, column_as, query_error};
    use deltalake::datafusion::prelude::{col, lit};
    let Some(mut df) = super::scan::frame(uri, storage_options).await? else {
        return Ok(Vec::new());
    };
    let q = |e| query_error(uri, e);
    if let Some(since) = filter.since_us {
        df = df
            .filter(at_or_after("dead_lettered_at", since))
            .map_err(q)?;
    }
    if let Some(ids) = &filter.batch_ids {
        df = df
            .filter(col("batch_id").in_list(ids.iter().map(|i| lit(i.clone())).collect(), false))
            .map_err(q)?;
    }
    if let Some(reason) = &filter.reason {
        df = df
            .filter(col("reason").eq(lit(reason.clone())))
            .map_err(q)?;
    }
    let batches = df
        .sort(vec![
            col("topic").sort(true, false),
            col("partition").sort(true, false),
            col("offset").sort(true, false),
        ])
        .map_err(q)?
        .collect()
        .await
        .map_err(q)?;
    let mut out = Vec::new();
    for b in batches {
        let columns = schema()
            .fields()
            .iter()
            .map(|f| column_as(uri, &b, f.name(), f.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        let b = RecordBatch::try_new(schema(), columns).map_err(|e| query_error(uri, e))?;
        let ids = b
            .column_by_name("batch_id")
            .map(|c| arrow::array::AsArray::as_string::<i32>(c.as_ref()).clone());
        out.extend(from_batch(&b).into_iter().enumerate().map(|(i, l)| {
            let id = ids
                .as_ref()
                .map_or(String::new(), |a| a.value(i).to_string());
            (l, id)
        }));
    }
    Ok(out)
}

fn from_batch(b: &RecordBatch) -> Vec<DeadLetter> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};
    let text = |name: &str| b.column_by_name(name).map(|c| c.as_string::<i32>().clone());
    let binary = |name: &str| b.column_by_name(name).map(|c| c.as_binary::<i32>().clone());
    let (Some(reason), Some(error), Some(topic), Some(key), Some(value)) = (
        text("reason"),
        text("error"),
        text("topic"),
        binary("key"),
        binary("value"),
    ) else {
        return Vec::new();
    };
    let (Some(partition), Some(offset), Some(ts), Some(headers)) = (
        b.column_by_name("partition"),
        b.column_by_name("offset"),
        b.column_by_name("kafka_timestamp"),
        b.column_by_name("headers"),
    ) else {
        return Vec::new();
    };
    let partition = partition.as_primitive::<Int32Type>();
    let offset = offset.as_primitive::<Int64Type>();
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    let headers = headers.as_list::<i32>();
    let opt_bytes =
        |a: &arrow::array::BinaryArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_vec());
    (0..b.num_rows())
        .map(|i| {
            let mut hs = Vec::new();
            if !headers.is_null(i) {
                let entries = headers.value(i);
                let entries = entries.as_struct();
                let keys = entries.column(0).as_string::<i32>();
                let values = entries.column(1).as_binary::<i32>();
                for j in 0..entries.len() {
                    hs.push((keys.value(j).to_string(), opt_bytes(values, j)));
                }
            }
            DeadLetter {
                topic: topic.value(i).to_string(),
                partition: partition.value(i),
                offset: offset.value(i),
                timestamp_ms: ts.value(i) / 1000,
                key: opt_bytes(&key, i),
                value: opt_bytes(&value, i),
                headers: hs,
                reason: reason.value(i).to_string(),
                error: error.value(i).to_string(),
            }
        })
        .collect()
}

/// A dataset's dead-letter table, created on its first dead letter.
pub struct DeadLetterSink {
    uri: String,
    storage_options: HashMap<String, String>,
    commit_attempts: usize,
    table: Option<TableSink>,
}

impl DeadLetterSink {
    pub fn new(
        uri: &str,
        storage_options: &HashMap<String, String>,
        commit_attempts: usize,
    ) -> Self {
        DeadLetterSink {
            uri: uri.to_string(),
            storage_options: storage_options.clone(),
            commit_attempts,
            table: None,
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    async fn table(&mut self) -> Result<&mut TableSink, SinkError> {
        if self.table.is_none() {
            let t = TableSink::open(
                &self.uri,
                schema(),
                PARTITION_COLUMNS,
                false,
                &self.storage_options,
                Compression::Zstd,
            )
            .await?
            .with_commit_attempts(self.commit_attempts);
            self.table = Some(t);
        }
        Ok(self.table.as_mut().expect("opened above"))
    }

    /// Commit `letters` (in offset order per partition), skipping those an earlier attempt at the same
    /// offsets already recorded.
    pub async fn record(
        &mut self,
        letters: &[DeadLetter],
        ctx: &CommitContext,
        batch_id: &str,
    ) -> Result<Recorded, SinkError> {
        if letters.is_empty() {
            return Ok(Recorded::default());
        }
        let uri = self.uri.clone();
        let table = self.table().await?;
        let mut retry = table.retry("dead_letters");
        loop {
            retry.next(table).await?;
            let fresh = not_recorded(table, letters, &ctx.group_id).await?;
            let already_recorded = letters.len() - fresh.len();
            if fresh.is_empty() {
                return Ok(Recorded {
                    already_recorded,
                    ..Recorded::default()
                });
            }
            let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
            let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
            for l in &fresh {
                let e = last
                    .entry((l.topic.as_str(), l.partition))
                    .or_insert(l.offset);
                *e = (*e).max(l.offset);
                *by_reason.entry(l.reason.clone()).or_default() += 1;
            }
            let batch = to_batch(&fresh, ctx, batch_id).map_err(|e| SinkError::Delta {
                uri: uri.clone(),
                source: e.into(),
            })?;
            let adds = table.write_files(&[batch]).await?;
            let txns = last
                .iter()
                .map(|((topic, partition), offset)| {
                    Transaction::new_with_last_update(
                        txn::dead_letters(&ctx.group_id, &TopicPartition::new(*topic, *partition)),
                        *offset,
                        Some(chrono::Utc::now().timestamp_millis()),
                    )
                })
                .collect();
            let metadata = vec![(
                "bronze".to_string(),
                serde_json::json!({
                    "kind": "dead_letters",
                    "run_id": ctx.run_id,
                    "batch_id": batch_id,
                    "dataset": ctx.dataset,
                    "flush_started_ms": ctx.started_ms,
                    "dead_lettered": fresh.len(),
                    "reasons": by_reason,
                }),
            )];
            match table.try_commit(&adds, txns, metadata, None).await {
                Ok(Some(version)) => {
                    return Ok(Recorded {
                        by_reason,
                        already_recorded,
                        version: Some(version),
                    });
                }
                // Another member recorded some of these: re-checked on the next snapshot.
                Ok(None) => table.discard_files(&adds).await,
                Err(e) => {
                    table.discard_files(&adds).await;
                    return Err(e);
                }
            }
        }
    }
}

/// The letters past what the table recorded for their partition.
async fn not_recorded<'a>(
    table: &TableSink,
    letters: &'a [DeadLetter],
    group_id: &str,
) -> Result<Vec<&'a DeadLetter>, SinkError> {
    let mut recorded_up_to: HashMap<(&str, i32), Option<i64>> = HashMap::new();
    for l in letters {
        let k = (l.topic.as_str(), l.partition);
        if let std::collections::hash_map::Entry::Vacant(e) = recorded_up_to.entry(k) {
            let tp = TopicPartition::new(l.topic.clone(), l.partition);
            e.insert(
                table
                    .committed_offset(&txn::dead_letters(group_id, &tp))
                    .await?,
            );
        }
    }
    Ok(letters
        .iter()
        .filter(|l| {
            recorded_up_to
                .get(&(l.topic.as_str(), l.partition))
                .copied()
                .flatten()
                .is_none_or(|v| l.offset > v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_keep_bytes_and_headers() {
        let l = DeadLetter {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            timestamp_ms: 1_000,
            key: Some(vec![0, 159, 146, 150]),
            value: None,
            headers: vec![("h".into(), Some(vec![1, 2])), ("empty".into(), None)],
            reason: "invalid_json".into(),
            error: "expected value".into(),
        };
        let ctx = CommitContext {
            group_id: "g".into(),
            run_id: "r".into(),
            dataset: "d".into(),
            started_ms: 0,
        };
        let b = to_batch(&[&l, &l], &ctx, "b").unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(from_batch(&b), vec![l.clone(), l.clone()], "round trip");
        assert_eq!(b.schema(), schema());
        let key = b
            .column_by_name("key")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::BinaryArray>()
            .unwrap();
        assert_eq!(key.value(0), &[0, 159, 146, 150]);
        let headers = b
            .column_by_name("headers")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::ListArray>()
            .unwrap();
        assert_eq!(headers.value_length(1), 2);
    }
}
