//! Tables a run opens after it started: a fan-out's table when its topic is first assigned, and any
//! table that could not be opened yet (a derived contract whose topic has no message with a schema so
//! far, a contract file missing, the store down), retried every [`RETRY`] while its partitions wait
//! paused. Nothing of such a topic is read, so nothing of it is lost.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tracing::{info, warn};

use super::{PipelineError, Run, start};
use crate::config::DatasetConfig;
use crate::source;
use crate::txn::TopicPartition;

/// How long a table that could not be opened waits before the next attempt.
const RETRY: Duration = Duration::from_secs(10);

/// Datasets of this run whose table is not open, each with when to try again and how often it failed.
#[derive(Default)]
pub(super) struct Unopened {
    waiting: Vec<(DatasetConfig, Instant, u32)>,
}

impl Unopened {
    pub(super) fn new(failed: Vec<DatasetConfig>) -> Self {
        let at = Instant::now() + RETRY;
        Unopened {
            waiting: failed.into_iter().map(|d| (d, at, 1)).collect(),
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
        if !self.unopened.waiting.iter().any(|(_, at, _)| *at <= now) {
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
            None => match self.cfg.fan_out_table(topic) {
                Some(Ok(d)) => (d, 0),
                Some(Err(e)) => {
                    metrics::counter!("bronze_fan_out_errors_total").increment(1);
                    warn!(topic = %topic, error = %e, "no table for this topic; it is not read");
                    return None;
                }
                None => {
                    warn!(topic = %topic, "assigned a topic no dataset claims; ignoring it");
                    return None;
                }
            },
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
}
