//! The `bronze` binary: command line, signal handling and exit codes. All logic lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bronze::audit::RunsFilter;
use bronze::config::Config;
use bronze::contract::{ColumnType, Contract};
use bronze::control::request::{Kind, Request};
use bronze::observability::LogFormat;
use bronze::pipeline::{self, RunOptions};
use bronze::sink::dead_letters::{self, DeadLetterFilter};
use bronze::sink::{self, Probe, TableSink};
use bronze::transform::Mapper;
use clap::{Parser, Subcommand};

/// Exit code for configuration errors (bad file, key or value), as opposed to runtime failures (1).
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "bronze",
    version,
    about = "Stream change events from Kafka into exactly-once Delta Lake Bronze tables",
    long_about = "Stream change events (Debezium CDC or plain JSON) from Kafka into time-partitioned Delta \
                  Lake tables, exactly once: the Kafka offsets are committed in the same Delta transaction \
                  as the data. One TOML file describes the broker, the storage and any number of datasets."
)]
struct Cli {
    /// Log line format on stderr.
    #[arg(
        long,
        global = true,
        env = "BRONZE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the configured topics and commit them to the datasets' Delta tables until stopped
    /// (SIGINT/SIGTERM flush, commit and exit 0).
    Run {
        /// Configuration file (TOML); `BRONZE__SECTION__KEY` variables override its keys.
        #[arg(long, short)]
        config: PathBuf,
        /// Ingest up to the high watermarks read at start, commit and exit ("trigger once").
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Check the configuration, the schema files and that every table location is reachable;
    /// creates nothing. Exit code 2 on configuration errors.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Where every dataset stands: lag in messages and seconds, last commit, files, small files, drift,
    /// dead letters and failed commits in the last hour. Reads Kafka, the tables and the audit ledger;
    /// works while `bronze run` runs elsewhere.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON object per dataset (with per-partition detail) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The audit ledger, newest first: every commit, run start and end, failed commit and dropped batch.
    Runs {
        #[arg(long, short)]
        config: PathBuf,
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
    },
    /// Dead letters: list them, or replay them into the dataset table after a fix.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Review gates for new columns (`drift.new_column = "review"`): list, approve or reject proposals.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Rebuild the time partitions of a range from Kafka and replace them in one Delta commit.
    /// Idempotent per request id (a rerun is a no-op unless --force).
    Backfill {
        #[arg(long, short)]
        config: PathBuf,
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
        /// Default: a new id; give one to make a retry of the same request a no-op.
        #[arg(long)]
        request_id: Option<String>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Post the request on the control topic and follow its status, instead of running it here.
        #[arg(long)]
        submit: bool,
    },
    /// Rebuild a dataset's partitions from its Postgres source (one consistent snapshot, parallel
    /// ranges) and replace them in one commit: a time range, incremental (from the stored high
    /// watermark minus `lookback`; the default) or --full.
    Extract {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        dataset: String,
        #[arg(long, value_parser = parse_time, requires = "to")]
        from: Option<i64>,
        #[arg(long, value_parser = parse_time, requires = "from")]
        to: Option<i64>,
        /// Replace the whole table.
        #[arg(long, conflicts_with = "from")]
        full: bool,
        #[arg(long)]
        request_id: Option<String>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Post the request on the control topic and follow its status.
        #[arg(long)]
        submit: bool,
    },
    /// Rewrite small files into files of `compaction.target_file_bytes` (dataChange=false), per
    /// partition; by default only sealed time partitions (ended `compaction.sealed_after` ago).
    Compact {
        #[arg(long, short)]
        config: PathBuf,
        /// One dataset (default: all).
        #[arg(long)]
        dataset: Option<String>,
        /// Also partitions that may still receive appends.
        #[arg(long)]
        all_partitions: bool,
        /// Report what would be compacted without writing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Post the request on the control topic (needs --dataset) and follow its status.
        #[arg(long)]
        submit: bool,
    },
    /// Bring the `latest` views (newest row per key, `[datasets.latest]`) up to their tables; `bronze run`
    /// does it every `latest.interval`.
    Latest {
        #[arg(long, short)]
        config: PathBuf,
        /// One dataset (default: all with a latest view).
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete files the tables removed longer ago than the retention (never below
    /// `vacuum.min_retention`).
    Vacuum {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        dataset: Option<String>,
        /// Default: `vacuum.retention`, e.g. `7d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<std::time::Duration>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Post the request on the control topic (needs --dataset) and follow its status.
        #[arg(long)]
        submit: bool,
    },
    /// Print version, files, rows and partitions of every dataset's table.
    Summary {
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON object per dataset instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Which dead letters a `dlq` command works on.
#[derive(clap::Args)]
struct DeadLetterSelection {
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long)]
    dataset: String,
    /// A duration back from now (`1h`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    since: Option<i64>,
    #[arg(long)]
    reason: Option<String>,
}

impl DeadLetterSelection {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            since_us: self.since,
            reason: self.reason.clone(),
            ..DeadLetterFilter::default()
        }
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Count a dataset's dead letters by reason and show the latest.
    List {
        #[command(flatten)]
        selection: DeadLetterSelection,
        /// How many of the latest to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Run a dataset's dead letters through the current contract and rules again and commit those that
    /// now pass, with their original offsets. Idempotent: rows already in the table are not added again.
    Replay {
        #[command(flatten)]
        selection: DeadLetterSelection,
        /// Report what would be replayed without committing.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// New columns awaiting a decision, per dataset (the proposal id is the column name).
    Diff {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        dataset: Option<String>,
        /// One JSON object per proposal instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a proposed column to the dataset's table in one commit; running members take it on at their
    /// next commit. Held messages come back with `bronze dlq replay --reason schema_review`.
    Approve {
        #[arg(long, short)]
        config: PathBuf,
        dataset: String,
        /// The proposal id: the column name.
        column: String,
        /// The column's type, if not the proposed one (`int64`, `string`, `json`, ...).
        #[arg(long = "type", value_parser = parse_column_type)]
        column_type: Option<ColumnType>,
    },
    /// Keep a proposed column out of the table; its messages stay held.
    Reject {
        #[arg(long, short)]
        config: PathBuf,
        dataset: String,
        column: String,
    },
}

fn parse_column_type(s: &str) -> Result<ColumnType, String> {
    ColumnType::parse(s).ok_or_else(|| format!("`{s}` is not a column type"))
}

fn main() -> ExitCode {
    pin_mmap_threshold();
    let cli = Cli::parse();
    bronze::observability::init_logging(cli.log_format);
    let config_path = match &cli.command {
        Command::Run { config, .. }
        | Command::Validate { config }
        | Command::Status { config, .. }
        | Command::Runs { config, .. }
        | Command::Compact { config, .. }
        | Command::Latest { config, .. }
        | Command::Backfill { config, .. }
        | Command::Extract { config, .. }
        | Command::Vacuum { config, .. }
        | Command::Summary { config, .. } => config.clone(),
        Command::Dlq {
            command: DlqCommand::List { selection, .. } | DlqCommand::Replay { selection, .. },
        } => selection.config.clone(),
        Command::Schema {
            command:
                SchemaCommand::Diff { config, .. }
                | SchemaCommand::Approve { config, .. }
                | SchemaCommand::Reject { config, .. },
        } => config.clone(),
    };
    let cfg = match load_config(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bronze: configuration error: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bronze: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run {
                until_caught_up, ..
            } => run(cfg, until_caught_up).await,
            Command::Validate { .. } => validate(&cfg).await,
            Command::Summary { json, .. } => summary(&cfg, json).await,
            Command::Status { json, .. } => status(&cfg, json).await,
            Command::Dlq { command } => dlq(&cfg, command).await,
            Command::Schema { command } => schema(&cfg, command).await,
            Command::Backfill {
                dataset,
                from,
                to,
                partitions,
                request_id,
                force,
                dry_run,
                json,
                submit,
                ..
            } => {
                let (from_us, to_us) = match from.zip(to) {
                    Some(range) => range,
                    None => {
                        let by = cfg
                            .datasets
                            .iter()
                            .find(|d| d.name == dataset)
                            .map(|d| d.partitioning.by)
                            .with_context(|| format!("no dataset named `{dataset}`"))?;
                        pipeline::backfill::span_of(by, &partitions).map_err(anyhow::Error::msg)?
                    }
                };
                let req = pipeline::backfill::BackfillRequest {
                    request_id: request_id
                        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7())),
                    dataset,
                    from_us,
                    to_us,
                    partitions,
                    force,
                    dry_run,
                    requested_by: std::env::var("USER").ok(),
                };
                if submit {
                    let r = control_request(&req.dataset, Kind::Backfill, |r| {
                        r.request_id = req.request_id.clone();
                        r.range = Some((req.from_us, req.to_us));
                        r.partitions = req.partitions.clone();
                        r.force = force;
                        r.dry_run = dry_run;
                    });
                    submit_request(&cfg, &r, json).await
                } else {
                    backfill(&cfg, &req, json).await
                }
            }
            Command::Extract {
                dataset,
                from,
                to,
                full,
                request_id,
                force,
                dry_run,
                json,
                submit,
                ..
            } => {
                let r = control_request(&dataset, Kind::Extract, |r| {
                    if let Some(id) = request_id {
                        r.request_id = id;
                    }
                    r.range = from.zip(to);
                    r.extract_mode = match (r.range, full) {
                        (Some(_), _) => None,
                        (None, true) => Some("full".into()),
                        (None, false) => Some("incremental".into()),
                    };
                    r.source = "postgres".into();
                    r.force = force;
                    r.dry_run = dry_run;
                });
                if submit {
                    submit_request(&cfg, &r, json).await
                } else {
                    extract(&cfg, &r, json).await
                }
            }
            Command::Compact {
                dataset,
                all_partitions,
                dry_run,
                json,
                submit,
                ..
            } => {
                if submit {
                    let d = dataset.context("--submit needs --dataset")?;
                    let r = control_request(&d, Kind::Compact, |r| {
                        r.all_partitions = all_partitions;
                        r.dry_run = dry_run;
                    });
                    submit_request(&cfg, &r, json).await
                } else {
                    compact(&cfg, dataset.as_deref(), all_partitions, dry_run, json).await
                }
            }
            Command::Latest { dataset, json, .. } => latest(&cfg, dataset.as_deref(), json).await,
            Command::Vacuum {
                dataset,
                retention,
                dry_run,
                json,
                submit,
                ..
            } => {
                if submit {
                    let d = dataset.context("--submit needs --dataset")?;
                    let r = control_request(&d, Kind::Vacuum, |r| {
                        r.retention = retention;
                        r.dry_run = dry_run;
                    });
                    submit_request(&cfg, &r, json).await
                } else {
                    vacuum(&cfg, dataset.as_deref(), retention, dry_run, json).await
                }
            }
            Command::Runs {
                dataset,
                since,
                status,
                kind,
                limit,
                json,
                ..
            } => {
                let filter = RunsFilter {
                    dataset,
                    since_us: since,
                    status,
                    kind,
                    limit,
                };
                runs(&cfg, &filter, json).await
            }
        }
    });
    // Everything is committed by now; a background call still blocked on a broker (a dead-letter topic
    // transaction, say) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bronze: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Buffers of a flush (column builders, Parquet pages) are large and short-lived. glibc raises its mmap
/// threshold after the first such buffer is freed, so later ones are carved from the heap and their pages
/// stay resident after the flush: RSS then grows far past the memory budget. A fixed threshold keeps them
/// mmapped, so freeing them returns the memory to the system.
fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    let cfg = Config::load(path)?;
    // Contracts and mappings are configuration too: check them before touching anything.
    for (i, d) in cfg.datasets.iter().enumerate() {
        let contract = Contract::load(&d.schema_file)?;
        Mapper::new(d, contract).map_err(|e| bronze::config::ConfigError::Invalid {
            file: path.to_path_buf(),
            key: format!("datasets[{i}].{}", e.key),
            reason: e.to_string(),
        })?;
    }
    Ok(cfg)
}

async fn run(cfg: Config, until_caught_up: bool) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal();
    let health = std::sync::Arc::new(bronze::observability::Health::default());
    if let Some(addr) = &cfg.metrics.address {
        let addr = addr.parse().context("metrics.address")?;
        bronze::observability::serve(addr, health.clone()).await?;
    }
    let options = RunOptions {
        until_caught_up,
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

async fn validate(cfg: &Config) -> anyhow::Result<ExitCode> {
    let options = cfg.storage_options();
    let mut failed = false;
    for d in &cfg.datasets {
        let mapper = Mapper::new(d, Contract::load(&d.schema_file)?)?;
        let pcols = mapper.partition_columns();
        let schema = mapper.contract().table_schema(pcols);
        match sink::probe(
            &d.table_uri,
            schema,
            pcols,
            mapper.contract().evolves(),
            &options,
        )
        .await
        {
            Ok(Probe::Absent) => println!(
                "{}: ok, {} will be created when `bronze run` starts",
                d.name, d.table_uri
            ),
            Ok(Probe::Present(s)) => println!(
                "{}: ok, {} at version {} ({} files, {} rows)",
                d.name, d.table_uri, s.version, s.files, s.rows
            ),
            Err(e) => {
                eprintln!("{}: {e}", d.name);
                failed = true;
            }
        }
        if let Err(e) = compare_with_registry(cfg, d, mapper.contract()).await {
            eprintln!("{}: {e}", d.name);
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::from(EXIT_CONFIG)
    } else {
        println!("{}: valid", cfg.file.display());
        ExitCode::SUCCESS
    })
}

/// For Avro datasets: the latest value schema registered for each topic (`<topic>-value`) against the
/// contract — the fields it would add and the columns it lacks — before any message arrives.
async fn compare_with_registry(
    cfg: &Config,
    d: &bronze::config::DatasetConfig,
    contract: &Contract,
) -> anyhow::Result<()> {
    let (Some(rc), bronze::config::TopicSelector::Names(topics)) =
        (&cfg.schema_registry, &d.topics)
    else {
        return Ok(());
    };
    if !d.format.is_avro() {
        return Ok(());
    }
    let registry = bronze::decode::registry::Registry::new(rc)?;
    let envelope = d.format == bronze::config::Format::DebeziumAvro;
    for topic in topics {
        let subject = format!("{topic}-value");
        let Some((version, w)) = registry.latest(&subject).await? else {
            println!("{}: registry subject {subject}: not registered yet", d.name);
            continue;
        };
        let Some(fields) = bronze::decode::avro::row_fields(&w, envelope) else {
            anyhow::bail!(
                "registry subject {subject} version {version}: no row record in the schema"
            );
        };
        let normalized = |f: &str| {
            if d.normalize_names {
                bronze::transform::snake_case(f)
            } else {
                f.to_string()
            }
        };
        let new: Vec<String> = fields
            .iter()
            .filter(|(f, _)| contract.resolve(&normalized(f)).is_none())
            .map(|(f, ty)| format!("{f} {ty}"))
            .collect();
        let lacking: Vec<&str> = contract
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                !fields.iter().any(|(f, _)| {
                    contract
                        .resolve(&normalized(f))
                        .is_some_and(|(c, _)| c == *i)
                })
            })
            .map(|(_, c)| c.name.as_str())
            .filter(|c| !d.header_columns.contains_key(*c))
            .collect();
        println!(
            "{}: registry subject {subject} version {version} (id {}): {} fields; not in the contract: {}; contract columns it lacks: {}",
            d.name,
            w.id,
            fields.len(),
            if new.is_empty() {
                "none".to_string()
            } else {
                new.join(", ")
            },
            if lacking.is_empty() {
                "none".to_string()
            } else {
                lacking.join(", ")
            },
        );
    }
    Ok(())
}

