//! `bronze status`, `bronze runs` and `bronze summary`: where the datasets stand, from Kafka, the
//! tables and the audit ledger.

use std::path::PathBuf;
use std::process::ExitCode;

use bronze::audit::RunsFilter;
use bronze::config::Config;
use bronze::sink::{self, Probe, TableSink};
use bronze::transform::Mapper;

use super::parse_since;

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// One JSON object per dataset (with per-partition detail) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RunsArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    #[arg(long)]
    dataset: Option<String>,
    /// A duration back from now (`1h`, `30m`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    since: Option<i64>,
    /// `succeeded`, `failed` or `running`.
    #[arg(long)]
    status: Option<String>,
    /// `commit`, `run_started`, `run_finished`, `commit_failed`, `batch_dropped`, ...
    #[arg(long)]
    kind: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// One JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SummaryArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// One JSON object per dataset instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn status(cfg: &Config, a: StatusArgs) -> anyhow::Result<ExitCode> {
    let datasets = bronze::observability::status::collect(cfg).await?;
    if a.json {
        for d in &datasets {
            println!("{}", serde_json::to_string(d)?);
        }
    } else {
        println!("{}", bronze::observability::status::header());
        for d in &datasets {
            println!("{d}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn runs(cfg: &Config, a: RunsArgs) -> anyhow::Result<ExitCode> {
    let filter = RunsFilter {
        dataset: a.dataset,
        since_us: a.since,
        status: a.status,
        kind: a.kind,
        limit: a.limit,
    };
    let Some(batches) = bronze::audit::runs(cfg, &filter).await? else {
        eprintln!(
            "no audit ledger at {} yet (it is created by `bronze run`)",
            cfg.audit.table_uri
        );
        return Ok(ExitCode::SUCCESS);
    };
    if a.json {
        let mut writer = arrow::json::LineDelimitedWriter::new(std::io::stdout().lock());
        for b in &batches {
            writer.write(b)?;
        }
        writer.finish()?;
    } else {
        println!(
            "{}",
            deltalake::datafusion::arrow::util::pretty::pretty_format_batches(&batches)?
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn summary(cfg: &Config, a: SummaryArgs) -> anyhow::Result<ExitCode> {
    let options = cfg.storage_options();
    if !a.json {
        println!(
            "{:<20} {:>8} {:>10} {:>7} {:>11} {:>12}  table",
            "dataset", "version", "rows", "files", "partitions", "bytes"
        );
    }
    for d in &cfg.datasets {
        let contract = match bronze::pipeline::derived::run_contract(cfg, d).await {
            Ok((contract, _)) => contract,
            Err(e) if d.contract == bronze::config::ContractSource::Derived => {
                eprintln!("{}: contract not derived yet: {e}", d.name);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mapper = Mapper::new(d, contract)?;
        let pcols = mapper.partition_columns();
        let schema = mapper.contract().table_schema(pcols);
        let stats = match sink::probe(
            &d.table_uri,
            schema.clone(),
            pcols,
            mapper.contract().evolves(),
            &options,
        )
        .await?
        {
            Probe::Absent => None,
            Probe::Present(_) => {
                let sink = TableSink::open(
                    &d.table_uri,
                    schema,
                    pcols,
                    mapper.contract().evolves(),
                    &options,
                    cfg.storage.compression,
                )
                .await?;
                Some(sink.stats(cfg.storage.small_file_bytes)?)
            }
        };
        match (a.json, stats) {
            (true, s) => println!(
                "{}",
                serde_json::json!({
                    "dataset": d.name, "table": d.table_uri,
                    "version": s.as_ref().map(|s| s.version),
                    "rows": s.as_ref().map(|s| s.rows),
                    "files": s.as_ref().map(|s| s.files),
                    "partitions": s.as_ref().map(|s| s.partitions),
                    "bytes": s.as_ref().map(|s| s.bytes),
                })
            ),
            (false, Some(s)) => println!(
                "{:<20} {:>8} {:>10} {:>7} {:>11} {:>12}  {}",
                d.name, s.version, s.rows, s.files, s.partitions, s.bytes, d.table_uri
            ),
            (false, None) => println!("{:<20} {:>8}  {} (no table yet)", d.name, "-", d.table_uri),
        }
    }
    Ok(ExitCode::SUCCESS)
}
