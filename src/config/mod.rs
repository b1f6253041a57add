//! Configuration: one TOML template describing the Kafka connection, storage, limits and any number of
//! datasets. This module is the only place that knows the file format; the rest of the crate sees the
//! validated [`Config`].
//!
//! Loading happens in three steps so that every error can name the file, the key and the reason:
//! 1. parse the TOML text into a generic tree,
//! 2. apply `BRONZE__...` environment overrides and `${env:VAR}` interpolation to that tree,
//! 3. deserialize into typed structs (unknown keys are errors) and check cross-field rules.

mod env;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use env::ENV_PREFIX;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from (for messages).
    pub file: PathBuf,
    pub kafka: KafkaConfig,
    pub storage: StorageConfig,
    pub flush: FlushLimits,
    pub memory: MemoryConfig,
    pub pipeline: PipelineConfig,
    pub metrics: MetricsConfig,
    pub audit: AuditConfig,
    pub compaction: CompactionConfig,
    pub vacuum: VacuumConfig,
    pub backfill: BackfillConfig,
    /// Requests on Kafka (`[control]`); off when absent.
    pub control: Option<ControlConfig>,
    /// Required by Avro datasets.
    pub schema_registry: Option<SchemaRegistryConfig>,
    pub datasets: Vec<DatasetConfig>,
}

/// The control topic (`[control]`): backfill, compaction and vacuum requests as JSON messages, and
/// the status of every request on a status topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    pub topic: String,
    pub status_topic: String,
}

/// Backfills (`[backfill]`): transactional replaces of time partitions rebuilt from Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// How far before a range's start the replay begins reading Kafka: events are partitioned by their
    /// source time, which is earlier than their Kafka time by the capture lag.
    #[serde(default = "default_backfill_lookback", with = "humantime_serde_compat")]
    pub lookback: Duration,
    /// Longest range one request may replace.
    #[serde(
        default = "default_backfill_max_range",
        with = "humantime_serde_compat"
    )]
    pub max_range: Duration,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            lookback: default_backfill_lookback(),
            max_range: default_backfill_max_range(),
        }
    }
}

fn default_backfill_lookback() -> Duration {
    Duration::from_secs(3600)
}

fn default_backfill_max_range() -> Duration {
    Duration::from_secs(31 * 24 * 3600)
}

/// Small-file compaction (`[compaction]`), in the background of `bronze run` and by `bronze compact`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionConfig {
    /// Run it in the background of `bronze run`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(
        default = "default_compaction_interval",
        with = "humantime_serde_compat"
    )]
    pub interval: Duration,
    /// Files below this are bin-packed into files of about this size.
    #[serde(default = "default_target_file_bytes")]
    pub target_file_bytes: u64,
    /// A time partition is compacted once its time range ended this long ago ("sealed"), so compaction
    /// does not rewrite what live appends are still adding to.
    #[serde(default = "default_sealed_after", with = "humantime_serde_compat")]
    pub sealed_after: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: true,
            interval: default_compaction_interval(),
            target_file_bytes: default_target_file_bytes(),
            sealed_after: default_sealed_after(),
        }
    }
}

fn default_compaction_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_target_file_bytes() -> u64 {
    128 * 1024 * 1024
}

fn default_sealed_after() -> Duration {
    Duration::from_secs(3600)
}

/// `bronze vacuum` (`[vacuum]`): deleting files that compaction (or a replace) removed from the table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VacuumConfig {
    /// Files removed from the table longer ago than this are deleted.
    #[serde(default = "default_retention", with = "humantime_serde_compat")]
    pub retention: Duration,
    /// The guard: no vacuum keeps less than this, whatever `--retention` says. Readers of older table
    /// versions (time travel, long queries) need the files for at least this long.
    #[serde(default = "default_retention", with = "humantime_serde_compat")]
    pub min_retention: Duration,
}

