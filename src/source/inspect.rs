//! Read-only look at the topics, without joining the consumer group (a running `bronze run` is not
//! disturbed): partitions, watermarks and the timestamp of the first unread message for `bronze status`;
//! offsets by time and bounded reads of offset ranges for backfills.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::buffer::TopicPartition;
use crate::config::{Config, TopicSelector};

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

    /// Every partition of the topics `selector` names, sorted.
    pub fn partitions(&self, selector: &TopicSelector) -> Result<Vec<TopicPartition>, KafkaError> {
        super::partitions_of(&self.consumer, selector, REQUEST_TIMEOUT)
    }

    /// Low and high watermarks of `partitions`, in two requests.
    pub fn watermarks_of(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, (i64, i64)>, KafkaError> {
        super::watermarks_of(&self.consumer, partitions, REQUEST_TIMEOUT)
    }

    /// Low and high watermark.
    pub fn watermarks(&self, tp: &TopicPartition) -> Result<(i64, i64), KafkaError> {
        self.consumer.fetch_watermarks(&tp.0, tp.1, REQUEST_TIMEOUT)
    }

    /// The first offset of each partition whose Kafka timestamp is at or after `time_ms`; the high
    /// watermark where there is none.
    pub fn offsets_at_time(
        &self,
        partitions: &[TopicPartition],
        time_ms: i64,
    ) -> Result<HashMap<TopicPartition, i64>, KafkaError> {
        let found = super::list_offsets(
            &self.consumer,
            partitions,
            Offset::Offset(time_ms),
            REQUEST_TIMEOUT,
        )?;
        let mut out = HashMap::new();
        for e in found.elements() {
            let tp = (e.topic().to_string(), e.partition());
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
        for ((topic, partition), start, end) in ranges {
            if start < end {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*start))?;
                ends.insert((topic.clone(), *partition), *end);
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
                    let tp = (m.topic().to_string(), m.partition());
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
                None if idle_since.elapsed() > Duration::from_secs(30) => {
                    return Err(KafkaError::MessageConsumption(
                        rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                    ));
                }
                None => {}
            }
        }
        if ends.is_empty() {
            self.consumer.unassign()?;
        }
        Ok(read)
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
        for ((topic, partition), offset) in positions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        self.consumer.assign(&tpl)?;
        let deadline = Instant::now() + timeout;
        while found.len() < positions.len() && Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let tp = (m.topic().to_string(), m.partition());
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
