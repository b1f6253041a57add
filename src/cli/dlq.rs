//! `bronze dlq list` and `bronze dlq replay`: a dataset's dead letters, counted or run again.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bronze::config::Config;
use bronze::sink::dead_letters::{self, DeadLetterFilter};
use clap::Subcommand;

use super::parse_since;

/// Which dead letters a `dlq` command works on.
#[derive(clap::Args)]
pub struct DeadLetterSelection {
    #[arg(long, short)]
    pub config: PathBuf,
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
pub enum DlqCommand {
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

pub async fn dlq(cfg: &Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { selection, limit } => {
            let dataset = &selection.dataset;
            let d = cfg
                .dataset(dataset)
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
            let s =
                bronze::jobs::replay(cfg, &selection.dataset, &selection.filter(), dry_run).await?;
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

impl DlqCommand {
    pub fn config_path(&self) -> &std::path::Path {
        match self {
            DlqCommand::List { selection, .. } | DlqCommand::Replay { selection, .. } => {
                &selection.config
            }
        }
    }
}
