//! Read-only look at the topics for `bronze status`: partitions, watermarks and the timestamp of the
//! first unread message, without joining the consumer group (a running `bronze run` is not disturbed).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
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
        let metadata = self.consumer.fetch_metadata(None, REQUEST_TIMEOUT)?;
        let mut out: Vec<TopicPartition> = metadata
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__") && selector.matches(t.name()))
            .flat_map(|t| {
                t.partitions()
                    .iter()
                    .map(|p| (t.name().to_string(), p.id()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Low and high watermark.
    pub fn watermarks(&self, tp: &TopicPartition) -> Result<(i64, i64), KafkaError> {
        self.consumer.fetch_watermarks(&tp.0, tp.1, REQUEST_TIMEOUT)
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
