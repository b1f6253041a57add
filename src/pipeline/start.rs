//! Start-up and shutdown of a run: the datasets' tables opened (created if needed, orphans swept,
//! redelivery windows seeded), the services beside the loop spawned (audit ledger, dead-letter topic
//! publishers, compaction, latest views, control requests) and closed in order when the loop ends.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::PipelineError;
use super::state::DatasetState;
use crate::audit::{AuditHandle, AuditRecord, Ledger};
use crate::buffer::DatasetBuffer;
use crate::config::{Config, ConfigUpdates, ContractSource, DatasetConfig};
use crate::decode::Decoder;
use crate::decode::registry::Registry;
use crate::sink::dead_letter_topic::{DeadLetterTopic, PublisherHandle};
use crate::sink::dead_letters::DeadLetterSink;
use crate::sink::{self, TableSink};
use crate::source;
use crate::transform::Mapper;

/// How long a finishing run waits for its last ledger write and its dead-letter publishers.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Tables opened at once at start-up.
const OPEN_CONCURRENCY: usize = 8;

/// What runs beside the loop for the whole run.
pub(super) struct Services {
    pub audit: Option<AuditHandle>,
    publishers: Option<PublisherHandle>,
    compaction: Option<tokio::task::JoinHandle<()>>,
    latest: Option<tokio::task::JoinHandle<()>>,
    catalog: Option<tokio::task::JoinHandle<()>>,
    control: Option<tokio::task::JoinHandle<()>>,
    started_us: i64,
}

impl Services {
    /// Open the ledger (recording the run's start) and spawn the background services.
    pub async fn start(
        cfg: &Config,
        run_id: &str,
        updates: ConfigUpdates,
    ) -> Result<Services, PipelineError> {
        let started_us = chrono::Utc::now().timestamp_micros();
        let audit = if cfg.audit.enabled {
            let ledger = Ledger::open(cfg).await?;
            let handle = AuditHandle::spawn(ledger, cfg.audit.interval, Some(updates.clone()));
            let names: Vec<String> = cfg.datasets.iter().map(|d| d.name.clone()).collect();
            handle.record(AuditRecord::run_started(run_id, &names));
            Some(handle)
        } else {
            None
        };
        let publishers = dead_letter_publishers(cfg)?;
        let compaction = crate::maintenance::spawn_background(updates.clone());
        let latest = crate::maintenance::latest::spawn_background(updates.clone());
        let catalog = crate::catalog::spawn_background(updates.clone());
        let control = crate::control::spawn(
            updates,
            run_id.to_string(),
            audit.as_ref().map(AuditHandle::recorder),
        );
        Ok(Services {
            audit,
            publishers,
            compaction,
            latest,
            catalog,
            control,
            started_us,
        })
    }

    /// Stop the services after the loop ended (with `error`, if it failed) and record the run's end.
    pub async fn close(self, summary: &super::RunSummary, error: Option<&str>) {
        if let Some(p) = self.publishers {
            p.close(CLOSE_TIMEOUT).await;
        }
        for task in [self.compaction, self.latest, self.catalog]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        // A request cut short is not committed on the control topic: the next owner resumes it.
        if let Some(c) = self.control {
            c.abort();
            // Its ledger recorder must be gone before the ledger's last write can finish.
            let _ = c.await;
        }
        if let Some(audit) = self.audit {
            audit.record(AuditRecord::run_finished(
                &summary.run_id,
                self.started_us,
                summary.totals(),
                error,
            ));
            audit.close(CLOSE_TIMEOUT).await;
        }
    }
}

