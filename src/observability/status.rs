//! `bronze status`: where every dataset stands, computed from Kafka, the tables and the audit ledger
//! only, so it answers while `bronze run` is running elsewhere (or not at all).

use std::time::Duration;

use serde::Serialize;

use crate::audit;
use crate::config::{Config, DatasetConfig};
use crate::sink::{self, TableSink};
use crate::source::Inspector;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Sink(Box<sink::SinkError>),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
}

impl From<sink::SinkError> for StatusError {
    fn from(e: sink::SinkError) -> Self {
        StatusError::Sink(Box::new(e))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// Next offset the table expects (`None`: the table has nothing from this partition yet).
    pub position: Option<i64>,
    pub high_watermark: i64,
    pub lag_messages: i64,
    /// Age of the first message not in the table, when there is one.
    pub lag_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetStatus {
    pub dataset: String,
    pub table: String,
    pub version: Option<u64>,
    /// Time of the table's newest commit, ms since the epoch.
    pub last_commit_ms: Option<i64>,
    pub lag_messages: i64,
    pub lag_seconds: Option<f64>,
    pub rows: u64,
    pub files: usize,
    pub small_files: usize,
    pub table_partitions: usize,
    pub bytes: u64,
    /// From the audit ledger, over the last hour.
    pub drift_events_1h: i64,
    pub dead_letters_1h: i64,
    pub commit_failures_1h: i64,
    /// New columns awaiting review (`bronze schema diff`).
    pub schema_proposals: usize,
    pub partitions: Vec<PartitionStatus>,
    /// Its scheduled jobs (`[datasets.schedule]`), from the status topic.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleStatus>,
    /// Its catalog entry (`[catalog]`): `in sync`, `stale`, `missing`, `no table yet` or `error: ...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
}

/// Where one scheduled job stands.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleStatus {
    pub job: &'static str,
    pub cron: String,
    pub timezone: String,
    /// RFC 3339 (UTC).
    pub next_slot: Option<String>,
    /// The newest slot with a status, and that status.
    pub last_slot: Option<String>,
    pub last_status: Option<String>,
}

/// How long `status` waits to read the first unread message of the lagging partitions.
const TIMESTAMP_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn collect(cfg: &Config) -> Result<Vec<DatasetStatus>, StatusError> {
    let inspector = tokio::task::block_in_place(|| Inspector::new(cfg))?;
    let options = cfg.storage_options();
    let hour_ago = chrono::Utc::now().timestamp_micros() - 3_600_000_000;
    let recent = if cfg.audit.enabled {
        audit::recent_counts(cfg, hour_ago).await?
    } else {
        Default::default()
    };
    let count = |d: &str, kind: &str| recent.get(&(d.to_string(), kind.to_string())).copied();
    let schema_events = if cfg.audit.enabled {
        audit::schema_events(cfg, None).await?
    } else {
        Vec::new()
    };
    let statuses = match &cfg.control {
        Some(c) if cfg.datasets.iter().any(|d| d.schedule.is_some()) => {
            tokio::task::block_in_place(|| crate::control::read_statuses(cfg, c))?
        }
        _ => Default::default(),
    };
    let glue = match &cfg.catalog {
        Some(_) => Some(crate::catalog::Glue::connect(cfg).await),
        None => None,
    };
    let mut out = Vec::with_capacity(cfg.datasets.len());
    for d in &cfg.datasets {
        let table = TableSink::existing(&d.table_uri, &options).await?;
        let catalog = match &glue {
            Some(g) => Some(crate::catalog::state(cfg, g, d).await),
            None => None,
        };
        let stats = match &table {
            Some(t) => Some(t.stats(cfg.storage.small_file_bytes)?),
            None => None,
        };
        let last_commit = match &table {
            Some(t) => t.last_commit().await?.and_then(|e| e.timestamp_ms),
            None => None,
        };
        let partitions = partitions_of(cfg, &inspector, d, table.as_ref()).await?;
        let stats = stats.unwrap_or_default();
        out.push(DatasetStatus {
            dataset: d.name.clone(),
            table: d.table_uri.clone(),
            version: table.as_ref().and_then(TableSink::version),
            last_commit_ms: last_commit,
            lag_messages: partitions.iter().map(|p| p.lag_messages).sum(),
            lag_seconds: partitions
                .iter()
                .map(|p| p.lag_seconds)
                .try_fold(0.0f64, |acc, s| s.map(|s| acc.max(s))),
            rows: stats.rows,
            files: stats.files,
            small_files: stats.small_files,
            table_partitions: stats.partitions,
            bytes: stats.bytes,
            drift_events_1h: count(&d.name, "drift").map_or(0, |c| c.0),
            dead_letters_1h: count(&d.name, "dead_letters").map_or(0, |c| c.1),
            commit_failures_1h: count(&d.name, "commit_failed").map_or(0, |c| c.0),
            schema_proposals: crate::jobs::review::pending_in(
                &d.name,
                &schema_events,
                table.as_ref(),
            )?
            .len(),
            partitions,
            schedules: schedules_of(d, &statuses),
            catalog,
        });
    }
    Ok(out)
}

fn schedules_of(
    d: &DatasetConfig,
    statuses: &std::collections::HashMap<String, crate::control::Status>,
) -> Vec<ScheduleStatus> {
    use crate::control::schedule;
    let Some(s) = &d.schedule else {
        return Vec::new();
    };
    let now = chrono::Utc::now();
    s.jobs
        .iter()
        .map(|j| {
            let last = statuses
                .iter()
                .filter_map(|(id, st)| Some((schedule::slot_of(id, &d.name, j.job)?, st)))
                .max_by_key(|(slot, _)| *slot);
            ScheduleStatus {
                job: j.job.as_str(),
                cron: j.expression.clone(),
                timezone: s.timezone.name().to_string(),
                next_slot: schedule::next_slot(&j.cron, s.timezone, now).map(|t| t.to_rfc3339()),
                last_slot: last.map(|(slot, _)| slot.to_rfc3339()),
                last_status: last.map(|(_, st)| st.status.clone()),
            }
        })
        .collect()
}

/// Position, lag in messages and lag in seconds of each partition of `d`'s topics.
async fn partitions_of(
    cfg: &Config,
    inspector: &Inspector,
    d: &DatasetConfig,
    table: Option<&TableSink>,
) -> Result<Vec<PartitionStatus>, StatusError> {
    let (tps, watermarks) = tokio::task::block_in_place(|| {
        let tps = inspector.partitions(&d.topics)?;
        let watermarks = inspector.watermarks_of(&tps)?;
        Ok::<_, rdkafka::error::KafkaError>((tps, watermarks))
    })?;
    let mut partitions = Vec::with_capacity(tps.len());
    for tp in tps {
        let (low, high) = watermarks.get(&tp).copied().unwrap_or_default();
        let position = match table {
            Some(t) => t
                .committed_offset(&crate::txn::streaming(&cfg.kafka.group_id, &tp))
                .await?
                .map(|v| v + 1),
            None => None,
        };
        partitions.push(PartitionStatus {
            lag_messages: (high - position.unwrap_or(low).max(low)).max(0),
            topic: tp.topic,
            partition: tp.partition,
            position,
            high_watermark: high,
            lag_seconds: None,
        });
    }
    let behind: Vec<_> = partitions
        .iter()
        .filter(|p| p.lag_messages > 0)
        .map(|p| {
            let from = p.high_watermark - p.lag_messages;
            (
                crate::txn::TopicPartition::new(p.topic.clone(), p.partition),
                from,
            )
        })
        .collect();
    let stamps =
        tokio::task::block_in_place(|| inspector.timestamps_at(&behind, TIMESTAMP_TIMEOUT))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    for p in &mut partitions {
        if p.lag_messages == 0 {
            p.lag_seconds = Some(0.0);
        } else if let Some(ts) = stamps.get(&crate::txn::TopicPartition::new(
            p.topic.clone(),
            p.partition,
        )) {
            p.lag_seconds = Some((now_ms - ts).max(0) as f64 / 1000.0);
        }
    }
    Ok(partitions)
}

impl std::fmt::Display for DatasetStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = self.last_commit_ms.map_or("never".to_string(), |ms| {
            let age = (chrono::Utc::now().timestamp_millis() - ms).max(0) / 1000;
            format!("{}s ago", age)
        });
        let lag_s = self
            .lag_seconds
            .map_or("?".to_string(), |s| format!("{s:.1}"));
        write!(
            f,
            "{:<20} {:>8} {:>12} {:>10} {:>9} {:>10} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>9}",
            self.dataset,
            self.version.map_or("-".to_string(), |v| v.to_string()),
            last,
            self.lag_messages,
            lag_s,
            self.rows,
            self.files,
            self.small_files,
            self.table_partitions,
            self.drift_events_1h,
            self.dead_letters_1h,
            self.commit_failures_1h,
            self.schema_proposals,
        )?;
        if let Some(c) = &self.catalog {
            write!(f, "\n  catalog: {c}")?;
        }
        for s in &self.schedules {
            write!(
                f,
                "\n  schedule {:<8} `{}` ({}): next {}, last {} {}",
                s.job,
                s.cron,
                s.timezone,
                s.next_slot.as_deref().unwrap_or("-"),
                s.last_slot.as_deref().unwrap_or("-"),
                s.last_status.as_deref().unwrap_or(""),
            )?;
        }
        Ok(())
    }
}

/// Header line matching [`DatasetStatus`]'s `Display`.
pub fn header() -> String {
    format!(
        "{:<20} {:>8} {:>12} {:>10} {:>9} {:>10} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>9}",
        "dataset",
        "version",
        "last commit",
        "lag msgs",
        "lag s",
        "rows",
        "files",
        "small",
        "parts",
        "drift",
        "dlq",
        "fails",
        "proposals"
    )
}
