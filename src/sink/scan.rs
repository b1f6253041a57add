//! Reading tables back with DataFusion (ledger listings, dead-letter replay, offset checks), from any
//! machine that can read the storage, while writers go on.

use std::collections::HashMap;

use deltalake::datafusion::prelude::{DataFrame, SessionContext};

use super::{SinkError, load_existing};

/// A DataFrame over the newest version of the table at `uri`; `None` when there is no table.
pub async fn frame(
    uri: &str,
    storage_options: &HashMap<String, String>,
) -> Result<Option<DataFrame>, SinkError> {
    let Some(table) = load_existing(uri, storage_options).await? else {
        return Ok(None);
    };
    let err = |e: &dyn std::fmt::Display| SinkError::Query {
        uri: uri.to_string(),
        message: e.to_string(),
    };
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| err(&e))?;
    let provider = table.table_provider().await.map_err(|e| err(&e))?;
    let df = ctx.read_table(provider).map_err(|e| err(&e))?;
    Ok(Some(df))
}
