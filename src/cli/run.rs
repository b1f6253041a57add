//! `bronze run`: the streaming job until a signal (or, with --until-caught-up, until the high
//! watermarks read at start are committed).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bronze::config::Config;
use bronze::pipeline::{self, RunOptions};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML); `BRONZE__SECTION__KEY` variables override its keys.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Ingest up to the high watermarks read at start, commit and exit ("trigger once").
    #[arg(long)]
    pub until_caught_up: bool,
}

pub async fn run(cfg: Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal();
    let health = std::sync::Arc::new(bronze::observability::Health::default());
    if let Some(addr) = &cfg.metrics.address {
        let addr = addr.parse().context("metrics.address")?;
        bronze::observability::serve(addr, health.clone()).await?;
    }
    let options = RunOptions {
        until_caught_up: args.until_caught_up,
        health,
    };
    let summary = pipeline::run(cfg, options, shutdown).await?;
    print!("{summary}");
    if let Some(rss) = bronze::observability::peak_rss_bytes() {
        println!("peak RSS: {:.1} MiB", rss as f64 / (1024.0 * 1024.0));
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the future is
/// first polled, so a signal during start-up (opening tables) still leads to a clean exit.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
