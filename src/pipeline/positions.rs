//! Positions: where each assigned partition stands against its table, and the rules that keep a
//! partition reading from exactly the table's position.
//!
//! When a partition is assigned its position is unknown ([`Phase::Unknown`]). Its first message makes
//! the loop read the partition's txn version from the table ([`Positions::locate`]): if the message is
//! not the one right after it, the partition is sent there ([`Phase::Seeking`]) and the messages still
//! in flight before that offset are passed over; the first message at or after it makes the partition
//! [`Phase::Ready`]. A partition re-reads from the table the same way after a stale batch
//! ([`Positions::after_stale`]). So a partition always resumes from the table, whatever the group
//! offsets say, and never ingests an offset twice in one run.

use std::time::Instant;

use tracing::warn;

use crate::txn::{OffsetRange, TopicPartition};

/// Where a partition's fetch position stands relative to its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Just assigned: the next message decides whether to seek.
    Unknown,
    /// A seek to this offset was issued; earlier messages still in flight are dropped.
    Seeking(i64),
    Ready,
}

pub(super) struct PartitionState {
    pub dataset: usize,
    pub phase: Phase,
    /// Offset of the next message to ingest.
    pub next_offset: Option<i64>,
    /// The table's position for this partition (next offset to commit), once known.
    pub committed: Option<i64>,
    /// Stopped on a message that cannot be ingested.
    pub stopped: bool,
    pub paused_for_memory: bool,
    /// Paused until then, rewound to a message that cannot be taken yet (its writer schema is not to be
    /// had, or its column cannot be widened yet).
    pub waiting_until: Option<Instant>,
    /// Failed attempts in a row, for the backoff.
    pub wait_failures: u32,
    /// Kafka timestamps (ms) of the oldest uncommitted message: in the buffer, in the batch being
    /// committed, in the batch uploaded behind it, and the message the partition stopped on. They
    /// make `bronze_consumer_lag_seconds`.
    pub buffered_ts: Option<i64>,
    pub pending_ts: Option<i64>,
    pub behind_ts: Option<i64>,
    pub stopped_ts: Option<i64>,
    /// Since when everything consumed from this partition is committed (assignment or last commit).
    pub settled_since: Instant,
    /// `bronze_events_consumed_total` of this partition, looked up once rather than per message.
    pub consumed: metrics::Counter,
}

impl PartitionState {
    pub fn new(dataset: usize, consumed: metrics::Counter) -> Self {
        PartitionState {
            dataset,
            phase: Phase::Unknown,
            next_offset: None,
            committed: None,
            stopped: false,
            paused_for_memory: false,
            waiting_until: None,
            wait_failures: 0,
            buffered_ts: None,
            pending_ts: None,
            behind_ts: None,
            stopped_ts: None,
            settled_since: Instant::now(),
            consumed,
        }
    }

    /// Age in seconds of the oldest message of this partition not yet committed. With `lag` messages
    /// waiting in Kafka but none consumed (paused, or not fetched yet), the time since the partition was
    /// last fully committed: an upper bound, so an alert on it never fires late.
    pub fn lag_seconds(&self, lag: i64, now_ms: i64) -> f64 {
        let oldest = [
            self.buffered_ts,
            self.pending_ts,
            self.behind_ts,
            self.stopped_ts,
        ]
        .into_iter()
        .flatten()
        .min();
        match oldest {
            Some(ts) => ((now_ms - ts).max(0)) as f64 / 1000.0,
            None if lag > 0 => self.settled_since.elapsed().as_secs_f64(),
            None => 0.0,
        }
    }
}

/// What to do with a message that arrived for a partition (see [`Positions::arrival`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Not ours, stopped, sent elsewhere, or before the position: pass it over.
    Pass,
    /// The partition's first message since assignment: find its table position first
    /// ([`Positions::locate`]). Carries the partition's dataset.
    Locate(usize),
    /// Ingest it into this dataset.
    Take(usize),
}