/// Open every dataset's table (creating it if needed) and sweep files left by crashed runs. A table of a
/// fan-out or with a derived contract that cannot be opened yet is left out (returned, to be retried),
/// not the run.
pub async fn open_datasets(
    cfg: &mut Config,
    registry: &Option<Arc<Registry>>,
) -> Result<(Vec<DatasetState>, Vec<DatasetConfig>), PipelineError> {
    use futures::StreamExt;
    let mut out = Vec::with_capacity(cfg.datasets.len());
    let mut kept = Vec::with_capacity(cfg.datasets.len());
    let mut failed = Vec::new();
    let datasets = std::mem::take(&mut cfg.datasets);
    let shared = Arc::new(cfg.clone());
    // Each open waits mostly on the broker (a derived contract's sample) and the store: a whole
    // database's tables open side by side, in the file's order.
    let mut opened = futures::stream::iter(datasets)
        .map(|d| {
            let (cfg, registry) = (shared.clone(), registry.clone());
            tokio::spawn(async move {
                let state = open_state(&cfg, &d, &registry).await;
                (d, state)
            })
        })
        .buffered(OPEN_CONCURRENCY);
    while let Some(joined) = opened.next().await {
        let (d, state) =
            joined.map_err(|e| PipelineError::Stopped(format!("opening a table failed: {e}")))?;
        match state {
            Ok(state) => {
                kept.push(state.cfg.clone());
                out.push(state);
            }
            Err(e) if d.fan_out.is_some() || d.contract == ContractSource::Derived => {
                table_failed(&d, &e, true);
                failed.push(d);
            }
            Err(e) => return Err(e),
        }
    }
    cfg.datasets = kept;
    Ok((out, failed))
}

/// A table that could not be opened: its topic is not read (its offsets stay unread, so nothing is
/// lost) until it can be, and an operator is told (a warning the `first` time, every attempt counted).
pub(super) fn table_failed(d: &DatasetConfig, e: &PipelineError, first: bool) {
    metrics::counter!("bronze_table_open_errors_total", "dataset" => d.name.clone()).increment(1);
    if first {
        warn!(dataset = %d.name, error = %e, "cannot open this table yet; its topic waits, paused, and is retried every 10s");
    } else {
        tracing::debug!(dataset = %d.name, error = %e, "table still cannot be opened");
    }
}

/// One dataset's state for a run: its table opened (created if needed), files left by crashed runs
/// swept, gauges and the redelivery window seeded from the table.
pub(super) async fn open_state(
    cfg: &Config,
    d: &DatasetConfig,
    registry: &Option<Arc<Registry>>,
) -> Result<DatasetState, PipelineError> {
    let options = cfg.storage_options();
    let (mapper, sink) = open_dataset(cfg, d).await?;
    match sink::sweep_orphans(&sink, cfg.storage.orphan_grace).await {
        Ok(n) => {
            metrics::counter!("bronze_orphan_files_deleted_total", "dataset" => d.name.clone())
                .increment(n as u64)
        }
        Err(e) => warn!(dataset = %d.name, error = %e, "orphan sweep failed; continuing"),
    }
    if let Ok(stats) = sink.stats(cfg.compaction.target_file_bytes) {
        metrics::gauge!("bronze_table_files", "dataset" => d.name.clone()).set(stats.files as f64);
        metrics::gauge!("bronze_table_small_files", "dataset" => d.name.clone())
            .set(stats.small_files as f64);
    }
    // The "no commit while lagging" alert needs a last commit time from the start, not only after
    // this run's first commit.
    if let Ok(Some(ms)) = sink
        .last_commit()
        .await
        .map(|e| e.and_then(|e| e.timestamp_ms))
    {
        metrics::gauge!("bronze_last_commit_timestamp_seconds", "dataset" => d.name.clone())
            .set(ms as f64 / 1000.0);
    }
    let buffer = buffer_for(&mapper);
    let dead_letter_sink = DeadLetterSink::new(
        &d.dead_letters.table_uri,
        &options,
        cfg.storage.commit_attempts,
    );
    // A derived contract's keys come from the key schema.
    let d = &DatasetConfig {
        key_columns: mapper.key_names(),
        ..d.clone()
    };
    let mut state = DatasetState::new(
        d.clone(),
        Decoder::new(d.format, registry.clone()),
        mapper,
        buffer,
        sink,
        dead_letter_sink,
    );
    match state.seed_redeliveries(&options).await {
        Ok(0) => {}
        Ok(n) => {
            info!(dataset = %d.name, events = n, "redelivery window seeded from the table")
        }
        // Only redeliveries across the restart go unnoticed: worth a warning, not a stop.
        Err(e) => {
            warn!(dataset = %d.name, error = %e, "cannot seed the redelivery window from the table")
        }
    }
    Ok(state)
}

