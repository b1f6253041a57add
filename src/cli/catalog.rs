//! `bronze catalog sync`: register every table in the catalog (`[catalog]`) now, as `bronze run` does
//! every `catalog.interval`. Idempotent: entries that agree with their tables are left alone.

use std::path::PathBuf;
use std::process::ExitCode;

use bronze::catalog::{self, Glue};
use bronze::config::Config;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum CatalogCommand {
    /// Create or update the catalog entry of every dataset's table (columns, partition columns,
    /// location) where it is missing or differs. Exit code 1 when any could not be registered.
    Sync {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

impl CatalogCommand {
    pub fn config_path(&self) -> &std::path::Path {
        match self {
            CatalogCommand::Sync { config, .. } => config,
        }
    }
}

pub async fn catalog(cfg: &Config, command: CatalogCommand) -> anyhow::Result<ExitCode> {
    let CatalogCommand::Sync { dataset, json, .. } = command;
    let Some(c) = &cfg.catalog else {
        anyhow::bail!("{}: no [catalog] section", cfg.file.display());
    };
    let datasets: Vec<_> = cfg
        .datasets
        .iter()
        .filter(|d| dataset.as_ref().is_none_or(|n| &d.name == n))
        .cloned()
        .collect();
    if let Some(n) = &dataset
        && datasets.is_empty()
    {
        anyhow::bail!("no dataset `{n}`");
    }
    let glue = Glue::connect(cfg).await;
    let mut failed = false;
    // One outcome per dataset, in their order.
    let outcomes = match catalog::sync(cfg, &glue, &datasets).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            let why = match e {
                catalog::CatalogError::Glue(m) => m,
                other => other.to_string(),
            };
            datasets
                .iter()
                .map(|d| {
                    (
                        d.name.clone(),
                        Err(catalog::CatalogError::Glue(why.clone())),
                    )
                })
                .collect()
        }
    };
    for (d, (name, outcome)) in datasets.iter().zip(outcomes) {
        let table = format!("{}.{}", c.database, catalog::table_name(c, d));
        let (status, error) = match &outcome {
            Ok(o) => (o.as_str(), None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        failed |= outcome.is_err();
        if json {
            println!(
                "{}",
                serde_json::json!({"dataset": name, "table": table, "status": status, "error": error})
            );
        } else {
            match error {
                None => println!("{name:<24} {table:<40} {status}"),
                Some(e) => println!("{name:<24} {table:<40} failed: {e}"),
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
