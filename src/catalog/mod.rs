//! Registering tables in a catalog (`[catalog]`, today the AWS Glue Data Catalog) so that query engines
//! (Athena, Spark, Trino, Redshift Spectrum) find them by name: each dataset's table with its columns,
//! partition columns and location, as a native Delta table.
//!
//! The catalog follows the tables, never the other way round: `bronze run` compares every table with
//! its catalog entry every `catalog.interval` and registers what is missing or changed (a new table,
//! a column added by evolution, widened, approved). A catalog that cannot be reached costs nothing but
//! a stale entry: commits go on, the next pass retries, `bronze_catalog_errors_total` counts it and
//! `bronze status` shows it. `bronze catalog sync` does one pass on request.

mod glue;

use std::collections::HashMap;

use arrow::datatypes::{DataType, Schema, TimeUnit};
use tracing::{info, warn};

use crate::config::{CatalogConfig, Config, ConfigUpdates, DatasetConfig};
use crate::sink::{SinkError, TableSink};

pub use glue::Glue;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("glue: {0}")]
    Glue(String),
    #[error(transparent)]
    Table(#[from] Box<SinkError>),
}

impl From<SinkError> for CatalogError {
    fn from(e: SinkError) -> Self {
        CatalogError::Table(Box::new(e))
    }
}

/// What a dataset's catalog entry should say, read off its Delta table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The catalog table name.
    pub name: String,
    pub location: String,
    /// Data columns (name, Hive type), in table order.
    pub columns: Vec<(String, String)>,
    /// Partition columns (name, Hive type).
    pub partition_keys: Vec<(String, String)>,
    /// Table parameters that describe the table (not its version).
    pub parameters: HashMap<String, String>,
}

/// What a pass did for one dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    /// The table does not exist yet: nothing to register.
    NoTable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::NoTable => "no table yet",
        }
    }
}

/// The catalog table name of dataset `d`: Glue keeps names lowercase, and query engines want no `-`.
pub fn table_name(c: &CatalogConfig, d: &DatasetConfig) -> String {
    format!(
        "{}{}",
        c.table_prefix,
        d.name.to_lowercase().replace('-', "_")
    )
}

/// The entry dataset `d`'s table should have, or `None` while there is no table.
pub async fn entry_of(
    cfg: &Config,
    c: &CatalogConfig,
    d: &DatasetConfig,
) -> Result<Option<Entry>, CatalogError> {
    let Some(table) = TableSink::existing(&d.table_uri, &cfg.storage_options()).await? else {
        return Ok(None);
    };
    let schema = table.arrow_schema()?;
    let partitions = d.partitioning.by.columns();
    Ok(Some(entry(
        table_name(c, d),
        &d.table_uri,
        &schema,
        partitions,
    )))
}

fn entry(name: String, uri: &str, schema: &Schema, partitions: &[&str]) -> Entry {
    let hive = |f: &arrow::datatypes::Field| (f.name().clone(), hive_type(f.data_type()));
    let location = uri
        .strip_prefix("s3a://")
        .map_or_else(|| uri.to_string(), |rest| format!("s3://{rest}"));
    let parameters = [
        ("table_type", "DELTA"),
        ("classification", "delta"),
        ("spark.sql.sources.provider", "delta"),
        ("EXTERNAL", "TRUE"),
        ("created_by", "bronze"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Entry {
        name,
        location,
        columns: schema
            .fields()
            .iter()
            .filter(|f| !partitions.contains(&f.name().as_str()))
            .map(|f| hive(f))
            .collect(),
        partition_keys: partitions
            .iter()
            .filter_map(|p| schema.field_with_name(p).ok())
            .map(hive)
            .collect(),
        parameters,
    }
}

/// The Hive type name Glue and Athena use for an Arrow type.
pub fn hive_type(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(
            TimeUnit::Microsecond | TimeUnit::Millisecond | TimeUnit::Second,
            _,
        )
        | DataType::Timestamp(TimeUnit::Nanosecond, _) => "timestamp".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::List(f) | DataType::LargeList(f) => {
            format!("array<{}>", hive_type(f.data_type()))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "map<{},{}>",
                hive_type(kv[0].data_type()),
                hive_type(kv[1].data_type())
            ),
            _ => "string".into(),
        },
        DataType::Struct(fields) => {
            let inner: Vec<String> = fields
                .iter()
                .map(|f| format!("{}:{}", f.name(), hive_type(f.data_type())))
                .collect();
            format!("struct<{}>", inner.join(","))
        }
        // Nothing bronze writes; a readable name beats a failed registration.
        other => other.to_string().to_lowercase(),
    }
}