/// The schema registry client, when the config has one (shared by the datasets of one run).
pub(crate) fn registry(cfg: &Config) -> Result<Option<Arc<Registry>>, PipelineError> {
    Ok(match &cfg.schema_registry {
        Some(r) => Some(Arc::new(Registry::new(r)?)),
        None => None,
    })
}

/// A dataset's mapper (its contract) and its table, created if it does not exist yet.
pub(crate) async fn open_dataset(
    cfg: &Config,
    d: &DatasetConfig,
) -> Result<(Mapper, TableSink), PipelineError> {
    let (contract, keys) = super::derived::run_contract(cfg, d).await?;
    let keyed;
    let d = match keys == d.key_columns {
        true => d,
        false => {
            keyed = DatasetConfig {
                key_columns: keys,
                ..d.clone()
            };
            &keyed
        }
    };
    let mut mapper = Mapper::new(d, contract)?;
    let pcols = mapper.partition_columns();
    let schema = mapper.contract().table_schema(pcols);
    let sink = TableSink::open(
        &d.table_uri,
        schema.clone(),
        pcols,
        mapper.contract().evolves(),
        &cfg.storage_options(),
        cfg.storage.compression,
    )
    .await?
    .with_commit_attempts(cfg.storage.commit_attempts);
    let widened = sink.widened_columns(&schema)?;
    if !widened.is_empty() {
        info!(dataset = %d.name, columns = ?widened, "table has columns widened beyond the contract");
        adopt_widened(&mut mapper, &widened);
    }
    let evolved = sink.columns_beyond(&schema)?;
    if !evolved.is_empty() {
        let names: Vec<&str> = evolved.iter().map(|f| f.name().as_str()).collect();
        info!(dataset = %d.name, columns = ?names, "table has evolved columns beyond the contract");
        mapper.adopt(&evolved)?;
    }
    Ok((mapper, sink))
}

/// Give the mapper's columns the wider types the table has.
pub(crate) fn adopt_widened(mapper: &mut Mapper, widened: &[(String, arrow::datatypes::DataType)]) {
    for (name, ty) in widened {
        if let Some((ty, ps)) = crate::contract::ColumnType::from_arrow(ty) {
            mapper.widen(name, ty, ps);
        }
    }
}

/// An empty buffer for the mapper's current columns (and their types).
pub(crate) fn buffer_for(mapper: &Mapper) -> DatasetBuffer {
    let pcols = mapper.partition_columns();
    DatasetBuffer::new(
        mapper.contract().table_schema(pcols),
        mapper.contract().columns.len(),
        pcols.len(),
    )
}

/// Grow `buffer` by the columns `mapper` evolved since it was built.
pub(crate) fn sync_columns(mapper: &Mapper, buffer: &mut DatasetBuffer) {
    let n = mapper.contract().columns.len();
    if n > buffer.data_columns() {
        buffer.evolve(
            mapper.contract().table_schema(mapper.partition_columns()),
            n,
        );
    }
}

/// Publishers for the datasets with a dead-letter topic, publishing every second.
pub(super) fn dead_letter_publishers(
    cfg: &Config,
) -> Result<Option<PublisherHandle>, PipelineError> {
    let topics = cfg
        .datasets
        .iter()
        .filter_map(|d| Some((d, d.dead_letters.topic.as_ref()?)))
        .map(|(d, topic)| {
            DeadLetterTopic::new(
                &d.name,
                topic,
                &d.dead_letters.table_uri,
                &cfg.storage_options(),
                source::connection_config(cfg),
                &cfg.kafka.group_id,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((!topics.is_empty()).then(|| PublisherHandle::spawn(topics, Duration::from_secs(1))))
}
