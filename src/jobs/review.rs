//! Review gates for new columns (`drift.new_column = "review"`): streaming holds the messages that carry
//! a field the contract does not name and records a `drift` sighting (action `review`) in the ledger;
//! `bronze schema diff` lists the fields awaiting a decision, `bronze schema approve` adds the column to
//! the table in one metadata-only commit (every member takes it on at its next commit, a restart at
//! start), `bronze schema reject` records that the field stays out. Held messages come back with
//! `bronze dlq replay --reason schema_review` once their column exists.

use std::collections::BTreeMap;

use arrow::datatypes::{Field, Schema};
use serde::Serialize;
use tracing::info;

use super::dataset;
use crate::audit::{AuditRecord, Ledger, SchemaEvent, schema_events};
use crate::config::Config;
use crate::contract::{Column, ColumnType};
use crate::pipeline::{self, PipelineError};
use crate::sink::{SinkError, TableSink};

/// A new column awaiting (or past) an operator's decision; its id is the column name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proposal {
    pub dataset: String,
    pub column: String,
    /// The type of the values seen (the type the column gets unless the approval says otherwise).
    pub proposed_type: String,
    /// Ledger time of the first and the latest sighting, µs since the epoch.
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    /// Messages held in the sightings recorded (each run records its first sighting's count).
    pub messages: i64,
}

/// Fields seen under `review` that have neither a column in the table nor a decision.
pub async fn pending(cfg: &Config, dataset: Option<&str>) -> Result<Vec<Proposal>, PipelineError> {
    let events = schema_events(cfg, dataset).await?;
    let mut out = Vec::new();
    for d in &cfg.datasets {
        if dataset.is_some_and(|n| n != d.name) {
            continue;
        }
        let table = TableSink::existing(&d.table_uri, &cfg.storage_options()).await?;
        out.extend(pending_in(&d.name, &events, table.as_ref())?);
    }
    Ok(out)
}

/// The undecided proposals of `dataset` among `events`, leaving out columns its `table` already has.
pub fn pending_in(
    dataset: &str,
    events: &[SchemaEvent],
    table: Option<&TableSink>,
) -> Result<Vec<Proposal>, SinkError> {
    let columns = match table {
        Some(t) => t.columns_beyond(&Schema::empty())?,
        None => Vec::new(),
    };
    Ok(proposals_of(dataset, events)
        .into_values()
        .filter(|p| !columns.iter().any(|f| f.name() == &p.column))
        .collect())
}

/// Undecided proposals of `dataset`, by column, from its ledger events (oldest first).
fn proposals_of(dataset: &str, events: &[SchemaEvent]) -> BTreeMap<String, Proposal> {
    let mut out: BTreeMap<String, Proposal> = BTreeMap::new();
    for e in events.iter().filter(|e| e.dataset == dataset) {
        let text = |k: &str| e.detail.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        let column = text("column").to_string();
        match e.kind.as_str() {
            "drift" if text("action") == "review" && text("kind") == "new_column" => {
                let p = out.entry(column.clone()).or_insert_with(|| Proposal {
                    dataset: dataset.to_string(),
                    column,
                    proposed_type: String::new(),
                    first_seen_us: e.at_us,
                    last_seen_us: e.at_us,
                    messages: 0,
                });
                p.proposed_type = text("observed").to_string();
                p.last_seen_us = e.at_us;
                p.messages += e.rows_in;
            }
            "schema_approved" | "schema_rejected" => {
                out.remove(&column);
            }
            _ => {}
        }
    }
    // A decided column sighted again (a rejected field keeps arriving) is not asked about twice.
    let decided: Vec<String> = events
        .iter()
        .filter(|e| e.dataset == dataset && e.kind != "drift")
        .filter_map(|e| Some(e.detail.get("column")?.as_str()?.to_string()))
        .collect();
    out.retain(|c, _| !decided.contains(c));
    out
}

/// What `bronze schema approve` did.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub dataset: String,
    pub column: String,
    pub column_type: String,
    pub table_version: u64,
}