/// One outcome per dataset, in their order.
pub type Outcomes = Vec<(String, Result<Outcome, CatalogError>)>;

/// Register (create or update) the entries of `datasets` that differ from the catalog's. `Err` when
/// the database itself cannot be found or made (then no dataset was looked at).
pub async fn sync(
    cfg: &Config,
    glue: &Glue,
    datasets: &[DatasetConfig],
) -> Result<Outcomes, CatalogError> {
    let Some(c) = &cfg.catalog else {
        return Ok(Vec::new());
    };
    glue.ensure_database().await?;
    let mut out = Vec::with_capacity(datasets.len());
    for d in datasets {
        let outcome = match entry_of(cfg, c, d).await {
            Ok(Some(entry)) => glue.register(&entry).await,
            Ok(None) => Ok(Outcome::NoTable),
            Err(e) => Err(e),
        };
        out.push((d.name.clone(), outcome));
    }
    Ok(out)
}

/// Where a dataset's catalog entry stands, for `bronze status`.
pub async fn state(cfg: &Config, glue: &Glue, d: &DatasetConfig) -> String {
    let Some(c) = &cfg.catalog else {
        return "-".into();
    };
    let wanted = match entry_of(cfg, c, d).await {
        Ok(Some(e)) => e,
        Ok(None) => return "no table yet".into(),
        Err(e) => return format!("error: {e}"),
    };
    match glue.get(&wanted.name).await {
        Ok(None) => "missing".into(),
        Ok(Some(have)) if glue::same(&have, &wanted) => "in sync".into(),
        Ok(Some(_)) => "stale".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// How many passes of `bronze run` go by between two that ask the catalog about every entry (one that
/// was dropped, or a catalog that came back empty, is registered again then).
const VERIFY_EVERY: u32 = 10;

/// What the run's catalog pass knows of one dataset's table since it last registered it.
struct Known {
    version: u64,
    entry: Entry,
    log: deltalake::logstore::LogStoreRef,
}

/// The catalog side of `bronze run`: tables are loaded only when their log says the metadata
/// changed (one small read per table and pass otherwise), so that following hundreds of tables costs
/// the loop nothing.
struct Follower {
    glue: Glue,
    known: HashMap<String, Known>,
    passes: u32,
    /// A pass that failed anywhere makes the next one ask the catalog about every entry.
    verify: bool,
}

impl Follower {
    /// One pass over `cfg`'s datasets; the outcome of each that was looked at.
    async fn pass(&mut self, cfg: &Config) -> Result<Outcomes, CatalogError> {
        let Some(c) = &cfg.catalog else {
            return Ok(Vec::new());
        };
        self.passes += 1;
        let verify = std::mem::take(&mut self.verify) || self.passes % VERIFY_EVERY == 1;
        self.glue
            .ensure_database()
            .await
            .inspect_err(|_| self.verify = true)?;
        let mut out = Vec::new();
        for d in &cfg.datasets {
            let outcome = self.follow(cfg, c, d, verify).await;
            if outcome.is_err() {
                self.verify = true;
            }
            out.push((d.name.clone(), outcome));
        }
        Ok(out)
    }

    async fn follow(
        &mut self,
        cfg: &Config,
        c: &CatalogConfig,
        d: &DatasetConfig,
        verify: bool,
    ) -> Result<Outcome, CatalogError> {
        if let Some(k) = self.known.get_mut(&d.name) {
            let changes = crate::sink::delta_log::changes_after(k.log.as_ref(), k.version, 10_000)
                .await
                .map_err(|e| {
                    CatalogError::Glue(format!("reading the log of {}: {e}", d.table_uri))
                })?;
            // Otherwise the metadata changed (or too much happened to tell): load the table again.
            if let Some((newest, false)) = changes {
                k.version = newest;
                return match verify {
                    true => self.glue.register(&k.entry).await,
                    false => Ok(Outcome::Unchanged),
                };
            }
        }
        let Some(table) = TableSink::existing(&d.table_uri, &cfg.storage_options()).await? else {
            return Ok(Outcome::NoTable);
        };
        let schema = table.arrow_schema()?;
        let entry = entry(
            table_name(c, d),
            &d.table_uri,
            &schema,
            d.partitioning.by.columns(),
        );
        let outcome = self.glue.register(&entry).await?;
        let known = Known {
            version: table.version().unwrap_or(0),
            entry,
            log: crate::sink::open_log(&d.table_uri, &cfg.storage_options())?,
        };
        self.known.insert(d.name.clone(), known);
        Ok(outcome)
    }
}

/// The catalog pass of `bronze run`, every `catalog.interval` over the datasets it has then.
pub fn spawn_background(updates: ConfigUpdates) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = updates.borrow().clone();
    let interval = cfg.catalog.as_ref()?.interval;
    Some(tokio::spawn(async move {
        let mut follower = Follower {
            glue: Glue::connect(&cfg).await,
            known: HashMap::new(),
            passes: 0,
            verify: false,
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: HashMap<String, String> = HashMap::new();
        loop {
            tick.tick().await;
            let cfg = updates.borrow().clone();
            let outcomes = match follower.pass(&cfg).await {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    // One cause for every dataset: counted for each, said once.
                    for d in &cfg.datasets {
                        metrics::gauge!("bronze_catalog_in_sync", "dataset" => d.name.clone())
                            .set(0.0);
                        metrics::counter!("bronze_catalog_errors_total", "dataset" => d.name.clone())
                            .increment(1);
                    }
                    let text = e.to_string();
                    if last_error.get("") != Some(&text) {
                        warn!(error = %text, "catalog unreachable; registrations retried next interval");
                        last_error.insert(String::new(), text);
                    }
                    continue;
                }
            };
            last_error.remove("");
            for (name, outcome) in outcomes {
                let in_sync = metrics::gauge!("bronze_catalog_in_sync", "dataset" => name.clone());
                match outcome {
                    Ok(o) => {
                        in_sync.set(if o == Outcome::NoTable { 0.0 } else { 1.0 });
                        if matches!(o, Outcome::Created | Outcome::Updated) {
                            metrics::counter!("bronze_catalog_registrations_total", "dataset" => name.clone())
                                .increment(1);
                            info!(dataset = %name, outcome = o.as_str(), "catalog entry registered");
                        }
                        last_error.remove(&name);
                    }
                    Err(e) => {
                        in_sync.set(0.0);
                        metrics::counter!("bronze_catalog_errors_total", "dataset" => name.clone())
                            .increment(1);
                        let text = e.to_string();
                        if last_error.get(&name) != Some(&text) {
                            warn!(dataset = %name, error = %text, "catalog registration failed; retrying next interval");
                            last_error.insert(name, text);
                        }
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use std::sync::Arc;

    #[test]
    fn an_entry_has_hive_types_and_the_partition_columns_apart() {
        let item = Arc::new(Field::new("element", DataType::Utf8, true));
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Decimal128(12, 2), true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("day", DataType::Date32, true),
            Field::new("_unavailable_columns", DataType::List(item), true),
            Field::new("event_date", DataType::Utf8, false),
        ]);
        let e = entry(
            "orders".into(),
            "s3a://lake/orders",
            &schema,
            &["event_date"],
        );
        assert_eq!(e.location, "s3://lake/orders");
        let cols: Vec<(&str, &str)> = e
            .columns
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        assert_eq!(
            cols,
            [
                ("id", "bigint"),
                ("price", "decimal(12,2)"),
                ("at", "timestamp"),
                ("day", "date"),
                ("_unavailable_columns", "array<string>")
            ]
        );
        assert_eq!(
            e.partition_keys,
            [("event_date".to_string(), "string".to_string())]
        );
        assert_eq!(e.parameters["table_type"], "DELTA");
    }
}
