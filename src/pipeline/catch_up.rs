//! `--until-caught-up`: when a run is done. Each assigned partition has a target, its high watermark
//! when it was assigned; a member is done once it has read and committed up to every target and the
//! table holds every other partition of the subscribed topics up to the watermarks read at the first
//! assignment (the *group targets*), so the members of a group stop together.
//!
//! A member's own partitions cannot tell when the group is done: a partition on its way between
//! members (revoked, not yet assigned) belongs to none of them, and a member that joins may first be
//! assigned nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::PipelineError;
use super::positions::{PartitionState, Phase, Positions};
use crate::config::Config;
use crate::source::Inspector;
use crate::txn::TopicPartition;

/// How long `--until-caught-up` waits for a first assignment before giving up.
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the table is read for the partitions other members own: it reads the log.
const GROUP_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Where an assigned partition stands against its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    Reached,
    Behind,
    /// Stopped on a message it cannot ingest: the run cannot catch up.
    Stopped,
    /// Nothing read yet: the table's position for it (of this dataset) decides.
    AskTable(usize),
}

/// A partition's progress towards `high`, from what the run knows of it.
pub(super) fn progress(high: i64, ps: &PartitionState) -> Progress {
    if ps.stopped {
        return Progress::Stopped;
    }
    let position = match (ps.next_offset, ps.phase) {
        (Some(next), _) => Some(next),
        // The table's position only grows: once it was read at the target, reading it again (a log
        // read per partition and check) is only cost. With a hundred idle tables those reads took
        // the whole loop, and the messages of the others were never polled.
        (None, Phase::Unknown) if ps.committed.is_some_and(|c| c >= high) => ps.committed,
        (None, Phase::Unknown) => return Progress::AskTable(ps.dataset),
        // On the way to the table's position: everything before it is in the table. When that is the
        // end of the partition no message will ever arrive to say so.
        (None, Phase::Seeking(target)) => Some(target),
        (None, Phase::Ready) => None,
    };
    reached(position, high)
}

/// Whether a position (the next offset) has reached `high`.
pub(super) fn reached(position: Option<i64>, high: i64) -> Progress {
    match position {
        Some(p) if p >= high => Progress::Reached,
        _ => Progress::Behind,
    }
}

/// The catch-up state of a run (only `--until-caught-up` runs have a [`CatchUp::client`]).
pub(super) struct CatchUp {
    /// High watermark per assigned partition, read when it was assigned.
    targets: HashMap<TopicPartition, i64>,
    /// Every partition of the subscribed topics with something in it (its dataset and high watermark),
    /// read at the first assignment.
    group_targets: HashMap<TopicPartition, (usize, i64)>,
    /// A client of its own for the watermarks. Asked on the group consumer's connection, a request
    /// waits behind the fetch the broker is holding there (up to `fetch.wait.max.ms`: 454 ms against
    /// 6 ms with 10 ms, measured on the local broker).
    client: Option<Inspector>,
    last_group_check: Option<Instant>,
    /// Whether what this member read of its current partitions is committed since they caught up.
    pub own_committed: bool,
    ever_assigned: bool,
    since: Instant,
}

impl CatchUp {
    pub fn new(client: Option<Inspector>) -> Self {
        CatchUp {
            targets: HashMap::new(),
            group_targets: HashMap::new(),
            client,
            last_group_check: None,
            own_committed: false,
            ever_assigned: false,
            since: Instant::now(),
        }
    }

    /// An assignment changed: what was committed no longer covers this member's partitions.
    pub fn rebalanced(&mut self) {
        self.own_committed = false;
    }

    pub fn revoked(&mut self, tp: &TopicPartition) {
        self.targets.remove(tp);
    }

