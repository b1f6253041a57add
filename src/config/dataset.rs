//! What one dataset is: its topics, format, table, contract, partitioning, flush limits, dead-letter
//! rules, and the optional extract source and latest view.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{FlushLimits, humantime_serde_compat};

/// Which input format a dataset's topics carry.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Format {
    #[serde(rename = "debezium-json")]
    DebeziumJson,
    #[serde(rename = "json")]
    Json,
    /// Confluent-framed Avro (magic byte, schema id) with a Debezium envelope.
    #[serde(rename = "debezium-avro")]
    DebeziumAvro,
    /// Confluent-framed Avro: each record is a row (an insert).
    #[serde(rename = "avro")]
    Avro,
}

impl Format {
    /// Avro formats need the schema registry for their writer schemas.
    pub fn is_avro(self) -> bool {
        matches!(self, Format::DebeziumAvro | Format::Avro)
    }

    pub fn is_debezium(self) -> bool {
        matches!(self, Format::DebeziumJson | Format::DebeziumAvro)
    }
}

/// What Debezium puts in a column whose value it did not have (an unchanged TOASTed `text`/`jsonb`
/// of Postgres, a table without `REPLICA IDENTITY FULL`): its `unavailable.value.placeholder`.
pub const DEBEZIUM_UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// Where a dataset's contract comes from.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ContractSource {
    /// The TOML file `schema` names.
    #[default]
    File,
    /// The schema the source publishes (Connect schema wrapper, registry): read when the run opens the
    /// table; later changes follow the dataset's drift policy.
    Derived,
}

/// Time granularity of the partition columns.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum PartitionBy {
    #[serde(rename = "none")]
    None,
    #[serde(rename = "date")]
    Date,
    #[serde(rename = "date/hour")]
    DateHour,
}

impl PartitionBy {
    /// The partition columns this granularity adds to the table.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            PartitionBy::None => &[],
            PartitionBy::Date => &["event_date"],
            PartitionBy::DateHour => &["event_date", "event_hour"],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitioning {
    #[serde(default = "default_partition_by")]
    pub by: PartitionBy,
    /// Column the partition time comes from: a timestamp or date column of the schema, `_source_ts` or
    /// `_ingested_at`. Rows where it is null fall back to the ingest time.
    #[serde(default = "default_time_column")]
    pub time_column: String,
}

impl Default for Partitioning {
    fn default() -> Self {
        Partitioning {
            by: default_partition_by(),
            time_column: default_time_column(),
        }
    }
}

fn default_partition_by() -> PartitionBy {
    PartitionBy::Date
}

fn default_time_column() -> String {
    "_source_ts".to_string()
}

/// One dataset: a set of topics flowing into one Delta table.
#[derive(Debug, Clone)]
pub struct DatasetConfig {
    pub name: String,
    pub topics: TopicSelector,
    pub format: Format,
    /// Full table URI (`file:///...` or `s3://...`).
    pub table_uri: String,
    /// The contract file (for a derived contract: where `bronze contract generate --write` puts it).
    pub schema_file: PathBuf,
    pub contract: ContractSource,
    pub key_columns: Vec<String>,
    /// Later value wins among rows with the same key in one flush; ties go to the later offset.
    pub ordering_column: String,
    pub normalize_names: bool,
    /// Fill key columns that are missing from the row with the fields of the (JSON) Kafka message key.
    pub key_from_message_key: bool,
    /// Column name -> Kafka header name, copied as UTF-8 strings.
    pub header_columns: BTreeMap<String, String>,
    pub partitioning: Partitioning,
    pub flush: FlushLimits,
    /// Messages that cannot be ingested: where they go and which ones count as such.
    pub dead_letters: DeadLetterConfig,
    /// How many recently committed source events (key + source position) are remembered to drop exact
    /// redeliveries in later flushes; 0 turns it off.
    pub redelivery_window: usize,
    /// The connector's placeholder for a value it did not deliver: such a column is null in the row and
    /// named in its `_unavailable_columns` (Debezium formats; `None` turns it off).
    pub unavailable_value: Option<String>,
    /// A database the dataset can be extracted from (`bronze extract`, `extract` requests).
    pub extract: Option<ExtractConfig>,
    /// A second table with the newest row per key (`[datasets.latest]`).
    pub latest: Option<LatestConfig>,
    /// Extracts and maintenance run on cron schedules (`[datasets.schedule]`).
    pub schedule: Option<super::ScheduleConfig>,
    /// Replaces the `[drift]` of the contract file.
    pub drift: Option<crate::contract::DriftPolicy>,
    /// The fan-out this table was made from (by its topic), if any.
    pub fan_out: Option<String>,
    /// Which requests the control topic may make of this dataset (`control = { ... }`).
    pub control: ControlPolicy,
}

/// Request kinds a control message may name.
pub const REQUEST_KINDS: [&str; 4] = ["backfill", "extract", "compact", "vacuum"];

/// `control = { allow = [...], force = ... }` of a dataset. Write access to the control topic is the
/// authority to replace data (a message's `requested_by` is recorded, never trusted), so what it may
/// ask of each dataset is said here: by default backfills, extracts and compactions, and neither
/// vacuums (which delete the files time travel needs) nor `force` (which reruns a request id that
/// already succeeded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPolicy {
    pub allow: Vec<String>,
    pub force: bool,
}

