//! Cross-field rules of the configuration, one function per section, checked in the order the file
//! reads (so the first error reported is the first one a reader meets), and the resolution of what
//! depends on other sections: table URIs under `storage.root`, dataset flush limits over the global
//! ones, schema files under `schema_dir`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fan_out::FanOut;
use super::raw::{DEFAULT_MAX_MESSAGE_BYTES, RawConfig, RawDataset, RawDeadLetters, RawLatest};
use super::schedule::ScheduleContext;
use super::{
    AuditConfig, CompactionConfig, Config, ConfigError, ContractSource, ControlConfig,
    DEBEZIUM_UNAVAILABLE_VALUE, DatasetConfig, DeadLetterConfig, FlushLimits, KafkaConfig,
    LatestConfig, MemoryConfig, MetricsConfig, PipelineConfig, StorageConfig, TopicSelector,
    VacuumConfig,
};

/// Uploads are committed within seconds (a failed commit deletes its files and retries with new
/// ones), so a minute is far beyond any upload-to-commit window of a live member.
const MIN_ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// librdkafka settings that would break exactly-once if a user changed them.
const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

pub(super) fn validate(file: &Path, mut raw: RawConfig) -> Result<Config, ConfigError> {
    let base = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    kafka(file, &raw.kafka)?;
    check_limits(file, "flush", &raw.flush)?;
    storage(file, &raw.storage)?;
    pipeline(file, &raw.memory, &raw.pipeline)?;
    let metrics = metrics(file, raw.metrics.take())?;
    let root = resolve_root(file, &base, &raw.storage.root)?;
    if raw.datasets.is_empty() {
        return Err(invalid(
            file,
            "datasets",
            "at least one dataset is required",
        ));
    }
    let context = DatasetContext {
        file: file.to_path_buf(),
        root: root.clone(),
        schema_dir: base.join(&raw.schema_dir),
        flush: raw.flush,
        has_registry: raw.schema_registry.is_some(),
        has_control: raw.control.is_some(),
    };
    let mut datasets = Vec::with_capacity(raw.datasets.len());
    let mut fan_outs: Vec<FanOut> = Vec::new();
    for (i, d) in raw.datasets.into_iter().enumerate() {
        if d.table_name.is_some() || !d.tables.is_empty() {
            let f = FanOut::new(&context, i, d, &datasets, &fan_outs)?;
            fan_outs.push(f);
            continue;
        }
        let d = context.dataset(i, d, &datasets)?;
        datasets.push(d);
    }
    control(file, raw.control.as_ref(), &datasets, &fan_outs)?;
    topic_claims(file, &datasets, &fan_outs)?;
    audit(file, &raw.audit)?;
    if let Some(c) = &raw.catalog {
        catalog(file, c)?;
    }
    maintenance(file, &raw.compaction, &raw.vacuum)?;
    let audit = AuditConfig {
        enabled: raw.audit.enabled,
        table_uri: table_uri(&root, &raw.audit.table),
        interval: raw.audit.interval,
    };
    distinct_tables(file, &datasets, &audit)?;
    Ok(Config {
        file: file.to_path_buf(),
        audit,
        compaction: raw.compaction,
        vacuum: raw.vacuum,
        backfill: raw.backfill,
        control: raw.control,
        catalog: raw.catalog,
        schema_registry: raw.schema_registry,
        kafka: raw.kafka,
        storage: StorageConfig {
            root,
            ..raw.storage
        },
        flush: raw.flush,
        memory: raw.memory,
        pipeline: raw.pipeline,
        metrics,
        datasets,
        fan_outs,
    })
}

fn invalid(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(file, key, reason)
}

fn kafka(file: &Path, k: &KafkaConfig) -> Result<(), ConfigError> {
    if k.bootstrap_servers.trim().is_empty() {
        return Err(invalid(
            file,
            "kafka.bootstrap_servers",
            "must not be empty",
        ));
    }
    if k.group_id.trim().is_empty() {
        return Err(invalid(file, "kafka.group_id", "must not be empty"));
    }
    if let Some(key) = k
        .properties
        .keys()
        .find(|key| RESERVED_KAFKA_PROPERTIES.contains(&key.as_str()))
    {
        return Err(invalid(
            file,
            format!("kafka.properties.{key}"),
            "is managed by bronze (offsets live in the Delta table) and cannot be set",
        ));
    }
    Ok(())
}

