//! Logs and metrics. Every stage reports through the `tracing` and `metrics` facades; this module only
//! installs the subscriber and the Prometheus exporter, so nothing in the data path depends on them.

mod health;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::EnvFilter;

pub use health::Health;

#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    #[error("metrics exporter on {addr}: {message}")]
    Metrics { addr: SocketAddr, message: String },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the fields of every enclosing span (dataset, run id), for log
    /// pipelines.
    Json,
}

/// Log to stderr; `RUST_LOG` overrides the default level. The delta kernel logs an ERROR when it opens
/// an empty directory, which is the normal first start, so it is silenced unless asked for.
pub fn init_logging(format: LogFormat) {
    // The kernel's `#[instrument(err)]` spans log errors that are also returned to bronze (and
    // reported there), so they are only shown when asked for by name.
    const QUIET: &str =
        "buoyant_kernel=off,delta_kernel=off,deltalake_core::kernel::transaction=off";
    let directives = match std::env::var("RUST_LOG") {
        Ok(v) if v.contains("kernel") => v,
        Ok(v) => format!("{v},{QUIET}"),
        Err(_) => format!("info,librdkafka=warn,rdkafka=warn,{QUIET}"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(directives))
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
}

/// Serve `/metrics` (Prometheus text), `/healthz` (the process answers) and `/readyz` (broker reachable,
/// storage accepting commits, no partition stopped) on `addr`, in the background.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> Result<(), ObservabilityError> {
    let err = |message: String| ObservabilityError::Metrics { addr, message };
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ])
        .map_err(|e| err(e.to_string()))?
        .set_buckets_for_metric(
            Matcher::Full("bronze_file_size_bytes".to_string()),
            &[
                65536.0,
                262144.0,
                1048576.0,
                4194304.0,
                16777216.0,
                67108864.0,
                134217728.0,
                268435456.0,
                536870912.0,
            ],
        )
        .map_err(|e| err(e.to_string()))?
        .install_recorder()
        .map_err(|e| err(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| err(e.to_string()))?;
    let app = health::router(handle, health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics and health endpoint stopped");
        }
    });
    Ok(())
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), for run summaries and benches.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