/// Add `column` to the dataset's table, typed as proposed or as `column_type`, in one commit.
pub async fn approve(
    cfg: &Config,
    name: &str,
    column: &str,
    column_type: Option<ColumnType>,
) -> Result<Approval, PipelineError> {
    let d = dataset(cfg, name)?;
    let (mapper, mut sink) = pipeline::open_dataset(cfg, d).await?;
    if !mapper.contract().evolves() {
        return Err(PipelineError::Stopped(format!(
            "dataset `{name}` does not review new columns (`drift.new_column` is `{}`)",
            mapper.contract().drift.new_column.as_str()
        )));
    }
    if mapper.contract().resolve(column).is_some() {
        return Err(PipelineError::Stopped(format!(
            "`{column}` is already a column of `{name}`"
        )));
    }
    let events = schema_events(cfg, Some(name)).await?;
    let proposed = proposals_of(name, &events)
        .remove(column)
        .and_then(|p| ColumnType::parse(&p.proposed_type));
    let ty = column_type.or(proposed).ok_or_else(|| {
        PipelineError::Stopped(format!(
            "no pending proposal for `{column}` in `{name}`; give its type with --type"
        ))
    })?;
    let field: Field = Field::new(column, Column::new(column, ty).arrow_type(), true);
    let version = sink.add_column(field, "schema_approved").await?;
    info!(
        dataset = name,
        column,
        column_type = ty.as_str(),
        version,
        "column approved"
    );
    let detail = serde_json::json!({ "column": column, "type": ty.as_str() });
    record(cfg, "schema_approved", name, detail, Some(version)).await?;
    Ok(Approval {
        dataset: name.to_string(),
        column: column.to_string(),
        column_type: ty.as_str().to_string(),
        table_version: version,
    })
}

/// Record that `column` stays out of the dataset's table; its messages stay held.
pub async fn reject(cfg: &Config, name: &str, column: &str) -> Result<(), PipelineError> {
    dataset(cfg, name)?;
    let detail = serde_json::json!({ "column": column });
    record(cfg, "schema_rejected", name, detail, None).await
}

async fn record(
    cfg: &Config,
    kind: &str,
    dataset: &str,
    detail: serde_json::Value,
    version: Option<u64>,
) -> Result<(), PipelineError> {
    let run_id = uuid::Uuid::now_v7().to_string();
    let mut ledger = Ledger::open(cfg).await?;
    let r = AuditRecord::schema_decision(kind, &run_id, dataset, detail, version);
    ledger.sync(&[r]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, at_us: i64, rows_in: i64, detail: serde_json::Value) -> SchemaEvent {
        SchemaEvent {
            dataset: "users".into(),
            kind: kind.into(),
            at_us,
            rows_in,
            detail,
        }
    }

    #[test]
    fn proposals_come_from_review_sightings_until_decided() {
        let review = |column: &str, observed: &str| {
            serde_json::json!({"kind": "new_column", "column": column, "observed": observed,
                "expected": "absent", "action": "review"})
        };
        let events = vec![
            event("drift", 1, 4, review("tier", "int64")),
            event("drift", 2, 3, review("score", "float64")),
            // Another run saw the same field, with wider values.
            event("drift", 3, 5, review("tier", "string")),
            // Drift under other policies is no proposal.
            event(
                "drift",
                4,
                1,
                serde_json::json!({"kind": "new_column", "column": "x", "action": "ignore"}),
            ),
            event(
                "schema_rejected",
                5,
                0,
                serde_json::json!({"column": "score"}),
            ),
            // Rejected, then seen again: not asked about twice.
            event("drift", 6, 2, review("score", "float64")),
        ];
        let p = proposals_of("users", &events);
        assert_eq!(p.keys().collect::<Vec<_>>(), ["tier"]);
        let tier = &p["tier"];
        assert_eq!(
            (
                tier.proposed_type.as_str(),
                tier.messages,
                tier.first_seen_us,
                tier.last_seen_us
            ),
            ("string", 9, 1, 3)
        );
        assert!(proposals_of("other", &events).is_empty());
    }
}
