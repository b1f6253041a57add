//! `bronze contract generate`: contracts derived from what the sources publish, for review and commit.

use std::path::PathBuf;
use std::process::ExitCode;

use bronze::config::Config;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ContractCommand {
    /// Derive each dataset's contract from its source's schema: the registry's latest value and key
    /// schemas (Avro datasets), else the newest message with the Kafka Connect schema wrapper among
    /// the last `--sample` messages of each partition. Prints the TOML, or writes it over the
    /// dataset's `schema` file with `--write`.
    Generate {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        dataset: Option<String>,
        /// Write each contract to its dataset's `schema` file (review the diff before committing it).
        #[arg(long)]
        write: bool,
        /// Messages read from the end of each partition to find a schema.
        #[arg(long, default_value_t = 100)]
        sample: usize,
    },
}

impl ContractCommand {
    pub fn config_path(&self) -> &std::path::Path {
        match self {
            ContractCommand::Generate { config, .. } => config,
        }
    }
}

pub async fn contract(cfg: &Config, command: ContractCommand) -> anyhow::Result<ExitCode> {
    let ContractCommand::Generate {
        dataset,
        write,
        sample,
        ..
    } = command;
    for d in &cfg.datasets {
        if dataset.as_ref().is_some_and(|n| *n != d.name) {
            continue;
        }
        let generated = bronze::pipeline::derived::generate(cfg, d, sample).await?;
        let text = generated.derived.to_toml(&generated.source);
        if write {
            std::fs::write(&d.schema_file, &text)?;
            println!(
                "{}: {} columns, keys {:?} -> {}",
                generated.dataset,
                generated.derived.columns.len(),
                generated.derived.keys,
                d.schema_file.display()
            );
        } else {
            println!("# dataset `{}`\n{text}", generated.dataset);
        }
    }
    Ok(ExitCode::SUCCESS)
}
