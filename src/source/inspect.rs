//! Read-only look at the topics, without joining the consumer group (a running `bronze run` is not
//! disturbed): partitions, watermarks and the timestamp of the first unread message for `bronze status`;
//! offsets by time and bounded reads of offset ranges for backfills.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::{Config, TopicSelector};
use crate::txn::TopicPartition;

pub struct Inspector {
    consumer: BaseConsumer,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Inspector {
    pub fn new(cfg: &Config) -> Result<Inspector, KafkaError> {
        let mut c = super::client_config(cfg);
        // Never part of the group: `assign` below only reads.
        c.set("statistics.interval.ms", "0");
        Ok(Inspector {
            consumer: c.create()?,
        })
    }

    /// The names of the cluster's topics (internal `__` ones left out).
    pub fn topic_names(&self) -> Result<Vec<String>, KafkaError> {
        let metadata = self.consumer.fetch_metadata(None, REQUEST_TIMEOUT)?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|t| !t.starts_with("__"))
            .collect())
    }

    /// Every partition of the topics `selector` names, sorted.
    pub fn partitions(&self, selector: &TopicSelector) -> Result<Vec<TopicPartition>, KafkaError> {
        let metadata = self.consumer.fetch_metadata(None, REQUEST_TIMEOUT)?;
        let mut out: Vec<TopicPartition> = metadata
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__") && selector.matches(t.name()))
            .flat_map(|t| {
                t.partitions()
                    .iter()
                    .map(|p| TopicPartition::new(t.name(), p.id()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Low and high watermarks of `partitions`: two requests for all of them, where asking partition
    /// by partition takes two round trips each.
    pub fn watermarks_of(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, (i64, i64)>, KafkaError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        // ListOffsets with the timestamps -2 and -1: the earliest and the latest offset.
        let at = |position: Offset| -> Result<Vec<(TopicPartition, i64)>, KafkaError> {
            self.list_offsets(partitions, position)?
                .elements()
                .iter()
                .map(|e| {
                    e.error()?;
                    match e.offset() {
                        Offset::Offset(o) => Ok((TopicPartition::new(e.topic(), e.partition()), o)),
                        // The broker answers both with an offset, 0 for an empty partition; taking
                        // anything else for "empty" could end a catch-up early.
                        _ => Err(KafkaError::OffsetFetch(RDKafkaErrorCode::Fail)),
                    }
                })
                .collect()
        };
        let low: HashMap<TopicPartition, i64> = at(Offset::Beginning)?.into_iter().collect();
        Ok(at(Offset::End)?
            .into_iter()
            .map(|(tp, high)| {
                let low = low.get(&tp).copied().unwrap_or(high);
                (tp, (low, high))
            })
            .collect())
    }

    /// One ListOffsets request: for each of `partitions`, the first offset whose timestamp is at or
    /// after `at` (`Offset::Beginning` / `Offset::End`: the earliest / latest offset), as the broker
    /// answers.
    fn list_offsets(
        &self,
        partitions: &[TopicPartition],
        at: Offset,
    ) -> Result<TopicPartitionList, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for TopicPartition { topic, partition } in partitions {
            tpl.add_partition_offset(topic, *partition, at)?;
        }
        self.consumer.offsets_for_times(tpl, REQUEST_TIMEOUT)
    }

    /// Low and high watermark.
    pub fn watermarks(&self, tp: &TopicPartition) -> Result<(i64, i64), KafkaError> {
        self.consumer
            .fetch_watermarks(&tp.topic, tp.partition, REQUEST_TIMEOUT)
    }

    /// The first offset of each partition whose Kafka timestamp is at or after `time_ms`; the high
    /// watermark where there is none.
    pub fn offsets_at_time(
        &self,
        partitions: &[TopicPartition],
        time_ms: i64,
    ) -> Result<HashMap<TopicPartition, i64>, KafkaError> {
        let found = self.list_offsets(partitions, Offset::Offset(time_ms))?;
        let mut out = HashMap::new();
        for e in found.elements() {
            let tp = TopicPartition::new(e.topic(), e.partition());
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => self.watermarks(&tp)?.1,
            };
            out.insert(tp, offset);
        }
        Ok(out)
    }

    /// Start reading `[start, end)` of each partition; returns the partitions with something to read and
    /// their end, for [`Inspector::read_ranges`].
    pub fn start_ranges(
        &self,
        ranges: &[(TopicPartition, i64, i64)],
    ) -> Result<HashMap<TopicPartition, i64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for (TopicPartition { topic, partition }, start, end) in ranges {
            if start < end {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*start))?;
                ends.insert(TopicPartition::new(topic.clone(), *partition), *end);
            }
        }
        self.consumer.assign(&tpl)?;
        Ok(ends)
    }

    /// Hand up to `max` messages of the started ranges to `f`, in offset order per partition; a
    /// partition leaves `ends` once its end is reached. Messages at or past a partition's end are not
    /// handed on. Fails when nothing arrives for 30 s while ranges are unfinished.
    pub fn read_ranges(
        &self,
        ends: &mut HashMap<TopicPartition, i64>,
        max: usize,
        mut f: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<usize, KafkaError> {
        let mut read = 0;
        let mut idle_since = Instant::now();
        while !ends.is_empty() && read < max {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    idle_since = Instant::now();
                    let tp = TopicPartition::new(m.topic(), m.partition());
                    let Some(end) = ends.get(&tp).copied() else {
                        continue;
                    };
                    if m.offset() < end {
                        f(&m);
                        read += 1;
                    }
                    if m.offset() >= end - 1 {
                        ends.remove(&tp);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {
                    self.drop_read_through(ends);
                    if !ends.is_empty() && idle_since.elapsed() > Duration::from_secs(30) {
                        return Err(KafkaError::MessageConsumption(
                            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                        ));
                    }
                }
            }
        }
        if ends.is_empty() {
            self.consumer.unassign()?;
        }
        Ok(read)
    }

    /// Partitions whose position has reached their end with no message to say so: transaction markers
    /// take a partition's last offsets, and librdkafka's position steps over them.
    fn drop_read_through(&self, ends: &mut HashMap<TopicPartition, i64>) {
        for (tp, position) in super::positions_of(&self.consumer) {
            if ends.get(&tp).is_some_and(|&end| position >= end) {
                ends.remove(&tp);
            }
        }
    }

    /// Kafka timestamp (ms) of the message at each given offset, for those that can be read within
    /// `timeout` (an offset past the end has none).
    pub fn timestamps_at(
        &self,
        positions: &[(TopicPartition, i64)],
        timeout: Duration,
    ) -> Result<HashMap<TopicPartition, i64>, KafkaError> {
        let mut found = HashMap::new();
        if positions.is_empty() {
            return Ok(found);
        }
        let mut tpl = TopicPartitionList::new();
        for (TopicPartition { topic, partition }, offset) in positions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        self.consumer.assign(&tpl)?;
        let deadline = Instant::now() + timeout;
        while found.len() < positions.len() && Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let tp = TopicPartition::new(m.topic(), m.partition());
                    if let Some(ts) = m.timestamp().to_millis() {
                        found.entry(tp).or_insert(ts);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        self.consumer.unassign()?;
        Ok(found)
    }
}
