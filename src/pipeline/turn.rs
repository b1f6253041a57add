//! One poll's messages: a dataset's ready messages go through the lanes a turn at a time, split by
//! Kafka partition over the threads; the rest, and what the lanes leave, are handled one by one in the
//! poll's order.

use std::time::Instant;

use rdkafka::error::KafkaError;
use tracing::{debug, warn};

use super::message::Message;
use super::positions::{Phase, ReadThrough};
use super::state::DatasetState;
use super::{PipelineError, Run, lanes, sync_columns};
use crate::buffer::{DatasetBuffer, Segment};
use crate::source;
use crate::txn::TopicPartition;

impl Run {
    /// Handle one poll's messages. A dataset's ready messages go through the lanes a turn at a time
    /// (as many as fit before a flush is due on rows), its partitions split over the threads; the rest,
    /// and what the lanes leave, are handled one by one in the poll's order.
    pub(super) async fn ingest_poll(
        &mut self,
        batch: &[Result<Message<'_>, &KafkaError>],
        rebalance_at: Option<usize>,
    ) -> Result<(), PipelineError> {
        self.positions.new_poll();
        let mut taken = vec![false; batch.len()];
        // Partitions whose remaining messages of the poll are handled in turn.
        let mut closed: foldhash::HashSet<TopicPartition> = Default::default();
        let before_rebalance = &batch[..rebalance_at.unwrap_or(batch.len())];
        if before_rebalance.len() >= lanes::MIN_MESSAGES
            && self.positions.values().any(|ps| ps.phase == Phase::Unknown)
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
                    if !tp.is(m.topic, m.partition) {
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
    pub(super) async fn find_positions(
        &mut self,
        batch: &[Result<Message<'_>, &KafkaError>],
    ) -> Result<(), PipelineError> {
        let mut firsts: Vec<(TopicPartition, i64)> = Vec::new();
        for m in batch.iter().flatten() {
            if firsts.iter().any(|(tp, _)| tp.is(m.topic, m.partition)) {
                continue;
            }
            firsts.push((TopicPartition::new(m.topic, m.partition), m.offset));
        }
        for (tp, offset) in firsts {
            let Some(ps) = self.positions.get(&tp) else {
                continue;
            };
            if ps.phase == Phase::Unknown && !ps.stopped {
                let d = ps.dataset;
                self.find_position(d, &tp, offset).await?;
            }
        }
        Ok(())
    }

    /// Between polls (every message handed out is handled): take in what the consumer read past them,
    /// the markers of transactional topics (see [`Positions::read_through`]). Markers after a
    /// partition's last message join its buffer as offsets that made no row, so the commit that
    /// covers them puts the table at the end of the partition: lag 0, and a catch-up run ends.
    ///
    /// [`Positions::read_through`]: super::positions::Positions::read_through
    pub(super) async fn read_through_markers(&mut self) -> Result<(), PipelineError> {
        let now = Instant::now();
        for (tp, position) in source::fetch_positions(&self.consumer) {
            match self.positions.read_through(&tp, position) {
                ReadThrough::Nothing => {}
                ReadThrough::Markers { dataset, from, to } => {
                    debug!(topic = %tp.topic, partition = tp.partition, from, to, "read past markers");
                    self.datasets[dataset]
                        .buffer
                        .fill(&tp.topic, tp.partition, from, now, |seg| seg.skip(to - 1));
                }
                ReadThrough::Locate { dataset, to } => {
                    if self.find_position(dataset, &tp, to).await? {
                        self.positions.read_on(&tp, to);
                    }
                }
            }
        }
        Ok(())
    }

    /// Per dataset, the messages of `batch` (by index) the lanes may take: of each partition that is
    /// reading, the messages up to the first one whose writer schema is still to be fetched. None for a
    /// dataset with too few of them to be worth a turn.
    pub(super) fn ready_for_lanes(
        &self,
        batch: &[Result<Message<'_>, &KafkaError>],
    ) -> Vec<Vec<usize>> {
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
                        .positions
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
    /// them by [`lanes::plan`]. Marks in `taken` what they ingested; a partition a lane left, or that is
    /// no longer reading where the poll found it, joins `closed`: its remaining messages are handled in
    /// turn.
    pub(super) fn lane_turn(
        &mut self,
        d: usize,
        batch: &[Result<Message<'_>, &KafkaError>],
        turn: &[usize],
        taken: &mut [bool],
        closed: &mut foldhash::HashSet<TopicPartition>,
    ) {
        let groups = self.turn_groups(d, batch, turn, closed);
        if groups.is_empty() {
            return;
        }
        let chunks = self.run_lanes(d, batch, &groups);
        self.take_outcomes(d, batch, &groups, chunks, taken, closed);
    }

    /// The turn's partitions, each with its messages (indices of `batch`) in order: only partitions
    /// still reading from where the poll found them, and only messages past those ingested.
    pub(super) fn turn_groups(
        &self,
        d: usize,
        batch: &[Result<Message<'_>, &KafkaError>],
        turn: &[usize],
        closed: &mut foldhash::HashSet<TopicPartition>,
    ) -> Vec<(TopicPartition, Vec<usize>)> {
        let message = |i: usize| *batch[i].as_ref().expect("only messages are ready");
        // The turn's partitions, each with its messages in order.
        let mut groups: Vec<(TopicPartition, Vec<usize>)> = Vec::new();
        let mut last: Option<usize> = None;
        for &i in turn {
            let m = message(i);
            let g = match last {
                Some(g) if groups[g].0.is(m.topic, m.partition) => g,
                _ => match groups
                    .iter()
                    .position(|(tp, _)| tp.is(m.topic, m.partition))
                {
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
                && !self.positions.repositioned(tp)
                && self.positions.get(tp).is_some_and(|ps| {
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
        groups
    }

    /// Lend the partitions' builders to the lanes and run the turn; the chunks' outcomes in each
    /// partition's order.
    pub(super) fn run_lanes(
        &mut self,
        d: usize,
        batch: &[Result<Message<'_>, &KafkaError>],
        groups: &[(TopicPartition, Vec<usize>)],
    ) -> Vec<lanes::Outcome> {
        let message = |i: usize| *batch[i].as_ref().expect("only messages are ready");
        let now = Instant::now();
        let loads: Vec<usize> = groups.iter().map(|(_, ix)| ix.len()).collect();
        let plan = lanes::plan(&loads, self.lanes.threads());
        let threads = plan.iter().map(|c| c.lane + 1).max().unwrap_or(1);
        let ds = &mut self.datasets[d];
        ready_spares(ds, threads);
        let first_offset = |i: usize| message(i).offset;
        let mut segments = split_segments(&ds.buffer, &plan, groups, first_offset);
        let wanted = wanted_tails(&plan, groups, first_offset);
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
        chunks
    }

    /// Take in what the lanes ingested: a chunk stands only if the chunks before it in its partition
    /// were ingested whole.
    pub(super) fn take_outcomes(
        &mut self,
        d: usize,
        batch: &[Result<Message<'_>, &KafkaError>],
        groups: &[(TopicPartition, Vec<usize>)],
        chunks: Vec<lanes::Outcome>,
        taken: &mut [bool],
        closed: &mut foldhash::HashSet<TopicPartition>,
    ) {
        let message = |i: usize| *batch[i].as_ref().expect("only messages are ready");
        let ds = &mut self.datasets[d];
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
                && let Some(ps) = self.positions.get_mut(tp)
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
}

/// The dataset's columns in its buffer, and one spare mapper of its contract per lane.
fn ready_spares(ds: &mut DatasetState, threads: usize) {
    sync_columns(&ds.mapper, &mut ds.buffer);
    let generation = ds.mapper.generation();
    ds.spares.retain(|m| m.generation() == generation);
    while ds.spares.len() < threads {
        ds.spares.push(lanes::spare(&ds.mapper));
    }
}

/// Segments for the chunks that do not start their partition's messages, made before the
/// partitions' last segments are lent. `offset` is a message's offset by its index in the poll.
fn split_segments(
    buffer: &DatasetBuffer,
    plan: &[lanes::Planned],
    groups: &[(TopicPartition, Vec<usize>)],
    offset: impl Fn(usize) -> i64,
) -> Vec<Option<Segment>> {
    plan.iter()
        .map(|c| {
            let (TopicPartition { topic, partition }, indices) = &groups[c.group];
            (c.start > 0).then(|| {
                let first = offset(indices[c.start]);
                buffer.segment(topic, *partition, first, c.end - c.start)
            })
        })
        .collect()
}

/// What each partition's first chunk takes of its last segment: topic, partition, first offset,
/// rows.
fn wanted_tails<'g>(
    plan: &[lanes::Planned],
    groups: &'g [(TopicPartition, Vec<usize>)],
    offset: impl Fn(usize) -> i64,
) -> Vec<(&'g str, i32, i64, usize)> {
    groups
        .iter()
        .enumerate()
        .map(|(g, (tp, ix))| {
            let first_chunk = plan.iter().find(|c| c.group == g && c.start == 0);
            let rows = first_chunk.map_or(ix.len(), |c| c.end);
            (tp.topic.as_str(), tp.partition, offset(ix[0]), rows)
        })
        .collect()
}
