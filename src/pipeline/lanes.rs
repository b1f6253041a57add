//! Ingest on several cores (`pipeline.decode_threads`). The messages one poll finds ready are split by
//! Kafka partition over lanes, one per thread; a lane decodes, maps and appends its messages in their
//! order straight into Arrow builders, with its own clone of the dataset's mapper. Nothing crosses
//! threads but the borrowed messages and the builders lent for the turn: no copy of a message, no row
//! made on one thread and freed on another.
//!
//! A poll holds few partitions (librdkafka queues a fetch of each at a time), so a partition larger
//! than a lane's share is cut into chunks: the first appends to the partition's buffer, each later one
//! fills a segment of its own that follows it (see [`crate::buffer::Segment`]).
//!
//! Order is kept where Kafka defines it, within a partition. A lane stops a chunk at the first message
//! that changes the contract (a column evolves or widens) or stops the partition: those need the
//! dataset's own mapper, a table commit or the consumer, so the loop handles the partition's remaining
//! messages in turn, and the chunks after it in the same partition are dropped unread into the table
//! (their messages are among those the loop handles). A lane whose clone changed takes a new one from
//! the dataset's mapper and goes on with its other chunks. What a clone saw (drift, column errors,
//! unknown fields, skips, dead letters) is counted only for chunks that stand.

use tracing::debug;

use super::PipelineError;
use super::admission::{Admission, count_observed, judge};
use super::message::Message;
use crate::buffer::{RedeliveryWindow, Segment, source_event_id};
use crate::config::DatasetConfig;
use crate::decode::Decoder;
use crate::transform::{Mapper, Observations};

/// Fewer ready messages of a dataset than this in one poll are ingested in turn: a hand-off is not
/// worth it.
pub(super) const MIN_MESSAGES: usize = 128;

/// At most this many messages, and about this many bytes, are taken from the consumer per poll: ticks
/// (age flushes, gauges, rebalances) are never held up for more than a few tens of milliseconds. A poll
/// must span partitions for the lanes to share it, and librdkafka queues a partition's messages a fetch
/// (up to 1 MiB) at a time: with 2,048 messages a poll held one or two partitions and the second lane
/// had 5 % of the samples.
pub(super) const MAX_MESSAGES: usize = 8192;
pub(super) const MAX_BYTES: usize = 16 << 20;

/// The threads of a run's lanes beyond the loop's own (none when `decode_threads` is 1).
pub(super) struct Lanes {
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl Lanes {
    pub(super) fn start(threads: usize) -> Result<Lanes, PipelineError> {
        let pool = if threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads - 1)
                .thread_name(|n| format!("bronze-lane-{}", n + 1))
                .build()
                .map_err(|e| PipelineError::Stopped(format!("cannot start the lanes: {e}")))?;
            Some(pool)
        } else {
            None
        };
        Ok(Lanes { pool, threads })
    }

    /// How many lanes a turn may use.
    pub(super) fn threads(&self) -> usize {
        self.threads
    }

    /// Run `lanes` at once, the first on this thread. Blocks until every lane is done: a turn takes
    /// about as long as its largest lane, a few milliseconds.
    pub(super) fn run(&self, ctx: &LaneContext<'_>, lanes: &mut [Lane<'_, '_>]) {
        let Some((mine, others)) = lanes.split_first_mut() else {
            return;
        };
        match &self.pool {
            Some(pool) if !others.is_empty() => pool.in_place_scope(|s| {
                for lane in others {
                    s.spawn(move |_| lane.run(ctx));
                }
                mine.run(ctx);
            }),
            _ => {
                mine.run(ctx);
                for lane in others {
                    lane.run(ctx);
                }
            }
        }
    }
}

/// What every lane of a dataset reads.
pub(super) struct LaneContext<'a> {
    pub cfg: &'a DatasetConfig,
    pub decoder: &'a Decoder,
    /// The dataset's mapper, cloned again by a lane whose clone changed.
    pub mapper: &'a Mapper,
    pub redeliveries: &'a RedeliveryWindow,
}

/// Where a chunk's rows go.
pub(super) enum Target<'b> {
    /// The partition's last segment: the chunk is the first of its partition in the turn.
    Tail(&'b mut Segment),
    /// A segment of its own, attached after the partition's last once the chunks before it were
    /// ingested whole (else it is dropped and its messages are handled in turn).
    New(Box<Segment>),
}