    /// High watermarks of the partitions `tps` just assigned that have something in them. At the first
    /// assignment they come from the group's, read then for every partition of the topics.
    pub fn highs_of(
        &mut self,
        cfg: &Config,
        tps: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, i64>, PipelineError> {
        let first = !self.ever_assigned;
        self.ever_assigned = true;
        let Some(client) = &self.client else {
            return Ok(HashMap::new());
        };
        if first {
            self.group_targets = read_group_targets(cfg, client)?;
            return Ok(self
                .group_targets
                .iter()
                .map(|(tp, &(_, high))| (tp.clone(), high))
                .collect());
        }
        Ok(tokio::task::block_in_place(|| client.watermarks_of(tps))?
            .into_iter()
            .filter(|(_, (low, high))| high > low)
            .map(|(tp, (_, high))| (tp, high))
            .collect())
    }

    pub fn target(&mut self, tp: TopicPartition, high: i64) {
        debug!(topic = %tp.topic, partition = tp.partition, high, "catch-up target");
        self.targets.insert(tp, high);
    }

    /// `Err` once no assignment came within [`ASSIGNMENT_TIMEOUT`]; `Ok(false)` while waiting for one.
    pub fn assigned(&self) -> Result<bool, PipelineError> {
        if self.ever_assigned {
            return Ok(true);
        }
        if self.since.elapsed() > ASSIGNMENT_TIMEOUT {
            return Err(PipelineError::Stopped(format!(
                "no partitions were assigned within {ASSIGNMENT_TIMEOUT:?}: do the topics exist?"
            )));
        }
        Ok(false)
    }

    /// The assigned partitions' targets.
    pub fn targets(&self) -> Vec<(TopicPartition, i64)> {
        self.targets.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Whether every partition with a target has been read up to it (cheap: no table read, unlike the
    /// full check, which also counts partitions the table is ahead on).
    pub fn read_to_targets(&self, positions: &Positions) -> bool {
        self.targets.iter().all(|(tp, &high)| {
            positions
                .get(tp)
                .is_some_and(|ps| ps.next_offset.is_some_and(|next| next >= high))
        })
    }

    /// The group targets of partitions this member does not own, when it is time to look at them again
    /// (`None` until then).
    pub fn others_due(
        &mut self,
        positions: &Positions,
    ) -> Option<Vec<(TopicPartition, usize, i64)>> {
        if self
            .last_group_check
            .is_some_and(|t| t.elapsed() < GROUP_CHECK_EVERY)
        {
            return None;
        }
        self.last_group_check = Some(Instant::now());
        Some(
            self.group_targets
                .iter()
                .filter(|(tp, _)| !positions.contains(tp))
                .map(|(tp, &(d, high))| (tp.clone(), d, high))
                .collect(),
        )
    }
}

/// Every partition of the subscribed topics with something in it, its dataset and high watermark.
fn read_group_targets(
    cfg: &Config,
    client: &Inspector,
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

impl super::Run {
    /// `--until-caught-up`: done when every assigned partition has reached the high watermark it had
    /// at assignment and everything is committed.
    pub(super) async fn caught_up_check(&mut self) -> Result<bool, PipelineError> {
        if !self.catch_up.assigned()? {
            return Ok(false);
        }
        let mut all = true;
        for (tp, high) in self.catch_up.targets() {
            let Some(ps) = self.positions.get(&tp) else {
                continue;
            };
            let progress = match progress(high, ps) {
                Progress::AskTable(d) => reached(self.table_position(d, &tp).await?, high),
                p => p,
            };
            match progress {
                Progress::Stopped => {
                    return Err(PipelineError::Stopped(format!(
                        "{tp} stopped on a message it cannot ingest; see the error above"
                    )));
                }
                Progress::Reached => {}
                _ => all = false,
            }
        }
        if !all {
            return Ok(false);
        }
        // Other members may be waiting for these partitions to be in the table: commit them now
        // rather than at the flush age.
        if !self.catch_up.own_committed {
            if !self.commit_caught_up().await? {
                return Ok(false);
            }
            self.catch_up.own_committed = true;
        }
        if !self.others_caught_up().await? || !self.commit_caught_up().await? {
            return Ok(false);
        }
        info!("caught up with the high watermarks read at assignment");
        Ok(true)
    }
    /// Whether the table holds, for every partition this member does not own, everything up to the
    /// high watermark read at the first assignment.
    async fn others_caught_up(&mut self) -> Result<bool, PipelineError> {
        let Some(others) = self.catch_up.others_due(&self.positions) else {
            return Ok(false);
        };
        self.settle_all().await?;
        let mut refreshed = vec![false; self.datasets.len()];
        let mut behind = 0;
        for (tp, d, high) in others {
            let ds = &mut self.datasets[d];
            if !refreshed[d] {
                ds.sink().refresh().await?;
                refreshed[d] = true;
            }
            let app_id = crate::txn::streaming(&self.group_id, &tp);
            let position = ds.sink().committed_offset(&app_id).await?.map(|v| v + 1);
            if reached(position, high) != Progress::Reached {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(next_offset: Option<i64>, phase: Phase) -> PartitionState {
        let mut ps = PartitionState::new(3, metrics::Counter::noop());
        ps.next_offset = next_offset;
        ps.phase = phase;
        ps
    }

    #[test]
    fn a_partition_reaches_its_target_by_reading_or_by_seeking_to_it() {
        assert_eq!(
            progress(10, &partition(Some(10), Phase::Ready)),
            Progress::Reached
        );
        assert_eq!(
            progress(10, &partition(Some(9), Phase::Ready)),
            Progress::Behind
        );
        // Sent to the table's position at the end of the partition: no message will say so.
        assert_eq!(
            progress(10, &partition(None, Phase::Seeking(10))),
            Progress::Reached
        );
        assert_eq!(
            progress(10, &partition(None, Phase::Seeking(4))),
            Progress::Behind
        );
        // Ready but nothing read: a message is still to come.
        assert_eq!(
            progress(10, &partition(None, Phase::Ready)),
            Progress::Behind
        );
        // Nothing read since assignment: the table may hold it all already.
        assert_eq!(
            progress(10, &partition(None, Phase::Unknown)),
            Progress::AskTable(3)
        );
        // ... and once it was seen to, it is not asked again; a table behind is asked again.
        let mut known = partition(None, Phase::Unknown);
        known.committed = Some(10);
        assert_eq!(progress(10, &known), Progress::Reached);
        assert_eq!(progress(11, &known), Progress::AskTable(3));
        let mut stopped = partition(Some(10), Phase::Ready);
        stopped.stopped = true;
        assert_eq!(progress(10, &stopped), Progress::Stopped);
        assert_eq!(reached(None, 10), Progress::Behind);
        assert_eq!(reached(Some(11), 10), Progress::Reached);
    }

    #[test]
    fn read_to_targets_needs_every_target_read() {
        let mut c = CatchUp::new(None);
        let mut p = Positions::default();
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        p.assign(a.clone(), 0, metrics::Counter::noop());
        p.assign(b.clone(), 0, metrics::Counter::noop());
        c.target(a.clone(), 5);
        c.target(b.clone(), 3);
        for tp in [&a, &b] {
            p.locate(tp, 0, None);
        }
        p.took(&a, 4, 0);
        assert!(!c.read_to_targets(&p), "b has read nothing");
        p.took(&b, 2, 0);
        assert!(c.read_to_targets(&p));
        // A partition revoked has no target left.
        c.revoked(&b);
        p.revoke(&b);
        assert!(c.read_to_targets(&p));
    }

    #[test]
    fn no_assignment_waits_then_gives_up() {
        let mut c = CatchUp::new(None);
        assert!(matches!(c.assigned(), Ok(false)));
        c.since = Instant::now() - ASSIGNMENT_TIMEOUT - Duration::from_secs(1);
        assert!(c.assigned().is_err());
        c.highs_of(&test_config(), &[]).unwrap();
        assert!(matches!(c.assigned(), Ok(true)));
    }

    #[test]
    fn other_members_partitions_are_looked_at_twice_a_second() {
        let mut c = CatchUp::new(None);
        let mut p = Positions::default();
        let (mine, theirs) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        p.assign(mine.clone(), 0, metrics::Counter::noop());
        c.group_targets.insert(mine, (0, 7));
        c.group_targets.insert(theirs.clone(), (0, 9));
        assert_eq!(c.others_due(&p), Some(vec![(theirs, 0, 9)]));
        assert_eq!(c.others_due(&p), None, "again within half a second");
    }

    fn test_config() -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.toml"),
            "[[columns]]\nname = \"id\"\ntype = \"int64\"\n",
        )
        .unwrap();
        let file = dir.path().join("bronze.toml");
        std::fs::write(
            &file,
            "schema_dir = \".\"\n[kafka]\nbootstrap_servers = \"x:1\"\ngroup_id = \"g\"\n[storage]\nroot = \"lake\"\n\
             [[datasets]]\nname = \"d\"\ntopics = [\"t\"]\nformat = \"json\"\nschema = \"s.toml\"\n",
        )
        .unwrap();
        Config::load_with_env(&file, &[]).unwrap()
    }
}