impl Default for VacuumConfig {
    fn default() -> Self {
        VacuumConfig {
            retention: default_retention(),
            min_retention: default_retention(),
        }
    }
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// The audit ledger (`[audit]`): a Delta table recording every commit and run.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub enabled: bool,
    /// Resolved like a dataset's `table`: a name under `storage.root` or a full URI.
    pub table_uri: String,
    /// How often the ledger transcribes new commits and pending events.
    pub interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_audit_table")]
    table: String,
    #[serde(default = "default_audit_interval", with = "humantime_serde_compat")]
    interval: Duration,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            enabled: true,
            table: default_audit_table(),
            interval: default_audit_interval(),
        }
    }
}

fn default_audit_table() -> String {
    "_bronze_runs".to_string()
}

fn default_audit_interval() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    /// Where a partition starts when neither the table nor the group has an offset for it.
    #[serde(default = "default_offset_reset")]
    pub auto_offset_reset: OffsetReset,
    /// Passed to librdkafka as they are (security.protocol, sasl.*, ssl.*, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

fn default_offset_reset() -> OffsetReset {
    OffsetReset::Earliest
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Root under which dataset tables live unless a dataset names a full URI:
    /// a local path (relative to the config file) or `s3://bucket/prefix`.
    pub root: String,
    #[serde(default)]
    pub s3: Option<S3Config>,
    #[serde(default)]
    pub compression: Compression,
    /// Uncommitted data files older than this are removed at start-up (left by a crash between upload and commit).
    #[serde(default = "default_orphan_grace", with = "humantime_serde_compat")]
    pub orphan_grace: Duration,
    /// Files below this size count as small (`bronze status`, compaction candidates).
    #[serde(default = "default_small_file_bytes")]
    pub small_file_bytes: u64,
    /// Attempts of every optimistic commit (streaming, dead letters, backfills, replays, the ledger,
    /// schema changes) before it fails; each attempt re-reads the table and decides again.
    #[serde(default = "default_commit_attempts")]
    pub commit_attempts: usize,
}

fn default_commit_attempts() -> usize {
    crate::sink::DEFAULT_COMMIT_ATTEMPTS
}

fn default_small_file_bytes() -> u64 {
    32 * 1024 * 1024
}

/// Uploads are committed within seconds (a failed commit deletes its files and retries with new
/// ones), so a minute is far beyond any upload-to-commit window of a live member.
const MIN_ORPHAN_GRACE: Duration = Duration::from_secs(60);

fn default_orphan_grace() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Snappy,
    Zstd,
    Lz4,
    Gzip,
    None,
}

/// When a dataset's buffer is written out: whichever limit is reached first.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FlushLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
    #[serde(with = "humantime_serde_compat")]
    pub max_age: Duration,
}

impl Default for FlushLimits {
    fn default() -> Self {
        FlushLimits {
            max_rows: 500_000,
            max_bytes: 64 * 1024 * 1024,
            max_age: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FlushOverrides {
    max_rows: Option<usize>,
    max_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde_compat::option")]
    max_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Bytes all dataset buffers may hold together before partitions are paused.
    pub budget_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            budget_bytes: 512 * 1024 * 1024,
        }
    }
}

/// The ingest loop (`[pipeline]`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Threads that decode, map and buffer the messages one poll finds ready (the lanes), the loop's own
    /// included; a dataset's partitions are split over them. Default 2, or 1 on a single core: the
    /// other threads of the process (commits, librdkafka) want a core too.
    #[serde(default = "default_decode_threads")]
    pub decode_threads: usize,
    /// The last flush of a `--until-caught-up` run or of a shutdown has nothing left to overlap its
    /// encoding: it is written by up to this many writers at once (default: the cores), each with
    /// at least `final_flush_min_rows` rows, one file per writer and Delta partition.
    #[serde(default = "default_final_flush_writers")]
    pub final_flush_writers: usize,
    #[serde(default = "default_final_flush_min_rows")]
    pub final_flush_min_rows: usize,
}

fn default_decode_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