fn storage(file: &Path, s: &StorageConfig) -> Result<(), ConfigError> {
    if s.orphan_grace < MIN_ORPHAN_GRACE {
        return Err(invalid(
            file,
            "storage.orphan_grace",
            format!(
                "must be at least {}: a shorter grace would delete the files another member has uploaded and is about to commit",
                humantime::format_duration(MIN_ORPHAN_GRACE)
            ),
        ));
    }
    if s.commit_attempts == 0 {
        return Err(invalid(
            file,
            "storage.commit_attempts",
            "must be at least 1",
        ));
    }
    Ok(())
}

fn pipeline(file: &Path, m: &MemoryConfig, p: &PipelineConfig) -> Result<(), ConfigError> {
    if m.budget_bytes < 1024 * 1024 {
        return Err(invalid(
            file,
            "memory.budget_bytes",
            "must be at least 1 MiB",
        ));
    }
    if !(1..=64).contains(&p.decode_threads) {
        return Err(invalid(
            file,
            "pipeline.decode_threads",
            "must be between 1 and 64",
        ));
    }
    if !(1..=64).contains(&p.final_flush_writers) {
        return Err(invalid(
            file,
            "pipeline.final_flush_writers",
            "must be between 1 and 64",
        ));
    }
    if !(1..=256).contains(&p.max_concurrent_commits) {
        return Err(invalid(
            file,
            "pipeline.max_concurrent_commits",
            "must be between 1 and 256",
        ));
    }
    if !(1..=2).contains(&p.commits_in_flight) {
        return Err(invalid(
            file,
            "pipeline.commits_in_flight",
            "must be 1 or 2 (one batch committing, the next uploading)",
        ));
    }
    if p.final_flush_min_rows == 0 {
        return Err(invalid(
            file,
            "pipeline.final_flush_min_rows",
            "must be at least 1",
        ));
    }
    Ok(())
}

/// A dataset's `control` policy: known kinds only, and every kind it schedules allowed (scheduled
/// jobs arrive as requests on the control topic like any other).
fn control_policy(
    file: &Path,
    key: &str,
    raw: Option<super::raw::RawControlPolicy>,
    schedule: Option<&super::ScheduleConfig>,
) -> Result<super::ControlPolicy, ConfigError> {
    let raw = raw.unwrap_or_default();
    let mut policy = super::ControlPolicy::default();
    if let Some(allow) = raw.allow {
        if let Some(k) = allow
            .iter()
            .find(|k| !super::REQUEST_KINDS.contains(&k.as_str()))
        {
            let reason = format!(
                "`{k}` is not a request kind; expected some of {}",
                super::REQUEST_KINDS.join(", ")
            );
            return Err(invalid(file, format!("{key}.allow"), reason));
        }
        policy.allow = allow;
    }
    policy.force = raw.force;
    for job in schedule.map(|s| s.jobs.as_slice()).unwrap_or_default() {
        let kind = job.job.as_str();
        if !policy.allows(kind) {
            let reason = format!(
                "the dataset schedules `{kind}`, which its control topic may not request: add \
                 \"{kind}\" to `control.allow` (scheduled jobs are requests on the control topic)"
            );
            return Err(invalid(file, format!("{key}.allow"), reason));
        }
    }
    Ok(policy)
}

/// The listener of a `[metrics]` section: its address (loopback unless it says), refused beyond
/// loopback unless `public` says so.
fn metrics(file: &Path, m: Option<MetricsConfig>) -> Result<MetricsConfig, ConfigError> {
    let Some(m) = m else {
        return Ok(MetricsConfig::default());
    };
    let address = m
        .address
        .unwrap_or_else(|| super::DEFAULT_METRICS_ADDRESS.to_string());
    let socket = address.parse::<std::net::SocketAddr>().map_err(|_| {
        invalid(
            file,
            "metrics.address",
            format!("`{address}` is not a host:port socket address"),
        )
    })?;
    if !socket.ip().is_loopback() && !m.public {
        return Err(invalid(
            file,
            "metrics.address",
            format!(
                "`{address}` listens beyond this host; metrics, health and readiness (dataset names, \
                 lag, errors) would be served to the network: set `metrics.public = true` to do \
                 that deliberately, or use a loopback address"
            ),
        ));
    }
    Ok(MetricsConfig {
        address: Some(address),
        public: m.public,
    })
}

