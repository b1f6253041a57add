//! Configuration: one TOML template describing the Kafka connection, storage, limits and any number of
//! datasets. This module is the only place that knows the file format; the rest of the crate sees the
//! validated [`Config`].
//!
//! Loading happens in three steps so that every error can name the file, the key and the reason:
//! 1. parse the TOML text into a generic tree,
//! 2. apply `BRONZE__...` environment overrides and `${env:VAR}` interpolation to that tree,
//! 3. deserialize into typed structs (unknown keys are errors) and check cross-field rules.

mod dataset;
mod env;
mod fan_out;
mod raw;
mod schedule;
mod validate;

pub use dataset::{
    ContractSource, ControlPolicy, DEBEZIUM_UNAVAILABLE_VALUE, DatasetConfig, DeadLetterConfig,
    ExtractConfig, Format, InvalidMessage, LatestConfig, PartitionBy, Partitioning, REQUEST_KINDS,
    TopicSelector,
};
pub use fan_out::{FanOut, SourceBlock};
pub use schedule::{MissedSlots, ScheduleConfig, Scheduled, ScheduledJob, parse_cron};

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

/// The configuration as a run has it now: background services (ledger, maintenance, control) see the
/// tables fan-outs make while running through it.
pub type ConfigUpdates = tokio::sync::watch::Receiver<Config>;

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
    /// Tables registered for query engines (`[catalog]`); none when absent.
    pub catalog: Option<CatalogConfig>,
    /// Required by Avro datasets.
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// The datasets written out, then the tables fan-outs made (see [`Config::claim_topic`]).
    pub datasets: Vec<DatasetConfig>,
    /// Entries that make a dataset of each topic they match.
    pub fan_outs: Vec<FanOut>,
}

/// `[catalog]`: the AWS Glue Data Catalog database every table is registered in, kept up to date with
/// its schema by `bronze run` and `bronze catalog sync`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    pub kind: CatalogKind,
    /// Created when missing.
    pub database: String,
    /// Default: `storage.s3.region`, else the AWS default chain.
    #[serde(default)]
    pub region: Option<String>,
    /// A Glue endpoint other than AWS's (a VPC endpoint, a test server).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Put before every dataset name to make its catalog table name.
    #[serde(default)]
    pub table_prefix: String,
    /// How often a run compares its tables with the catalog and registers what changed.
    #[serde(default = "default_catalog_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CatalogKind {
    Glue,
}

fn default_catalog_interval() -> Duration {
    Duration::from_secs(30)
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
    /// How long one request may take before the client gives up on it and retries (object_store's
    /// default: 30 s). A slow store past this counts as a failed request.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub connect_timeout: Option<Duration>,
    /// Retries of one failed request (5xx, timeouts, dropped connections) inside the client, and how
    /// long they may go on (object_store's defaults: 10 and 3 min). Past them the commit fails and
    /// bronze retries the whole commit with backoff.
    #[serde(default)]
    pub max_retries: Option<usize>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub retry_timeout: Option<Duration>,
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
    /// Commits (encode, upload, log write) running at once across all datasets; the others wait their
    /// turn. With hundreds of tables (fan-outs) this bounds the CPU, memory and object-store
    /// connections that flushes due together would take.
    #[serde(default = "default_max_concurrent_commits")]
    pub max_concurrent_commits: usize,
    /// Batches of one dataset in flight at once: with 2 (the default), the next batch is encoded and
    /// uploaded while the previous one's log entry is written, so a store's latency is paid once
    /// per commit rather than once per step. Commits stay in order: a batch commits only after the
    /// one before it landed. 1 writes and commits each batch before the next is taken.
    #[serde(default = "default_commits_in_flight")]
    pub commits_in_flight: usize,
}

fn default_commits_in_flight() -> usize {
    2
}

fn default_max_concurrent_commits() -> usize {
    16
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
            max_concurrent_commits: default_max_concurrent_commits(),
            commits_in_flight: default_commits_in_flight(),
        }
    }
}

impl PipelineConfig {
    /// Writers for a final flush of `rows` rows: as many as have `final_flush_min_rows` each.
    pub fn final_flush_writers_for(&self, rows: usize) -> usize {
        (rows / self.final_flush_min_rows.max(1)).clamp(1, self.final_flush_writers.max(1))
    }
}

/// Where `/metrics`, `/healthz` and `/readyz` listen (`[metrics]`; off without the section).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port`; [`DEFAULT_METRICS_ADDRESS`] (loopback) when the section does not say.
    #[serde(default)]
    pub address: Option<String>,
    /// An address beyond loopback (`0.0.0.0`, a host's IP) serves run state to the network:
    /// only with this set, so that it is never done by accident.
    #[serde(default)]
    pub public: bool,
}

/// The listener of a `[metrics]` section without an address: this host only.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9898";

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
        let raw: raw::RawConfig = serde_path_to_error::deserialize(toml::Value::Table(tree))
            .map_err(|e| {
                let key = e.path().to_string();
                ConfigError::invalid(file, key, e.into_inner().to_string())
            })?;
        validate::validate(file, raw)
    }

    /// The dataset named `name`.
    pub fn dataset(&self, name: &str) -> Option<&DatasetConfig> {
        self.datasets.iter().find(|d| d.name == name)
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
            let millis = |d: &Duration| format!("{}ms", d.as_millis());
            for (key, value) in [
                ("timeout", s3.request_timeout.as_ref().map(millis)),
                ("connect_timeout", s3.connect_timeout.as_ref().map(millis)),
                ("max_retries", s3.max_retries.map(|n| n.to_string())),
                ("retry_timeout", s3.retry_timeout.as_ref().map(millis)),
            ] {
                if let Some(value) = value {
                    opts.insert(key.to_string(), value);
                }
            }
        }
        opts
    }
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

/// A configuration for unit tests elsewhere: one dataset `orders` (contract: an `id` int64) reading
/// `shop.orders`, with `global` before the dataset and `dataset` inside its entry.
#[cfg(test)]
pub(crate) fn for_tests(global: &str, dataset: &str) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let schema = "[[columns]]\nname = \"id\"\ntype = \"int64\"\n";
    std::fs::write(dir.path().join("orders.toml"), schema).expect("the contract written");
    let text = format!(
        "schema_dir = \"{}\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\ngroup_id = \"g\"\n\
         [storage]\nroot = \"{}\"\n{global}\n[[datasets]]\nname = \"orders\"\ntopics = [\"shop.orders\"]\n\
         format = \"debezium-json\"\nschema = \"orders.toml\"\n{dataset}\n",
        dir.path().display(),
        dir.path().join("lake").display()
    );
    let file = dir.path().join("bronze.toml");
    std::fs::write(&file, text).expect("the configuration written");
    let cfg = Config::load(&file).expect("a valid test configuration");
    (dir, cfg)
}