/// A stretch of one partition's messages in a turn.
pub(super) struct Chunk<'b, 'm> {
    /// Which of the turn's partitions.
    pub group: usize,
    /// Where in the partition's messages of the turn it starts.
    pub start: usize,
    pub target: Target<'b>,
    pub messages: Vec<Message<'m>>,
    /// How many of them the lane ingested (the rest are the loop's, in turn).
    pub ingested: usize,
    pub tally: Tally,
}

impl Chunk<'_, '_> {
    /// What is left of the chunk once its lane is done, the segment it filled included.
    pub(super) fn outcome(self) -> Outcome {
        Outcome {
            group: self.group,
            start: self.start,
            messages: self.messages.len(),
            ingested: self.ingested,
            tally: self.tally,
            segment: match self.target {
                Target::Tail(_) => None,
                Target::New(seg) => Some(*seg),
            },
        }
    }
}

/// A chunk after its turn, no longer borrowing the buffer or the poll.
pub(super) struct Outcome {
    pub group: usize,
    pub start: usize,
    pub messages: usize,
    pub ingested: usize,
    pub tally: Tally,
    /// The segment it filled, when it did not append to the partition's last.
    pub segment: Option<Segment>,
}

/// What messages came to, counted once they stand: a lane's chunk when the chunks before it were
/// ingested whole, a message the loop ingests in turn at once.
#[derive(Default)]
pub(super) struct Tally {
    /// Messages without a row, by reason.
    pub skipped: Vec<(&'static str, u64)>,
    pub redeliveries: u64,
    /// Dead letters, by kind.
    pub dead_letters: Vec<(&'static str, u64)>,
    /// Fields the contract does not name.
    pub unknown: u64,
    pub observed: Observations,
}

impl Tally {
    fn add(counts: &mut Vec<(&'static str, u64)>, key: &'static str) {
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }

    /// Count what the chunk's messages came to, as the loop counts a message it ingests in turn.
    pub(super) fn report(self, dataset: &str, mapper: &mut Mapper) {
        for (reason, n) in self.skipped {
            metrics::counter!("bronze_skipped_messages_total", "dataset" => dataset.to_string(), "reason" => reason)
                .increment(n);
        }
        if self.redeliveries > 0 {
            metrics::counter!("bronze_redeliveries_dropped_total", "dataset" => dataset.to_string())
                .increment(self.redeliveries);
        }
        for (kind, n) in self.dead_letters {
            metrics::counter!("bronze_decode_errors_total", "dataset" => dataset.to_string(), "kind" => kind)
                .increment(n);
        }
        mapper.absorb_drift(self.observed.drift);
        count_observed(dataset, self.unknown, self.observed.column_errors);
    }

    pub(super) fn skipped(&self) -> u64 {
        self.skipped.iter().map(|(_, n)| n).sum()
    }
}

/// The chunks one thread ingests in a turn.
pub(super) struct Lane<'b, 'm> {
    pub chunks: Vec<Chunk<'b, 'm>>,
    pub mapper: Mapper,
}

impl Lane<'_, '_> {
    fn run(&mut self, ctx: &LaneContext<'_>) {
        let dataset = &ctx.cfg.name;
        for chunk in &mut self.chunks {
            let seg = match &mut chunk.target {
                Target::Tail(seg) => &mut **seg,
                Target::New(seg) => seg,
            };
            let tally = &mut chunk.tally;
            for m in &chunk.messages {
                let generation = self.mapper.generation();
                let mut unknown = 0;
                let admission = judge(ctx.cfg, ctx.decoder, &mut self.mapper, m, &mut unknown);
                let seen = self.mapper.take_observations();
                if self.mapper.generation() != generation {
                    // The clone took a contract the dataset has not: its other chunks go on under the
                    // dataset's.
                    self.mapper = spare(ctx.mapper);
                    break;
                }
                if matches!(&admission, Admission::Reject(r) if r.fail || r.widen.is_some()) {
                    break;
                }
                tally.unknown += unknown;
                tally.observed.drift.extend(seen.drift);
                tally.observed.column_errors.extend(seen.column_errors);
                buffer(admission, m, seg, ctx.redeliveries, tally, dataset);
                chunk.ingested += 1;
            }
        }
    }
}

/// Put what `admission` made of `m` into `seg`, counting it in `tally`: its row (or a skip when the row
/// redelivers a committed source event), a skip, or a dead letter. The loop does the same for a message
/// it ingests in turn; rejections that stop the partition or widen a column are never put here.
pub(super) fn buffer(
    admission: Admission,
    m: &Message<'_>,
    seg: &mut Segment,
    redeliveries: &RedeliveryWindow,
    tally: &mut Tally,
    dataset: &str,
) {
    match admission {
        Admission::Row(row) => {
            if source_event_id(&row).is_some_and(|id| redeliveries.contains(id)) {
                tally.redeliveries += 1;
                seg.skip(m.offset);
            } else {
                seg.push(*row);
            }
        }
        Admission::Skip(reason) => {
            Tally::add(&mut tally.skipped, reason.as_str());
            seg.skip(m.offset);
        }
        Admission::Reject(r) => {
            Tally::add(&mut tally.dead_letters, r.reason);
            debug!(dataset = %dataset, topic = %m.topic, partition = m.partition, offset = m.offset,
                reason = r.reason, error = %r.error, "dead letter");
            seg.dead_letter(m.dead_letter(r.reason, r.error));
        }
    }
}

/// One chunk of a plan: group, where it starts and ends in the group's messages, its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Planned {
    pub group: usize,
    pub start: usize,
    pub end: usize,
    pub lane: usize,
}

/// A chunk shorter than this is not split off: a segment of its own costs more than the wait.
const MIN_CHUNK: usize = 256;

/// Split partitions (with their message counts, `loads`) over `lanes` lanes about evenly: the largest
/// first, each to the least loaded lane, a partition larger than that lane's fair share split in
/// chunks (its first chunk on that lane). A poll holds few partitions, a fetch of each (thousands of
/// messages): whole partitions alone gave the loop's lane two thirds of the messages.
pub(super) fn plan(loads: &[usize], lanes: usize) -> Vec<Planned> {
    let lanes = lanes.max(1);
    let share = loads.iter().sum::<usize>().div_ceil(lanes);
    let mut order: Vec<usize> = (0..loads.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(loads[g]));
    let mut total = vec![0usize; lanes];
    let mut out = Vec::new();
    for g in order {
        let mut start = 0;
        while start < loads[g] {
            let (lane, load) = total
                .iter()
                .copied()
                .enumerate()
                .min_by_key(|&(_, t)| t)
                .expect("at least one lane");
            let left = loads[g] - start;
            let room = share.saturating_sub(load);
            let take = if left <= room || left - room < MIN_CHUNK || room < MIN_CHUNK {
                left
            } else {
                room
            };
            out.push(Planned {
                group: g,
                start,
                end: start + take,
                lane,
            });
            total[lane] += take;
            start += take;
        }
    }
    out
}

/// A clone of `mapper` with nothing observed yet: what the original saw is its own to report.
pub(super) fn spare(mapper: &Mapper) -> Mapper {
    let mut m = mapper.clone();
    m.take_observations();
    m
}

#[cfg(test)]
mod tests {
    use super::{Planned, plan};

    fn loads_of(plan: &[Planned], lanes: usize) -> Vec<usize> {
        (0..lanes)
            .map(|l| {
                plan.iter()
                    .filter(|c| c.lane == l)
                    .map(|c| c.end - c.start)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn a_large_partition_is_split_so_lanes_take_even_shares() {
        // One partition holds most of the poll, as librdkafka queues a fetch per partition.
        let p = plan(&[1401, 6438, 353], 2);
        assert_eq!(loads_of(&p, 2), vec![4096, 4096]);
        let big: Vec<_> = p.iter().filter(|c| c.group == 1).collect();
        assert_eq!(big.len(), 2);
        assert_eq!(
            (big[0].start, big[0].end, big[1].start, big[1].end),
            (0, 4096, 4096, 6438)
        );
        // Whole partitions where they fit.
        let p = plan(&[5, 6, 1, 4, 2], 2);
        assert!(p.iter().all(|c| c.start == 0), "{p:?}");
        assert_eq!(loads_of(&p, 2), vec![9, 9]);
    }

    #[test]
    fn small_remainders_are_not_split_off() {
        // 4,200 of 8,000 on one lane: a 104-message chunk is not worth a segment.
        let p = plan(&[4200, 3800], 2);
        assert_eq!(p.len(), 2);
        assert_eq!(loads_of(&p, 2), vec![4200, 3800]);
        assert_eq!(
            plan(&[3, 3, 3], 1)
                .iter()
                .map(|c| c.lane)
                .collect::<Vec<_>>(),
            vec![0, 0, 0]
        );
        assert!(plan(&[], 2).is_empty());
    }
}