/// What a dataset's entry is resolved against (kept by fan-outs for the tables they make later).
#[derive(Debug, Clone)]
pub(super) struct DatasetContext {
    file: PathBuf,
    root: String,
    schema_dir: PathBuf,
    flush: FlushLimits,
    has_registry: bool,
    has_control: bool,
}

impl DatasetContext {
    pub(super) fn file(&self) -> &Path {
        &self.file
    }

    /// Dataset `i` checked (against those before it) and resolved.
    pub(super) fn dataset(
        &self,
        i: usize,
        d: RawDataset,
        before: &[DatasetConfig],
    ) -> Result<DatasetConfig, ConfigError> {
        let file = self.file.as_path();
        let key = |field: &str| format!("datasets[{i}].{field}");
        dataset_name(file, &key("name"), &d.name, before)?;
        if d.format.is_avro() && !self.has_registry {
            let reason = "Avro formats need a `[schema_registry]` section";
            return Err(invalid(file, key("format"), reason));
        }
        if let Some(x) = &d.extract
            && !(1..=64).contains(&x.max_parallelism)
        {
            let reason = "must be between 1 and 64";
            return Err(invalid(file, key("extract.max_parallelism"), reason));
        }
        let topics = topics(file, i, d.topics, d.topic_pattern, d.extract.is_some())?;
        let schema = match (&d.schema, d.contract) {
            (Some(s), _) => s.clone(),
            (None, ContractSource::Derived) => format!("{}.toml", d.name),
            (None, ContractSource::File) => {
                let reason = "give the contract file (`schema`), or `contract = \"derived\"`";
                return Err(invalid(file, key("schema"), reason));
            }
        };
        let schema_file = self.schema_dir.join(&schema);
        // A fan-out's contract path may name its tables: checked for each table as it is made.
        if d.contract == ContractSource::File && !schema.contains('{') && !schema_file.is_file() {
            return Err(invalid(
                file,
                key("schema"),
                format!("schema file {} does not exist", schema_file.display()),
            ));
        }
        let latest = self.latest(i, &d.name, !d.key_columns.is_empty(), d.latest)?;
        let schedule = d
            .schedule
            .map(|s| {
                s.resolve(&ScheduleContext {
                    file,
                    key: key("schedule"),
                    has_extract: d.extract.is_some(),
                    has_control: self.has_control,
                })
            })
            .transpose()?;
        let control = control_policy(file, &key("control"), d.control, schedule.as_ref())?;
        let flush = FlushLimits {
            max_rows: d.flush.max_rows.unwrap_or(self.flush.max_rows),
            max_bytes: d.flush.max_bytes.unwrap_or(self.flush.max_bytes),
            max_age: d.flush.max_age.unwrap_or(self.flush.max_age),
        };
        check_limits(file, &key("flush"), &flush)?;
        if d.key_columns.iter().any(|k| k.is_empty()) {
            let reason = "column names must not be empty";
            return Err(invalid(file, key("key_columns"), reason));
        }
        let dead_letters = self.dead_letters(&d.name, d.dead_letters);
        Ok(DatasetConfig {
            table_uri: table_uri(&self.root, d.table.as_deref().unwrap_or(&d.name)),
            name: d.name,
            topics,
            format: d.format,
            schema_file,
            contract: d.contract,
            key_columns: d.key_columns,
            ordering_column: d.ordering_column,
            normalize_names: d.normalize_names,
            key_from_message_key: d.key_from_message_key,
            header_columns: d.header_columns,
            partitioning: d.partitioning,
            flush,
            dead_letters,
            redelivery_window: d.redelivery_window,
            unavailable_value: match d.unavailable_value {
                Some(v) if v.is_empty() => None,
                Some(v) => Some(v),
                None => d
                    .format
                    .is_debezium()
                    .then(|| DEBEZIUM_UNAVAILABLE_VALUE.to_string()),
            },
            extract: d.extract,
            latest,
            schedule,
            drift: d.drift,
            fan_out: None,
            control,
        })
    }

    /// `[datasets.dead_letters]` of dataset `name`, resolved.
    fn dead_letters(&self, name: &str, raw: RawDeadLetters) -> DeadLetterConfig {
        let table = raw.table.unwrap_or(format!("_dead_letters/{name}"));
        DeadLetterConfig {
            table_uri: table_uri(&self.root, &table),
            on_invalid: raw.on_invalid,
            max_message_bytes: raw.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
            require_key: raw.require_key,
            topic: raw.topic,
        }
    }

