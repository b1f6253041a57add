//! The dead-letter topic: every dead letter committed to a dataset's dead-letter table is also
//! published to a Kafka topic, for teams that watch topics rather than tables.
//!
//! Exactly once, fed from the table: the table is where a dead letter becomes durable (in the same
//! exactly-once story as the rows), and the topic follows its log. Versions are published in Kafka
//! transactions; each transaction also commits, as the offset of partition 0 of the dead-letter topic
//! in the group `bronze-dlq:<group>:<dataset>`, the next table version to publish. Messages and
//! progress therefore become visible together: a crash mid-transaction aborts both, and the next
//! publisher starts again from the committed version, so a `read_committed` consumer sees each dead
//! letter once. Publishers of one dataset share a `transactional.id`, so the broker fences all but the
//! newest (members of a group take turns rather than publish twice).

use std::collections::HashMap;
use std::time::Duration;

use deltalake::logstore::LogStoreRef;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::dead_letters::{self, DeadLetterFilter};
use super::{SinkError, delta_log};
use crate::buffer::DeadLetter;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterTopicError {
    #[error("dead-letter topic `{topic}`: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error(transparent)]
    Table(Box<SinkError>),
}

impl From<SinkError> for DeadLetterTopicError {
    fn from(e: SinkError) -> Self {
        DeadLetterTopicError::Table(Box::new(e))
    }
}

/// Most table versions published in one Kafka transaction.
const MAX_VERSIONS_PER_TRANSACTION: u64 = 500;
/// Dead letters after which a Kafka transaction takes no further versions (a version's letters are
/// never split).
const MAX_LETTERS_PER_TRANSACTION: u64 = 50_000;
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// What a [`DeadLetterTopic::publish`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub letters: usize,
    pub versions: u64,
}

/// Publishes one dataset's dead-letter table to its topic.
pub struct DeadLetterTopic {
    dataset: String,
    topic: String,
    table_uri: String,
    storage_options: HashMap<String, String>,
    log: LogStoreRef,
    kafka: ClientConfig,
    progress_group: String,
    /// Created (and its transactions initialized) on first use, dropped after any Kafka error so the
    /// next attempt starts from the committed progress.
    session: Option<Session>,
}

struct Session {
    producer: ThreadedProducer<DefaultProducerContext>,
    /// The progress group, whose offsets the transactions commit.
    group: ConsumerGroupMetadata,
    /// The next table version to publish.
    next: u64,
}

