//! What the loop reports on its ticks: schema drift (metrics, a log line and a ledger record per kind),
//! the broker's return after an outage, and the lag, memory and partition gauges.

use std::time::{Duration, Instant};

use tracing::warn;

use rdkafka::consumer::Consumer;

use super::Run;
use super::state::DatasetState;
use crate::audit::AuditRecord;
use crate::source;
use crate::txn::TopicPartition;

impl Run {
    /// Drift the mappers saw: every affected message is counted; the first sighting of each kind of
    /// drift on a column in this run is logged (old and new type) and recorded in the ledger.
    pub(super) fn report_drift(&mut self) {
        for ds in &mut self.datasets {
            for e in ds.mapper.take_drift() {
                let (kind, action) = (e.kind.as_str(), e.action);
                if action == "review" && ds.review_pending.insert(e.column.clone()) {
                    metrics::gauge!("bronze_schema_proposals_pending", "dataset" => ds.cfg.name.clone())
                        .set(ds.review_pending.len() as f64);
                }
                metrics::counter!("bronze_schema_drift_messages_total", "dataset" => ds.cfg.name.clone(),
                    "kind" => kind, "action" => action)
                .increment(e.messages);
                if !ds.drift_reported.insert((kind, e.column.clone(), action)) {
                    continue;
                }
                metrics::counter!("bronze_schema_drift_events_total", "dataset" => ds.cfg.name.clone(),
                    "kind" => kind, "action" => action)
                .increment(1);
                warn!(dataset = %ds.cfg.name, kind, column = %e.column, expected = %e.expected,
                    observed = %e.observed, action, messages = e.messages, "schema drift");
                if let Some(a) = &self.audit {
                    a.record(AuditRecord::drift(&self.run_id, &ds.cfg.name, &e));
                }
            }
        }
    }

    /// A broker outage is reported by librdkafka, but its end is not: probe while one is on record.
    pub(super) fn check_broker(&mut self) {
        if self.options.health.has_broker_error()
            && self.last_broker_probe.elapsed() >= Duration::from_secs(5)
        {
            self.last_broker_probe = Instant::now();
            if source::broker_reachable(&self.consumer) {
                self.options.health.broker_error(None);
            }
        }
    }

    pub(super) fn update_gauges(&self) {
        // Lag in messages: high watermark minus the table's position (the low watermark before the
        // table has one for the partition).
        let watermarks = self.consumer.context().reported_watermarks();
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (tp, ps) in self.positions.iter() {
            let lag = watermarks
                .get(tp)
                .map(|(low, high)| (high - ps.committed.unwrap_or(*low)).max(0));
            let dataset = &self.datasets[ps.dataset].cfg.name;
            if let Some(lag) = lag {
                lag_gauge(dataset, tp).set(lag as f64);
            }
            lag_seconds_gauge(dataset, tp).set(ps.lag_seconds(lag.unwrap_or(0), now_ms));
        }
        let used: usize = self.datasets.iter().map(DatasetState::memory_bytes).sum();
        metrics::gauge!("bronze_buffer_bytes").set(used as f64);
        let paused = self
            .positions
            .values()
            .filter(|p| p.paused_for_memory)
            .count();
        metrics::gauge!("bronze_paused_partitions").set(paused as f64);
        for (d, ds) in self.datasets.iter().enumerate() {
            let stopped = self
                .positions
                .values()
                .filter(|p| p.dataset == d && p.stopped)
                .count();
            metrics::gauge!("bronze_stopped_partitions", "dataset" => ds.cfg.name.clone())
                .set(stopped as f64);
        }
        metrics::gauge!("bronze_assigned_partitions").set(self.positions.len() as f64);
    }
}

/// `bronze_consumer_lag_messages` of one partition.
pub(super) fn lag_gauge(dataset: &str, tp: &TopicPartition) -> metrics::Gauge {
    metrics::gauge!("bronze_consumer_lag_messages", "dataset" => dataset.to_string(), "topic" => tp.topic.clone(), "partition" => tp.partition.to_string())
}

/// `bronze_consumer_lag_seconds` of one partition: age of its oldest uncommitted event.
pub(super) fn lag_seconds_gauge(dataset: &str, tp: &TopicPartition) -> metrics::Gauge {
    metrics::gauge!("bronze_consumer_lag_seconds", "dataset" => dataset.to_string(), "topic" => tp.topic.clone(), "partition" => tp.partition.to_string())
}
