//! The AWS Glue Data Catalog through the AWS SDK: a database, and per dataset one native Delta table
//! entry (`EXTERNAL_TABLE`, `table_type = DELTA`, `spark.sql.sources.provider = delta`, the Parquet
//! SerDe with the table's `path`), which is how Athena, Glue crawlers and Spark on EMR/Glue expect
//! one.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_glue::Client;
use aws_sdk_glue::error::DisplayErrorContext;
use aws_sdk_glue::types::{Column, DatabaseInput, SerDeInfo, StorageDescriptor, TableInput};

use super::{CatalogError, Entry, Outcome};
use crate::config::Config;

const INPUT_FORMAT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
const OUTPUT_FORMAT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat";
const SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";

/// A Glue client for the configured database.
pub struct Glue {
    client: Client,
    database: String,
}

fn glue_err(e: impl std::error::Error) -> CatalogError {
    CatalogError::Glue(DisplayErrorContext(e).to_string())
}

impl Glue {
    /// A client for `cfg`'s `[catalog]`: its region (else the S3 storage's, else the AWS chain's), its
    /// endpoint, and the S3 storage's keys when the config has them (else the AWS default chain).
    pub async fn connect(cfg: &Config) -> Glue {
        let c = cfg.catalog.as_ref();
        let s3 = cfg.storage.s3.as_ref();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(30))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        );
        let region = c
            .and_then(|c| c.region.clone())
            .or_else(|| s3.map(|s| s.region.clone()));
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r));
        }
        if let Some(e) = c.and_then(|c| c.endpoint.clone()) {
            loader = loader.endpoint_url(e);
        }
        if let Some((k, s)) =
            s3.and_then(|s| Some((s.access_key_id.clone()?, s.secret_access_key.clone()?)))
        {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                k,
                s,
                None,
                None,
                "bronze-config",
            ));
        }
        let sdk = loader.load().await;
        Glue {
            client: Client::new(&sdk),
            database: c.map(|c| c.database.clone()).unwrap_or_default(),
        }
    }

    /// Create the database unless it exists.
    pub async fn ensure_database(&self) -> Result<(), CatalogError> {
        match self.client.get_database().name(&self.database).send().await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) => {}
            Err(e) => return Err(glue_err(e)),
        }
        let input = DatabaseInput::builder()
            .name(&self.database)
            .description("Bronze tables written by bronze")
            .build()
            .map_err(glue_err)?;
        match self
            .client
            .create_database()
            .database_input(input)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Another member made it meanwhile.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(glue_err(e)),
        }
    }

    /// The catalog's entry for table `name`, as far as bronze describes one.
    pub async fn get(&self, name: &str) -> Result<Option<Entry>, CatalogError> {
        let out = match self
            .client
            .get_table()
            .database_name(&self.database)
            .name(name)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(glue_err(e)),
        };
        let Some(t) = out.table() else {
            return Ok(None);
        };
        let pairs = |cols: &[Column]| -> Vec<(String, String)> {
            cols.iter()
                .map(|c| {
                    (
                        c.name().to_string(),
                        c.r#type().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        };
        let sd = t.storage_descriptor();
        Ok(Some(Entry {
            name: t.name().to_string(),
            location: sd
                .and_then(|s| s.location())
                .unwrap_or_default()
                .to_string(),
            columns: sd.map(|s| pairs(s.columns())).unwrap_or_default(),
            partition_keys: pairs(t.partition_keys()),
            parameters: t.parameters().cloned().unwrap_or_default(),
        }))
    }

    /// Create or update the entry so that it says what `wanted` says.
    pub async fn register(&self, wanted: &Entry) -> Result<Outcome, CatalogError> {
        let have = self.get(&wanted.name).await?;
        if have.as_ref().is_some_and(|h| same(h, wanted)) {
            return Ok(Outcome::Unchanged);
        }
        let input = table_input(wanted)?;
        if have.is_some() {
            self.client
                .update_table()
                .database_name(&self.database)
                .table_input(input)
                .send()
                .await
                .map_err(glue_err)?;
            return Ok(Outcome::Updated);
        }
        match self
            .client
            .create_table()
            .database_name(&self.database)
            .table_input(input)
            .send()
            .await
        {
            Ok(_) => Ok(Outcome::Created),
            // Another member registered it first; the next pass compares again.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_already_exists_exception()) =>
            {
                Ok(Outcome::Unchanged)
            }
            Err(e) => Err(glue_err(e)),
        }
    }
}

/// Whether the catalog's entry `have` says all that `wanted` says (it may say more: parameters engines
/// or people added are kept).
pub(super) fn same(have: &Entry, wanted: &Entry) -> bool {
    have.columns == wanted.columns
        && have.partition_keys == wanted.partition_keys
        && have.location == wanted.location
        && wanted
            .parameters
            .iter()
            .all(|(k, v)| have.parameters.get(k) == Some(v))
}

fn table_input(e: &Entry) -> Result<TableInput, CatalogError> {
    let columns = |cols: &[(String, String)]| -> Result<Vec<Column>, CatalogError> {
        cols.iter()
            .map(|(n, t)| {
                Column::builder()
                    .name(n)
                    .r#type(t)
                    .build()
                    .map_err(glue_err)
            })
            .collect()
    };
    let storage = StorageDescriptor::builder()
        .set_columns(Some(columns(&e.columns)?))
        .location(&e.location)
        .input_format(INPUT_FORMAT)
        .output_format(OUTPUT_FORMAT)
        .serde_info(
            SerDeInfo::builder()
                .serialization_library(SERDE)
                .parameters("path", &e.location)
                .build(),
        )
        .build();
    let mut t = TableInput::builder()
        .name(&e.name)
        .table_type("EXTERNAL_TABLE")
        .storage_descriptor(storage)
        .set_partition_keys(Some(columns(&e.partition_keys)?));
    for (k, v) in &e.parameters {
        t = t.parameters(k, v);
    }
    t.build().map_err(glue_err)
}
