//! A dataset's contract derived from the schema its source publishes (see
//! [`crate::contract::derive`]): the registry's latest value (and key) schema for Avro datasets, else the
//! newest message with the Kafka Connect schema wrapper among the last `sample` messages of each
//! partition of its topics. `bronze contract generate` writes it out for review; a dataset with
//! `contract = "derived"` runs on it ([`run_contract`]).

use serde_json::Value;

use crate::config::{Config, ContractSource, DatasetConfig};
use crate::contract::derive::{self, Derived};
use crate::contract::{ColumnType, Contract, METADATA_COLUMNS, RESCUED_COLUMN, UNAVAILABLE_COLUMN};
use crate::decode::registry::Registry;
use crate::pipeline::PipelineError;
use crate::sink::TableSink;
use crate::source::Inspector;

/// Messages per partition looked at for a Connect schema when a run derives a contract.
const RUN_SAMPLE: usize = 100;

/// The contract a run (or a job) uses for `d`, and its key columns: the contract file, or for
/// `contract = "derived"` the schema the source publishes now, made to agree with the table where
/// there is one. Columns the source has and the table not yet are left out: the messages that carry
/// them meet the drift policy like any new column. Columns the table has and the source no longer
/// names stay. Keys are the configured `key_columns`, else the key schema's fields.
pub async fn run_contract(
    cfg: &Config,
    d: &DatasetConfig,
) -> Result<(Contract, Vec<String>), PipelineError> {
    if d.contract == ContractSource::File {
        let contract = Contract::load_with_drift(&d.schema_file, d.drift)?;
        return Ok((contract, d.key_columns.clone()));
    }
    let generated = generate(cfg, d, RUN_SAMPLE).await?;
    let keys = match d.key_columns.is_empty() {
        true => generated.derived.keys.clone(),
        false => d.key_columns.clone(),
    };
    let mut contract = Contract {
        on_error: Default::default(),
        drift: d.drift.unwrap_or_default(),
        columns: generated.derived.columns,
        tracks_unavailable: false,
    };
    if let Some(table) = TableSink::existing(&d.table_uri, &cfg.storage_options()).await? {
        let schema = table.arrow_schema()?;
        contract
            .columns
            .retain(|c| schema.field_with_name(&c.name).is_ok());
        let bronze_column = |name: &str| {
            METADATA_COLUMNS.contains(&name)
                || [RESCUED_COLUMN, UNAVAILABLE_COLUMN].contains(&name)
                || d.partitioning.by.columns().contains(&name)
        };
        for f in schema.fields() {
            let name = f.name().as_str();
            if bronze_column(name) || contract.index_of(name).is_some() {
                continue;
            }
            if let Some((ty, ps)) = ColumnType::from_arrow(f.data_type()) {
                contract.add_evolved(name, ty, ps);
            }
        }
    }
    contract.check(&generated.source)?;
    Ok((contract, keys))
}

/// A derived contract and where it came from.
pub struct Generated {
    pub dataset: String,
    pub source: String,
    pub derived: Derived,
}

pub async fn generate(
    cfg: &Config,
    d: &DatasetConfig,
    sample: usize,
) -> Result<Generated, PipelineError> {
    let normalize = |s: &str| {
        if d.normalize_names {
            crate::transform::snake_case(s)
        } else {
            s.to_string()
        }
    };
    let inspector = Inspector::new(cfg)?;
    let topics = tokio::task::block_in_place(|| inspector.partitions(&d.topics))?;
    let mut names: Vec<String> = topics.iter().map(|tp| tp.topic.clone()).collect();
    names.dedup();
    let Some(topic) = names.first() else {
        return Err(stopped(d, "none of its topics exists"));
    };
    let (source, derived) = match (&cfg.schema_registry, d.format.is_avro()) {
        (Some(rc), true) => {
            let registry = Registry::new(rc)?;
            let subject = format!("{topic}-value");
            let Some((version, _, text)) = registry.latest_text(&subject).await? else {
                return Err(stopped(
                    d,
                    &format!("registry subject {subject} is not registered"),
                ));
            };
            let key = registry.latest_text(&format!("{topic}-key")).await?;
            let value = json(d, &text)?;
            let key = key.map(|(_, _, t)| json(d, &t)).transpose()?;
            let derived = derive::from_avro(&value, key.as_ref(), &normalize)
                .map_err(|e| stopped(d, &e.to_string()))?;
            (
                format!("registry subject {subject} version {version}"),
                derived,
            )
        }
        (None, true) => return Err(stopped(d, "an Avro dataset needs [schema_registry]")),
        (_, false) => {
            let (at, value, key) = newest_wrapped(&inspector, &topics, sample)?
                .ok_or_else(|| stopped(d, &format!(
                    "none of the last {sample} messages of each partition carries a Kafka Connect schema \
                     (JsonConverter with schemas.enable=true)")))?;
            let derived = derive::from_connect(&value, key.as_ref(), &normalize)
                .map_err(|e| stopped(d, &e.to_string()))?;
            (format!("the schema of the message at {at}"), derived)
        }
    };
    Ok(Generated {
        dataset: d.name.clone(),
        source,
        derived,
    })
}

fn stopped(d: &DatasetConfig, why: &str) -> PipelineError {
    PipelineError::Stopped(format!("dataset `{}`: {why}", d.name))
}

fn json(d: &DatasetConfig, text: &str) -> Result<Value, PipelineError> {
    serde_json::from_str(text).map_err(|e| stopped(d, &format!("schema is not JSON: {e}")))
}

/// The value (and key) schema of the newest message (by Kafka time) with the schema wrapper and a row,
/// and where it is (`topic[partition]@offset`).
fn newest_wrapped(
    inspector: &Inspector,
    partitions: &[crate::txn::TopicPartition],
    sample: usize,
) -> Result<Option<(String, Value, Option<Value>)>, PipelineError> {
    use rdkafka::Message;
    let watermarks = tokio::task::block_in_place(|| inspector.watermarks_of(partitions))?;
    let ranges: Vec<_> = watermarks
        .into_iter()
        .map(|(tp, (low, high))| (tp, low.max(high - sample as i64), high))
        .collect();
    let mut ends = inspector.start_ranges(&ranges)?;
    let mut newest: Option<(i64, String, Value, Option<Value>)> = None;
    tokio::task::block_in_place(|| {
        inspector.read_ranges(&mut ends, usize::MAX, |m| {
            let schema_of = |bytes: Option<&[u8]>| -> Option<Value> {
                let v: Value = serde_json::from_slice(bytes?).ok()?;
                let payload = v.get("payload")?;
                let row = payload
                    .get("after")
                    .or(payload.get("before"))
                    .unwrap_or(payload);
                (row.is_object())
                    .then(|| v.get("schema").cloned())
                    .flatten()
            };
            let ts = m.timestamp().to_millis().unwrap_or(0);
            if newest.as_ref().is_some_and(|(t, ..)| *t > ts) {
                return;
            }
            if let Some(value) = schema_of(m.payload()) {
                let key = m.key().and_then(|k| {
                    serde_json::from_slice::<Value>(k)
                        .ok()?
                        .get("schema")
                        .cloned()
                });
                let at = format!("{}[{}]@{}", m.topic(), m.partition(), m.offset());
                newest = Some((ts, at, value, key));
            }
        })
    })?;
    Ok(newest.map(|(_, at, value, key)| (at, value, key)))
}