/// What the consumer's position says about a partition whose messages are all handled (see
/// [`Positions::read_through`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadThrough {
    /// Nothing beyond what the partition's messages said.
    Nothing,
    /// Offsets `from..to` of dataset `dataset` held nothing to ingest (transaction markers, records of
    /// aborted transactions): the partition reads on at `to`, and the next batch covers them.
    Markers { dataset: usize, from: i64, to: i64 },
    /// Only markers arrived since assignment, from an offset the group chose: find the table's
    /// position as for a first message (at `to`), of this dataset.
    Locate { dataset: usize, to: i64 },
}

/// Every assigned partition's state, and the partitions sent elsewhere during the current poll.
#[derive(Default)]
pub(super) struct Positions {
    /// Looked up several times per message: a fast hash, the keys are the broker's.
    partitions: foldhash::HashMap<TopicPartition, PartitionState>,
    /// Partitions sent to another offset while the messages of one poll are handled.
    repositioned: foldhash::HashSet<TopicPartition>,
}

impl Positions {
    /// A partition assigned to this member, for dataset `dataset`: its position is unknown.
    pub fn assign(&mut self, tp: TopicPartition, dataset: usize, consumed: metrics::Counter) {
        self.partitions
            .insert(tp, PartitionState::new(dataset, consumed));
    }

    /// A partition revoked from this member, with what was known of it.
    pub fn revoke(&mut self, tp: &TopicPartition) -> Option<PartitionState> {
        self.partitions.remove(tp)
    }

    /// A poll's messages are about to be handled: nothing is sent elsewhere yet.
    pub fn new_poll(&mut self) {
        self.repositioned.clear();
    }

    /// Whether `tp` was sent to another offset during this poll (its messages already taken from the
    /// consumer are passed over: the consumer delivers from the new position).
    pub fn repositioned(&self, tp: &TopicPartition) -> bool {
        !self.repositioned.is_empty() && self.repositioned.contains(tp)
    }

    /// What to do with the message at `offset` of `tp`. A partition seeking its table position becomes
    /// ready at the first message at or after it (a later one means the log lost offsets: retention or
    /// compaction).
    pub fn arrival(&mut self, tp: &TopicPartition, offset: i64) -> Arrival {
        if self.repositioned(tp) {
            return Arrival::Pass;
        }
        let Some(ps) = self.partitions.get_mut(tp) else {
            return Arrival::Pass;
        };
        if ps.stopped {
            return Arrival::Pass;
        }
        match ps.phase {
            Phase::Unknown => return Arrival::Locate(ps.dataset),
            Phase::Seeking(target) if offset < target => return Arrival::Pass,
            Phase::Seeking(target) => {
                if offset > target {
                    warn!(topic = %tp.topic, partition = tp.partition, expected = target, got = offset,
                        "offsets missing from the log (retention or compaction); continuing");
                }
                ps.phase = Phase::Ready;
            }
            Phase::Ready => {}
        }
        if ps.next_offset.is_some_and(|next| offset < next) {
            return Arrival::Pass;
        }
        Arrival::Take(ps.dataset)
    }

    /// A partition's first message is at `offset` and its table says `table` (the next offset to
    /// commit, `None` when the table has none for it): the offset to seek to, or `None` when it reads
    /// on from here (it is ready).
    pub fn locate(&mut self, tp: &TopicPartition, offset: i64, table: Option<i64>) -> Option<i64> {
        match table {
            Some(pos) if offset != pos => Some(pos),
            _ => {
                self.set_phase(tp, Phase::Ready);
                None
            }
        }
    }

    /// The consumer has handed out everything of `tp` before `position` (librdkafka steps over
    /// transaction markers, which are never handed out), and every message it handed out was handled.
    /// Offsets between the partition's next offset and `position` then held no record: the partition
    /// reads on at `position`. Without this, a partition ending in a commit marker would never reach
    /// its high watermark, nor its table the end of the partition. A partition stopped or waiting at a
    /// message is left alone: its next message is the one it waits at.
    pub fn read_through(&mut self, tp: &TopicPartition, position: i64) -> ReadThrough {
        let Some(ps) = self.partitions.get_mut(tp) else {
            return ReadThrough::Nothing;
        };
        if ps.stopped || ps.waiting_until.is_some() {
            return ReadThrough::Nothing;
        }
        let from = match (ps.phase, ps.next_offset) {
            (Phase::Unknown, _) => {
                return ReadThrough::Locate {
                    dataset: ps.dataset,
                    to: position,
                };
            }
            // The consumer's position is reset by a seek: what it says now was read from `target` on.
            (Phase::Seeking(target), _) => target,
            (Phase::Ready, Some(next)) => next,
            (Phase::Ready, None) => return ReadThrough::Nothing,
        };
        if position <= from {
            return ReadThrough::Nothing;
        }
        ps.phase = Phase::Ready;
        ps.next_offset = Some(position);
        ReadThrough::Markers {
            dataset: ps.dataset,
            from,
            to: position,
        }
    }