    /// `[datasets.latest]` of dataset `i`, resolved.
    fn latest(
        &self,
        i: usize,
        name: &str,
        has_keys: bool,
        latest: Option<RawLatest>,
    ) -> Result<Option<LatestConfig>, ConfigError> {
        let key = |field: &str| format!("datasets[{i}].{field}");
        match latest {
            None => Ok(None),
            Some(_) if !has_keys => Err(invalid(
                &self.file,
                key("latest"),
                "a latest view needs `key_columns`",
            )),
            Some(l) if !(1..=1024).contains(&l.buckets) => Err(invalid(
                &self.file,
                key("latest.buckets"),
                "must be between 1 and 1024",
            )),
            Some(l) => Ok(Some(LatestConfig {
                table_uri: table_uri(
                    &self.root,
                    l.table.as_deref().unwrap_or(&format!("{name}_latest")),
                ),
                buckets: l.buckets,
                interval: l.interval,
                max_bytes: l.max_bytes.max(1),
            })),
        }
    }
}

fn dataset_name(
    file: &Path,
    key: &str,
    name: &str,
    before: &[DatasetConfig],
) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || !name.chars().all(allowed) {
        return Err(invalid(
            file,
            key,
            format!("`{name}` must be non-empty and use only letters, digits, `_` and `-`"),
        ));
    }
    if before.iter().any(|x| x.name == name) {
        return Err(invalid(
            file,
            key,
            format!("dataset `{name}` is defined twice"),
        ));
    }
    Ok(())
}

/// `topics` or `topic_pattern` of dataset `i` (neither only for extract-only datasets).
fn topics(
    file: &Path,
    i: usize,
    names: Vec<String>,
    pattern: Option<String>,
    has_extract: bool,
) -> Result<TopicSelector, ConfigError> {
    let key = |field: &str| format!("datasets[{i}].{field}");
    match (names.is_empty(), pattern) {
        (false, None) => Ok(TopicSelector::Names(names)),
        (true, Some(p)) => regex::Regex::new(&p)
            .map(TopicSelector::Pattern)
            .map_err(|e| invalid(file, key("topic_pattern"), e.to_string())),
        // Extract-only datasets read no topic.
        (true, None) if has_extract => Ok(TopicSelector::Names(Vec::new())),
        (true, None) => Err(invalid(
            file,
            key("topics"),
            "give `topics` (a list) or `topic_pattern` (a regex)",
        )),
        (false, Some(_)) => Err(invalid(
            file,
            key("topics"),
            "`topics` and `topic_pattern` are exclusive",
        )),
    }
}

fn control(
    file: &Path,
    control: Option<&ControlConfig>,
    datasets: &[DatasetConfig],
    fan_outs: &[FanOut],
) -> Result<(), ConfigError> {
    let Some(c) = control else {
        return Ok(());
    };
    if c.topic.is_empty() || c.status_topic.is_empty() || c.topic == c.status_topic {
        return Err(invalid(
            file,
            "control",
            "`topic` and `status_topic` must be two different, non-empty topics",
        ));
    }
    let reads = |t: &str| {
        let dataset = datasets
            .iter()
            .find(|d| d.topics.matches(t))
            .map(|d| &d.name);
        dataset.or_else(|| fan_outs.iter().find(|f| f.matches(t)).map(|f| &f.name))
    };
    if let Some(name) = reads(&c.topic).or_else(|| reads(&c.status_topic)) {
        return Err(invalid(
            file,
            "control",
            format!("the control topics must not be source topics (`{name}` reads one)"),
        ));
    }
    Ok(())
}

