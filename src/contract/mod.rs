//! Schema contracts: the expected columns of a dataset, read from a file in `schemas/`.
//!
//! A contract is TOML (or JSON with the same shape):
//! ```toml
//! [[columns]]
//! name = "id"
//! type = "int64"        # string bool int32 int64 float32 float64 decimal date timestamp binary json
//! nullable = false
//!
//! [[columns]]
//! name = "updated_at"
//! type = "timestamp"
//! unit = "ms"           # unit of integer input: s ms us ns (default ms)
//! on_error = "null"     # dead_letter (default) | null | fail; the contract-wide default is a
//!                       # top-level `on_error = ...`
//! formats = ["%d.%m.%Y %H:%M"]   # text formats after RFC 3339
//! timezone = "Europe/Berlin"     # zone of text without an offset (default UTC)
//!
//! [[columns]]
//! name = "email_address"
//! type = "string"
//! aliases = ["email"]   # earlier names: a renamed source column keeps landing here
//!
//! [drift]               # what a message that disagrees with the columns does
//! new_column = "ignore" # ignore (default: counted, logged, recorded) | rescue | quarantine | fail
//! missing_column = "ignore"
//! type_widening = "ignore" # int32→int64, float32→float64, date→timestamp, decimal precision up:
//!                          # ignore | evolve (widen the table column) | quarantine | fail
//!
//! [[columns]]
//! name = "amount"
//! type = "decimal"
//! precision = 12
//! scale = 2
//! rounding = "half_even" # error (default: lossless only) | half_even | half_up | down
//! ```
//! Column names are given in their normalized (snake_case) form. Stored tables also get the metadata
//! columns in [`METADATA_COLUMNS`] and the partition columns of the dataset.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use serde::Deserialize;

mod column;
pub mod derive;

pub use column::{
    BinaryEncoding, Column, ColumnType, EpochUnit, OnError, Rounding, timestamp_type,
};

/// Metadata columns appended to every row, in this order.
pub const METADATA_COLUMNS: &[&str] = &[
    "_ingested_at",
    "_batch_id",
    "_topic",
    "_partition",
    "_offset",
    "_op",
    "_source_ts",
    "_source_pos",
];

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: column `{column}`: {reason}")]
    Column {
        file: String,
        column: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// The rule for columns that do not set their own `on_error`.
    #[serde(default)]
    pub on_error: OnError,
    /// What to do when messages and the contract disagree on the columns.
    #[serde(default)]
    pub drift: DriftPolicy,
    pub columns: Vec<Column>,
    /// Rows name the columns the source did not deliver in [`UNAVAILABLE_COLUMN`] (set from the
    /// dataset's config, not the file).
    #[serde(skip)]
    pub tracks_unavailable: bool,
}

/// Whether values of Arrow type `from` all fit `to` exactly: the widenings `type_widening` applies.
pub fn is_widening(from: &DataType, to: &DataType) -> bool {
    match (from, to) {
        (DataType::Int32, DataType::Int64)
        | (DataType::Float32, DataType::Float64)
        | (DataType::Date32, DataType::Timestamp(..)) => true,
        (DataType::Decimal128(p1, s1), DataType::Decimal128(p2, s2)) => s1 == s2 && p2 > p1,
        _ => false,
    }
}

/// The dataset's drift policy (`[drift]` in the contract), per kind of change. Type changes that break
/// a column follow that column's `on_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftPolicy {
    /// A field the contract does not name.
    #[serde(default)]
    pub new_column: DriftAction,
    /// A full row (create, update, snapshot read) without a field for a contract column.
    #[serde(default)]
    pub missing_column: DriftAction,
    /// Under `new_column = "review"`: what happens to a message with a field awaiting approval.
    #[serde(default)]
    pub review_hold: ReviewHold,
    /// A value of a wider type than its column (int32→int64, float32→float64, date→timestamp, decimal
    /// precision up at the same scale). `ignore` takes values that fit (others follow the column's
    /// `on_error`); `evolve` widens the table column first.
    #[serde(default)]
    pub type_widening: DriftAction,
}

/// Where messages wait while a new column awaits an operator's decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewHold {
    /// The whole message goes to the dead-letter table (reason `schema_review`), to be replayed once the
    /// column is approved.
    #[default]
    Quarantine,
    /// The row lands; the field waits in its `_rescued_data`.
    Rescue,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftAction {
    /// Count it, log it, record it; the row lands without the field (or with null).
    #[default]
    Ignore,
    /// The message goes to the dead-letter table (reason `schema_drift`).
    Quarantine,
    /// The partition stops until the contract is changed and bronze restarts.
    Fail,
    /// New columns only: the field is kept in the row's `_rescued_data` JSON object.
    Rescue,
    /// New columns only: the column is added to the table, typed from the first non-null value, in the
    /// same commit as the first rows that carry it.
    Evolve,
    /// New columns only: the column is proposed (`bronze schema diff`) and its messages held (see
    /// [`ReviewHold`]) until an operator approves or rejects it.
    Review,
}

