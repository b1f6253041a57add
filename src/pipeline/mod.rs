//! The run loop: source → decode → transform → buffer → sink, with the position bookkeeping that
//! makes it exactly once (see `ARCHITECTURE.md`).
//!
//! This file holds the loop itself (`Run::event_loop`), rebalances, and what one message goes through
//! on its way in; the rest of `Run` lives with the state it works on: `positions` (where each partition
//! stands against its table), `catch_up` (when `--until-caught-up` is done), `turn` (a poll's messages
//! through the lanes), `flush` (batches, their background commits and the memory budget), `report`
//! (drift, gauges), `start` (opening datasets, the services beside the loop), `admission` (what
//! becomes of one message).

pub(crate) mod admission;
mod catch_up;
pub mod derived;
mod flush;
mod lanes;
pub(crate) mod message;
mod positions;
mod report;
pub(crate) mod start;
mod state;
mod tables;
mod turn;
mod upload_ahead;

use std::future::Future;
use std::time::{Duration, Instant};

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::Consumer;
use tracing::{Instrument, error, info, warn};

use crate::audit::{AuditHandle, AuditRecorder};
use crate::buffer::{FlushReason, TopicPartition};
use crate::config::Config;
use crate::decode::registry::RegistryError;
use crate::observability::Health;
use crate::source::{self, RebalanceEvent, Source};
use admission::{Admission, Widening, admit};
use message::Message;
use start::{Services, open_datasets};
pub(crate) use start::{buffer_for, open_dataset, registry, sync_columns};