    /// A partition located by markers alone ([`ReadThrough::Locate`]) reads on at `position`.
    pub fn read_on(&mut self, tp: &TopicPartition, position: i64) {
        self.set_phase(tp, Phase::Ready);
        if let Some(ps) = self.partitions.get_mut(tp) {
            ps.next_offset = Some(position);
        }
    }

    /// `tp` was sent to `offset`: its messages before it are passed over until one arrives there.
    pub fn seek(&mut self, tp: &TopicPartition, offset: i64) {
        self.repositioned.insert(tp.clone());
        self.set_phase(tp, Phase::Seeking(offset));
    }

    /// The message at `offset` (Kafka time `timestamp_ms`) of `tp` was taken into its buffer.
    pub fn took(&mut self, tp: &TopicPartition, offset: i64, timestamp_ms: i64) {
        if let Some(ps) = self.partitions.get_mut(tp) {
            ps.consumed.increment(1);
            ps.wait_failures = 0;
            ps.next_offset = Some(offset + 1);
            ps.buffered_ts.get_or_insert(timestamp_ms);
        }
    }

    /// Dataset `d`'s buffer was taken as a batch: its partitions' buffered times move to the batch
    /// (behind the one committing, when there is one).
    pub fn batch_taken(&mut self, d: usize) {
        for ps in self.partitions.values_mut().filter(|p| p.dataset == d) {
            if let Some(ts) = ps.buffered_ts.take() {
                if ps.pending_ts.is_some() {
                    ps.behind_ts.get_or_insert(ts);
                } else {
                    ps.pending_ts = Some(ts);
                }
            }
        }
    }

    /// A batch of dataset `d` with these ranges committed; `behind`: another of its batches is in
    /// flight after it, which now holds the oldest uncommitted message of its partitions (one it
    /// has and the landed batch had not keeps its time).
    pub fn batch_landed(&mut self, d: usize, ranges: &[OffsetRange], behind: bool) {
        let now = Instant::now();
        for (tp, ps) in self.partitions.iter_mut().filter(|(_, p)| p.dataset == d) {
            if !behind
                || ranges
                    .iter()
                    .any(|r| r.topic == tp.topic && r.partition == tp.partition)
            {
                ps.pending_ts = ps.behind_ts.take();
            }
            if ps.buffered_ts.is_none() && ps.pending_ts.is_none() {
                ps.settled_since = now;
            }
        }
    }

    /// A batch of these ranges was found stale (another member committed some of its offsets): its rows
    /// are gone, so every partition of it still owned must read again from the table's position. Those
    /// partitions, each with the batch's first offset as the position when the table has none (the
    /// earliest, when ranges of several batches name it).
    pub fn after_stale(&mut self, ranges: &[OffsetRange]) -> Vec<(TopicPartition, i64)> {
        let mut again: std::collections::BTreeMap<TopicPartition, i64> = Default::default();
        for r in ranges {
            let tp = r.topic_partition();
            if let Some(ps) = self.partitions.get_mut(&tp) {
                ps.buffered_ts = None;
                ps.pending_ts = None;
                ps.behind_ts = None;
                let first = again.entry(tp).or_insert(r.first);
                *first = (*first).min(r.first);
            }
        }
        again.into_iter().collect()
    }