fn default_final_flush_writers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(64))
}

/// Files of fewer rows than this are not worth the time they save.
fn default_final_flush_min_rows() -> usize {
    100_000
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            decode_threads: default_decode_threads(),
            final_flush_writers: default_final_flush_writers(),
            final_flush_min_rows: default_final_flush_min_rows(),
        }
    }
}

impl PipelineConfig {
    /// Writers for a final flush of `rows` rows: as many as have `final_flush_min_rows` each.
    pub fn final_flush_writers_for(&self, rows: usize) -> usize {
        (rows / self.final_flush_min_rows.max(1)).clamp(1, self.final_flush_writers.max(1))
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` for `/metrics`, `/healthz` and `/readyz`; metrics are off when absent.
    #[serde(default)]
    pub address: Option<String>,
}

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
}

/// A Confluent-compatible schema registry (`[schema_registry]`), where Avro writer schemas are looked up
/// by the id in each message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL, e.g. `http://registry:8081`.
    pub url: String,
    /// HTTP basic auth (secrets via `${env:VAR}`).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Per request.
    #[serde(default = "default_registry_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Longest wait between attempts while the registry is unreachable (the partition waits, nothing is
    /// skipped).
    #[serde(
        default = "default_registry_max_backoff",
        with = "humantime_serde_compat"
    )]
    pub max_backoff: Duration,
}

