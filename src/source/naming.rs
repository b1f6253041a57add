//! Where the tables of fan-outs come from before the run reads anything: the cluster's topics at
//! start, and for a fan-out that names its tables by the messages (`{source.table}`) the Debezium
//! `source` block of each topic's first messages.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::Message;
use rdkafka::error::KafkaError;
use tracing::{debug, warn};

use super::Inspector;
use crate::config::{Config, SourceBlock, TopicSelector};
use crate::decode::Decoder;
use crate::decode::registry::{Registry, RegistryError};
use crate::txn::TopicPartition;

/// Messages read from the start of each partition for its source blocks: a topic names one table
/// only if all of them agree.
const FIRST_MESSAGES: i64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum NamingError {
    #[error("reading the topic's first messages: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Make the tables of the fan-outs for the topics the cluster has now (the run makes those of topics
/// created later, or still without a message that names their table, as they are assigned). Tables
/// that cannot be made, and a cluster that cannot be asked, are warnings: the other tables go on.
pub async fn expand_fan_outs(cfg: &mut Config) {
    if cfg.fan_outs.is_empty() {
        return;
    }
    let listed = Inspector::new(cfg).and_then(|i| {
        let topics = tokio::task::block_in_place(|| i.topic_names())?;
        Ok((i, topics))
    });
    let (inspector, mut topics) = match listed {
        Ok(listed) => listed,
        Err(e) => {
            warn!(error = %e, "cannot list the cluster's topics; fan-out tables are made as their topics are assigned");
            return;
        }
    };
    let registry = match cfg.schema_registry.as_ref().map(Registry::new).transpose() {
        Ok(r) => r.map(Arc::new),
        Err(e) => {
            warn!(error = %e, "cannot make the schema registry client; Avro tables named by their messages wait for the run");
            None
        }
    };
    let mut sources = HashMap::new();
    let mut unnamed = Vec::new();
    for topic in &topics {
        let Some(format) = cfg.fan_out_reads_messages(topic) else {
            continue;
        };
        let decoder = Decoder::new(format, registry.clone());
        match source_blocks(&inspector, &decoder, topic).await {
            Ok(blocks) if blocks.is_empty() => unnamed.push(topic.clone()),
            Ok(blocks) => {
                sources.insert(topic.clone(), blocks);
            }
            Err(e) => {
                warn!(topic = %topic, error = %e, "cannot read the messages that name this topic's table; the run tries again");
                unnamed.push(topic.clone());
            }
        }
    }
    if !unnamed.is_empty() {
        debug!(topics = ?unnamed, "no message names these topics' tables yet; they are made when one does");
        topics.retain(|t| !unnamed.contains(t));
    }
    for (topic, e) in cfg.expand_fan_outs(topics.iter().map(String::as_str), &sources) {
        metrics::counter!("bronze_fan_out_errors_total").increment(1);
        warn!(topic = %topic, error = %e, "no table for this topic");
    }
}

/// The source blocks of the first messages of each partition of `topic`, in partition and offset
/// order: what a fan-out that names its tables by them needs. Empty while no message has one
/// (an empty topic, only tombstones).
pub async fn source_blocks(
    inspector: &Inspector,
    decoder: &Decoder,
    topic: &str,
) -> Result<Vec<SourceBlock>, NamingError> {
    let values = tokio::task::block_in_place(|| first_values(inspector, topic))?;
    let mut out = Vec::new();
    for value in &values {
        decoder.prepare(None, Some(value)).await?;
        out.extend(decoder.source_block(Some(value)));
    }
    Ok(out)
}

fn first_values(inspector: &Inspector, topic: &str) -> Result<Vec<Vec<u8>>, KafkaError> {
    let partitions = inspector.partitions(&TopicSelector::Names(vec![topic.to_string()]))?;
    let ranges: Vec<_> = inspector
        .watermarks_of(&partitions)?
        .into_iter()
        .map(|(tp, (low, high))| (tp, low, high.min(low + FIRST_MESSAGES)))
        .collect();
    let mut ends = inspector.start_ranges(&ranges)?;
    let mut read: Vec<(TopicPartition, i64, Vec<u8>)> = Vec::new();
    inspector.read_ranges(&mut ends, usize::MAX, |m| {
        if let Some(value) = m.payload() {
            let tp = TopicPartition::new(m.topic(), m.partition());
            read.push((tp, m.offset(), value.to_vec()));
        }
    })?;
    read.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    Ok(read.into_iter().map(|(.., value)| value).collect())
}