/// Each source topic feeds one dataset; no dead-letter topic is a source topic.
fn topic_claims(
    file: &Path,
    datasets: &[DatasetConfig],
    fan_outs: &[FanOut],
) -> Result<(), ConfigError> {
    let reader = |t: &str| {
        let dataset = datasets
            .iter()
            .find(|d| d.topics.matches(t))
            .map(|d| &d.name);
        dataset.or_else(|| fan_outs.iter().find(|f| f.matches(t)).map(|f| &f.name))
    };
    // A dead-letter topic read as a source would feed dead letters back into the pipeline.
    let dead_letter_topics = datasets
        .iter()
        .map(|d| (&d.name, &d.dead_letters.topic))
        .chain(fan_outs.iter().map(|f| (&f.name, f.dead_letter_topic())));
    for (a, topic) in dead_letter_topics {
        if let Some(t) = topic
            && let Some(b) = reader(t)
        {
            return Err(invalid(
                file,
                "datasets.dead_letters.topic",
                format!("dead-letter topic `{t}` of `{a}` is a source topic of `{b}`"),
            ));
        }
    }
    // A fan-out makes a table of every topic it matches: a topic named by a dataset too would feed two.
    for d in datasets {
        if let TopicSelector::Names(names) = &d.topics
            && let Some((t, f)) = names
                .iter()
                .find_map(|t| fan_outs.iter().find(|f| f.matches(t)).map(|f| (t, f)))
        {
            return Err(invalid(
                file,
                "datasets",
                format!(
                    "topic `{t}` is claimed by `{}` and the fan-out `{}`",
                    d.name, f.name
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
                return Err(invalid(
                    file,
                    "datasets",
                    format!("topic `{t}` is claimed by `{}` and `{}`", a.name, b.name),
                ));
            }
        }
    }
    Ok(())
}

fn catalog(file: &Path, c: &super::CatalogConfig) -> Result<(), ConfigError> {
    let allowed = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_';
    if c.database.is_empty() || !c.database.chars().all(allowed) {
        let reason = "Glue database names use lowercase letters, digits and `_`";
        return Err(invalid(file, "catalog.database", reason));
    }
    if !c.table_prefix.chars().all(allowed) {
        let reason = "Glue table names use lowercase letters, digits and `_`";
        return Err(invalid(file, "catalog.table_prefix", reason));
    }
    if c.interval < Duration::from_secs(1) {
        return Err(invalid(file, "catalog.interval", "must be at least 1s"));
    }
    Ok(())
}

fn audit(file: &Path, a: &super::raw::RawAudit) -> Result<(), ConfigError> {
    if a.interval < Duration::from_millis(100) {
        return Err(invalid(file, "audit.interval", "must be at least 100ms"));
    }
    if a.table.is_empty() {
        return Err(invalid(file, "audit.table", "must not be empty"));
    }
    Ok(())
}

fn maintenance(file: &Path, c: &CompactionConfig, v: &VacuumConfig) -> Result<(), ConfigError> {
    if c.target_file_bytes < 64 * 1024 {
        return Err(invalid(
            file,
            "compaction.target_file_bytes",
            "must be at least 64 KiB",
        ));
    }
    if c.interval < Duration::from_secs(1) {
        return Err(invalid(file, "compaction.interval", "must be at least 1s"));
    }
    if v.retention < v.min_retention {
        return Err(invalid(
            file,
            "vacuum.retention",
            format!(
                "is below vacuum.min_retention ({})",
                humantime::format_duration(v.min_retention)
            ),
        ));
    }
    Ok(())
}

/// No two datasets (their tables, dead-letter tables, latest views) or the ledger share a table.
pub(super) fn distinct_tables(
    file: &Path,
    datasets: &[DatasetConfig],
    audit: &AuditConfig,
) -> Result<(), ConfigError> {
    let mut tables: Vec<(&str, &str)> = Vec::new();
    for d in datasets {
        let latest = d.latest.as_ref().map(|l| &l.table_uri);
        for uri in [&d.table_uri, &d.dead_letters.table_uri]
            .into_iter()
            .chain(latest)
        {
            if let Some((other, _)) = tables.iter().find(|(_, u)| u == uri) {
                return Err(invalid(
                    file,
                    "datasets",
                    format!("`{}` and `{other}` both use the table {uri}", d.name),
                ));
            }
            tables.push((&d.name, uri));
        }
    }
    if let Some(d) = datasets.iter().find(|d| d.table_uri == audit.table_uri) {
        return Err(invalid(
            file,
            "audit.table",
            format!("is the table of dataset `{}`", d.name),
        ));
    }
    Ok(())
}

/// A table name under `root`, or a full URI as it is.
pub(super) fn table_uri(root: &str, table: &str) -> String {
    if table.contains("://") {
        table.to_string()
    } else {
        format!("{}/{}", root.trim_end_matches('/'), table)
    }
}

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
