//! The `bronze` binary: parse the command line, load the configuration, dispatch to the command
//! (`cli`), map the outcome to an exit code. All logic lives in the library.

mod cli;

use std::path::Path;
use std::process::ExitCode;

use bronze::config::Config;
use bronze::contract::Contract;
use bronze::transform::Mapper;
use clap::Parser;

fn main() -> ExitCode {
    pin_mmap_threshold();
    let cli = cli::Cli::parse();
    bronze::observability::init_logging(cli.log_format);
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
    let loaded = runtime.block_on(load_config(
        cli.command.config_path(),
        cli.command.needs_contracts(),
    ));
    let cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bronze: configuration error: {e:#}");
            return ExitCode::from(cli::EXIT_CONFIG);
        }
    };
    let result = runtime.block_on(cli.command.execute(cfg));
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

async fn load_config(path: &Path, contracts: bool) -> anyhow::Result<Config> {
    let mut cfg = Config::load(path)?;
    bronze::source::expand_fan_outs(&mut cfg).await;
    if !contracts {
        return Ok(cfg);
    }
    // Contracts and mappings are configuration too: check them before touching anything. A fan-out's
    // table is checked as it is opened, so that one bad table does not stop the others.
    for (i, d) in cfg.datasets.iter().enumerate() {
        if d.fan_out.is_some() || d.contract == bronze::config::ContractSource::Derived {
            continue;
        }
        let contract = Contract::load_with_drift(&d.schema_file, d.drift)?;
        Mapper::new(d, contract).map_err(|e| bronze::config::ConfigError::Invalid {
            file: path.to_path_buf(),
            key: format!("datasets[{i}].{}", e.key),
            reason: e.to_string(),
        })?;
    }
    Ok(cfg)
}
