//! `bronze schema diff|approve|reject`: the review gate for new columns.

use std::path::PathBuf;
use std::process::ExitCode;

use bronze::config::Config;
use bronze::contract::ColumnType;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum SchemaCommand {
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

pub async fn schema(cfg: &Config, command: SchemaCommand) -> anyhow::Result<ExitCode> {
    use bronze::jobs::review;
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

impl SchemaCommand {
    pub fn config_path(&self) -> &std::path::Path {
        match self {
            SchemaCommand::Diff { config, .. }
            | SchemaCommand::Approve { config, .. }
            | SchemaCommand::Reject { config, .. } => config,
        }
    }
}
