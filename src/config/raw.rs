//! The configuration file as written: what serde reads, before defaults are resolved across sections
//! and cross-field rules are checked (`validate`). Sections whose file form is their final form
//! (`[kafka]`, `[storage]`, ...) are deserialized straight into the model in `mod.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::contract::DriftPolicy;

use super::{
    BackfillConfig, CatalogConfig, CompactionConfig, ContractSource, ControlConfig, ExtractConfig,
    FlushLimits, Format, InvalidMessage, KafkaConfig, MemoryConfig, MetricsConfig, Partitioning,
    PipelineConfig, SchemaRegistryConfig, StorageConfig, VacuumConfig, default_true,
    humantime_serde_compat,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) kafka: KafkaConfig,
    pub(super) storage: StorageConfig,
    #[serde(default)]
    pub(super) flush: FlushLimits,
    #[serde(default)]
    pub(super) memory: MemoryConfig,
    #[serde(default)]
    pub(super) pipeline: PipelineConfig,
    /// Absent: no listener; present: on its address, loopback by default.
    #[serde(default)]
    pub(super) metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub(super) audit: RawAudit,
    #[serde(default)]
    pub(super) compaction: CompactionConfig,
    #[serde(default)]
    pub(super) vacuum: VacuumConfig,
    #[serde(default)]
    pub(super) backfill: BackfillConfig,
    #[serde(default)]
    pub(super) control: Option<ControlConfig>,
    #[serde(default)]
    pub(super) catalog: Option<CatalogConfig>,
    #[serde(default)]
    pub(super) schema_registry: Option<SchemaRegistryConfig>,
    /// Directory of schema files, relative to the config file.
    #[serde(default = "default_schema_dir")]
    pub(super) schema_dir: String,
    #[serde(default)]
    pub(super) datasets: Vec<RawDataset>,
}

fn default_schema_dir() -> String {
    "../schemas".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataset {
    pub(super) name: String,
    #[serde(default)]
    pub(super) topics: Vec<String>,
    #[serde(default)]
    pub(super) topic_pattern: Option<String>,
    /// Fan-out: one table per topic of `topic_pattern`, named by this template of its capture groups.
    #[serde(default)]
    pub(super) table_name: Option<String>,
    /// Fan-out: what differs for some tables, by table name.
    #[serde(default)]
    pub(super) tables: BTreeMap<String, RawTableOverride>,
    pub(super) format: Format,
    /// Table name under `storage.root`, or a full URI.
    #[serde(default)]
    pub(super) table: Option<String>,
    /// The contract file; for `contract = "derived"` only where `bronze contract generate` writes.
    #[serde(default)]
    pub(super) schema: Option<String>,
    #[serde(default)]
    pub(super) contract: ContractSource,
    #[serde(default)]
    pub(super) key_columns: Vec<String>,
    #[serde(default = "default_ordering")]
    pub(super) ordering_column: String,
    #[serde(default = "default_true")]
    pub(super) normalize_names: bool,
    #[serde(default)]
    pub(super) key_from_message_key: bool,
    #[serde(default)]
    pub(super) header_columns: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) partitioning: Partitioning,
    #[serde(default)]
    pub(super) flush: FlushOverrides,
    #[serde(default)]
    pub(super) dead_letters: RawDeadLetters,
    #[serde(default = "default_redelivery_window")]
    pub(super) redelivery_window: usize,
    /// `""` turns placeholder handling off.
    #[serde(default)]
    pub(super) unavailable_value: Option<String>,
    #[serde(default)]
    pub(super) extract: Option<ExtractConfig>,
    #[serde(default)]
    pub(super) latest: Option<RawLatest>,
    #[serde(default)]
    pub(super) schedule: Option<super::schedule::RawSchedule>,
    #[serde(default)]
    pub(super) control: Option<RawControlPolicy>,
    /// Replaces the contract's `[drift]`.
    #[serde(default)]
    pub(super) drift: Option<DriftPolicy>,
}

/// `[datasets.tables.<name>]` of a fan-out: the settings of one table that differ from the template.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTableOverride {
    #[serde(default)]
    pub(super) schema: Option<String>,
    #[serde(default)]
    pub(super) contract: Option<ContractSource>,
    #[serde(default)]
    pub(super) table: Option<String>,
    #[serde(default)]
    pub(super) key_columns: Option<Vec<String>>,
    #[serde(default)]
    pub(super) ordering_column: Option<String>,
    #[serde(default)]
    pub(super) partitioning: Option<Partitioning>,
    #[serde(default)]
    pub(super) flush: Option<FlushOverrides>,
    #[serde(default)]
    pub(super) drift: Option<DriftPolicy>,
}

impl RawTableOverride {
    /// `d` with these settings in place of its own.
    pub(super) fn apply(&self, d: &mut RawDataset) {
        let o = self.clone();
        d.schema = o.schema.or(d.schema.take());
        d.contract = o.contract.unwrap_or(d.contract);
        d.table = o.table.or(d.table.take());
        d.key_columns = o.key_columns.unwrap_or(std::mem::take(&mut d.key_columns));
        d.ordering_column = o
            .ordering_column
            .unwrap_or(std::mem::take(&mut d.ordering_column));
        d.partitioning = o.partitioning.unwrap_or(d.partitioning.clone());
        d.flush = o.flush.unwrap_or(d.flush);
        d.drift = o.drift.or(d.drift);
    }
}

fn default_redelivery_window() -> usize {
    100_000
}

fn default_ordering() -> String {
    "_source_ts".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    #[serde(default = "default_true")]
    pub(super) enabled: bool,
    #[serde(default = "default_audit_table")]
    pub(super) table: String,
    #[serde(default = "default_audit_interval", with = "humantime_serde_compat")]
    pub(super) interval: Duration,
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

#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FlushOverrides {
    pub(super) max_rows: Option<usize>,
    pub(super) max_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub(super) max_age: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLatest {
    #[serde(default)]
    pub(super) table: Option<String>,
    #[serde(default = "default_latest_buckets")]
    pub(super) buckets: u32,
    #[serde(default = "default_latest_interval", with = "humantime_serde_compat")]
    pub(super) interval: Duration,
    #[serde(default = "default_latest_max_bytes")]
    pub(super) max_bytes: usize,
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

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeadLetters {
    #[serde(default)]
    pub(super) table: Option<String>,
    #[serde(default)]
    pub(super) on_invalid: InvalidMessage,
    #[serde(default)]
    pub(super) max_message_bytes: Option<usize>,
    #[serde(default)]
    pub(super) require_key: bool,
    #[serde(default)]
    pub(super) topic: Option<String>,
}

/// Default `max_message_bytes`: far above Kafka's default 1 MiB message limit.
pub(super) const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// `control = { ... }` of a dataset, as written (see [`super::ControlPolicy`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControlPolicy {
    #[serde(default)]
    pub(super) allow: Option<Vec<String>>,
    #[serde(default)]
    pub(super) force: bool,
}