    fn set_phase(&mut self, tp: &TopicPartition, phase: Phase) {
        if let Some(ps) = self.partitions.get_mut(tp) {
            ps.phase = phase;
            if phase != Phase::Ready {
                ps.next_offset = None;
            }
        }
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<&PartitionState> {
        self.partitions.get(tp)
    }

    pub fn get_mut(&mut self, tp: &TopicPartition) -> Option<&mut PartitionState> {
        self.partitions.get_mut(tp)
    }

    pub fn contains(&self, tp: &TopicPartition) -> bool {
        self.partitions.contains_key(tp)
    }

    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TopicPartition, &PartitionState)> {
        self.partitions.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&TopicPartition, &mut PartitionState)> {
        self.partitions.iter_mut()
    }

    pub fn values(&self) -> impl Iterator<Item = &PartitionState> {
        self.partitions.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(tps: &[(&str, i32)]) -> Positions {
        let mut p = Positions::default();
        for (t, n) in tps {
            p.assign(TopicPartition::new(*t, *n), 0, metrics::Counter::noop());
        }
        p
    }

    #[test]
    fn the_first_message_finds_the_table_position_and_seeks_there() {
        let tp = TopicPartition::new("t", 0);
        let mut p = assigned(&[("t", 0)]);
        // Group offsets resumed at 3; the table holds up to 6 (next 7).
        assert_eq!(p.arrival(&tp, 3), Arrival::Locate(0));
        assert_eq!(p.locate(&tp, 3, Some(7)), Some(7));
        p.seek(&tp, 7);
        // What the consumer still delivers of the old position in this poll is passed over.
        assert_eq!(p.arrival(&tp, 4), Arrival::Pass);
        p.new_poll();
        assert_eq!(p.arrival(&tp, 5), Arrival::Pass, "before the target");
        assert_eq!(p.arrival(&tp, 7), Arrival::Take(0));
        p.took(&tp, 7, 1_000);
        // A redelivery of an offset already taken is passed over.
        assert_eq!(p.arrival(&tp, 7), Arrival::Pass);
        assert_eq!(p.arrival(&tp, 8), Arrival::Take(0));
    }

    #[test]
    fn a_first_message_at_the_table_position_or_of_a_new_table_reads_on() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let mut p = assigned(&[("t", 0), ("t", 1)]);
        assert_eq!(p.arrival(&a, 7), Arrival::Locate(0));
        assert_eq!(p.locate(&a, 7, Some(7)), None);
        assert_eq!(p.arrival(&a, 7), Arrival::Take(0));
        // No txn for the partition yet: wherever the group starts it.
        assert_eq!(p.locate(&b, 42, None), None);
        assert_eq!(p.arrival(&b, 42), Arrival::Take(0));
    }

    #[test]
    fn a_gap_at_the_seek_target_is_accepted_and_unowned_partitions_pass() {
        let tp = TopicPartition::new("t", 0);
        let mut p = assigned(&[("t", 0)]);
        p.seek(&tp, 10);
        p.new_poll();
        // Offsets 10..12 were deleted by retention: the first one there is taken.
        assert_eq!(p.arrival(&tp, 12), Arrival::Take(0));
        assert_eq!(
            p.arrival(&TopicPartition::new("other", 0), 0),
            Arrival::Pass
        );
        p.get_mut(&tp).unwrap().stopped = true;
        assert_eq!(p.arrival(&tp, 13), Arrival::Pass, "stopped");
    }

