//! The exactly-once vocabulary shared by every stage: which Kafka partition, which offsets, and the
//! Delta `txn` application ids under which a table records how far each writer got.
//!
//! A Delta commit carries `txn` actions (app id → version) atomically with its data, so a table knows
//! what it holds without any other store. Every writer bronze runs records its progress under an app id
//! built here, and only here: two schemes must never collide, and a reader (start-up seek, backfill,
//! status) must spell an id exactly as its writer did.
//!
//! | writer                         | app id                                   | version                    |
//! |--------------------------------|------------------------------------------|----------------------------|
//! | streaming rows                 | `<group>:<topic>:<partition>`            | last offset committed      |
//! | dead-letter table              | `<group>:<topic>:<partition>:dead_letters` | last offset dead-lettered |
//! | backfill / extract request     | `bronze-request:<request_id>`            | runs of the request        |
//! | extract high watermark         | `bronze-extract:<dataset>`               | snapshot time (µs)         |
//! | dead-letter replay             | `<group>:dlq-replay:<dataset>`           | replays committed          |
//! | audit ledger, per followed log | `bronze-audit:<table name>`              | last log version copied    |
//! | latest view                    | `bronze-latest:<dataset>`                | history version applied    |
//!
//! The dead-letter topic publisher keeps its position as Kafka group offsets instead, in the group
//! [`dead_letter_topic_group`].

use std::fmt;

/// One partition of one Kafka topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// Whether this is partition `partition` of `topic` (without making a `TopicPartition` of them).
    pub fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// Partitions as `[topic[0], topic[1]]`, for log lines.
pub struct Listed<'a>(pub &'a [TopicPartition]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, tp) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{tp}")?;
        }
        f.write_str("]")
    }
}

/// The offsets of one Kafka partition that a flush covers. `last` includes messages that produced no
/// row (tombstones), so the committed position moves past them too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRange {
    pub topic: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
    pub rows: usize,
}

impl OffsetRange {
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }
}

/// The app id under which consumer group `group_id` records the last offset of `tp` committed as rows.
pub fn streaming(group_id: &str, tp: &TopicPartition) -> String {
    format!("{group_id}:{}:{}", tp.topic, tp.partition)
}

/// The app id under which `group_id` records the last offset of `tp` recorded as a dead letter.
pub fn dead_letters(group_id: &str, tp: &TopicPartition) -> String {
    format!("{}:dead_letters", streaming(group_id, tp))
}

/// The app id recording a backfill or extract request in a dataset's table (version: its runs).
pub fn request(request_id: &str) -> String {
    format!("bronze-request:{request_id}")
}

/// The app id of a dataset's extract high watermark (version: the snapshot time in µs).
pub fn extract_watermark(dataset: &str) -> String {
    format!("bronze-extract:{dataset}")
}

/// The app id counting the dead-letter replays `group_id` committed into a dataset's table.
pub fn replay(group_id: &str, dataset: &str) -> String {
    format!("{group_id}:dlq-replay:{dataset}")
}

/// The app id under which the audit ledger records how far it transcribed the log of `table`
/// (`orders`, or `orders/dead_letters` for a dataset's dead-letter table).
pub fn audit(table: &str) -> String {
    format!("bronze-audit:{table}")
}

/// The app id holding the history version a dataset's latest view has applied.
pub fn latest_view(dataset: &str) -> String {
    format!("bronze-latest:{dataset}")
}

/// The Kafka consumer group whose offsets are the dead-letter topic publisher's position.
pub fn dead_letter_topic_group(group_id: &str, dataset: &str) -> String {
    format!("bronze-dlq:{group_id}:{dataset}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_keep_the_spelling_existing_tables_hold() {
        // Tables written by earlier builds carry these ids: a change of spelling would re-ingest.
        let tp = TopicPartition::new("dbserver1.public.orders", 2);
        assert_eq!(streaming("g", &tp), "g:dbserver1.public.orders:2");
        assert_eq!(
            dead_letters("g", &tp),
            "g:dbserver1.public.orders:2:dead_letters"
        );
        assert_eq!(request("r-1"), "bronze-request:r-1");
        assert_eq!(extract_watermark("orders"), "bronze-extract:orders");
        assert_eq!(replay("g", "orders"), "g:dlq-replay:orders");
        assert_eq!(
            audit("orders/dead_letters"),
            "bronze-audit:orders/dead_letters"
        );
        assert_eq!(latest_view("orders"), "bronze-latest:orders");
        assert_eq!(
            dead_letter_topic_group("g", "orders"),
            "bronze-dlq:g:orders"
        );
        assert_eq!(tp.to_string(), "dbserver1.public.orders[2]");
        let two = [tp.clone(), TopicPartition::new("t", 0)];
        assert_eq!(
            Listed(&two).to_string(),
            "[dbserver1.public.orders[2], t[0]]"
        );
    }

    #[test]
    fn no_two_writers_share_an_app_id() {
        // A dataset named like a topic, a request named like a dataset: still all distinct.
        let tp = TopicPartition::new("orders", 0);
        let ids = [
            streaming("g", &tp),
            dead_letters("g", &tp),
            request("orders"),
            extract_watermark("orders"),
            replay("g", "orders"),
            audit("orders"),
            latest_view("orders"),
        ];
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    }
}