impl Default for ControlPolicy {
    fn default() -> Self {
        ControlPolicy {
            allow: ["backfill", "extract", "compact"]
                .map(String::from)
                .to_vec(),
            force: false,
        }
    }
}

impl ControlPolicy {
    pub fn allows(&self, kind: &str) -> bool {
        self.allow.iter().any(|k| k == kind)
    }
}

/// `[datasets.latest]`: a table holding the newest row of every key, derived from the dataset's table.
#[derive(Debug, Clone)]
pub struct LatestConfig {
    /// Full URI (default `<dataset>_latest` under the root).
    pub table_uri: String,
    /// Hash buckets of the key: the unit a refresh rewrites.
    pub buckets: u32,
    /// How often `bronze run` refreshes it.
    pub interval: Duration,
    /// Memory a refresh may hold for the rows it merges; more passes when more is needed.
    pub max_bytes: usize,
}

/// `[datasets.extract]`: a Postgres query the dataset's partitions can be rebuilt from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// `postgresql://user@host:port/db` (secrets via `${env:VAR}`).
    pub dsn: String,
    /// The rows, e.g. `SELECT * FROM public.accounts`; bronze wraps it with the range predicates, which
    /// Postgres pushes down into it.
    pub query: String,
    /// Source column the time range applies to (a timestamp or timestamptz).
    pub time_column: String,
    /// Integer source column the range is split on for parallel reads.
    pub split_column: String,
    /// Parallel connections (ranges of `split_column`), all reading one exported snapshot.
    #[serde(default = "default_parallelism")]
    pub max_parallelism: usize,
    /// Incremental extracts start this long before the stored high watermark, to pick up late rows.
    #[serde(default = "default_extract_lookback", with = "humantime_serde_compat")]
    pub lookback: Duration,
}

fn default_parallelism() -> usize {
    4
}

fn default_extract_lookback() -> Duration {
    Duration::from_secs(3600)
}

/// `dead_letters = { ... }` of a dataset.
#[derive(Debug, Clone)]
pub struct DeadLetterConfig {
    /// Full URI of the dead-letter Delta table (default `_dead_letters/<dataset>` under the root).
    pub table_uri: String,
    /// What a message that cannot be decoded at all gets (column errors follow the contract's
    /// `on_error`).
    pub on_invalid: InvalidMessage,
    /// Larger values are dead-lettered (reason `oversized`) without being decoded.
    pub max_message_bytes: usize,
    /// Messages without a Kafka key are dead-lettered (reason `null_key`).
    pub require_key: bool,
    /// Kafka topic that also receives every committed dead letter (key, value and headers as they were,
    /// plus `bronze.*` headers), published from the table exactly once.
    pub topic: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InvalidMessage {
    #[default]
    DeadLetter,
    Fail,
}

#[derive(Debug, Clone)]
pub enum TopicSelector {
    Names(Vec<String>),
    Pattern(regex::Regex),
}

impl TopicSelector {
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicSelector::Names(names) => names.iter().any(|n| n == topic),
            TopicSelector::Pattern(re) => re.is_match(topic),
        }
    }

    /// The strings to hand to `subscribe`; librdkafka treats a leading `^` as a regex.
    pub fn subscriptions(&self) -> Vec<String> {
        match self {
            TopicSelector::Names(names) => names.clone(),
            TopicSelector::Pattern(re) => {
                let s = re.as_str();
                vec![if s.starts_with('^') {
                    s.to_string()
                } else {
                    format!("^{s}")
                }]
            }
        }
    }
}
