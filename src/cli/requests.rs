//! `bronze backfill` and `bronze extract`: partition replaces rebuilt from Kafka or from the database,
//! run here or submitted to the running members.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bronze::config::Config;
use bronze::control::request::{Kind, Request};

use super::parse_time;
use super::submit::{Identity, Running, control_request, submit_or_run, with_progress};

#[derive(clap::Args)]
pub struct BackfillArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    #[arg(long)]
    dataset: String,
    /// Range start: RFC 3339 time or a date (`2026-11-01`); widened to whole partitions.
    #[arg(long, value_parser = parse_time, required_unless_present = "partitions", requires = "to")]
    from: Option<i64>,
    /// Range end (exclusive), like --from.
    #[arg(long, value_parser = parse_time, requires = "from")]
    to: Option<i64>,
    /// Explicit partitions instead of a range: `2026-11-01,2026-11-03` (`2026-11-01/05` on
    /// date/hour tables).
    #[arg(long, value_delimiter = ',', conflicts_with = "from")]
    partitions: Vec<String>,
    #[command(flatten)]
    id: Identity,
    #[command(flatten)]
    run: Running,
}

#[derive(clap::Args)]
pub struct ExtractArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    #[arg(long)]
    dataset: String,
    #[arg(long, value_parser = parse_time, requires = "to")]
    from: Option<i64>,
    #[arg(long, value_parser = parse_time, requires = "from")]
    to: Option<i64>,
    /// Replace the whole table.
    #[arg(long, conflicts_with = "from")]
    full: bool,
    #[command(flatten)]
    id: Identity,
    #[command(flatten)]
    run: Running,
}

pub async fn backfill(cfg: &Config, a: BackfillArgs) -> anyhow::Result<ExitCode> {
    let (from_us, to_us) = match a.from.zip(a.to) {
        Some(range) => range,
        None => {
            let by = cfg
                .dataset(&a.dataset)
                .map(|d| d.partitioning.by)
                .with_context(|| format!("no dataset named `{}`", a.dataset))?;
            bronze::jobs::partition_swap::span_of(by, &a.partitions).map_err(anyhow::Error::msg)?
        }
    };
    let req = bronze::jobs::backfill::BackfillRequest {
        request_id: a
            .id
            .request_id
            .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7())),
        dataset: a.dataset,
        from_us,
        to_us,
        partitions: a.partitions,
        force: a.id.force,
        dry_run: a.run.dry_run,
        requested_by: std::env::var("USER").ok(),
    };
    let request = || {
        Ok(control_request(&req.dataset, Kind::Backfill, |r| {
            r.request_id = req.request_id.clone();
            r.range = Some((req.from_us, req.to_us));
            r.partitions = req.partitions.clone();
            r.force = req.force;
            r.dry_run = req.dry_run;
        }))
    };
    submit_or_run(
        cfg,
        a.run.submit,
        a.run.json,
        request,
        backfill_here(cfg, &req, a.run.json),
    )
    .await
}

pub async fn extract(cfg: &Config, a: ExtractArgs) -> anyhow::Result<ExitCode> {
    let r = control_request(&a.dataset, Kind::Extract, |r| {
        if let Some(id) = a.id.request_id {
            r.request_id = id;
        }
        r.range = a.from.zip(a.to);
        r.extract_mode = match (r.range, a.full) {
            (Some(_), _) => None,
            (None, true) => Some("full".into()),
            (None, false) => Some("incremental".into()),
        };
        r.source = "postgres".into();
        r.force = a.id.force;
        r.dry_run = a.run.dry_run;
    });
    submit_or_run(
        cfg,
        a.run.submit,
        a.run.json,
        || Ok(r.clone()),
        extract_here(cfg, &r, a.run.json),
    )
    .await
}

async fn backfill_here(
    cfg: &Config,
    req: &bronze::jobs::backfill::BackfillRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let o = with_progress(
        "{spinner} {msg} [{bar:30}] {pos}/{len} messages ({per_sec}, {eta})",
        format!("backfill {}", req.dataset),
        json,
        async |report| bronze::jobs::backfill::backfill(cfg, req, report).await,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string(&o)?);
    } else {
        println!(
            "{} {}: {} ({} partitions, {} messages read, {} rows written, {} files removed, {} added, version {}, {} attempts, {} ms)",
            o.dataset,
            o.request_id,
            o.status,
            o.partitions.len(),
            o.messages_read,
            o.rows_written,
            o.files_removed,
            o.files_added,
            o.table_version.map_or("-".to_string(), |v| v.to_string()),
            o.attempts,
            o.duration_ms
        );
        for (reason, n) in &o.still_failing {
            println!("  still failing: {reason:<16} {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn extract_here(cfg: &Config, r: &Request, json: bool) -> anyhow::Result<ExitCode> {
    let o = with_progress(
        "{spinner} {msg} [{bar:30}] {pos}/{len} rows ({per_sec}, {eta})",
        format!("extract {}", r.dataset),
        json,
        async |report| bronze::jobs::extract::extract(cfg, &r.extract(), report).await,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string(&o)?);
    } else {
        println!(
            "{} {}: {} ({}, {} ranges, {} rows read, {} written, {} files removed, {} added, version {}, {} ms)",
            o.dataset,
            o.request_id,
            o.status,
            o.mode,
            o.ranges,
            o.rows_read,
            o.rows_written,
            o.files_removed,
            o.files_added,
            o.table_version.map_or("-".to_string(), |v| v.to_string()),
            o.duration_ms
        );
        for (reason, n) in &o.still_failing {
            println!("  not written: {reason:<16} {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
