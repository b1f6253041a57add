//! `bronze validate`: the configuration, the contracts, every table location and (for Avro datasets)
//! the registry's latest schemas, checked without creating anything.

use std::process::ExitCode;

use bronze::config::{Config, ContractSource};
use bronze::contract::Contract;
use bronze::sink::{self, Probe};
use bronze::transform::Mapper;

pub async fn validate(cfg: &Config) -> anyhow::Result<ExitCode> {
    let options = cfg.storage_options();
    let mut failed = false;
    for d in &cfg.datasets {
        let contract = match bronze::pipeline::derived::run_contract(cfg, d).await {
            Ok((contract, _)) => contract,
            // The source's state, not the configuration: the run waits for a schema to derive from.
            Err(e) if d.contract == ContractSource::Derived => {
                println!(
                    "{}: ok, its contract cannot be derived yet ({e}); `bronze run` keeps its topic paused and tries again",
                    d.name
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mapper = Mapper::new(d, contract)?;
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
        ExitCode::from(super::EXIT_CONFIG)
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