fn default_registry_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_registry_max_backoff() -> Duration {
    Duration::from_secs(30)
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
    pub schema_file: PathBuf,
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
    /// A database the dataset can be extracted from (`bronze extract`, `extract` requests).
    pub extract: Option<ExtractConfig>,
    /// A second table with the newest row per key (`[datasets.latest]`).
    pub latest: Option<LatestConfig>,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatest {
    #[serde(default)]
    table: Option<String>,
    #[serde(default = "default_latest_buckets")]
    buckets: u32,
    #[serde(default = "default_latest_interval", with = "humantime_serde_compat")]
    interval: Duration,
    #[serde(default = "default_latest_max_bytes")]
    max_bytes: usize,
}

fn default_latest_buckets() -> u32 {
    16
}

fn default_latest_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_latest_max_bytes() -> usize {
    256 * 1024 * 1024
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

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDeadLetters {
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    on_invalid: InvalidMessage,
    #[serde(default)]
    max_message_bytes: Option<usize>,
    #[serde(default)]
    require_key: bool,
    #[serde(default)]
    topic: Option<String>,
}

/// Default `max_message_bytes`: far above Kafka's default 1 MiB message limit.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

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

// ---- raw file model -------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    kafka: KafkaConfig,
    storage: StorageConfig,
    #[serde(default)]
    flush: FlushLimits,
    #[serde(default)]
    memory: MemoryConfig,
    #[serde(default)]
    pipeline: PipelineConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    compaction: CompactionConfig,
    #[serde(default)]
    vacuum: VacuumConfig,
    #[serde(default)]
    backfill: BackfillConfig,
    #[serde(default)]
    control: Option<ControlConfig>,
    #[serde(default)]
    schema_registry: Option<SchemaRegistryConfig>,
    /// Directory of schema files, relative to the config file.
    #[serde(default = "default_schema_dir")]
    schema_dir: String,
    #[serde(default)]
    datasets: Vec<RawDataset>,
}

fn default_schema_dir() -> String {
    "../schemas".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    name: String,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    topic_pattern: Option<String>,
    format: Format,
    /// Table name under `storage.root`, or a full URI.
    #[serde(default)]
    table: Option<String>,
    schema: String,
    #[serde(default)]
    key_columns: Vec<String>,
    #[serde(default = "default_ordering")]
    ordering_column: String,
    #[serde(default = "default_true")]
    normalize_names: bool,
    #[serde(default)]
    key_from_message_key: bool,
    #[serde(default)]
    header_columns: BTreeMap<String, String>,
    #[serde(default)]
    partitioning: Partitioning,
    #[serde(default)]
    flush: FlushOverrides,
    #[serde(default)]
    dead_letters: RawDeadLetters,
    #[serde(default = "default_redelivery_window")]
    redelivery_window: usize,
    #[serde(default)]
    extract: Option<ExtractConfig>,
    #[serde(default)]
    latest: Option<RawLatest>,
}

fn default_redelivery_window() -> usize {
    100_000
}

fn default_ordering() -> String {
    "_source_ts".to_string()
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Load, override from the process environment, and validate.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(file, &vars)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(file: &Path, vars: &[(String, String)]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let mut tree: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    file: file.to_path_buf(),
                    message: e.to_string().trim().to_string(),
                })?;
        env::apply_overrides(file, &mut tree, vars)?;
        env::interpolate(file, &mut tree, vars)?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
                let key = e.path().to_string();
                ConfigError::invalid(file, key, e.into_inner().to_string())
            })?;
        Self::validate(file, raw)
    }

    fn validate(file: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
        let base = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        if raw.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                file,
                "kafka.bootstrap_servers",
                "must not be empty",
            ));
        }
        if raw.kafka.group_id.trim().is_empty() {
            return Err(ConfigError::invalid(
                file,
                "kafka.group_id",
                "must not be empty",
            ));
        }
        for key in raw.kafka.properties.keys() {
            if RESERVED_KAFKA_PROPERTIES.contains(&key.as_str()) {
                return Err(ConfigError::invalid(
                    file,
                    format!("kafka.properties.{key}"),
                    "is managed by bronze (offsets live in the Delta table) and cannot be set",
                ));
            }
        }
        check_limits(file, "flush", &raw.flush)?;
        if raw.storage.orphan_grace < MIN_ORPHAN_GRACE {
            return Err(ConfigError::invalid(
                file,
                "storage.orphan_grace",
                format!(
                    "must be at least {}: a shorter grace would delete the files another member has uploaded and is about to commit",
                    humantime::format_duration(MIN_ORPHAN_GRACE)
                ),
            ));
        }
        if raw.storage.commit_attempts == 0 {
            return Err(ConfigError::invalid(
                file,
                "storage.commit_attempts",
                "must be at least 1",
            ));
        }
        if raw.memory.budget_bytes < 1024 * 1024 {
            return Err(ConfigError::invalid(
                file,
                "memory.budget_bytes",
                "must be at least 1 MiB",
            ));
        }
        if !(1..=64).contains(&raw.pipeline.decode_threads) {
            return Err(ConfigError::invalid(
                file,
                "pipeline.decode_threads",
                "must be between 1 and 64",
            ));
        }
        if !(1..=64).contains(&raw.pipeline.final_flush_writers) {
            return Err(ConfigError::invalid(
                file,
                "pipeline.final_flush_writers",
                "must be between 1 and 64",
            ));
        }
        if raw.pipeline.final_flush_min_rows == 0 {
            return Err(ConfigError::invalid(
                file,
                "pipeline.final_flush_min_rows",
                "must be at least 1",
            ));
        }
        if let Some(addr) = &raw.metrics.address
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::invalid(
                file,
                "metrics.address",
                format!("`{addr}` is not a host:port socket address"),
            ));
        }
        let root = resolve_root(file, &base, &raw.storage.root)?;
        if raw.datasets.is_empty() {
            return Err(ConfigError::invalid(
                file,
                "datasets",
                "at least one dataset is required",
            ));
        }
        let schema_dir = base.join(&raw.schema_dir);
        let mut datasets = Vec::with_capacity(raw.datasets.len());
        for (i, d) in raw.datasets.into_iter().enumerate() {
            let key = |field: &str| format!("datasets[{i}].{field}");
            if d.name.is_empty()
                || !d
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ConfigError::invalid(
                    file,
                    key("name"),
                    format!(
                        "`{}` must be non-empty and use only letters, digits, `_` and `-`",
                        d.name
                    ),
                ));
            }
            if datasets.iter().any(|x: &DatasetConfig| x.name == d.name) {
                return Err(ConfigError::invalid(
                    file,
                    key("name"),
                    format!("dataset `{}` is defined twice", d.name),
                ));
            }
            if d.format.is_avro() && raw.schema_registry.is_none() {
                return Err(ConfigError::invalid(
                    file,
                    key("format"),
                    "Avro formats need a `[schema_registry]` section",
                ));
            }
            if let Some(x) = &d.extract
                && !(1..=64).contains(&x.max_parallelism)
            {
                return Err(ConfigError::invalid(
                    file,
                    key("extract.max_parallelism"),
                    "must be between 1 and 64",
                ));
            }
            let topics = match (d.topics.is_empty(), d.topic_pattern) {
                (false, None) => TopicSelector::Names(d.topics),
                (true, Some(p)) => TopicSelector::Pattern(regex::Regex::new(&p).map_err(|e| {
                    ConfigError::invalid(file, key("topic_pattern"), e.to_string())
                })?),
                // Extract-only datasets read no topic.
                (true, None) if d.extract.is_some() => TopicSelector::Names(Vec::new()),
                (true, None) => {
                    return Err(ConfigError::invalid(
                        file,
                        key("topics"),
                        "give `topics` (a list) or `topic_pattern` (a regex)",
                    ));
                }
                (false, Some(_)) => {
                    return Err(ConfigError::invalid(
                        file,
                        key("topics"),
                        "`topics` and `topic_pattern` are exclusive",
                    ));
                }
            };
            let data_uri = table_uri(&root, d.table.as_deref().unwrap_or(&d.name));
            let dead_letter_uri = table_uri(
                &root,
                d.dead_letters
                    .table
                    .as_deref()
                    .unwrap_or(&format!("_dead_letters/{}", d.name)),
            );
            let schema_file = schema_dir.join(&d.schema);
            if !schema_file.is_file() {
                return Err(ConfigError::invalid(
                    file,
                    key("schema"),
                    format!("schema file {} does not exist", schema_file.display()),
                ));
            }
            let latest = match d.latest {
                None => None,
                Some(_) if d.key_columns.is_empty() => {
                    return Err(ConfigError::invalid(
                        file,
                        key("latest"),
                        "a latest view needs `key_columns`",
                    ));
                }
                Some(l) if !(1..=1024).contains(&l.buckets) => {
                    return Err(ConfigError::invalid(
                        file,
                        key("latest.buckets"),
                        "must be between 1 and 1024",
                    ));
                }
                Some(l) => Some(LatestConfig {
                    table_uri: table_uri(
                        &root,
                        l.table.as_deref().unwrap_or(&format!("{}_latest", d.name)),
                    ),
                    buckets: l.buckets,
                    interval: l.interval,
                    max_bytes: l.max_bytes.max(1),
                }),
            };
            let flush = FlushLimits {
                max_rows: d.flush.max_rows.unwrap_or(raw.flush.max_rows),
                max_bytes: d.flush.max_bytes.unwrap_or(raw.flush.max_bytes),
                max_age: d.flush.max_age.unwrap_or(raw.flush.max_age),
            };
            check_limits(file, &key("flush"), &flush)?;
            if d.key_columns.iter().any(|k| k.is_empty()) {
                return Err(ConfigError::invalid(
                    file,
                    key("key_columns"),
                    "column names must not be empty",
                ));
            }
            datasets.push(DatasetConfig {
                name: d.name,
                topics,
                format: d.format,
                table_uri: data_uri,
                schema_file,
                key_columns: d.key_columns,
                ordering_column: d.ordering_column,
                normalize_names: d.normalize_names,
                key_from_message_key: d.key_from_message_key,
                header_columns: d.header_columns,
                partitioning: d.partitioning,
                flush,
                dead_letters: DeadLetterConfig {
                    table_uri: dead_letter_uri,
                    on_invalid: d.dead_letters.on_invalid,
                    max_message_bytes: d
                        .dead_letters
                        .max_message_bytes
                        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
                    require_key: d.dead_letters.require_key,
                    topic: d.dead_letters.topic,
                },
                redelivery_window: d.redelivery_window,
                extract: d.extract,
                latest,
            });
        }
        if let Some(c) = &raw.control {
            if c.topic.is_empty() || c.status_topic.is_empty() || c.topic == c.status_topic {
                return Err(ConfigError::invalid(
                    file,
                    "control",
                    "`topic` and `status_topic` must be two different, non-empty topics",
                ));
            }
            if let Some(d) = datasets
                .iter()
                .find(|d| d.topics.matches(&c.topic) || d.topics.matches(&c.status_topic))
            {
                return Err(ConfigError::invalid(
                    file,
                    "control",
                    format!(
                        "the control topics must not be source topics (`{}` reads one)",
                        d.name
                    ),
                ));
            }
        }
        // A dead-letter topic read as a source would feed dead letters back into the pipeline.
        for a in &datasets {
            if let Some(t) = &a.dead_letters.topic
                && let Some(b) = datasets.iter().find(|b| b.topics.matches(t))
            {
                return Err(ConfigError::invalid(
                    file,
                    "datasets.dead_letters.topic",
                    format!(
                        "dead-letter topic `{t}` of `{}` is a source topic of `{}`",
                        a.name, b.name
                    ),
                ));
            }
        }
        // A topic must feed exactly one dataset, or offsets in two tables would race for it.
        for (i, a) in datasets.iter().enumerate() {
            for b in &datasets[i + 1..] {
                if let TopicSelector::Names(names) = &a.topics
                    && let Some(t) = names.iter().find(|t| b.topics.matches(t))
                {
                    return Err(ConfigError::invalid(
                        file,
                        "datasets",
                        format!("topic `{t}` is claimed by `{}` and `{}`", a.name, b.name),
                    ));
                }
            }
        }
        if raw.audit.interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                file,
                "audit.interval",
                "must be at least 100ms",
            ));
        }
        if raw.audit.table.is_empty() {
            return Err(ConfigError::invalid(
                file,
                "audit.table",
                "must not be empty",
            ));
        }
        if raw.compaction.target_file_bytes < 64 * 1024 {
            return Err(ConfigError::invalid(
                file,
                "compaction.target_file_bytes",
                "must be at least 64 KiB",
            ));
        }
        if raw.compaction.interval < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                file,
                "compaction.interval",
                "must be at least 1s",
            ));
        }
        if raw.vacuum.retention < raw.vacuum.min_retention {
            return Err(ConfigError::invalid(
                file,
                "vacuum.retention",
                format!(
                    "is below vacuum.min_retention ({})",
                    humantime::format_duration(raw.vacuum.min_retention)
                ),
            ));
        }
        let audit = AuditConfig {
            enabled: raw.audit.enabled,
            table_uri: table_uri(&root, &raw.audit.table),
            interval: raw.audit.interval,
        };
        let mut tables: Vec<(&str, &str)> = Vec::new();
        for d in &datasets {
            let latest = d.latest.as_ref().map(|l| &l.table_uri);
            for uri in [&d.table_uri, &d.dead_letters.table_uri]
                .into_iter()
                .chain(latest)
            {
                if let Some((other, _)) = tables.iter().find(|(_, u)| u == uri) {
                    return Err(ConfigError::invalid(
                        file,
                        "datasets",
                        format!("`{}` and `{other}` both use the table {uri}", d.name),
                    ));
                }
                tables.push((&d.name, uri));
            }
        }
        if let Some(d) = datasets.iter().find(|d| d.table_uri == audit.table_uri) {
            return Err(ConfigError::invalid(
                file,
                "audit.table",
                format!("is the table of dataset `{}`", d.name),
            ));
        }
        Ok(Config {
            file: file.to_path_buf(),
            audit,
            compaction: raw.compaction,
            vacuum: raw.vacuum,
            backfill: raw.backfill,
            control: raw.control,
            schema_registry: raw.schema_registry,
            kafka: raw.kafka,
            storage: StorageConfig {
                root,
                ..raw.storage
            },
            flush: raw.flush,
            memory: raw.memory,
            pipeline: raw.pipeline,
            metrics: raw.metrics,
            datasets,
        })
    }

    /// The dataset a topic belongs to.
    pub fn dataset_for_topic(&self, topic: &str) -> Option<usize> {
        self.datasets.iter().position(|d| d.topics.matches(topic))
    }

    /// Object-store options for delta-rs / object_store, from `storage.s3`.
    pub fn storage_options(&self) -> std::collections::HashMap<String, String> {
        let mut opts = std::collections::HashMap::new();
        if let Some(s3) = &self.storage.s3 {
            if let Some(e) = &s3.endpoint {
                opts.insert("AWS_ENDPOINT_URL".to_string(), e.clone());
            }
            opts.insert("AWS_REGION".to_string(), s3.region.clone());
            if let Some(k) = &s3.access_key_id {
                opts.insert("AWS_ACCESS_KEY_ID".to_string(), k.clone());
            }
            if let Some(k) = &s3.secret_access_key {
                opts.insert("AWS_SECRET_ACCESS_KEY".to_string(), k.clone());
            }
            if s3.allow_http {
                opts.insert("AWS_ALLOW_HTTP".to_string(), "true".to_string());
            }
        }
        opts
    }
}