impl DriftAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftAction::Ignore => "ignore",
            DriftAction::Quarantine => "quarantine",
            DriftAction::Fail => "fail",
            DriftAction::Rescue => "rescue",
            DriftAction::Evolve => "evolve",
            DriftAction::Review => "review",
        }
    }
}

/// The column holding what a row could not place: unknown fields and values its columns refused, as one
/// JSON object keyed by the field names as they arrived. Present only in tables whose contract rescues.
pub const RESCUED_COLUMN: &str = "_rescued_data";

/// The columns of a row whose value the source did not deliver (Debezium's placeholder for an
/// unchanged TOASTed value): null in the row, named here, never a fake value. A list of names; null
/// when every value was delivered. Tables made before it existed get it with their next commit.
pub const UNAVAILABLE_COLUMN: &str = "_unavailable_columns";

/// Arrow type of [`UNAVAILABLE_COLUMN`], as the Delta kernel names a list's items.
pub fn unavailable_type() -> DataType {
    DataType::List(Arc::new(Field::new("element", DataType::Utf8, true)))
}

impl Contract {
    pub fn load(path: &Path) -> Result<Contract, ContractError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
            file: file.clone(),
            source,
        })?;
        let contract: Contract = if path.extension().and_then(|e| e.to_str()) == Some("json") {
            serde_json::from_str(&text).map_err(|e| ContractError::Parse {
                file: file.clone(),
                message: e.to_string(),
            })?
        } else {
            toml::from_str(&text).map_err(|e| ContractError::Parse {
                file: file.clone(),
                message: e.to_string().trim().to_string(),
            })?
        };
        contract.check(&file)?;
        Ok(contract)
    }

    /// [`Contract::load`], with the dataset's `drift` (if it sets one) in place of the file's.
    pub fn load_with_drift(
        path: &Path,
        drift: Option<DriftPolicy>,
    ) -> Result<Contract, ContractError> {
        let mut contract = Contract::load(path)?;
        if let Some(drift) = drift {
            contract.drift = drift;
            contract.check(&path.display().to_string())?;
        }
        Ok(contract)
    }

    /// The rules a contract file is held to (`file` names where it came from in errors).
    pub fn check(&self, file: &str) -> Result<(), ContractError> {
        if matches!(
            self.drift.missing_column,
            DriftAction::Rescue | DriftAction::Evolve | DriftAction::Review
        ) {
            return Err(ContractError::Parse {
                file: file.to_string(),
                message: format!(
                    "`drift.missing_column` cannot be `{}`: it applies to new columns only",
                    self.drift.missing_column.as_str()
                ),
            });
        }
        if matches!(
            self.drift.type_widening,
            DriftAction::Rescue | DriftAction::Review
        ) {
            return Err(ContractError::Parse {
                file: file.to_string(),
                message: format!(
                    "`drift.type_widening` cannot be `{}`: use ignore, evolve, quarantine or fail",
                    self.drift.type_widening.as_str()
                ),
            });
        }
        if self.columns.is_empty() {
            return Err(ContractError::Parse {
                file: file.to_string(),
                message: "a contract needs at least one column".to_string(),
            });
        }
        for (i, c) in self.columns.iter().enumerate() {
            if let Some(reason) = self.column_problem(i) {
                return Err(ContractError::Column {
                    file: file.to_string(),
                    column: c.name.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// What is wrong with column `i`, if anything: its name, its type's settings, its aliases.
    fn column_problem(&self, i: usize) -> Option<String> {
        let c = &self.columns[i];
        let problem = |reason: &str| Some(reason.to_string());
        if c.name.is_empty() {
            return problem("name must not be empty");
        }
        if c.name.starts_with('_') {
            return problem("names starting with `_` are reserved for metadata columns");
        }
        if matches!(c.name.as_str(), "event_date" | "event_hour") {
            return problem("is reserved for partition columns");
        }
        if self.columns[..i].iter().any(|o| o.name == c.name) {
            return problem("is defined twice");
        }
        match (c.ty, c.precision, c.scale) {
            (ColumnType::Decimal, Some(p), s) if (1..=38).contains(&p) => {
                if s.is_some_and(|s| s < 0 || s as u8 > p) {
                    return problem("`scale` must be between 0 and `precision`");
                }
            }
            (ColumnType::Decimal, _, _) => {
                return problem("a decimal needs `precision` between 1 and 38");
            }
            (_, None, None) => {}
            _ => return problem("`precision` and `scale` apply to decimal columns only"),
        }
        if c.ty != ColumnType::Decimal && c.rounding != Rounding::Error {
            return problem("`rounding` applies to decimal columns only");
        }
        if c.ty != ColumnType::Timestamp && (!c.formats.is_empty() || c.timezone.is_some()) {
            return problem("`formats` and `timezone` apply to timestamp columns only");
        }
        if let Some(z) = &c.timezone
            && z.parse::<chrono_tz::Tz>().is_err()
        {
            return Some(format!("`{z}` is not an IANA time zone"));
        }
        if c.ty != ColumnType::Binary && c.encoding != BinaryEncoding::Base64 {
            return problem("`encoding` applies to binary columns only");
        }
        for a in &c.aliases {
            if self.columns.iter().any(|o| &o.name == a)
                || self.columns[..i].iter().any(|o| o.aliases.contains(a))
            {
                return Some(format!(
                    "alias `{a}` is already a column or another column's alias"
                ));
            }
        }
        if !c.nullable && matches!(c.on_error(self.on_error), OnError::Null | OnError::Rescue) {
            return problem(
                "`on_error = \"null\"` or `\"rescue\"` needs a nullable column (it is `nullable = false`)",
            );
        }
        None
    }

    /// Add a column found in the data (drift policy `evolve`) or in the table (evolved by an earlier run
    /// or another member). Its index is the new last one.
    pub fn add_evolved(
        &mut self,
        name: &str,
        ty: ColumnType,
        precision_scale: Option<(u8, i8)>,
    ) -> usize {
        let mut c = Column::new(name, ty);
        if let Some((p, s)) = precision_scale {
            c.precision = Some(p);
            c.scale = Some(s);
        }
        self.columns.push(c);
        self.columns.len() - 1
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Give column `i` a wider type (see [`is_widening`]); its other rules stay.
    pub fn widen(&mut self, i: usize, ty: ColumnType, precision_scale: Option<(u8, i8)>) {
        let c = &mut self.columns[i];
        c.ty = ty;
        if let Some((p, s)) = precision_scale {
            (c.precision, c.scale) = (Some(p), Some(s));
        }
    }

    /// Whether the table may have columns beyond the contract: added by `evolve`, or approved under
    /// `review`.
    pub fn evolves(&self) -> bool {
        matches!(
            self.drift.new_column,
            DriftAction::Evolve | DriftAction::Review
        )
    }

    /// Whether rows keep what they cannot place in [`RESCUED_COLUMN`].
    pub fn rescues(&self) -> bool {
        self.drift.new_column == DriftAction::Rescue
            || (self.drift.new_column == DriftAction::Review
                && self.drift.review_hold == ReviewHold::Rescue)
            || self
                .columns
                .iter()
                .any(|c| c.on_error(self.on_error) == OnError::Rescue)
    }

    /// The column a field name belongs to, and whether it matched one of the column's `aliases`.
    pub fn resolve(&self, name: &str) -> Option<(usize, bool)> {
        self.index_of(name).map(|i| (i, false)).or_else(|| {
            self.columns
                .iter()
                .position(|c| c.aliases.iter().any(|a| a == name))
                .map(|i| (i, true))
        })
    }

    /// The table schema: contract columns, metadata columns, then `partition_columns`.
    /// All data columns are nullable in storage: deletes may carry only keys and truncates no columns;
    /// `nullable = false` is enforced on the rows that must have the column.
    pub fn table_schema(&self, partition_columns: &[&str]) -> Arc<Schema> {
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.arrow_type(), true))
            .collect();
        fields.extend([
            Field::new("_ingested_at", timestamp_type(), false),
            Field::new("_batch_id", DataType::Utf8, false),
            Field::new("_topic", DataType::Utf8, false),
            Field::new("_partition", DataType::Int32, false),
            Field::new("_offset", DataType::Int64, false),
            Field::new("_op", DataType::Utf8, false),
            Field::new("_source_ts", timestamp_type(), true),
            Field::new("_source_pos", DataType::Utf8, true),
        ]);
        if self.rescues() {
            fields.push(Field::new(RESCUED_COLUMN, DataType::Utf8, true));
        }
        if self.tracks_unavailable {
            fields.push(Field::new(UNAVAILABLE_COLUMN, unavailable_type(), true));
        }
        fields.extend(
            partition_columns
                .iter()
                .map(|p| Field::new(*p, DataType::Utf8, false)),
        );
        Arc::new(Schema::new(fields))
    }
}

#[cfg(test)]
mod tests;
