//! Source: the Kafka consumer group. Offsets are never auto-committed: the Delta table is the source
//! of truth for positions, and group offsets are written after each Delta commit only so that lag
//! tools see progress.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

mod inspect;
mod naming;
pub use inspect::Inspector;
pub use naming::{expand_fan_outs, source_blocks};

use crate::config::Config;
use crate::observability::Health;
use crate::txn::TopicPartition;

/// A partition assignment change, recorded by the rebalance callback and handled by the run loop
/// before it looks at the next message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

/// Consumer context that queues rebalance events instead of acting inside librdkafka's callback, and
/// reports broker outages to the health state.
pub struct SourceContext {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Whether `events` holds any: asked once per polled message, so without the lock.
    pending: AtomicBool,
    health: Arc<Health>,
    /// Low watermark and readable end per partition, from librdkafka's periodic statistics.
    watermarks: Mutex<HashMap<TopicPartition, (i64, i64)>>,
    /// Whether the member reads committed records only: its readable end is then the last stable
    /// offset, not the high watermark (an open transaction's records are not lag it can work off).
    read_committed: bool,
}

impl SourceContext {
    fn new(health: Arc<Health>, read_committed: bool) -> Self {
        SourceContext {
            events: Mutex::default(),
            pending: AtomicBool::new(false),
            health,
            watermarks: Mutex::default(),
            read_committed,
        }
    }

    /// The latest low watermarks and readable ends (the last stable offset when reading committed
    /// records, else the high watermark) librdkafka reported (every `statistics.interval.ms`); unlike
    /// [`Inspector::watermarks`], no request to the broker.
    pub fn reported_watermarks(&self) -> HashMap<TopicPartition, (i64, i64)> {
        lock(&self.watermarks).clone()
    }

    /// Whether rebalance events wait to be taken.
    pub fn has_events(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    pub fn take_events(&self) -> Vec<RebalanceEvent> {
        let mut events = lock(&self.events);
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut *events)
    }

    fn push(&self, e: RebalanceEvent) {
        let mut events = lock(&self.events);
        events.push(e);
        self.pending.store(true, Ordering::Release);
    }
}

/// A panic elsewhere must not take the consumer callbacks down with it: the data stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let mut w = lock(&self.watermarks);
        for (topic, t) in statistics.topics {
            // Partition -1 is librdkafka's internal unassigned queue.
            for (partition, p) in t.partitions.into_iter().filter(|(id, _)| *id >= 0) {
                let end = if self.read_committed && p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if end >= 0 {
                    w.insert(
                        TopicPartition::new(topic.clone(), partition),
                        (p.lo_offset.max(0), end),
                    );
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.broker_error(Some(reason.to_string()));
        }
        warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let p = partitions(tpl);
            info!(partitions = %crate::txn::Listed(&p), "partitions revoked");
            self.push(RebalanceEvent::Revoked(p));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let p = partitions(tpl);
                info!(partitions = %crate::txn::Listed(&p), "partitions assigned");
                self.push(RebalanceEvent::Assigned(p));
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

pub type Source = StreamConsumer<SourceContext>;

/// librdkafka settings to reach the cluster (bootstrap servers and `kafka.properties`), for clients
/// other than the group member.
pub fn connection_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.kafka.bootstrap_servers);
    c
}