impl DeadLetterTopic {
    /// `kafka` carries the connection settings (bootstrap servers, security); `group_id` is the
    /// bronze group's, which names the publisher's transactional id and progress group.
    pub fn new(
        dataset: &str,
        topic: &str,
        table_uri: &str,
        storage_options: &HashMap<String, String>,
        kafka: ClientConfig,
        group_id: &str,
    ) -> Result<DeadLetterTopic, SinkError> {
        Ok(DeadLetterTopic {
            dataset: dataset.to_string(),
            topic: topic.to_string(),
            table_uri: table_uri.to_string(),
            storage_options: storage_options.clone(),
            log: super::open_log(table_uri, storage_options)?,
            kafka,
            progress_group: crate::txn::dead_letter_topic_group(group_id, dataset),
            session: None,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn kafka_err(&self, source: KafkaError) -> DeadLetterTopicError {
        DeadLetterTopicError::Kafka {
            topic: self.topic.clone(),
            source,
        }
    }

    /// Publish every table version not published yet. On error the open transaction is aborted and the
    /// next call starts again from the committed progress.
    pub async fn publish(&mut self) -> Result<Published, DeadLetterTopicError> {
        let mut total = Published::default();
        loop {
            match self.publish_step().await {
                Ok(p) if p.versions == 0 => return Ok(total),
                Ok(p) => {
                    total.letters += p.letters;
                    total.versions += p.versions;
                }
                Err(e) => {
                    if let Some(s) = self.session.take() {
                        let _ = tokio::task::block_in_place(|| {
                            s.producer.abort_transaction(KAFKA_TIMEOUT)
                        });
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One transaction: the next versions' dead letters and the new progress.
    async fn publish_step(&mut self) -> Result<Published, DeadLetterTopicError> {
        if self.session.is_none() {
            self.session = Some(self.open_session()?);
        }
        let from = self.session.as_ref().map_or(0, |s| s.next);
        let (next, batch_ids) = self.scan_versions(from).await?;
        if next == from {
            return Ok(Published::default());
        }
        let letters = if batch_ids.is_empty() {
            Vec::new()
        } else {
            let filter = DeadLetterFilter {
                batch_ids: Some(batch_ids.iter().map(|(id, _)| id.clone()).collect()),
                ..DeadLetterFilter::default()
            };
            dead_letters::read_with_batch(&self.table_uri, &self.storage_options, &filter).await?
        };
        let committed_ms: HashMap<&str, Option<i64>> = batch_ids
            .iter()
            .map(|(id, ms)| (id.as_str(), *ms))
            .collect();
        let session = self.session.as_mut().expect("opened above");
        let (dataset, topic) = (&self.dataset, &self.topic);
        let result = tokio::task::block_in_place(|| {
            publish_in_transaction(session, dataset, topic, &letters, &committed_ms, next)
        });
        result.map_err(|e| self.kafka_err(e))?;
        if let Some(s) = self.session.as_mut() {
            s.next = next;
        }
        metrics::counter!("bronze_dead_letters_published_total", "dataset" => self.dataset.clone())
            .increment(letters.len() as u64);
        debug!(dataset = %self.dataset, topic = %self.topic, letters = letters.len(), versions = next - from,
            "dead letters published");
        Ok(Published {
            letters: letters.len(),
            versions: next - from,
        })
    }

    /// The table versions one transaction covers, from `from`: the version after them, and the
    /// dead-letter batches they committed with their commit times.
    async fn scan_versions(
        &self,
        from: u64,
    ) -> Result<(u64, Vec<(String, Option<i64>)>), DeadLetterTopicError> {
        let mut next = from;
        let mut batch_ids = Vec::new();
        let mut letters_seen = 0u64;
        while next - from < MAX_VERSIONS_PER_TRANSACTION
            && letters_seen < MAX_LETTERS_PER_TRANSACTION
        {
            let entry = delta_log::read_entry(self.log.as_ref(), next)
                .await
                .map_err(|source| SinkError::Delta {
                    uri: self.table_uri.clone(),
                    source,
                })?;
            let Some(entry) = entry else { break };
            let bronze = entry.bronze.as_ref();
            let field = |name: &str| bronze.and_then(|b| b.get(name));
            if field("kind").and_then(|k| k.as_str()) == Some("dead_letters")
                && entry.files_added > 0
                && let Some(id) = field("batch_id").and_then(|i| i.as_str())
            {
                batch_ids.push((id.to_string(), entry.timestamp_ms));
                letters_seen += field("dead_lettered").and_then(|n| n.as_u64()).unwrap_or(0);
            }
            next += 1;
        }
        Ok((next, batch_ids))
    }

    /// A producer with transactions initialized (fencing older publishers of this dataset and aborting
    /// what they left open), and the committed progress.
    fn open_session(&self) -> Result<Session, DeadLetterTopicError> {
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .kafka
            .clone()
            .set("transactional.id", &self.progress_group)
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| self.kafka_err(e))?;
        let progress: BaseConsumer = self
            .kafka
            .clone()
            .set("group.id", &self.progress_group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| self.kafka_err(e))?;
        tokio::task::block_in_place(|| -> Result<Session, KafkaError> {
            producer.init_transactions(KAFKA_TIMEOUT)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, 0);
            let committed = progress.committed_offsets(tpl, KAFKA_TIMEOUT)?;
            let next = committed
                .find_partition(&self.topic, 0)
                .and_then(|p| match p.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o as u64),
                    _ => None,
                })
                .unwrap_or(0);
            info!(dataset = %self.dataset, topic = %self.topic, next_version = next,
                "dead-letter topic publisher ready");
            let group = progress.group_metadata().ok_or_else(|| {
                KafkaError::ClientCreation(format!(
                    "no group metadata for `{}`",
                    self.progress_group
                ))
            })?;
            Ok(Session {
                producer,
                group,
                next,
            })
        })
        .map_err(|e| self.kafka_err(e))
    }
}

/// Send `letters` and the progress `next` in one Kafka transaction.
fn publish_in_transaction(
    session: &mut Session,
    dataset: &str,
    topic: &str,
    letters: &[(DeadLetter, String)],
    committed_ms: &HashMap<&str, Option<i64>>,
    next: u64,
) -> Result<(), KafkaError> {
    session.producer.begin_transaction()?;
    for (letter, batch_id) in letters {
        let dead_lettered_ms = committed_ms.get(batch_id.as_str()).copied().flatten();
        let headers = headers_of(dataset, letter, dead_lettered_ms);
        let mut record = BaseRecord::to(topic).headers(headers);
        if let Some(k) = &letter.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &letter.value {
            record = record.payload(v.as_slice());
        }
        send(&session.producer, record)?;
    }
    // A transaction of versions without dead letters carries only progress: the crash test needs
    // one with letters, flushed to the broker, left open.
    if !letters.is_empty()
        && std::env::var("BRONZE_FAILPOINT").is_ok_and(|f| f == "dead_letter_topic_before_commit")
    {
        session.producer.flush(KAFKA_TIMEOUT)?;
        crate::sink::failpoint("dead_letter_topic_before_commit");
    }
    let mut progress = TopicPartitionList::new();
    progress.add_partition_offset(topic, 0, Offset::Offset(next as i64))?;
    session
        .producer
        .send_offsets_to_transaction(&progress, &session.group, KAFKA_TIMEOUT)?;
    session.producer.commit_transaction(KAFKA_TIMEOUT)
}

/// Queue a record, waiting while librdkafka's queue is full.
fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                record = r;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The letter's own headers, byte for byte, then bronze's: what went wrong and where it came from.
fn headers_of(dataset: &str, l: &DeadLetter, dead_lettered_ms: Option<i64>) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(l.headers.len() + 9);
    for (k, v) in &l.headers {
        h = h.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    let partition = l.partition.to_string();
    let offset = l.offset.to_string();
    let timestamp = l.timestamp_ms.to_string();
    let at = dead_lettered_ms.map(|ms| ms.to_string());
    let mut fields: Vec<(&str, &str)> = vec![
        ("bronze.dataset", dataset),
        ("bronze.error.kind", &l.reason),
        ("bronze.error.message", &l.error),
        ("bronze.source.topic", &l.topic),
        ("bronze.source.partition", &partition),
        ("bronze.source.offset", &offset),
        ("bronze.source.timestamp", &timestamp),
    ];
    if let Some(at) = &at {
        fields.push(("bronze.dead_lettered_at", at));
    }
    for (k, v) in fields {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    h
}

/// The publishers of a run: a background task publishes every `interval`, and once more when closed.
pub struct PublisherHandle {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PublisherHandle {
    pub fn spawn(mut topics: Vec<DeadLetterTopic>, interval: Duration) -> PublisherHandle {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut last_error: Vec<Option<String>> = vec![None; topics.len()];
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let last_round = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stopped.changed() => true,
                };
                for (t, last) in topics.iter_mut().zip(&mut last_error) {
                    match t.publish().await {
                        Ok(p) => {
                            if p.letters > 0 {
                                info!(dataset = %t.dataset, topic = %t.topic, letters = p.letters,
                                    "dead letters published to the topic");
                            }
                            *last = None;
                        }
                        Err(e) => report_error(&t.dataset, &e, last),
                    }
                }
                if last_round {
                    return;
                }
            }
        });
        PublisherHandle { stop, task }
    }

    /// Publish what the tables hold now and stop, waiting at most `timeout`.
    pub async fn close(self, timeout: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            warn!(
                "dead-letter topics not fully published in time; the next run publishes the rest"
            );
        }
    }
}

/// Log a publisher error once per distinct message, then at debug level.
pub fn report_error(dataset: &str, e: &DeadLetterTopicError, last: &mut Option<String>) {
    metrics::counter!("bronze_dead_letter_topic_errors_total", "dataset" => dataset.to_string())
        .increment(1);
    let text = e.to_string();
    if last.as_deref() != Some(text.as_str()) {
        warn!(dataset, error = %text, "dead-letter topic publishing failed; retrying");
        *last = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn headers_keep_the_originals_first_and_say_what_went_wrong() {
        let l = DeadLetter {
            topic: "shop.orders".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: None,
            headers: vec![
                ("trace".into(), Some(vec![0xff, 0])),
                ("empty".into(), None),
            ],
            reason: "invalid_json".into(),
            error: "expected value at line 1".into(),
        };
        let h = headers_of("orders", &l, Some(1_700_000_001_000));
        let all: Vec<(String, Option<Vec<u8>>)> = h
            .iter()
            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(all[0], ("trace".into(), Some(vec![0xff, 0])));
        assert_eq!(all[1], ("empty".into(), None));
        let get = |k: &str| {
            all.iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.clone())
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(get("bronze.error.kind").as_deref(), Some("invalid_json"));
        assert_eq!(get("bronze.source.offset").as_deref(), Some("42"));
        assert_eq!(get("bronze.source.partition").as_deref(), Some("3"));
        assert_eq!(
            get("bronze.dead_lettered_at").as_deref(),
            Some("1700000001000")
        );
        assert_eq!(all.len(), 10);
    }
}
