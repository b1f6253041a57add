//! Tables a run opens after it started: a fan-out's table when its topic is first assigned, and any
//! table that could not be opened yet (a derived contract whose topic has no message with a schema so
//! far, a contract file missing, the store down), retried every [`RETRY`] while its partitions wait
//! paused, and a fan-out topic whose table is named by its messages (`{source.table}`) while none
//! names it yet. Nothing of such a topic is read, so nothing of it is lost.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tracing::{info, warn};

use super::{PipelineError, Run, start};
use crate::config::DatasetConfig;
use crate::decode::Decoder;
use crate::source::{self, Inspector};
use crate::txn::TopicPartition;

/// How long a table that could not be opened waits before the next attempt.
const RETRY: Duration = Duration::from_secs(10);

/// Datasets of this run whose table is not open, each with when to try again and how often it failed.
#[derive(Default)]
pub(super) struct Unopened {
    waiting: Vec<(DatasetConfig, Instant, u32)>,
    /// Topics whose fan-out names tables by the messages, and no message names theirs yet (or they
    /// disagree), each with when to look again and how often it was looked at.
    unnamed: Vec<(String, Instant, u32)>,
}

impl Unopened {
    pub(super) fn new(failed: Vec<DatasetConfig>) -> Self {
        let at = Instant::now() + RETRY;
        Unopened {
            waiting: failed.into_iter().map(|d| (d, at, 1)).collect(),
            unnamed: Vec::new(),
        }
    }

    fn position(&self, topic: &str) -> Option<usize> {
        self.waiting
            .iter()
            .position(|(d, ..)| d.topics.matches(topic))
    }
}

impl Run {
    /// Partitions just assigned: each joins its dataset (opening a fan-out's new table first); those
    /// of a topic without an open table are paused until it opens.
    pub(super) async fn assigned(&mut self, tps: Vec<TopicPartition>) -> Result<(), PipelineError> {
        for tp in &tps {
            if self.dataset_of(&tp.topic).await.is_none() {
                source::pause(&self.consumer, tp);
            }
        }
        let highs = self.catch_up.highs_of(&self.cfg, &tps)?;
        for tp in tps {
            let Some(d) = self.cfg.dataset_for_topic(&tp.topic) else {
                continue;
            };
            self.datasets[d].needs_refresh = true;
            if let Some(&high) = highs.get(&tp) {
                self.catch_up.target(tp.clone(), high);
            }
            let consumed = metrics::counter!("bronze_events_consumed_total",
                "dataset" => self.cfg.datasets[d].name.clone(), "topic" => tp.topic.clone());
            self.positions.assign(tp, d, consumed);
        }
        Ok(())
    }

    /// Try again to open the tables whose time has come; the partitions of those that open join them.
    pub(super) async fn open_unopened(&mut self) -> Result<(), PipelineError> {
        let now = Instant::now();
        let unnamed_due = self.unopened.unnamed.iter().any(|(_, at, _)| *at <= now);
        if !unnamed_due && !self.unopened.waiting.iter().any(|(_, at, _)| *at <= now) {
            return Ok(());
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return Ok(());
        };
        let assigned: Vec<TopicPartition> = assignment
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect();
        let mut due: Vec<String> = Vec::new();
        for (d, at, _) in &self.unopened.waiting {
            if *at <= now
                && let Some(tp) = assigned.iter().find(|tp| d.topics.matches(&tp.topic))
            {
                due.push(tp.topic.clone());
            }
        }
        for (topic, at, _) in &self.unopened.unnamed {
            if *at <= now && assigned.iter().any(|tp| &tp.topic == topic) {
                due.push(topic.clone());
            }
        }
        for topic in due {
            if self.dataset_of(&topic).await.is_some() {
                let tps: Vec<TopicPartition> = assigned
                    .iter()
                    .filter(|tp| tp.topic == topic)
                    .cloned()
                    .collect();
                for tp in &tps {
                    source::resume(&self.consumer, tp);
                }
                self.assigned(tps).await?;
            }
        }
        Ok(())
    }

    /// The dataset `topic` feeds, its table opened (created on its topic's first assignment) if it was
    /// not yet. `None` for a topic nothing claims, or whose table cannot be opened now (then retried).
    async fn dataset_of(&mut self, topic: &str) -> Option<usize> {
        if let Some(d) = self.cfg.dataset_for_topic(topic) {
            return Some(d);
        }
        let (d, failures) = match self.unopened.position(topic) {
            Some(i) if self.unopened.waiting[i].1 > Instant::now() => return None,
            Some(i) => {
                let (d, _, failures) = self.unopened.waiting.remove(i);
                (d, failures)
            }
            None => (self.fan_out_table(topic).await?, 0),
        };
        let state = match start::open_state(&self.cfg, &d, &self.registry).await {
            Ok(state) => state,
            Err(e) => {
                start::table_failed(&d, &e, failures == 0);
                let at = Instant::now() + RETRY;
                self.unopened.waiting.push((d, at, failures + 1));
                return None;
            }
        };
        let i = match self.cfg.add_dataset(state.cfg.clone()) {
            Ok(i) => i,
            Err(e) => {
                metrics::counter!("bronze_fan_out_errors_total").increment(1);
                warn!(topic = %topic, error = %e, "no table for this topic; it is not read");
                return None;
            }
        };
        info!(dataset = %d.name, topic = %topic, fan_out = ?d.fan_out, "table opened");
        self.datasets.push(state);
        self.config_updates.send_replace(self.cfg.clone());
        Some(i)
    }

    /// The dataset a fan-out makes of `topic`, reading the topic's first messages when they name it.
    /// A table no message names yet is looked for again after [`RETRY`].
    async fn fan_out_table(&mut self, topic: &str) -> Option<DatasetConfig> {
        let Some(format) = self.cfg.fan_out_reads_messages(topic) else {
            return match self.cfg.fan_out_table(topic, &[]) {
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    metrics::counter!("bronze_fan_out_errors_total").increment(1);
                    warn!(topic = %topic, error = %e, "no table for this topic; it is not read");
                    None
                }
                None => {
                    warn!(topic = %topic, "assigned a topic no dataset claims; ignoring it");
                    None
                }
            };
        };
        let looked = match self.unopened.unnamed.iter().position(|(t, ..)| t == topic) {
            Some(i) if self.unopened.unnamed[i].1 > Instant::now() => return None,
            Some(i) => self.unopened.unnamed.remove(i).2,
            None => 0,
        };
        let decoder = Decoder::new(format, self.registry.clone());
        let blocks = match Inspector::new(&self.cfg) {
            Ok(inspector) => source::source_blocks(&inspector, &decoder, topic)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        // An empty topic is no error yet; messages that cannot name one table are.
        let named = match blocks {
            Ok(blocks) if blocks.is_empty() => {
                Err((false, "no message names its table yet".into()))
            }
            Ok(blocks) => match self.cfg.fan_out_table(topic, &blocks) {
                Some(Ok(d)) => Ok(d),
                Some(Err(e)) => Err((true, e.to_string())),
                None => Err((true, "no fan-out matches it".to_string())),
            },
            Err(e) => Err((true, e)),
        };
        match named {
            Ok(d) => Some(d),
            Err((counted, e)) => {
                if counted {
                    metrics::counter!("bronze_fan_out_errors_total").increment(1);
                }
                if looked == 0 {
                    warn!(topic = %topic, error = %e, "no table for this topic yet; it waits, paused, and is looked at again every 10s");
                }
                let at = Instant::now() + RETRY;
                self.unopened
                    .unnamed
                    .push((topic.to_string(), at, looked + 1));
                None
            }
        }
    }
}