/// librdkafka settings for a consumer group member.
pub fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    // Defaults first, so `kafka.properties` can override them.
    c.set("partition.assignment.strategy", "cooperative-sticky")
        // Records of aborted transactions never reach a table, and a transaction's records only once
        // it commits (librdkafka's default too; spelled out because it is a promise).
        .set("isolation.level", "read_committed")
        // librdkafka's 45 s default keeps a crashed member's partitions idle for that long.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        // Watermarks for the lag metrics arrive with the statistics.
        .set("statistics.interval.ms", "5000")
        // librdkafka's prefetch queue lives outside bronze's buffers but inside its memory, so it gets
        // a small share. For a group consumer the limit is one queue's, whatever the partition count
        // (each partition's queue forwards to the consumer's, and the fetcher checks that one's size):
        // split over 500 tables it left 64 KiB in all, and reading fell to 2,178 events/s.
        .set(
            "queued.max.messages.kbytes",
            (cfg.memory.budget_bytes / 32 / 1024)
                .clamp(256, 65536)
                .to_string(),
        )
        // With a small queue, librdkafka's default 1 s back-off once the queue is full throttles reading.
        .set("fetch.queue.backoff.ms", "20")
        .set(
            "fetch.max.bytes",
            (cfg.memory.budget_bytes / 8)
                .clamp(1 << 20, 50 << 20)
                .to_string(),
        );
    if !cfg.fan_outs.is_empty() {
        // librdkafka finds new topics of a pattern subscription when it refreshes its metadata, by
        // default every 5 minutes: a fan-out's new tables should not wait that long.
        c.set("topic.metadata.refresh.interval.ms", "30000");
    }
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.kafka.bootstrap_servers)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", cfg.kafka.auto_offset_reset.as_str());
    c
}

/// Create the consumer and subscribe to every dataset's topics.
pub fn subscribe(cfg: &Config, health: Arc<Health>) -> Result<Source, KafkaError> {
    let config = client_config(cfg);
    let read_committed = config.get("isolation.level") != Some("read_uncommitted");
    let consumer: Source =
        config.create_with_context(SourceContext::new(health, read_committed))?;
    let topics = cfg.subscriptions();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    info!(topics = ?topics, group = %cfg.kafka.group_id, "subscribed");
    Ok(consumer)
}

/// Tell the group how far the tables are, for lag tools. Best effort: the tables are the truth.
pub fn commit_group_offsets(consumer: &Source, positions: &[(TopicPartition, i64)]) {
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (TopicPartition { topic, partition }, next) in positions {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*next))
            .is_err()
        {
            return;
        }
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        debug!(error = %e, "group offset commit failed (lag metrics only)");
    }
}

/// Each assigned partition's position as librdkafka keeps it: the offset after the last record it
/// handed out, transaction markers included (they are never handed out, yet take offsets). A partition
/// nothing was handed out of since its assignment or its last seek is missing.
pub fn fetch_positions(consumer: &Source) -> HashMap<TopicPartition, i64> {
    positions_of(consumer)
}

/// The fetch position of each assigned partition that has one, of any consumer (the group member's,
/// the Inspector's).
pub(crate) fn positions_of<C: ClientContext + ConsumerContext>(
    consumer: &impl Consumer<C>,
) -> HashMap<TopicPartition, i64> {
    let Ok(tpl) = consumer.position() else {
        return HashMap::new();
    };
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((TopicPartition::new(e.topic(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// Move a partition's fetch position.
pub fn seek(consumer: &Source, tp: &TopicPartition, offset: i64) -> Result<(), KafkaError> {
    consumer.seek(
        &tp.topic,
        tp.partition,
        Offset::Offset(offset),
        Duration::from_secs(10),
    )
}

fn single(tp: &TopicPartition) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.topic, tp.partition);
    tpl
}

pub fn pause(consumer: &Source, tp: &TopicPartition) {
    if let Err(e) = consumer.pause(&single(tp)) {
        warn!(topic = %tp.topic, partition = tp.partition, error = %e, "pause failed");
    }
}

pub fn resume(consumer: &Source, tp: &TopicPartition) {
    if let Err(e) = consumer.resume(&single(tp)) {
        warn!(topic = %tp.topic, partition = tp.partition, error = %e, "resume failed");
    }
}

/// Whether the cluster answers a metadata request (used to clear a broker outage while idle).
pub fn broker_reachable(consumer: &Source) -> bool {
    tokio::task::block_in_place(|| {
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalance_events_are_seen_until_taken() {
        let context = SourceContext::new(Arc::new(Health::default()), true);
        assert!(!context.has_events());
        context.push(RebalanceEvent::Revoked(vec![TopicPartition::new("t", 0)]));
        context.push(RebalanceEvent::Assigned(vec![TopicPartition::new("t", 1)]));
        assert!(context.has_events());
        assert_eq!(context.take_events().len(), 2);
        assert!(!context.has_events() && context.take_events().is_empty());
    }
}