    #[test]
    fn the_lag_follows_the_oldest_uncommitted_batch_with_two_in_flight() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let mut p = assigned(&[("t", 0), ("t", 1)]);
        let range = |tp: &TopicPartition| OffsetRange {
            topic: tp.topic.clone(),
            partition: tp.partition,
            first: 0,
            last: 0,
            rows: 1,
        };
        let lag = |p: &Positions, tp: &TopicPartition| p.get(tp).unwrap().lag_seconds(0, 10_000);
        // Batch 1 holds t[0] (time 1 s); batch 2, uploaded behind it, t[0] (3 s) and t[1] (4 s).
        p.took(&a, 0, 1_000);
        p.batch_taken(0);
        p.took(&a, 1, 3_000);
        p.took(&b, 0, 4_000);
        p.batch_taken(0);
        assert_eq!((lag(&p, &a), lag(&p, &b)), (9.0, 6.0));
        // Batch 1 lands: batch 2 is the oldest uncommitted of both.
        p.batch_landed(0, &[range(&a)], true);
        assert_eq!((lag(&p, &a), lag(&p, &b)), (7.0, 6.0));
        // Batch 2 lands with nothing behind it: nothing is uncommitted.
        p.batch_landed(0, &[range(&a), range(&b)], false);
        assert_eq!((lag(&p, &a), lag(&p, &b)), (0.0, 0.0));
    }

    #[test]
    fn a_stale_batch_sends_its_owned_partitions_back_to_the_table() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let mut p = assigned(&[("t", 0)]);
        p.locate(&a, 0, None);
        p.took(&a, 0, 5);
        let range = |tp: &TopicPartition, first, last| OffsetRange {
            topic: tp.topic.clone(),
            partition: tp.partition,
            first,
            last,
            rows: 1,
        };
        // The batch held t[0] 0..=4 and t[1] (revoked meanwhile) 3..=9.
        let again = p.after_stale(&[range(&a, 0, 4), range(&b, 3, 9)]);
        assert_eq!(
            again,
            vec![(a.clone(), 0)],
            "only the partition still owned"
        );
        assert_eq!(p.get(&a).unwrap().buffered_ts, None);
        // The table says another member committed up to 2 (next 3): read again from there.
        p.seek(&a, 3);
        p.new_poll();
        assert_eq!(p.arrival(&a, 1), Arrival::Pass);
        assert_eq!(p.arrival(&a, 3), Arrival::Take(0));
    }

    #[test]
    fn markers_after_the_last_message_move_the_partition_on() {
        let tp = TopicPartition::new("t", 0);
        let mut p = assigned(&[("t", 0)]);
        // Only markers since assignment: the table decides, as for a first message.
        assert_eq!(
            p.read_through(&tp, 5),
            ReadThrough::Locate { dataset: 0, to: 5 }
        );
        p.locate(&tp, 3, None);
        p.took(&tp, 3, 0);
        // Offset 4 was the commit marker of the transaction offset 3 was in.
        assert_eq!(
            p.read_through(&tp, 5),
            ReadThrough::Markers {
                dataset: 0,
                from: 4,
                to: 5
            }
        );
        assert_eq!(p.get(&tp).unwrap().next_offset, Some(5));
        assert_eq!(p.read_through(&tp, 5), ReadThrough::Nothing, "once");
        assert_eq!(p.arrival(&tp, 5), Arrival::Take(0));
    }

    #[test]
    fn after_a_seek_markers_count_from_the_target() {
        let tp = TopicPartition::new("t", 0);
        let mut p = assigned(&[("t", 0)]);
        p.seek(&tp, 7);
        assert_eq!(p.read_through(&tp, 7), ReadThrough::Nothing);
        assert_eq!(
            p.read_through(&tp, 9),
            ReadThrough::Markers {
                dataset: 0,
                from: 7,
                to: 9
            }
        );
        assert_eq!(p.get(&tp).unwrap().phase, Phase::Ready);
    }

    #[test]
    fn a_partition_stopped_or_waiting_at_a_message_stays_there() {
        let tp = TopicPartition::new("t", 0);
        let mut p = assigned(&[("t", 0)]);
        p.locate(&tp, 0, None);
        p.took(&tp, 0, 0);
        p.get_mut(&tp).unwrap().waiting_until = Some(Instant::now());
        assert_eq!(p.read_through(&tp, 4), ReadThrough::Nothing);
        let ps = p.get_mut(&tp).unwrap();
        ps.waiting_until = None;
        ps.stopped = true;
        assert_eq!(p.read_through(&tp, 4), ReadThrough::Nothing);
        assert_eq!(p.get(&tp).unwrap().next_offset, Some(1));
    }

    #[test]
    fn revoking_forgets_the_partition() {
        let tp = TopicPartition::new("t", 0);
        let mut p = assigned(&[("t", 0)]);
        assert!(p.revoke(&tp).is_some());
        assert_eq!(p.arrival(&tp, 0), Arrival::Pass);
        assert_eq!(p.len(), 0);
    }
}
