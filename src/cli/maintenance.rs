//! `bronze compact`, `bronze latest` and `bronze vacuum`: table maintenance, here or (compact, vacuum)
//! submitted to the running members.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bronze::config::{Config, DatasetConfig};
use bronze::control::request::Kind;

use super::submit::{Running, control_request, submit_or_run};

#[derive(clap::Args)]
pub struct CompactArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// One dataset (default: all).
    #[arg(long)]
    dataset: Option<String>,
    /// Also partitions that may still receive appends.
    #[arg(long)]
    all_partitions: bool,
    #[command(flatten)]
    run: Running,
}

#[derive(clap::Args)]
pub struct LatestArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// One dataset (default: all with a latest view).
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct VacuumArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    #[arg(long)]
    dataset: Option<String>,
    /// Default: `vacuum.retention`, e.g. `7d`.
    #[arg(long, value_parser = humantime::parse_duration)]
    retention: Option<std::time::Duration>,
    #[command(flatten)]
    run: Running,
}

pub async fn compact(cfg: &Config, a: CompactArgs) -> anyhow::Result<ExitCode> {
    let request = || {
        let d = a.dataset.as_deref().context("--submit needs --dataset")?;
        Ok(control_request(d, Kind::Compact, |r| {
            r.all_partitions = a.all_partitions;
            r.dry_run = a.run.dry_run;
        }))
    };
    let here = compact_here(
        cfg,
        a.dataset.as_deref(),
        a.all_partitions,
        a.run.dry_run,
        a.run.json,
    );
    submit_or_run(cfg, a.run.submit, a.run.json, request, here).await
}

pub async fn vacuum(cfg: &Config, a: VacuumArgs) -> anyhow::Result<ExitCode> {
    let request = || {
        let d = a.dataset.as_deref().context("--submit needs --dataset")?;
        Ok(control_request(d, Kind::Vacuum, |r| {
            r.retention = a.retention;
            r.dry_run = a.run.dry_run;
        }))
    };
    let here = vacuum_here(
        cfg,
        a.dataset.as_deref(),
        a.retention,
        a.run.dry_run,
        a.run.json,
    );
    submit_or_run(cfg, a.run.submit, a.run.json, request, here).await
}

/// The datasets a maintenance command works on: one by name, or all.
fn selected<'a>(cfg: &'a Config, dataset: Option<&str>) -> anyhow::Result<Vec<&'a DatasetConfig>> {
    let out: Vec<_> = cfg
        .datasets
        .iter()
        .filter(|d| dataset.is_none_or(|n| n == d.name))
        .collect();
    if out.is_empty() {
        anyhow::bail!("no dataset named `{}`", dataset.unwrap_or_default());
    }
    Ok(out)
}

async fn compact_here(
    cfg: &Config,
    dataset: Option<&str>,
    all_partitions: bool,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use bronze::maintenance::{self, Scope};
    let scope = if all_partitions {
        Scope::AllPartitions
    } else {
        Scope::Sealed
    };
    for d in selected(cfg, dataset)? {
        let r = maintenance::compact(cfg, d, scope, dry_run).await?;
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else if dry_run {
            println!(
                "{}: {} partitions would be compacted ({} files now; {} partitions not sealed yet)",
                r.dataset, r.partitions_compacted, r.files_before, r.partitions_skipped_unsealed
            );
        } else {
            println!(
                "{}: {} partitions compacted, {} files -> {} ({} removed, {} added, {} bytes rewritten) in {} ms; {} partitions not sealed yet",
                r.dataset,
                r.partitions_compacted,
                r.files_before,
                r.files_after,
                r.files_removed,
                r.files_added,
                r.bytes_rewritten,
                r.duration_ms,
                r.partitions_skipped_unsealed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn latest(cfg: &Config, a: LatestArgs) -> anyhow::Result<ExitCode> {
    let datasets: Vec<&DatasetConfig> = selected(cfg, a.dataset.as_deref())?
        .into_iter()
        .filter(|d| d.latest.is_some() || a.dataset.is_some())
        .collect();
    for d in datasets {
        let r = bronze::maintenance::latest::refresh(cfg, d).await?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else if r.conflict {
            println!(
                "{}: another writer refreshed the view first; nothing committed",
                r.dataset
            );
        } else if r.version.is_none() {
            println!(
                "{}: up to date (table version {:?})",
                r.dataset, r.to_version
            );
        } else {
            println!(
                "{}: table versions {:?}..={:?}{} applied: {} files, {} rows read; {} keys upserted, {} deleted; {} buckets rewritten in {} passes ({} files removed, {} added) in {} ms",
                r.dataset,
                r.from_version,
                r.to_version,
                if r.rebuilt { " (rebuilt)" } else { "" },
                r.files_read,
                r.rows_read,
                r.keys_upserted,
                r.keys_deleted,
                r.buckets_rewritten,
                r.passes,
                r.files_removed,
                r.files_added,
                r.duration_ms
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn vacuum_here(
    cfg: &Config,
    dataset: Option<&str>,
    retention: Option<std::time::Duration>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    for d in selected(cfg, dataset)? {
        let r = bronze::maintenance::vacuum(cfg, d, retention, dry_run).await?;
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{}: {} files {} (removed from the table more than {} s ago)",
                r.dataset,
                r.files_deleted,
                if r.dry_run {
                    "would be deleted"
                } else {
                    "deleted"
                },
                r.retention_s
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