/// A table name under `root`, or a full URI as it is.
fn table_uri(root: &str, table: &str) -> String {
    if table.contains("://") {
        table.to_string()
    } else {
        format!("{}/{}", root.trim_end_matches('/'), table)
    }
}

/// librdkafka settings that would break exactly-once if a user changed them.
const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

fn check_limits(file: &Path, key: &str, l: &FlushLimits) -> Result<(), ConfigError> {
    if l.max_rows == 0 {
        return Err(ConfigError::invalid(
            file,
            format!("{key}.max_rows"),
            "must be > 0",
        ));
    }
    if l.max_bytes < 1024 {
        return Err(ConfigError::invalid(
            file,
            format!("{key}.max_bytes"),
            "must be at least 1024",
        ));
    }
    if l.max_age < Duration::from_millis(10) {
        return Err(ConfigError::invalid(
            file,
            format!("{key}.max_age"),
            "must be at least 10ms",
        ));
    }
    Ok(())
}

/// Turn `storage.root` into a URI; local paths are made absolute relative to the config file.
fn resolve_root(file: &Path, base: &Path, root: &str) -> Result<String, ConfigError> {
    if root.trim().is_empty() {
        return Err(ConfigError::invalid(
            file,
            "storage.root",
            "must not be empty",
        ));
    }
    if let Some((scheme, _)) = root.split_once("://") {
        return match scheme {
            "s3" | "s3a" | "file" => Ok(root.to_string()),
            other => Err(ConfigError::invalid(
                file,
                "storage.root",
                format!("scheme `{other}` is not supported (use a local path, file:// or s3://)"),
            )),
        };
    }
    let path = Path::new(root);
    let joined = std::path::absolute(base.join(path)).map_err(|e| {
        ConfigError::invalid(file, "storage.root", format!("cannot resolve path: {e}"))
    })?;
    // `..` is resolved lexically: the directory may not exist yet, so it cannot be canonicalized.
    let mut abs = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                abs.pop();
            }
            std::path::Component::CurDir => {}
            other => abs.push(other),
        }
    }
    let url = url::Url::from_directory_path(&abs).map_err(|_| {
        ConfigError::invalid(
            file,
            "storage.root",
            "cannot turn the path into a file:// URI",
        )
    })?;
    Ok(url.to_string())
}

/// `max_age = "5s"` in the file, a [`Duration`] in the model.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests;