/// `--since`: `1h`-style durations back from now, or an RFC 3339 time; µs since the epoch.
/// A progress bar on stderr (hidden with --json, and by indicatif when stderr is not a terminal).
fn progress_bar(template: &str, message: String, hidden: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(message);
    if hidden {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// `read` of `total` on `bar` (backfill messages, extract rows, a submitted request's progress).
fn show_progress(bar: &indicatif::ProgressBar, read: u64, total: u64) {
    bar.set_length(total);
    bar.set_position(read);
}

/// An RFC 3339 time or a UTC date, in µs since the epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    bronze::control::request::parse_time(s)
        .ok_or_else(|| format!("`{s}` is neither an RFC 3339 time nor a date (YYYY-MM-DD)"))
}

/// A control request of `kind` for `dataset`, with a new id unless `fill` sets one.
fn control_request(dataset: &str, kind: Kind, fill: impl FnOnce(&mut Request)) -> Request {
    let mut r = Request {
        request_id: format!("cli-{}", uuid::Uuid::now_v7()),
        dataset: dataset.to_string(),
        kind,
        range: None,
        partitions: Vec::new(),
        force: false,
        dry_run: false,
        retention: None,
        all_partitions: false,
        requested_by: std::env::var("USER").ok(),
        source: "kafka".to_string(),
        extract_mode: None,
        fingerprint: String::new(),
    };
    fill(&mut r);
    r
}

async fn extract(cfg: &Config, r: &Request, json: bool) -> anyhow::Result<ExitCode> {
    let bar = progress_bar(
        "{spinner} {msg} [{bar:30}] {pos}/{len} rows ({per_sec}, {eta})",
        format!("extract {}", r.dataset),
        json,
    );
    let report = |read: u64, total: u64| show_progress(&bar, read, total);
    let outcome = pipeline::extract::extract(cfg, &r.extract(), &report).await;
    bar.finish_and_clear();
    let o = outcome?;
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

/// Post a request on the control topic and wait for its outcome, with a progress bar.
async fn submit_request(cfg: &Config, r: &Request, json: bool) -> anyhow::Result<ExitCode> {
    let bar = progress_bar(
        "{spinner} {msg} [{bar:30}] {pos}/{len}",
        format!("{} {}: submitted", r.kind.as_str(), r.request_id),
        json,
    );
    let on_status = |s: &bronze::control::Status| {
        bar.set_message(format!(
            "{} {}: {}",
            r.kind.as_str(),
            r.request_id,
            s.status
        ));
        if let Some((read, total)) = s.progress {
            show_progress(&bar, read, total);
        }
    };
    let last = bronze::control::submit(cfg, r, &on_status).await;
    bar.finish_and_clear();
    let last = last?;
    if json {
        println!("{}", serde_json::to_string(&last)?);
    } else {
        println!(
            "{} {}: {}{}{}",
            r.kind.as_str(),
            r.request_id,
            last.status,
            if last.no_op { " (no-op)" } else { "" },
            last.reason
                .as_ref()
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
        );
        if let Some(result) = &last.result {
            println!("  {result}");
        }
    }
    Ok(if last.status == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn backfill(
    cfg: &Config,
    req: &pipeline::backfill::BackfillRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let bar = progress_bar(
        "{spinner} {msg} [{bar:30}] {pos}/{len} messages ({per_sec}, {eta})",
        format!("backfill {}", req.dataset),
        json,
    );
    let report = |read: u64, total: u64| show_progress(&bar, read, total);
    let outcome = pipeline::backfill::backfill(cfg, req, &report).await;
    bar.finish_and_clear();
    let o = outcome?;
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

fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        let d = chrono::Duration::from_std(d).map_err(|e| e.to_string())?;
        return Ok((chrono::Utc::now() - d).timestamp_micros());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|_| format!("`{s}` is neither a duration (1h, 30m) nor an RFC 3339 time"))
}

async fn dlq(cfg: &Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { selection, limit } => {
            let dataset = &selection.dataset;
            let d = cfg
                .datasets
                .iter()
                .find(|d| &d.name == dataset)
                .with_context(|| format!("no dataset named `{dataset}`"))?;
            let letters = dead_letters::read(
                &d.dead_letters.table_uri,
                &cfg.storage_options(),
                &selection.filter(),
            )
            .await?;
            let mut by_reason = std::collections::BTreeMap::<&str, usize>::new();
            for l in &letters {
                *by_reason.entry(&l.reason).or_default() += 1;
            }
            println!(
                "{} dead letters in {}",
                letters.len(),
                d.dead_letters.table_uri
            );
            for (reason, n) in &by_reason {
                println!("  {reason:<16} {n}");
            }
            let mut latest: Vec<_> = letters.iter().collect();
            latest.sort_by_key(|l| std::cmp::Reverse(l.timestamp_ms));
            for l in latest.into_iter().take(limit) {
                println!(
                    "{}[{}]@{}  {:<14} {} bytes  {}",
                    l.topic,
                    l.partition,
                    l.offset,
                    l.reason,
                    l.value.as_ref().map_or(0, Vec::len),
                    l.error
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay {
            selection,
            dry_run,
            json,
        } => {
            let s = pipeline::replay(cfg, &selection.dataset, &selection.filter(), dry_run).await?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!(
                    "{}{}: {} dead letters, {} already in the table, {} rows {}, {} duplicates dropped, {} without a row",
                    if s.dry_run { "dry run: " } else { "" },
                    s.dataset,
                    s.dead_letters,
                    s.already_in_table,
                    s.rows_written,
                    if s.dry_run {
                        "would be written"
                    } else {
                        "written"
                    },
                    s.duplicates_dropped,
                    s.skipped
                );
                for (reason, n) in &s.still_failing {
                    println!("  still failing: {reason:<16} {n}");
                }
                if let Some(v) = s.table_version {
                    println!("  committed as version {v}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn schema(cfg: &Config, command: SchemaCommand) -> anyhow::Result<ExitCode> {
    use pipeline::review;
    match command {
        SchemaCommand::Diff { dataset, json, .. } => {
            let pending = review::pending(cfg, dataset.as_deref()).await?;
            if json {
                for p in &pending {
                    println!("{}", serde_json::to_string(p)?);
                }
            } else if pending.is_empty() {
                println!("no new columns awaiting review");
            } else {
                println!(
                    "{:<20} {:<24} {:<10} {:>9}  first seen",
                    "dataset", "column (id)", "type", "messages"
                );
                for p in &pending {
                    let first = chrono::DateTime::from_timestamp_micros(p.first_seen_us)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default();
                    println!(
                        "{:<20} {:<24} {:<10} {:>9}  {first}",
                        p.dataset, p.column, p.proposed_type, p.messages
                    );
                }
            }
        }
        SchemaCommand::Approve {
            dataset,
            column,
            column_type,
            ..
        } => {
            let a = review::approve(cfg, &dataset, &column, column_type).await?;
            println!(
                "{}: column `{}` ({}) added in table version {}; replay held messages with `bronze dlq replay --dataset {} --reason schema_review`",
                a.dataset, a.column, a.column_type, a.table_version, a.dataset
            );
        }
        SchemaCommand::Reject {
            dataset, column, ..
        } => {
            review::reject(cfg, &dataset, &column).await?;
            println!("{dataset}: `{column}` rejected; its messages stay held");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The datasets a maintenance command works on: one by name, or all.
fn selected<'a>(
    cfg: &'a Config,
    dataset: Option<&str>,
) -> anyhow::Result<Vec<&'a bronze::config::DatasetConfig>> {
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

async fn compact(
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

async fn latest(cfg: &Config, dataset: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let datasets: Vec<&bronze::config::DatasetConfig> = selected(cfg, dataset)?
        .into_iter()
        .filter(|d| d.latest.is_some() || dataset.is_some())
        .collect();
    for d in datasets {
        let r = bronze::maintenance::latest::refresh(cfg, d).await?;
        if json {
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

async fn vacuum(
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

async fn status(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let datasets = bronze::observability::status::collect(cfg).await?;
    if json {
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

async fn runs(cfg: &Config, filter: &RunsFilter, json: bool) -> anyhow::Result<ExitCode> {
    let Some(batches) = bronze::audit::runs(cfg, filter).await? else {
        eprintln!(
            "no audit ledger at {} yet (it is created by `bronze run`)",
            cfg.audit.table_uri
        );
        return Ok(ExitCode::SUCCESS);
    };
    if json {
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

async fn summary(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let options = cfg.storage_options();
    if !json {
        println!(
            "{:<20} {:>8} {:>10} {:>7} {:>11} {:>12}  table",
            "dataset", "version", "rows", "files", "partitions", "bytes"
        );
    }
    for d in &cfg.datasets {
        let mapper = Mapper::new(d, Contract::load(&d.schema_file)?)?;
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
        match (json, stats) {
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
