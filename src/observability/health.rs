//! Liveness and readiness. The run loop reports what it sees (broker errors, failed commits, stopped
//! partitions); the endpoints only read it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;

/// What makes a process not ready, as last reported by the run loop.
#[derive(Default)]
pub struct Health {
    state: Mutex<State_>,
}

#[derive(Default, Clone, Serialize)]
struct State_ {
    /// Set while librdkafka reports every broker unreachable.
    broker_error: Option<String>,
    datasets: BTreeMap<String, DatasetHealth>,
}

#[derive(Default, Clone, Serialize)]
struct DatasetHealth {
    /// The last commit attempt failed with this error.
    commit_error: Option<String>,
    /// `topic[partition]` stopped on a message that cannot be ingested.
    stopped_partitions: Vec<String>,
}

impl Health {
    fn lock(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn broker_error(&self, error: Option<String>) {
        self.lock().broker_error = error;
        self.publish();
    }

    pub fn has_broker_error(&self) -> bool {
        self.lock().broker_error.is_some()
    }

    pub fn commit_result(&self, dataset: &str, error: Option<String>) {
        self.lock()
            .datasets
            .entry(dataset.to_string())
            .or_default()
            .commit_error = error;
        self.publish();
    }

    pub fn partition_stopped(&self, dataset: &str, topic: &str, partition: i32) {
        self.lock()
            .datasets
            .entry(dataset.to_string())
            .or_default()
            .stopped_partitions
            .push(format!("{topic}[{partition}]"));
        self.publish();
    }

    /// Mirror readiness into the `bronze_ready` gauge; called on every change of the state, so the
    /// gauge never needs polling.
    pub fn publish(&self) {
        let ready = self.readiness().0;
        metrics::gauge!("bronze_ready").set(if ready { 1.0 } else { 0.0 });
    }

    /// Whether the process is ready, with the reasons when it is not.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let state = self.lock().clone();
        let mut reasons = Vec::new();
        if let Some(e) = &state.broker_error {
            reasons.push(format!("broker unreachable: {e}"));
        }
        for (name, d) in &state.datasets {
            if let Some(e) = &d.commit_error {
                reasons.push(format!("dataset {name}: commits failing: {e}"));
            }
            if !d.stopped_partitions.is_empty() {
                reasons.push(format!(
                    "dataset {name}: stopped partitions {}",
                    d.stopped_partitions.join(", ")
                ));
            }
        }
        let ready = reasons.is_empty();
        (
            ready,
            json!({"status": if ready { "ready" } else { "not_ready" }, "reasons": reasons,
                   "broker_error": state.broker_error, "datasets": state.datasets}),
        )
    }
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
}

pub(super) fn router(metrics: PrometheusHandle, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route(
            "/healthz",
            get(|| async { Json(json!({"status": "alive"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics.render()
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let (ready, body) = s.health.readiness();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_every_reason_and_recovers() {
        let h = Health::default();
        assert!(h.readiness().0);
        h.commit_result("orders", Some("timeout".into()));
        h.partition_stopped("orders", "t", 3);
        h.broker_error(Some("all brokers down".into()));
        let (ready, body) = h.readiness();
        assert!(!ready);
        let reasons = body["reasons"].to_string();
        assert!(
            reasons.contains("timeout") && reasons.contains("t[3]") && reasons.contains("brokers")
        );
        h.commit_result("orders", None);
        h.broker_error(None);
        assert!(!h.readiness().0, "a stopped partition keeps it unready");
    }
}
