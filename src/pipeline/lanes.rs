//! Ingest on several cores (`pipeline.decode_threads`). The messages one poll finds ready are split by
//! Kafka partition into lanes, one per thread; a lane decodes, maps and appends its partitions' messages
//! in their order straight into those partitions' Arrow builders, with its own clone of the dataset's
//! mapper. Nothing crosses threads but the borrowed messages and the builders lent for the turn: no copy
//! of a message, no row made on one thread and freed on another.
//!
//! Order is kept where Kafka defines it, within a partition. A lane leaves a partition's remaining
//! messages to the loop, in turn, from the first one that changes the contract (a column evolves or
//! widens) or stops the partition: those need the dataset's own mapper, a table commit or the consumer.
//! The lane's clone is then taken again from the dataset's mapper, and it goes on with its other
//! partitions. What a clone saw (drift, column errors, unknown fields) is counted for the messages it
//! ingested, never for one it left.

use tracing::debug;

use super::message::Message;
use super::{Admission, PipelineError, judge};
use crate::buffer::{PartitionBuffer, RedeliveryWindow, source_event_id};
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

/// One partition's part of a turn.
pub(super) struct LanePartition<'b, 'm> {
    /// Which of the turn's partitions.
    pub group: usize,
    pub buffer: &'b mut PartitionBuffer,
    /// Its messages, in offset order.
    pub messages: Vec<Message<'m>>,
    /// How many of them the lane ingested (the rest are the loop's, in turn).
    pub ingested: usize,
    pub skipped: u64,
    pub redeliveries: u64,
}

/// The partitions one thread ingests in a turn.
pub(super) struct Lane<'b, 'm> {
    pub partitions: Vec<LanePartition<'b, 'm>>,
    pub mapper: Mapper,
    /// Fields the contract does not name, in the messages ingested.
    pub unknown: u64,
    pub observed: Observations,
}

impl<'b, 'm> Lane<'b, 'm> {
    pub(super) fn new(mapper: Mapper) -> Self {
        Lane {
            partitions: Vec::new(),
            mapper,
            unknown: 0,
            observed: Observations::default(),
        }
    }

    fn run(&mut self, ctx: &LaneContext<'_>) {
        let dataset = &ctx.cfg.name;
        for part in &mut self.partitions {
            for m in &part.messages {
                let generation = self.mapper.generation();
                let mut unknown = 0;
                let admission = judge(ctx.cfg, ctx.decoder, &mut self.mapper, m, &mut unknown);
                let seen = self.mapper.take_observations();
                let handed_back = self.mapper.generation() != generation
                    || matches!(&admission, Admission::Reject(r) if r.fail || r.widen.is_some());
                if handed_back {
                    // The clone took a contract the dataset has not: its other partitions go on
                    // under the dataset's.
                    if self.mapper.generation() != generation {
                        self.mapper = spare(ctx.mapper);
                    }
                    metrics::counter!("bronze_lane_handed_back_total", "dataset" => dataset.clone())
                        .increment(1);
                    break;
                }
                self.unknown += unknown;
                self.observed.drift.extend(seen.drift);
                self.observed.column_errors.extend(seen.column_errors);
                match admission {
                    Admission::Row(row) => {
                        if source_event_id(&row).is_some_and(|id| ctx.redeliveries.contains(id)) {
                            metrics::counter!("bronze_redeliveries_dropped_total", "dataset" => dataset.clone())
                                .increment(1);
                            part.redeliveries += 1;
                            part.buffer.skip(m.offset);
                        } else {
                            part.buffer.push(*row);
                        }
                    }
                    Admission::Skip(reason) => {
                        metrics::counter!("bronze_skipped_messages_total", "dataset" => dataset.clone(), "reason" => reason.as_str())
                            .increment(1);
                        part.skipped += 1;
                        part.buffer.skip(m.offset);
                    }
                    Admission::Reject(r) => {
                        metrics::counter!("bronze_decode_errors_total", "dataset" => dataset.clone(), "kind" => r.reason)
                            .increment(1);
                        debug!(dataset = %dataset, topic = %m.topic, partition = m.partition, offset = m.offset,
                            reason = r.reason, error = %r.error, "dead letter");
                        part.buffer.dead_letter(m.dead_letter(r.reason, r.error));
                    }
                }
                part.ingested += 1;
            }
        }
    }
}

/// Split partitions (with their message counts) over `lanes` lanes: the largest first, each to the
/// least loaded lane. Returns the lane of each partition.
pub(super) fn balance(loads: &[usize], lanes: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..loads.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(loads[i]));
    let mut total = vec![0usize; lanes.max(1)];
    let mut lane_of = vec![0; loads.len()];
    for i in order {
        let (lane, _) = total
            .iter()
            .enumerate()
            .min_by_key(|&(_, t)| *t)
            .expect("at least one lane");
        lane_of[i] = lane;
        total[lane] += loads[i];
    }
    lane_of
}

/// A clone of `mapper` with nothing observed yet: what the original saw is its own to report.
pub(super) fn spare(mapper: &Mapper) -> Mapper {
    let mut m = mapper.clone();
    m.take_observations();
    m
}

#[cfg(test)]
mod tests {
    use super::balance;

    #[test]
    fn partitions_are_balanced_largest_first() {
        // 6 + 2 + 1 against 5 + 4: the largest partition alone would leave one lane idle.
        let lanes = balance(&[5, 6, 1, 4, 2], 2);
        let load = |l: usize| -> usize {
            [5, 6, 1, 4, 2]
                .iter()
                .zip(&lanes)
                .filter(|&(_, &x)| x == l)
                .map(|(n, _)| n)
                .sum()
        };
        assert_eq!((load(0), load(1)), (9, 9));
        assert_eq!(balance(&[3, 3, 3], 1), vec![0, 0, 0]);
        assert_eq!(balance(&[], 2), Vec::<usize>::new());
    }
}
