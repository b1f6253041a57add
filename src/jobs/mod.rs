//! Batch jobs: bounded runs beside the streaming loop that rebuild or add to a table — backfills
//! (partitions rebuilt from Kafka), extracts (from the source database), dead-letter replays and the
//! schema review decisions. They admit messages through the streaming path's own rules
//! (`pipeline::admission`) and record what they did as txn versions of their own app ids
//! ([`crate::txn`]), so each is idempotent; backfills and extracts end in one partition swap.

pub mod backfill;
pub mod extract;
pub mod partition_swap;
mod replay;
pub mod review;

pub use replay::{ReplaySummary, replay};

use crate::config::{Config, DatasetConfig};
use crate::pipeline::PipelineError;

/// The dataset a job names, or why it cannot run.
fn dataset<'a>(cfg: &'a Config, name: &str) -> Result<&'a DatasetConfig, PipelineError> {
    cfg.dataset(name)
        .ok_or_else(|| PipelineError::Stopped(format!("unknown dataset `{name}`")))
}