use catch_up::CatchUp;
use positions::{Arrival, Positions};
use report::{lag_gauge, lag_seconds_gauge};
use state::DatasetState;
pub use state::{DatasetSummary, RunSummary};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Contract(#[from] crate::contract::ContractError),
    #[error(transparent)]
    Mapping(#[from] crate::transform::MappingError),
    #[error(transparent)]
    Sink(Box<crate::sink::SinkError>),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Registry(#[from] crate::decode::registry::RegistryError),
    #[error("{0}")]
    Stopped(String),
}

impl From<crate::sink::SinkError> for PipelineError {
    fn from(e: crate::sink::SinkError) -> Self {
        PipelineError::Sink(Box::new(e))
    }
}

/// How a run ends, and where it reports its health.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Read the high watermarks at assignment, ingest up to them, commit and return.
    pub until_caught_up: bool,
    pub health: Arc<Health>,
}

/// Run until `shutdown` resolves (or, with `until_caught_up`, until the assigned partitions are done).
pub async fn run(
    mut cfg: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, PipelineError> {
    let registry = start::registry(&cfg)?;
    // Subscribed first: a dataset whose table cannot be opened yet still gets its partitions.
    let consumer = source::subscribe(&cfg, options.health.clone())?;
    let (datasets, unopened) = open_datasets(&mut cfg, &registry).await?;
    let run_id = uuid::Uuid::now_v7().to_string();
    let (config_updates, updates) = tokio::sync::watch::channel(cfg.clone());
    let services = Services::start(&cfg, &run_id, updates).await?;
    info!(run_id = %run_id, datasets = datasets.len(), "bronze run started");
    metrics::gauge!("bronze_memory_budget_bytes").set(cfg.memory.budget_bytes as f64);
    metrics::gauge!("bronze_up").set(1.0);
    // Later changes of readiness publish themselves (see `Health`).
    options.health.publish();
    let lanes = lanes::Lanes::start(cfg.pipeline.decode_threads)?;
    let watermarks = options
        .until_caught_up
        .then(|| source::Inspector::new(&cfg))
        .transpose()?;
    let commit_turns = Arc::new(tokio::sync::Semaphore::new(
        cfg.pipeline.max_concurrent_commits,
    ));
    let mut run = Run {
        group_id: cfg.kafka.group_id.clone(),
        budget: cfg.memory.budget_bytes,
        cfg,
        consumer: Arc::new(consumer),
        run_id,
        datasets,
        positions: Positions::default(),
        lanes,
        catch_up: CatchUp::new(watermarks),
        options,
        started: Instant::now(),
        last_broker_probe: Instant::now(),
        audit: services.audit.as_ref().map(AuditHandle::recorder),
        registry,
        commit_turns,
        config_updates,
        unopened: tables::Unopened::new(unopened),
    };
    // Every line of the run carries its id (a field of the span in JSON logs).
    let span = tracing::info_span!("run", run_id = %run.run_id);
    let result = run.event_loop(shutdown).instrument(span.clone()).await;
    if result.is_err() {
        // A commit still running may land: its outcome belongs in the summary and the ledger.
        if let Err(e) = run.settle_all().instrument(span).await {
            warn!(error = %e, "a commit running when the run stopped did not finish");
        }
    }
    run.report_drift();
    let summary = run.summary();
    // The loop's ledger recorder must be gone before the ledger's last write can finish.
    drop(run.audit.take());
    let error = result.as_ref().err().map(ToString::to_string);
    services.close(&summary, error.as_deref()).await;
    result.map(|()| summary)
}

/// Widenings one message may ask for before the run gives up on it (a bug, not data).
const MAX_WIDENINGS_PER_MESSAGE: usize = 8;

struct Run {
    cfg: Config,
    group_id: String,
    budget: usize,
    consumer: Arc<Source>,
    run_id: String,
    datasets: Vec<DatasetState>,
    positions: Positions,
    catch_up: CatchUp,
    lanes: lanes::Lanes,
    options: RunOptions,
    started: Instant,
    last_broker_probe: Instant,
    audit: Option<AuditRecorder>,
    /// For the tables of fan-outs made while running.
    registry: Option<Arc<crate::decode::registry::Registry>>,
    /// Turns for running commits (`pipeline.max_concurrent_commits`).
    commit_turns: Arc<tokio::sync::Semaphore>,
    /// Tells the services beside the loop of the tables fan-outs make.
    config_updates: tokio::sync::watch::Sender<Config>,
    /// Datasets whose table could not be opened yet, retried (see `tables`).
    unopened: tables::Unopened,
}

impl Run {
    async fn event_loop(
        &mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), PipelineError> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = self.consumer.clone();
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    info!("shutdown requested: flushing and committing");
                    self.handle_rebalance().await?;
                    self.read_through_markers().await?;
                    return self.flush_all(FlushReason::Shutdown).await;
                }
                // Before `recv`: a busy consumer must not starve age flushes and gauges.
                _ = tick.tick() => {
                    self.settle_finished().await?;
                    self.handle_rebalance().await?;
                    self.resume_waiting();
                    self.open_unopened().await?;
                    self.read_through_markers().await?;
                    self.flush_due().await?;
                    self.enforce_budget().await?;
                    self.update_gauges();
                    self.report_drift();
                    self.check_broker();
                    if self.options.until_caught_up && self.caught_up_check().await? {
                        return Ok(());
                    }
                    // A period from now, not from when this tick began: a tick that took longer
                    // than the period would otherwise be due again at once and, first in the
                    // `select`, keep `recv` from ever running.
                    tick.reset();
                }
                msg = consumer.recv() => {
                    // Whatever else is ready is taken too (one turn of the loop for many messages, on
                    // the lanes), under one ingest time: rows keep their order by it, whichever thread
                    // maps them. The messages are read where librdkafka
                    // holds them; they borrow the consumer, not `self`.
                    let now_us = chrono::Utc::now().timestamp_micros();
                    let mut batch = vec![msg];
                    let mut bytes = 0;
                    // A poll that serves a rebalance returns messages of the new assignment only: the
                    // rebalance is handled right before the first of them, after the messages taken
                    // under the old assignment, and ends the batch.
                    let rebalanced = || consumer.context().has_events();
                    let mut rebalance_at = rebalanced().then_some(0);
                    // One stream for the whole poll: `recv` registers and drops a waker slot (two
                    // locks) per message.
                    let mut ready = consumer.stream();
                    while rebalance_at.is_none()
                        && batch.len() < lanes::MAX_MESSAGES
                        && bytes < lanes::MAX_BYTES
                    {
                        let Some(Some(msg)) = ready.next().now_or_never() else {
                            break;
                        };
                        bytes += msg.as_ref().map_or(0, |m| m.key_len() + m.payload_len());
                        batch.push(msg);
                        rebalance_at = rebalanced().then_some(batch.len() - 1);
                    }
                    let batch: Vec<_> = batch
                        .iter()
                        .map(|m| m.as_ref().map(|m| Message::of_kafka(m, now_us)))
                        .collect();
                    self.ingest_poll(&batch, rebalance_at).await?;
                    // A rebalance served by a poll that found no message.
                    self.handle_rebalance().await?;
                    self.settle_finished().await?;
                    // A catch-up run finishes as soon as its last message is in, not at the next tick.
                    if self.options.until_caught_up
                        && self.catch_up.read_to_targets(&self.positions)
                        && self.caught_up_check().await?
                    {
                        return Ok(());
                    }
                }
            }
        }
    }
    async fn handle_rebalance(&mut self) -> Result<(), PipelineError> {
        let events = self.consumer.context().take_events();
        if events.is_empty() {
            return Ok(());
        }
        for event in events {
            self.catch_up.rebalanced();
            match event {
                RebalanceEvent::Revoked(tps) => {
                    for tp in tps {
                        if let Some(ps) = self.positions.revoke(&tp) {
                            // Another member reports this partition's lag from now on.
                            let dataset = &self.datasets[ps.dataset].cfg.name;
                            lag_gauge(dataset, &tp).set(0.0);
                            lag_seconds_gauge(dataset, &tp).set(0.0);
                            // Whoever owns it next re-reads these rows from the table's position.
                            self.datasets[ps.dataset]
                                .buffer
                                .drop_partition(&tp.topic, tp.partition);
                        }
                        self.catch_up.revoked(&tp);
                    }
                }
                RebalanceEvent::Assigned(tps) => self.assigned(tps).await?,
            }
        }
        // Commits running now were decided under the old assignment. Taken in after it is updated, a
        // commit another member made stale re-reads only the partitions still owned.
        self.settle_all().await
    }
    /// Where a partition resumes: the offset after the table's txn version for it. Also recorded as the
    /// partition's committed position (for the lag gauge).
    async fn table_position(
        &mut self,
        d: usize,
        tp: &TopicPartition,
    ) -> Result<Option<i64>, PipelineError> {
        // A commit running now cannot hold this partition's rows (commits from before its
        // assignment were settled at the rebalance): a copy of the table, read afresh, tells its
        // position without waiting for that commit's round trips.
        if self.datasets[d].commit.is_some()
            && let Some(mut reader) = self.datasets[d].uploader.clone()
        {
            reader.refresh().await?;
            let app_id = crate::txn::streaming(&self.group_id, tp);
            let position = reader.committed_offset(&app_id).await?.map(|v| v + 1);
            if let Some(ps) = self.positions.get_mut(tp) {
                ps.committed = position;
            }
            return Ok(position);
        }
        self.settle(d).await?;
        self.read_position(d, tp).await
    }
    /// [`Run::table_position`] with no commit of the dataset running.
    async fn read_position(
        &mut self,
        d: usize,
        tp: &TopicPartition,
    ) -> Result<Option<i64>, PipelineError> {
        let ds = &mut self.datasets[d];
        if ds.needs_refresh {
            ds.sink().refresh().await?;
            ds.needs_refresh = false;
        }
        let app_id = crate::txn::streaming(&self.group_id, tp);
        let position = ds.sink().committed_offset(&app_id).await?.map(|v| v + 1);
        if let Some(ps) = self.positions.get_mut(tp) {
            ps.committed = position;
        }
        Ok(position)
    }
    async fn handle_message(
        &mut self,
        m: Message<'_>,
        tp: &TopicPartition,
    ) -> Result<(), PipelineError> {
        let d = match self.positions.arrival(tp, m.offset) {
            Arrival::Pass => return Ok(()),
            Arrival::Locate(d) => {
                if !self.find_position(d, tp, m.offset).await? {
                    return Ok(());
                }
                d
            }
            Arrival::Take(d) => d,
        };
        if let Err(e) = self.datasets[d].decoder.prepare(m.key, m.payload).await {
            return self.wait_for_registry(d, tp, &m, e);
        }
        self.positions.took(tp, m.offset, m.timestamp_ms);
        let (mut m, mut again) = (m, false);
        // Each widening changes a column for good, so a message asks for each at most once.
        for _ in 0..=MAX_WIDENINGS_PER_MESSAGE {
            let Some((w, back)) = self.ingest(d, tp, m, again)? else {
                return Ok(());
            };
            if !self.widen_column(d, tp, &back, &w).await? {
                return Ok(());
            }
            (m, again) = (back, true);
        }
        Err(PipelineError::Stopped(format!(
            "dataset `{}`: a message keeps asking for wider columns",
            self.datasets[d].cfg.name
        )))
    }
    /// A partition just assigned, whose first message is at `offset`: it reads on from there if that is
    /// its table's position (`true`), else it is sent there.
    async fn find_position(
        &mut self,
        d: usize,
        tp: &TopicPartition,
        offset: i64,
    ) -> Result<bool, PipelineError> {
        let table = self.table_position(d, tp).await?;
        match self.positions.locate(tp, offset, table) {
            Some(pos) => {
                info!(topic = %tp.topic, partition = tp.partition, from = offset, to = pos, "seeking to the table's position");
                self.seek(tp, pos)?;
                Ok(false)
            }
            None => Ok(true),
        }
    }
    /// The registry cannot give this message's writer schema: rewind the partition to the message and
    /// pause it for a backoff, so nothing is skipped and the other partitions go on.
    fn wait_for_registry(
        &mut self,
        d: usize,
        tp: &TopicPartition,
        m: &Message<'_>,
        error: RegistryError,
    ) -> Result<(), PipelineError> {
        let backoff = self.rewind_and_wait(tp, m)?;
        let dataset = &self.datasets[d].cfg.name;
        metrics::counter!("bronze_registry_waits_total", "dataset" => dataset.clone()).increment(1);
        warn!(dataset = %dataset, topic = %tp.topic, partition = tp.partition, offset = m.offset, error = %error,
            retry_in = ?backoff, "writer schema unavailable; partition waits at this message");
        Ok(())
    }
    /// Rewind `tp` to `m` and pause it for a growing backoff (see [`Run::resume_waiting`]).
    fn rewind_and_wait(
        &mut self,
        tp: &TopicPartition,
        m: &Message<'_>,
    ) -> Result<Duration, PipelineError> {
        let max = self
            .cfg
            .schema_registry
            .as_ref()
            .map_or(Duration::from_secs(30), |r| r.max_backoff);
        let Some(ps) = self.positions.get_mut(tp) else {
            return Ok(Duration::ZERO);
        };
        ps.wait_failures += 1;
        let backoff = (Duration::from_millis(250) * 2u32.pow(ps.wait_failures.min(10))).min(max);
        ps.waiting_until = Some(Instant::now() + backoff);
        ps.stopped_ts.get_or_insert(m.timestamp_ms);
        self.seek(tp, m.offset)?;
        source::pause(&self.consumer, tp);
        Ok(backoff)
    }
    /// Send `tp` back (or on) to `offset`. Messages of it already taken from the consumer are passed
    /// over: the consumer delivers from `offset` next.
    fn seek(&mut self, tp: &TopicPartition, offset: i64) -> Result<(), PipelineError> {
        source::seek(&self.consumer, tp, offset)?;
        self.positions.seek(tp, offset);
        Ok(())
    }
    /// `type_widening = "evolve"`: commit what is buffered, widen the table column (one commit that
    /// rewrites the files), take the new type on. `false` when it could not be done now: the partition
    /// then waits at the message and tries again.
    async fn widen_column(
        &mut self,
        d: usize,
        tp: &TopicPartition,
        m: &Message<'_>,
        w: &Widening,
    ) -> Result<bool, PipelineError> {
        self.flush(d, FlushReason::SchemaChange).await?;
        self.settle(d).await?;
        let ds = &mut self.datasets[d];
        let name = ds.cfg.name.clone();
        let failed = if ds.has_kept() || !ds.buffer.is_empty() {
            Some("the buffered rows are not committed yet".to_string())
        } else {
            let mut column = crate::contract::Column::new(&w.column, w.to);
            if let Some((p, s)) = w.precision_scale {
                (column.precision, column.scale) = (Some(p), Some(s));
            }
            match ds
                .sink()
                .widen_column(&w.column, &column.arrow_type())
                .await
            {
                Ok(widened) => {
                    info!(dataset = %name, column = %w.column, to = %column.arrow_type(), version = ?widened.version,
                        files_rewritten = widened.files, "table column widened");
                    metrics::counter!("bronze_columns_widened_total", "dataset" => name.clone())
                        .increment(1);
                    ds.mapper.widen(&w.column, w.to, w.precision_scale);
                    ds.buffer = buffer_for(&ds.mapper);
                    None
                }
                Err(e) => Some(e.to_string()),
            }
        };
        let Some(why) = failed else {
            return Ok(true);
        };
        let backoff = self.rewind_and_wait(tp, m)?;
        error!(dataset = %name, column = %w.column, reason = %why, retry_in = ?backoff,
            "cannot widen the column now; partition waits at this message");
        Ok(false)
    }
    /// Resume the partitions whose backoff is over; they re-read from the waiting message.
    fn resume_waiting(&mut self) {
        let now = Instant::now();
        for (tp, ps) in self.positions.iter_mut() {
            if ps.waiting_until.is_some_and(|t| now >= t) {
                ps.waiting_until = None;
                ps.stopped_ts = None;
                source::resume(&self.consumer, tp);
            }
        }
    }
    /// Admit one message into its dataset's buffer (or dead letters). Returns it with the widening it
    /// needs first, if any; `again` when it was counted already.
    fn ingest<'m>(
        &mut self,
        d: usize,
        tp: &TopicPartition,
        m: Message<'m>,
        again: bool,
    ) -> Result<Option<(Widening, Message<'m>)>, PipelineError> {
        let now = Instant::now();
        let ds = &mut self.datasets[d];
        // Borrowed: this runs for every message.
        let dataset = &ds.cfg.name;
        if !again {
            ds.summary.events += 1;
        }
        let admission = admit(&ds.cfg, &ds.decoder, &mut ds.mapper, &m);
        let rejection = match admission {
            Admission::Reject(r) if r.fail || r.widen.is_some() => r,
            standing => {
                if matches!(standing, Admission::Row(_)) {
                    sync_columns(&ds.mapper, &mut ds.buffer);
                }
                let mut tally = lanes::Tally::default();
                ds.buffer
                    .fill(&tp.topic, tp.partition, m.offset, now, |seg| {
                        lanes::buffer(standing, &m, seg, &ds.redeliveries, &mut tally, dataset)
                    });
                ds.summary.skipped += tally.skipped();
                ds.summary.redeliveries += tally.redeliveries;
                tally.report(dataset, &mut ds.mapper);
                return Ok(None);
            }
        };
        if let Some(w) = rejection.widen {
            return Ok(Some((w, m)));
        }
        let dataset = dataset.clone();
        metrics::counter!("bronze_decode_errors_total", "dataset" => dataset.clone(), "kind" => rejection.reason)
            .increment(1);
        // `fail`: nothing is skipped silently, and the offset is never committed past the message.
        error!(dataset = %dataset, topic = %tp.topic, partition = tp.partition, offset = m.offset, kind = rejection.reason,
            reason = %rejection.error, "cannot ingest message; partition stopped until the input or the contract is fixed");
        ds.summary.errors += 1;
        self.options
            .health
            .partition_stopped(&dataset, &tp.topic, tp.partition);
        source::pause(&self.consumer, tp);
        if let Some(ps) = self.positions.get_mut(tp) {
            ps.stopped = true;
            ps.stopped_ts = Some(m.timestamp_ms);
            ps.next_offset = Some(m.offset);
        }
        Ok(None)
    }
    fn summary(&self) -> RunSummary {
        RunSummary {
            run_id: self.run_id.clone(),
            elapsed: self.started.elapsed(),
            datasets: self
                .datasets
                .iter()
                .map(|d| (d.cfg.name.clone(), d.summary.clone(), d.version()))
                .collect(),
        }
    }
}
