//! The command line: one room per command (its arguments and what it prints); `main` parses and
//! dispatches. Everything a command does beyond reading arguments and printing lives in the library.

mod catalog;
mod contract;
mod dlq;
mod maintenance;
mod requests;
mod run;
mod schema;
mod status;
mod submit;
mod validate;

use std::path::Path;
use std::process::ExitCode;

use bronze::config::Config;
use bronze::observability::LogFormat;
use clap::{Parser, Subcommand};

/// Exit code for configuration errors (bad file, key or value), as opposed to runtime failures (1).
pub const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "bronze",
    version,
    about = "Stream change events from Kafka into exactly-once Delta Lake Bronze tables",
    long_about = "Stream change events (Debezium CDC or plain JSON) from Kafka into time-partitioned Delta \
                  Lake tables, exactly once: the Kafka offsets are committed in the same Delta transaction \
                  as the data. One TOML file describes the broker, the storage and any number of datasets."
)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(
        long,
        global = true,
        env = "BRONZE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Consume the configured topics and commit them to the datasets' Delta tables until stopped
    /// (SIGINT/SIGTERM flush, commit and exit 0).
    Run(run::RunArgs),
    /// Check the configuration, the schema files and that every table location is reachable;
    /// creates nothing. Exit code 2 on configuration errors.
    Validate(ConfigArgs),
    /// Where every dataset stands: lag in messages and seconds, last commit, files, small files, drift,
    /// dead letters and failed commits in the last hour. Reads Kafka, the tables and the audit ledger;
    /// works while `bronze run` runs elsewhere.
    Status(status::StatusArgs),
    /// The audit ledger, newest first: every commit, run start and end, failed commit and dropped batch.
    Runs(status::RunsArgs),
    /// Dead letters: list them, or replay them into the dataset table after a fix.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Review gates for new columns (`drift.new_column = "review"`): list, approve or reject proposals.
    Schema {
        #[command(subcommand)]
        command: schema::SchemaCommand,
    },
    /// Contracts derived from the sources' own schemas (Connect JSON schemas, the Avro registry).
    Contract {
        #[command(subcommand)]
        command: contract::ContractCommand,
    },
    /// The catalog (`[catalog]`, AWS Glue) the tables are registered in.
    Catalog {
        #[command(subcommand)]
        command: catalog::CatalogCommand,
    },
    /// Rebuild the time partitions of a range from Kafka and replace them in one Delta commit.
    /// Idempotent per request id (a rerun is a no-op unless --force).
    Backfill(requests::BackfillArgs),
    /// Rebuild a dataset's partitions from its Postgres source (one consistent snapshot, parallel
    /// ranges) and replace them in one commit: a time range, incremental (from the stored high
    /// watermark minus `lookback`; the default) or --full.
    Extract(requests::ExtractArgs),
    /// Rewrite small files into files of `compaction.target_file_bytes` (dataChange=false), per
    /// partition; by default only sealed time partitions (ended `compaction.sealed_after` ago).
    Compact(maintenance::CompactArgs),
    /// Bring the `latest` views (newest row per key, `[datasets.latest]`) up to their tables; `bronze run`
    /// does it every `latest.interval`.
    Latest(maintenance::LatestArgs),
    /// Delete files the tables removed longer ago than the retention (never below
    /// `vacuum.min_retention`).
    Vacuum(maintenance::VacuumArgs),
    /// Print version, files, rows and partitions of every dataset's table.
    Summary(status::SummaryArgs),
}

/// A command that needs only the configuration.
#[derive(clap::Args)]
pub struct ConfigArgs {
    #[arg(long, short)]
    pub config: std::path::PathBuf,
}

impl Command {
    /// The configuration file the command reads.
    /// Whether the command needs the datasets' contracts to load (generating them does not).
    pub fn needs_contracts(&self) -> bool {
        !matches!(self, Command::Contract { .. })
    }

    pub fn config_path(&self) -> &Path {
        match self {
            Command::Run(a) => &a.config,
            Command::Validate(a) => &a.config,
            Command::Status(a) => &a.config,
            Command::Runs(a) => &a.config,
            Command::Summary(a) => &a.config,
            Command::Backfill(a) => &a.config,
            Command::Extract(a) => &a.config,
            Command::Compact(a) => &a.config,
            Command::Latest(a) => &a.config,
            Command::Vacuum(a) => &a.config,
            Command::Dlq { command } => command.config_path(),
            Command::Schema { command } => command.config_path(),
            Command::Contract { command } => command.config_path(),
            Command::Catalog { command } => command.config_path(),
        }
    }

    pub async fn execute(self, cfg: Config) -> anyhow::Result<ExitCode> {
        match self {
            Command::Run(a) => run::run(cfg, a).await,
            Command::Validate(_) => validate::validate(&cfg).await,
            Command::Status(a) => status::status(&cfg, a).await,
            Command::Runs(a) => status::runs(&cfg, a).await,
            Command::Summary(a) => status::summary(&cfg, a).await,
            Command::Backfill(a) => requests::backfill(&cfg, a).await,
            Command::Extract(a) => requests::extract(&cfg, a).await,
            Command::Compact(a) => maintenance::compact(&cfg, a).await,
            Command::Latest(a) => maintenance::latest(&cfg, a).await,
            Command::Vacuum(a) => maintenance::vacuum(&cfg, a).await,
            Command::Dlq { command } => dlq::dlq(&cfg, command).await,
            Command::Schema { command } => schema::schema(&cfg, command).await,
            Command::Contract { command } => contract::contract(&cfg, command).await,
            Command::Catalog { command } => catalog::catalog(&cfg, command).await,
        }
    }
}

/// An RFC 3339 time or a UTC date, in µs since the epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    bronze::control::request::parse_time(s)
        .ok_or_else(|| format!("`{s}` is neither an RFC 3339 time nor a date (YYYY-MM-DD)"))
}

/// `--since`: `1h`-style durations back from now, or an RFC 3339 time; µs since the epoch.
fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        let d = chrono::Duration::from_std(d).map_err(|e| e.to_string())?;
        return Ok((chrono::Utc::now() - d).timestamp_micros());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|_| format!("`{s}` is neither a duration (1h, 30m) nor an RFC 3339 time"))
}
