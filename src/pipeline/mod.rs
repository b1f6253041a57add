//! The run loop: source → decode → transform → buffer → sink, with the position bookkeeping that
//! makes it exactly once.
//!
//! Positions: when a partition is assigned its position is unknown. On its first message the loop
//! reads the partition's txn version from the dataset's table and, if the message is not the one right
//! after it, seeks there and drops messages until it arrives. So a partition always resumes from the
//! table, whatever the group offsets say.

pub(crate) mod admission;
mod lanes;
pub(crate) mod message;
pub(crate) mod start;
mod state;

use rdkafka::error::KafkaError;
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::Consumer;
use tracing::{Instrument, debug, error, info, warn};

use crate::audit::{AuditHandle, AuditRecord, AuditRecorder};
use crate::buffer::{FlushReason, Segment, TopicPartition};
use crate::config::Config;
use crate::decode::registry::RegistryError;
use crate::observability::Health;
use crate::sink::{self, CommitContext, CommitOutcome};
use crate::source::{self, RebalanceEvent, Source};
use admission::{Admission, Widening, admit};
use message::Message;
use start::{Services, open_datasets};
pub(crate) use start::{buffer_for, open_dataset, registry, sync_columns};

use state::{Attempt, Commit, Committed, DatasetState, Flushed, PartitionState, Phase};
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
    cfg: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, PipelineError> {
    let datasets = open_datasets(&cfg).await?;
    let consumer = source::subscribe(&cfg, options.health.clone())?;
    let run_id = uuid::Uuid::now_v7().to_string();
    let services = Services::start(&cfg, &run_id).await?;
    info!(run_id = %run_id, datasets = datasets.len(), "bronze run started");
    metrics::gauge!("bronze_memory_budget_bytes").set(cfg.memory.budget_bytes as f64);
    metrics::gauge!("bronze_up").set(1.0);
    // Later changes of readiness publish themselves (see `Health`).
    options.health.publish();
    let lanes = lanes::Lanes::start(cfg.pipeline.decode_threads)?;
    let watermarks = if options.until_caught_up {
        Some(source::Inspector::new(&cfg)?)
    } else {
        None
    };
    let mut run = Run {
        group_id: cfg.kafka.group_id.clone(),
        budget: cfg.memory.budget_bytes,
        cfg,
        consumer: Arc::new(consumer),
        run_id,
        datasets,
        partitions: Default::default(),
        repositioned: Default::default(),
        lanes,
        targets: HashMap::new(),
        group_targets: HashMap::new(),
        watermarks,
        last_group_check: None,
        own_committed: false,
        options,
        started: Instant::now(),
        ever_assigned: false,
        last_broker_probe: Instant::now(),
        audit: services.audit.as_ref().map(AuditHandle::recorder),
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
    /// Looked up several times per message: a fast hash, the keys are the broker's.
    partitions: foldhash::HashMap<TopicPartition, PartitionState>,
    /// `--until-caught-up`: high watermark per partition, read when it was assigned.
    targets: HashMap<TopicPartition, i64>,
    /// `--until-caught-up`: every partition of the subscribed topics (its dataset and high watermark),
    /// read at the first assignment. A member's own partitions cannot tell when the group is done: a
    /// partition on its way between members (revoked, not yet assigned) belongs to none of them, and a
    /// member that joins may first be assigned nothing. So a member stops only once the table holds
    /// every one of these.
    group_targets: HashMap<TopicPartition, (usize, i64)>,
    /// `--until-caught-up`: a client of its own for the watermarks. Asked on the group consumer's
    /// connection, a request waits behind the fetch the broker is holding there (up to
    /// `fetch.wait.max.ms`: 454 ms against 6 ms with 10 ms, measured on the local broker).
    watermarks: Option<source::Inspector>,
    last_group_check: Option<Instant>,
    /// Whether what this member read of its current partitions is committed since they caught up.
    own_committed: bool,
    /// Partitions sent to another offset while the messages of one poll are handled.
    repositioned: foldhash::HashSet<TopicPartition>,
    lanes: lanes::Lanes,
    options: RunOptions,
    started: Instant,
    ever_assigned: bool,
    last_broker_probe: Instant,
    audit: Option<AuditRecorder>,
}

/// How long `--until-caught-up` waits for a first assignment before giving up.
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);

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
                    return self.flush_all(FlushReason::Shutdown).await;
                }
                // Before `recv`: a busy consumer must not starve age flushes and gauges.
                _ = tick.tick() => {
                    self.settle_finished().await?;
                    self.handle_rebalance().await?;
                    self.resume_waiting();
                    self.flush_due().await?;
                    self.enforce_budget().await?;
                    self.update_gauges();
                    self.report_drift();
                    self.check_broker();
                    if self.options.until_caught_up && self.caught_up_check().await? {
                        return Ok(());
                    }
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
                        && self.read_to_targets()
                        && self.caught_up_check().await?
                    {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handle one poll's messages. A dataset's ready messages go through the lanes a turn at a time
    /// (as many as fit before a flush is due on rows), its partitions split over the threads; the rest,
    /// and what the lanes leave, are handled one by one in the poll's order.
    async fn ingest_poll(
        &mut self,
        batch: &[Result<Message<'_>, &KafkaError>],
        rebalance_at: Option<usize>,
    ) -> Result<(), PipelineError> {
        self.repositioned.clear();
        let mut taken = vec![false; batch.len()];
        // Partitions whose remaining messages of the poll are handled in turn.
        let mut closed: foldhash::HashSet<TopicPartition> = Default::default();
        let before_rebalance = &batch[..rebalance_at.unwrap_or(batch.len())];
        if before_rebalance.len() >= lanes::MIN_MESSAGES
            && self
                .partitions
                .values()
                .any(|ps| ps.phase == Phase::Unknown)
        {
            self.find_positions(before_rebalance).await?;
        }
        let ready = self.ready_for_lanes(before_rebalance);
        for (d, indices) in ready.into_iter().enumerate() {
            let mut rest = &indices[..];
            while rest.len() >= lanes::MIN_MESSAGES {
                let ds = &self.datasets[d];
                // A turn never overshoots a flush on rows by more than a turn's minimum.
                let room = ds.cfg.flush.max_rows.saturating_sub(ds.buffer.rows());
                if room < lanes::MIN_MESSAGES {
                    break;
                }
                let (turn, after) = rest.split_at(room.min(rest.len()));
                self.lane_turn(d, batch, turn, &mut taken, &mut closed);
                rest = after;
                self.flush_due().await?;
                self.enforce_budget().await?;
            }
        }
        // Consecutive messages mostly share a partition: its name is made once for them.
        let mut tp: TopicPartition = Default::default();
        for (i, msg) in batch.iter().enumerate() {
            if rebalance_at == Some(i) {
                self.handle_rebalance().await?;
            }
            if taken[i] {
                continue;
            }
            match msg {
                Ok(m) => {
                    if (tp.topic.as_str(), tp.partition) != (m.topic, m.partition) {
                        tp = TopicPartition::new(m.topic, m.partition);
                    }
                    self.handle_message(*m, &tp).await?
                }
                Err(e) => {
                    metrics::counter!("bronze_kafka_errors_total").increment(1);
                    warn!(error = %e, "kafka consumer error");
                }
            }
            self.flush_due().await?;
            self.enforce_budget().await?;
        }
        Ok(())
    }

    /// [`Run::find_position`] for the partitions just assigned, at their first message in `batch`: the
    /// first poll after an assignment (often the largest) can then go through the lanes too.
    async fn find_positions(
        &mut self,
        batch: &[Result<Message<'_>, &KafkaError>],
    ) -> Result<(), PipelineError> {
        let mut firsts: Vec<(TopicPartition, i64)> = Vec::new();
        for m in batch.iter().flatten() {
            if firsts.iter().any(
                |(
                    TopicPartition {
                        topic: t,
                        partition: p,
                    },
                    _,
                )| (t.as_str(), *p) == (m.topic, m.partition),
            ) {
                continue;
            }
            firsts.push((TopicPartition::new(m.topic, m.partition), m.offset));
        }
        for (tp, offset) in firsts {
            let Some(ps) = self.partitions.get(&tp) else {
                continue;
            };
            if ps.phase == Phase::Unknown && !ps.stopped {
                let d = ps.dataset;
                self.find_position(d, &tp, offset).await?;
            }
        }
        Ok(())
    }

    /// Per dataset, the messages of `batch` (by index) the lanes may take: of each partition that is
    /// reading, the messages up to the first one whose writer schema is still to be fetched. None for a
    /// dataset with too few of them to be worth a turn.
    fn ready_for_lanes(&self, batch: &[Result<Message<'_>, &KafkaError>]) -> Vec<Vec<usize>> {
        let mut ready: Vec<Vec<usize>> = vec![Vec::new(); self.datasets.len()];
        if batch.len() < lanes::MIN_MESSAGES {
            return ready;
        }
        let mut held: Vec<(&str, i32)> = Vec::new();
        let mut last: Option<((&str, i32), Option<usize>)> = None;
        for (i, m) in batch.iter().enumerate() {
            let Ok(m) = m else { continue };
            let key = (m.topic, m.partition);
            let d = match last {
                Some((k, d)) if k == key => d,
                _ => {
                    let d = self
                        .partitions
                        .get(&TopicPartition::new(m.topic, m.partition))
                        .filter(|ps| ps.phase == Phase::Ready && !ps.stopped)
                        .filter(|ps| ps.waiting_until.is_none())
                        .map(|ps| ps.dataset);
                    last = Some((key, d));
                    d
                }
            };
            let Some(d) = d else { continue };
            if held.contains(&key) {
                continue;
            }
            if !self.datasets[d].decoder.is_prepared(m.key, m.payload) {
                held.push(key);
                continue;
            }
            ready[d].push(i);
        }
        for r in &mut ready {
            if r.len() < lanes::MIN_MESSAGES {
                r.clear();
            }
        }
        ready
    }

    /// Ingest `turn` (indices of `batch`, all of dataset `d`) on the lanes, its partitions split over
    /// them by [`lanes::plan`]. Marks in `taken` what they ingested; a partition a lane left, or that is no longer reading where
    /// the poll found it, joins `closed`: its remaining messages are handled in turn.
    fn lane_turn(
        &mut self,
        d: usize,
        batch: &[Result<Message<'_>, &KafkaError>],
        turn: &[usize],
        taken: &mut [bool],
        closed: &mut foldhash::HashSet<TopicPartition>,
    ) {
        let message = |i: usize| *batch[i].as_ref().expect("only messages are ready");
        // The turn's partitions, each with its messages in order.
        let mut groups: Vec<(TopicPartition, Vec<usize>)> = Vec::new();
        let mut last: Option<usize> = None;
        for &i in turn {
            let m = message(i);
            let g = match last {
                Some(g)
                    if (groups[g].0.topic.as_str(), groups[g].0.partition)
                        == (m.topic, m.partition) =>
                {
                    g
                }
                _ => match groups.iter().position(
                    |(
                        TopicPartition {
                            topic: t,
                            partition: p,
                        },
                        _,
                    )| (t.as_str(), *p) == (m.topic, m.partition),
                ) {
                    Some(g) => g,
                    None => {
                        groups.push((TopicPartition::new(m.topic, m.partition), Vec::new()));
                        groups.len() - 1
                    }
                },
            };
            last = Some(g);
            groups[g].1.push(i);
        }
        // Only partitions still reading from where the poll found them (a commit settled between turns
        // may have sent one elsewhere), and only messages past those ingested.
        groups.retain(|(tp, indices)| {
            let reading = !closed.contains(tp)
                && !self.repositioned.contains(tp)
                && self.partitions.get(tp).is_some_and(|ps| {
                    ps.dataset == d
                        && ps.phase == Phase::Ready
                        && !ps.stopped
                        && ps.waiting_until.is_none()
                        && ps
                            .next_offset
                            .is_none_or(|n| message(indices[0]).offset >= n)
                })
                && indices
                    .windows(2)
                    .all(|w| message(w[0]).offset < message(w[1]).offset);
            if !reading {
                closed.insert(tp.clone());
            }
            reading
        });
        if groups.is_empty() {
            return;
        }
        let now = Instant::now();
        let loads: Vec<usize> = groups.iter().map(|(_, ix)| ix.len()).collect();
        let plan = lanes::plan(&loads, self.lanes.threads());
        let threads = plan.iter().map(|c| c.lane + 1).max().unwrap_or(1);
        let ds = &mut self.datasets[d];
        sync_columns(&ds.mapper, &mut ds.buffer);
        let generation = ds.mapper.generation();
        ds.spares.retain(|m| m.generation() == generation);
        while ds.spares.len() < threads {
            ds.spares.push(lanes::spare(&ds.mapper));
        }
        // Segments for the chunks that do not start their partition's messages, made before the
        // partitions' last segments are lent.
        let mut segments: Vec<Option<Segment>> = plan
            .iter()
            .map(|c| {
                let (TopicPartition { topic, partition }, indices) = &groups[c.group];
                (c.start > 0).then(|| {
                    let first = message(indices[c.start]).offset;
                    ds.buffer.segment(topic, *partition, first, c.end - c.start)
                })
            })
            .collect();
        let wanted: Vec<(&str, i32, i64, usize)> = groups
            .iter()
            .enumerate()
            .map(
                |(
                    g,
                    (
                        TopicPartition {
                            topic: t,
                            partition: p,
                        },
                        ix,
                    ),
                )| {
                    let first_chunk = plan.iter().find(|c| c.group == g && c.start == 0);
                    let rows = first_chunk.map_or(ix.len(), |c| c.end);
                    (t.as_str(), *p, message(ix[0]).offset, rows)
                },
            )
            .collect();
        let mut tails: Vec<Option<&mut Segment>> =
            ds.buffer.lend(&wanted, now).into_iter().map(Some).collect();
        let mut lanes: Vec<lanes::Lane> = (0..threads)
            .map(|_| lanes::Lane {
                chunks: Vec::new(),
                mapper: ds.spares.pop().expect("one spare per lane"),
            })
            .collect();
        for (c, segment) in plan.iter().zip(&mut segments) {
            let target = match segment.take() {
                Some(seg) => lanes::Target::New(Box::new(seg)),
                None => lanes::Target::Tail(
                    tails[c.group]
                        .take()
                        .expect("one chunk starts each partition"),
                ),
            };
            lanes[c.lane].chunks.push(lanes::Chunk {
                group: c.group,
                start: c.start,
                target,
                messages: groups[c.group].1[c.start..c.end]
                    .iter()
                    .map(|&i| message(i))
                    .collect(),
                ingested: 0,
                tally: Default::default(),
            });
        }
        let ctx = lanes::LaneContext {
            cfg: &ds.cfg,
            decoder: &ds.decoder,
            mapper: &ds.mapper,
            redeliveries: &ds.redeliveries,
        };
        self.lanes.run(&ctx, &mut lanes);
        // Back in each partition's order: a chunk stands only if the chunks before it were ingested
        // whole.
        let mut chunks: Vec<lanes::Outcome> = Vec::with_capacity(plan.len());
        for lane in lanes {
            chunks.extend(lane.chunks.into_iter().map(lanes::Chunk::outcome));
            ds.spares.push(lane.mapper);
        }
        chunks.sort_by_key(|c| (c.group, c.start));
        let mut ingested_total = 0;
        let mut handed_back = 0;
        // Per group: messages ingested from its first, and whether a chunk stopped short.
        let mut ingested_of = vec![0usize; groups.len()];
        let mut stopped = vec![false; groups.len()];
        for chunk in chunks {
            let g = chunk.group;
            if stopped[g] {
                continue;
            }
            let (TopicPartition { topic, partition }, indices) = &groups[g];
            ingested_total += chunk.ingested;
            ingested_of[g] += chunk.ingested;
            ds.summary.events += chunk.ingested as u64;
            ds.summary.skipped += chunk.tally.skipped();
            ds.summary.redeliveries += chunk.tally.redeliveries;
            for &i in &indices[chunk.start..chunk.start + chunk.ingested] {
                taken[i] = true;
            }
            if chunk.ingested < chunk.messages {
                stopped[g] = true;
                handed_back += 1;
            }
            chunk.tally.report(&ds.cfg.name, &mut ds.mapper);
            if let Some(seg) = chunk.segment
                && chunk.ingested > 0
            {
                ds.buffer.attach(topic, *partition, seg);
            }
        }
        ds.buffer.recount();
        for (g, ((tp, indices), ingested)) in groups.iter().zip(ingested_of).enumerate() {
            if stopped[g] {
                closed.insert(tp.clone());
            }
            if ingested > 0
                && let Some(ps) = self.partitions.get_mut(tp)
            {
                ps.consumed.increment(ingested as u64);
                ps.wait_failures = 0;
                ps.next_offset = Some(message(indices[ingested - 1]).offset + 1);
                ps.buffered_ts
                    .get_or_insert(message(indices[0]).timestamp_ms);
            }
        }
        metrics::counter!("bronze_lane_messages_total", "dataset" => ds.cfg.name.clone())
            .increment(ingested_total as u64);
        if handed_back > 0 {
            metrics::counter!("bronze_lane_handed_back_total", "dataset" => ds.cfg.name.clone())
                .increment(handed_back);
        }
    }

    async fn handle_rebalance(&mut self) -> Result<(), PipelineError> {
        let events = self.consumer.context().take_events();
        if events.is_empty() {
            return Ok(());
        }
        for event in events {
            self.own_committed = false;
            match event {
                RebalanceEvent::Revoked(tps) => {
                    for tp in tps {
                        if let Some(ps) = self.partitions.remove(&tp) {
                            // Another member reports this partition's lag from now on.
                            let dataset = &self.datasets[ps.dataset].cfg.name;
                            lag_gauge(dataset, &tp).set(0.0);
                            lag_seconds_gauge(dataset, &tp).set(0.0);
                            // Whoever owns it next re-reads these rows from the table's position.
                            self.datasets[ps.dataset]
                                .buffer
                                .drop_partition(&tp.topic, tp.partition);
                        }
                        self.targets.remove(&tp);
                    }
                }
                RebalanceEvent::Assigned(tps) => {
                    // High watermarks of the assigned partitions that have something in them. At the
                    // first assignment they are among the group's, read just now for all partitions.
                    let highs: HashMap<TopicPartition, i64> = match &self.watermarks {
                        None => HashMap::new(),
                        Some(client) if !self.ever_assigned => {
                            self.group_targets = read_group_targets(&self.cfg, client)?;
                            self.group_targets
                                .iter()
                                .map(|(tp, &(_, high))| (tp.clone(), high))
                                .collect()
                        }
                        Some(client) => tokio::task::block_in_place(|| client.watermarks_of(&tps))?
                            .into_iter()
                            .filter(|(_, (low, high))| high > low)
                            .map(|(tp, (_, high))| (tp, high))
                            .collect(),
                    };
                    self.ever_assigned = true;
                    for tp in tps {
                        let Some(d) = self.cfg.dataset_for_topic(&tp.topic) else {
                            warn!(topic = %tp.topic, "assigned a topic no dataset claims; ignoring it");
                            continue;
                        };
                        self.datasets[d].needs_refresh = true;
                        if let Some(&high) = highs.get(&tp) {
                            debug!(topic = %tp.topic, partition = tp.partition, high, "catch-up target");
                            self.targets.insert(tp.clone(), high);
                        }
                        let consumed = metrics::counter!("bronze_events_consumed_total",
                            "dataset" => self.cfg.datasets[d].name.clone(), "topic" => tp.topic.clone());
                        self.partitions.insert(tp, PartitionState::new(d, consumed));
                    }
                }
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
        if let Some(ps) = self.partitions.get_mut(tp) {
            ps.committed = position;
        }
        Ok(position)
    }

    async fn handle_message(
        &mut self,
        m: Message<'_>,
        tp: &TopicPartition,
    ) -> Result<(), PipelineError> {
        // Taken from the consumer before its partition was sent elsewhere: the consumer delivers
        // from the new position.
        if !self.repositioned.is_empty() && self.repositioned.contains(tp) {
            return Ok(());
        }
        let Some(ps) = self.partitions.get(tp) else {
            return Ok(());
        };
        if ps.stopped {
            return Ok(());
        }
        let d = ps.dataset;
        match ps.phase {
            Phase::Unknown => {
                if !self.find_position(d, tp, m.offset).await? {
                    return Ok(());
                }
            }
            Phase::Seeking(target) => {
                if m.offset < target {
                    return Ok(());
                }
                if m.offset > target {
                    warn!(topic = %tp.topic, partition = tp.partition, expected = target, got = m.offset,
                        "offsets missing from the log (retention or compaction); continuing");
                }
                self.set_phase(tp, Phase::Ready);
            }
            Phase::Ready => {}
        }
        let ps = self.partitions.get_mut(tp).expect("checked above");
        if ps.next_offset.is_some_and(|next| m.offset < next) {
            return Ok(());
        }
        if let Err(e) = self.datasets[d].decoder.prepare(m.key, m.payload).await {
            return self.wait_for_registry(d, tp, &m, e);
        }
        let ps = self.partitions.get_mut(tp).expect("checked above");
        ps.consumed.increment(1);
        ps.wait_failures = 0;
        ps.next_offset = Some(m.offset + 1);
        ps.buffered_ts.get_or_insert(m.timestamp_ms);
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
        match self.table_position(d, tp).await? {
            Some(pos) if offset != pos => {
                info!(topic = %tp.topic, partition = tp.partition, from = offset, to = pos, "seeking to the table's position");
                self.seek(tp, pos)?;
                Ok(false)
            }
            _ => {
                self.set_phase(tp, Phase::Ready);
                Ok(true)
            }
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
        let Some(ps) = self.partitions.get_mut(tp) else {
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
        self.repositioned.insert(tp.clone());
        self.set_phase(tp, Phase::Seeking(offset));
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
        let failed = if ds.pending.is_some() || !ds.buffer.is_empty() {
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
        for (tp, ps) in self.partitions.iter_mut() {
            if ps.waiting_until.is_some_and(|t| now >= t) {
                ps.waiting_until = None;
                ps.stopped_ts = None;
                source::resume(&self.consumer, tp);
            }
        }
    }

    fn set_phase(&mut self, tp: &TopicPartition, phase: Phase) {
        if let Some(ps) = self.partitions.get_mut(tp) {
            ps.phase = phase;
            if phase != Phase::Ready {
                ps.next_offset = None;
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
        if let Some(ps) = self.partitions.get_mut(tp) {
            ps.stopped = true;
            ps.stopped_ts = Some(m.timestamp_ms);
            ps.next_offset = Some(m.offset);
        }
        Ok(None)
    }

    async fn flush_due(&mut self) -> Result<(), PipelineError> {
        let now = Instant::now();
        for d in 0..self.datasets.len() {
            let ds = &self.datasets[d];
            let retry_ready = ds.retry_at.is_none_or(|t| now >= t);
            if ds.pending.is_some() && retry_ready {
                self.flush(d, FlushReason::Age).await?;
            } else if let Some(reason) = ds.buffer.due(&ds.cfg.flush, now)
                && ds.pending.is_none()
            {
                self.flush(d, reason).await?;
            }
        }
        Ok(())
    }

    /// Write and commit dataset `d`'s buffer (or its pending batch from a failed attempt) in the
    /// background: the loop goes on reading while the batch is encoded and committed. One commit per
    /// dataset at a time, in order: a running one is settled first (the wait is the backpressure).
    async fn flush(&mut self, d: usize, reason: FlushReason) -> Result<(), PipelineError> {
        self.settle(d).await?;
        let ds = &mut self.datasets[d];
        let (flushed, memory, rows) = match ds.pending.take() {
            Some(batch) => {
                let (memory, rows) = (batch.batch.memory_bytes(), batch.batch.rows());
                (Flushed::Kept(batch), memory, rows)
            }
            None => {
                let Some(rows) = ds.buffer.take_unbuilt() else {
                    return Ok(());
                };
                for ps in self.partitions.values_mut().filter(|p| p.dataset == d) {
                    if let Some(ts) = ps.buffered_ts.take() {
                        ps.pending_ts = Some(ts);
                    }
                }
                let (memory, count) = (rows.bytes(), rows.rows());
                let flushed = Flushed::Taken {
                    rows,
                    id: uuid::Uuid::now_v7().to_string(),
                    started_ms: chrono::Utc::now().timestamp_millis(),
                };
                (flushed, memory, count)
            }
        };
        let ds = &mut self.datasets[d];
        let ctx = CommitContext {
            group_id: self.group_id.clone(),
            run_id: self.run_id.clone(),
            dataset: ds.cfg.name.clone(),
            started_ms: flushed.started_ms(),
        };
        let writers = match reason {
            FlushReason::CaughtUp | FlushReason::Shutdown => {
                self.cfg.pipeline.final_flush_writers_for(rows)
            }
            _ => 1,
        };
        let sinks = ds.lend_sinks();
        let task = tokio::spawn(commit_batch(sinks, flushed, ctx, reason, writers));
        ds.commit = Some(Commit { task, memory });
        Ok(())
    }

    /// Wait for dataset `d`'s running commit, if any, and take in its outcome.
    async fn settle(&mut self, d: usize) -> Result<(), PipelineError> {
        let Some(commit) = self.datasets[d].commit.take() else {
            return Ok(());
        };
        let done = commit.task.await.map_err(|e| {
            PipelineError::Stopped(format!(
                "dataset `{}`: the commit task failed: {e}",
                self.datasets[d].cfg.name
            ))
        })?;
        self.committed(d, done).await
    }

    /// Take in the outcome of every commit that has finished, without waiting for the others.
    async fn settle_finished(&mut self) -> Result<(), PipelineError> {
        for d in 0..self.datasets.len() {
            if self.datasets[d]
                .commit
                .as_ref()
                .is_some_and(|c| c.task.is_finished())
            {
                self.settle(d).await?;
            }
        }
        Ok(())
    }

    async fn settle_all(&mut self) -> Result<(), PipelineError> {
        for d in 0..self.datasets.len() {
            self.settle(d).await?;
        }
        Ok(())
    }

    /// A commit's outcome: positions, group offsets and metrics when it went in; re-reading from the
    /// table when another member was first; the batch kept for a retry when it failed.
    async fn committed(&mut self, d: usize, done: Committed) -> Result<(), PipelineError> {
        let Committed {
            sinks,
            reason,
            attempt,
            elapsed,
        } = done;
        let ds = &mut self.datasets[d];
        ds.return_sinks(sinks);
        let Attempt {
            batch: pending,
            dead_letters,
            result,
        } = attempt.map_err(|e| {
            PipelineError::Stopped(format!(
                "dataset `{}`: cannot build the Arrow batch: {e}",
                ds.cfg.name
            ))
        })?;
        let (batch, batch_id) = (&pending.batch, pending.id.as_str());
        if let Some(recorded) = dead_letters {
            for (reason, n) in &recorded.by_reason {
                metrics::counter!("bronze_dead_letters_total", "dataset" => ds.cfg.name.clone(), "reason" => reason.clone())
                    .increment(*n as u64);
            }
            ds.summary.dead_lettered += recorded.written() as u64;
            info!(dataset = %ds.cfg.name, written = recorded.written(), already_recorded = recorded.already_recorded,
                reasons = ?recorded.by_reason, batch_id = %batch_id, "dead letters committed");
        }
        match result {
            Ok(CommitOutcome::Committed {
                version,
                files,
                bytes,
                conflicts,
                table_files,
            }) => {
                let rows = batch.rows();
                let name = ds.cfg.name.clone();
                metrics::counter!("bronze_flushes_total", "dataset" => name.clone(), "reason" => reason.as_str()).increment(1);
                metrics::counter!("bronze_rows_written_total", "dataset" => name.clone())
                    .increment(rows as u64);
                metrics::counter!("bronze_bytes_written_total", "dataset" => name.clone())
                    .increment(bytes.max(0) as u64);
                metrics::counter!("bronze_files_written_total", "dataset" => name.clone())
                    .increment(files.len() as u64);
                for size in &files {
                    metrics::histogram!("bronze_file_size_bytes", "dataset" => name.clone())
                        .record(*size as f64);
                }
                if let Some(n) = table_files {
                    metrics::gauge!("bronze_table_files", "dataset" => name.clone()).set(n as f64);
                }
                let files = files.len();
                metrics::counter!("bronze_duplicates_dropped_total", "dataset" => name.clone())
                    .increment(batch.duplicates_dropped as u64);
                metrics::histogram!("bronze_flush_duration_seconds", "dataset" => name.clone())
                    .record(elapsed.as_secs_f64());
                metrics::gauge!("bronze_last_commit_timestamp_seconds", "dataset" => name.clone())
                    .set(chrono::Utc::now().timestamp() as f64);
                ds.redeliveries.extend(batch.source_ids.iter().copied());
                ds.adopt_table_columns();
                ds.summary.rows_written += rows as u64;
                ds.summary.duplicates_dropped += batch.duplicates_dropped as u64;
                ds.summary.files += files as u64;
                ds.summary.bytes += bytes.max(0) as u64;
                ds.summary.commits += 1;
                ds.retry_at = None;
                ds.failures = 0;
                self.options.health.commit_result(&name, None);
                info!(dataset = %name, version, rows, files, bytes, conflicts, duplicates = batch.duplicates_dropped,
                    reason = reason.as_str(), batch_id = %batch_id, "committed");
                let positions: Vec<(TopicPartition, i64)> = batch
                    .ranges
                    .iter()
                    .map(|r| (r.topic_partition(), r.last + 1))
                    .filter(|(tp, _)| self.partitions.contains_key(tp))
                    .collect();
                for (tp, next) in &positions {
                    if let Some(ps) = self.partitions.get_mut(tp) {
                        ps.committed = Some(*next);
                    }
                }
                let now = Instant::now();
                for ps in self.partitions.values_mut().filter(|p| p.dataset == d) {
                    ps.pending_ts = None;
                    if ps.buffered_ts.is_none() {
                        ps.settled_since = now;
                    }
                }
                source::commit_group_offsets(&self.consumer, &positions);
            }
            Ok(CommitOutcome::Stale { partitions }) => {
                warn!(dataset = %ds.cfg.name, stale = ?partitions,
                    "another member already committed some of these offsets; batch dropped, re-reading from the table");
                metrics::counter!("bronze_stale_batches_total", "dataset" => ds.cfg.name.clone())
                    .increment(1);
                if let Some(a) = &self.audit {
                    a.record(AuditRecord::batch_dropped(
                        &self.run_id,
                        &ds.cfg.name,
                        batch_id,
                        batch.rows_in,
                    ));
                }
                ds.needs_refresh = true;
                ds.retry_at = None;
                ds.failures = 0;
                // The whole batch is gone, so every partition in it that is still ours is read again from
                // the table's position, or from the batch's first offset where the table has none.
                for r in &batch.ranges {
                    let tp = r.topic_partition();
                    self.datasets[d]
                        .buffer
                        .drop_partition(&tp.topic, tp.partition);
                    if let Some(ps) = self.partitions.get_mut(&tp) {
                        ps.buffered_ts = None;
                        ps.pending_ts = None;
                    }
                    if self.partitions.contains_key(&tp) {
                        let pos = self.read_position(d, &tp).await?.unwrap_or(r.first);
                        self.seek(&tp, pos)?;
                    }
                }
            }
            Err(e) => {
                ds.failures += 1;
                let backoff = Duration::from_millis(250 * 2u64.pow(ds.failures.min(4)));
                metrics::counter!("bronze_commit_errors_total", "dataset" => ds.cfg.name.clone())
                    .increment(1);
                error!(dataset = %ds.cfg.name, error = %e, retry_in = ?backoff, "commit failed; batch kept for retry");
                if let Some(a) = &self.audit {
                    a.record(AuditRecord::commit_failed(
                        &self.run_id,
                        &ds.cfg.name,
                        batch_id,
                        &e.to_string(),
                    ));
                }
                self.options
                    .health
                    .commit_result(&ds.cfg.name, Some(e.to_string()));
                ds.retry_at = Some(Instant::now() + backoff);
                ds.pending = Some(pending);
            }
        }
        Ok(())
    }

    async fn flush_all(&mut self, reason: FlushReason) -> Result<(), PipelineError> {
        for d in 0..self.datasets.len() {
            for attempt in 0..5 {
                self.flush(d, reason).await?;
                self.settle(d).await?;
                if self.datasets[d].pending.is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
            if self.datasets[d].pending.is_some() {
                return Err(PipelineError::Stopped(format!(
                    "dataset `{}`: could not commit its last batch; it will be re-read on restart",
                    self.datasets[d].cfg.name
                )));
            }
        }
        Ok(())
    }

    /// Keep memory under the budget. Buffers and the batches being committed get half of it: a commit
    /// holds its rows twice for a while (Arrow and encoded Parquet), and builders over-allocate as they
    /// grow. Over half, a running commit is waited for, or else the largest buffer is flushed; over the
    /// whole budget (batches that cannot be committed right now), the partitions of those datasets are
    /// paused until their batches are committed.
    async fn enforce_budget(&mut self) -> Result<(), PipelineError> {
        let used = |ds: &[DatasetState]| ds.iter().map(DatasetState::memory_bytes).sum::<usize>();
        let flush_at = self.budget / 2;
        let mut attempts = 0;
        while used(&self.datasets) >= flush_at && attempts < 2 * self.datasets.len() {
            attempts += 1;
            // Waiting frees the batch's memory; flushing another buffer now would only add a commit.
            if let Some(running) =
                (0..self.datasets.len()).find(|&d| self.datasets[d].commit.is_some())
            {
                self.settle(running).await?;
                continue;
            }
            let Some(largest) = (0..self.datasets.len())
                .filter(|&d| {
                    self.datasets[d].pending.is_none() && !self.datasets[d].buffer.is_empty()
                })
                .max_by_key(|&d| self.datasets[d].buffer.bytes())
            else {
                break;
            };
            self.flush(largest, FlushReason::Memory).await?;
        }
        let over = used(&self.datasets) >= self.budget;
        for (tp, ps) in self.partitions.iter_mut() {
            // A waiting partition (registry, widening) is paused already and resumes on its own clock.
            let ds = &self.datasets[ps.dataset];
            // Also while a retry is running: the failed batch is in the commit then, not pending.
            let blocked =
                over && (ds.pending.is_some() || ds.commit.is_some()) && ps.waiting_until.is_none();
            if blocked && !ps.paused_for_memory && !ps.stopped {
                source::pause(&self.consumer, tp);
                ps.paused_for_memory = true;
            } else if !blocked && ps.paused_for_memory {
                source::resume(&self.consumer, tp);
                ps.paused_for_memory = false;
            }
        }
        Ok(())
    }

    /// Drift the mappers saw: every affected message is counted; the first sighting of each kind of
    /// drift on a column in this run is logged (old and new type) and recorded in the ledger.
    fn report_drift(&mut self) {
        for ds in &mut self.datasets {
            for e in ds.mapper.take_drift() {
                let (kind, action) = (e.kind.as_str(), e.action);
                if action == "review" && ds.review_pending.insert(e.column.clone()) {
                    metrics::gauge!("bronze_schema_proposals_pending", "dataset" => ds.cfg.name.clone())
                        .set(ds.review_pending.len() as f64);
                }
                metrics::counter!("bronze_schema_drift_messages_total", "dataset" => ds.cfg.name.clone(),
                    "kind" => kind, "action" => action)
                .increment(e.messages);
                if !ds.drift_reported.insert((kind, e.column.clone(), action)) {
                    continue;
                }
                metrics::counter!("bronze_schema_drift_events_total", "dataset" => ds.cfg.name.clone(),
                    "kind" => kind, "action" => action)
                .increment(1);
                warn!(dataset = %ds.cfg.name, kind, column = %e.column, expected = %e.expected,
                    observed = %e.observed, action, messages = e.messages, "schema drift");
                if let Some(a) = &self.audit {
                    a.record(AuditRecord::drift(&self.run_id, &ds.cfg.name, &e));
                }
            }
        }
    }

    /// A broker outage is reported by librdkafka, but its end is not: probe while one is on record.
    fn check_broker(&mut self) {
        if self.options.health.has_broker_error()
            && self.last_broker_probe.elapsed() >= Duration::from_secs(5)
        {
            self.last_broker_probe = Instant::now();
            if source::broker_reachable(&self.consumer) {
                self.options.health.broker_error(None);
            }
        }
    }

    fn update_gauges(&self) {
        // Lag in messages: high watermark minus the table's position (the low watermark before the
        // table has one for the partition).
        let watermarks = self.consumer.context().reported_watermarks();
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (tp, ps) in &self.partitions {
            let lag = watermarks
                .get(tp)
                .map(|(low, high)| (high - ps.committed.unwrap_or(*low)).max(0));
            let dataset = &self.datasets[ps.dataset].cfg.name;
            if let Some(lag) = lag {
                lag_gauge(dataset, tp).set(lag as f64);
            }
            lag_seconds_gauge(dataset, tp).set(ps.lag_seconds(lag.unwrap_or(0), now_ms));
        }
        let used: usize = self.datasets.iter().map(DatasetState::memory_bytes).sum();
        metrics::gauge!("bronze_buffer_bytes").set(used as f64);
        let paused = self
            .partitions
            .values()
            .filter(|p| p.paused_for_memory)
            .count();
        metrics::gauge!("bronze_paused_partitions").set(paused as f64);
        for (d, ds) in self.datasets.iter().enumerate() {
            let stopped = self
                .partitions
                .values()
                .filter(|p| p.dataset == d && p.stopped)
                .count();
            metrics::gauge!("bronze_stopped_partitions", "dataset" => ds.cfg.name.clone())
                .set(stopped as f64);
        }
        metrics::gauge!("bronze_assigned_partitions").set(self.partitions.len() as f64);
    }

    /// `--until-caught-up`: done when every assigned partition has reached the high watermark it had
    /// at assignment and everything is committed.
    async fn caught_up_check(&mut self) -> Result<bool, PipelineError> {
        if !self.ever_assigned {
            if self.started.elapsed() > ASSIGNMENT_TIMEOUT {
                return Err(PipelineError::Stopped(format!(
                    "no partitions were assigned within {ASSIGNMENT_TIMEOUT:?}: do the topics exist?"
                )));
            }
            return Ok(false);
        }
        let mut all = true;
        let targets: Vec<(TopicPartition, i64)> =
            self.targets.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (tp, high) in targets {
            let Some(ps) = self.partitions.get(&tp) else {
                continue;
            };
            if ps.stopped {
                return Err(PipelineError::Stopped(format!(
                    "{}[{}] stopped on a message it cannot ingest; see the error above",
                    tp.topic, tp.partition
                )));
            }
            let position = match (ps.next_offset, ps.phase) {
                (Some(next), _) => Some(next),
                // Nothing read yet: maybe the table is already there.
                (None, Phase::Unknown) => {
                    let d = ps.dataset;
                    self.table_position(d, &tp).await?
                }
                // On the way to the table's position: everything before it is in the table. When that
                // is the end of the partition no message will ever arrive to say so.
                (None, Phase::Seeking(target)) => Some(target),
                (None, Phase::Ready) => None,
            };
            if position.is_none_or(|p| p < high) {
                all = false;
            }
        }
        if !all {
            return Ok(false);
        }
        // Other members may be waiting for these partitions to be in the table: commit them now
        // rather than at the flush age.
        if !self.own_committed {
            self.flush_all(FlushReason::CaughtUp).await?;
            self.own_committed = true;
        }
        if !self.others_caught_up().await? {
            return Ok(false);
        }
        self.flush_all(FlushReason::CaughtUp).await?;
        info!("caught up with the high watermarks read at assignment");
        Ok(true)
    }

    /// Whether every partition with a catch-up target has been read up to it (cheap: no table read,
    /// unlike [`Run::caught_up_check`], which also counts partitions the table is ahead on).
    fn read_to_targets(&self) -> bool {
        self.targets.iter().all(|(tp, &high)| {
            self.partitions
                .get(tp)
                .is_some_and(|ps| ps.next_offset.is_some_and(|next| next >= high))
        })
    }

    /// Whether the table holds, for every partition this member does not own, everything up to the
    /// high watermark read at the first assignment. Read at most every half second: it reads the log.
    async fn others_caught_up(&mut self) -> Result<bool, PipelineError> {
        const EVERY: Duration = Duration::from_millis(500);
        if self.last_group_check.is_some_and(|t| t.elapsed() < EVERY) {
            return Ok(false);
        }
        self.last_group_check = Some(Instant::now());
        self.settle_all().await?;
        let mut refreshed = vec![false; self.datasets.len()];
        let mut behind = 0;
        for (tp, &(d, high)) in &self.group_targets {
            if self.partitions.contains_key(tp) {
                continue;
            }
            let ds = &mut self.datasets[d];
            if !refreshed[d] {
                ds.sink().refresh().await?;
                refreshed[d] = true;
            }
            let app_id = crate::txn::streaming(&self.group_id, tp);
            let position = ds.sink().committed_offset(&app_id).await?.map(|v| v + 1);
            if position.is_none_or(|p| p < high) {
                behind += 1;
            }
        }
        if behind > 0 {
            debug!(
                behind,
                "own partitions caught up; waiting for partitions other members own or are taking over"
            );
        }
        Ok(behind == 0)
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

/// Commit one batch: its dead letters first (if the process dies before the rows' commit, the next
/// owner re-reads these offsets and finds their dead letters already recorded), then its rows with
/// their offsets. Runs as a task of its own, owning the dataset's sinks until it hands them back.
async fn commit_batch(
    mut sinks: Box<state::DatasetSinks>,
    flushed: Flushed,
    ctx: CommitContext,
    reason: FlushReason,
    writers: usize,
) -> Committed {
    let started = Instant::now();
    let mut batch = match flushed.build(&ctx.dataset) {
        Ok(batch) => batch,
        Err(e) => {
            return Committed {
                sinks,
                reason,
                attempt: Err(e),
                elapsed: started.elapsed(),
            };
        }
    };
    let mut dead_letters = None;
    let mut recorded = Ok(());
    if !batch.dead_letters_done && !batch.batch.dead_letters.is_empty() {
        match sinks
            .dead_letters
            .record(&batch.batch.dead_letters, &ctx, &batch.id)
            .await
        {
            Ok(r) => {
                dead_letters = Some(r);
                batch.dead_letters_done = true;
                sink::failpoint("after_dead_letters");
            }
            Err(e) => recorded = Err(e),
        }
    }
    let result = match recorded {
        Ok(()) => {
            sinks
                .table
                .commit(&batch.batch, &ctx, &batch.id, writers)
                .await
        }
        Err(e) => Err(e),
    };
    Committed {
        sinks,
        reason,
        attempt: Ok(Attempt {
            batch,
            dead_letters,
            result,
        }),
        elapsed: started.elapsed(),
    }
}

/// Every partition of the subscribed topics with something in it, its dataset and high watermark.
fn read_group_targets(
    cfg: &Config,
    client: &source::Inspector,
) -> Result<HashMap<TopicPartition, (usize, i64)>, PipelineError> {
    // The watermarks of every dataset's partitions in one pair of requests.
    let watermarks = tokio::task::block_in_place(|| {
        let mut partitions = Vec::new();
        for ds in &cfg.datasets {
            partitions.extend(client.partitions(&ds.topics)?);
        }
        client.watermarks_of(&partitions)
    })?;
    let out: HashMap<TopicPartition, (usize, i64)> = watermarks
        .into_iter()
        .filter(|(_, (low, high))| high > low)
        .filter_map(|(tp, (_, high))| {
            let d = cfg.dataset_for_topic(&tp.topic)?;
            Some((tp, (d, high)))
        })
        .collect();
    debug!(partitions = out.len(), "group targets read");
    Ok(out)
}

/// `bronze_consumer_lag_messages` of one partition.
fn lag_gauge(dataset: &str, tp: &TopicPartition) -> metrics::Gauge {
    metrics::gauge!("bronze_consumer_lag_messages", "dataset" => dataset.to_string(), "topic" => tp.topic.clone(), "partition" => tp.partition.to_string())
}

/// `bronze_consumer_lag_seconds` of one partition: age of its oldest uncommitted event.
fn lag_seconds_gauge(dataset: &str, tp: &TopicPartition) -> metrics::Gauge {
    metrics::gauge!("bronze_consumer_lag_seconds", "dataset" => dataset.to_string(), "topic" => tp.topic.clone(), "partition" => tp.partition.to_string())
}
