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

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde::Deserialize;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Bool,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Days; input as `YYYY-MM-DD` or integer days since the epoch (`io.debezium.time.Date`).
    Date,
    /// Stored as microseconds, UTC; input as RFC 3339 text, text in one of the column's `formats`
    /// (read in its `timezone`), or an integer epoch in the column's `unit`.
    Timestamp,
    /// Any JSON value, stored as its JSON text.
    Json,
    /// Exact decimal with the column's `precision` (≤ 38) and `scale`; input as a JSON number, numeric
    /// text, Debezium `Decimal` bytes (base64, unscaled, in the column's scale) or `VariableScaleDecimal`
    /// (`{"scale", "value"}`).
    Decimal,
    /// Bytes; input as base64 text (Debezium's `binary.handling.mode=bytes`), or as the column's
    /// `encoding`.
    Binary,
}

impl ColumnType {
    /// The type an evolved column gets from the first non-null value seen for it. Debezium's JSON
    /// carries no logical types beside the values, so dates and timestamps arrive as the numbers or
    /// text they are encoded as; a contract that names the column types it exactly.
    pub fn infer(value: &serde_json::Value) -> Option<ColumnType> {
        use serde_json::Value;
        match value {
            Value::Null => None,
            Value::Bool(_) => Some(ColumnType::Bool),
            Value::Number(n) if n.is_i64() || n.is_u64() && n.as_i64().is_some() => {
                Some(ColumnType::Int64)
            }
            Value::Number(_) => Some(ColumnType::Float64),
            Value::String(_) => Some(ColumnType::String),
            Value::Array(_) | Value::Object(_) => Some(ColumnType::Json),
        }
    }

    /// The column type of a table column bronze did not define (added by evolution), with a decimal's
    /// precision and scale. `None` for Arrow types no contract column maps to.
    pub fn from_arrow(ty: &DataType) -> Option<(ColumnType, Option<(u8, i8)>)> {
        Some(match ty {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => (ColumnType::String, None),
            DataType::Boolean => (ColumnType::Bool, None),
            DataType::Int32 => (ColumnType::Int32, None),
            DataType::Int64 => (ColumnType::Int64, None),
            DataType::Float32 => (ColumnType::Float32, None),
            DataType::Float64 => (ColumnType::Float64, None),
            DataType::Date32 => (ColumnType::Date, None),
            DataType::Timestamp(..) => (ColumnType::Timestamp, None),
            DataType::Decimal128(p, s) => (ColumnType::Decimal, Some((*p, *s))),
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                (ColumnType::Binary, None)
            }
            _ => return None,
        })
    }

    /// The type named `name` as contracts spell it (`int64`, `json`, ...).
    pub fn parse(name: &str) -> Option<ColumnType> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }

    /// The name contracts use for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Bool => "bool",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::Float32 => "float32",
            ColumnType::Float64 => "float64",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Json => "json",
            ColumnType::Decimal => "decimal",
            ColumnType::Binary => "binary",
        }
    }
}

/// How a decimal with more fractional digits than the column's scale is brought to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Refuse the value (the column's `on_error` applies): lossless only.
    #[default]
    Error,
    HalfEven,
    HalfUp,
    /// Toward zero.
    Down,
}

/// How text input of a binary column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BinaryEncoding {
    #[default]
    Base64,
    Hex,
    /// The text's UTF-8 bytes as they are.
    Utf8,
}

/// The timestamp type of every timestamp column (data and metadata).
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Unit of integer epoch input for a timestamp column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EpochUnit {
    S,
    #[default]
    Ms,
    Us,
    Ns,
}

impl EpochUnit {
    pub fn to_micros(self, v: i64) -> Option<i64> {
        match self {
            EpochUnit::S => v.checked_mul(1_000_000),
            EpochUnit::Ms => v.checked_mul(1_000),
            EpochUnit::Us => Some(v),
            EpochUnit::Ns => Some(v / 1_000),
        }
    }
}

/// What happens to a message whose value for a column cannot be coerced to the column's type (or that
/// lacks a value the column requires).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The message goes to the dataset's dead-letter table with the reason; the partition goes on.
    #[default]
    DeadLetter,
    /// The value becomes null and the row lands (only for nullable columns).
    Null,
    /// The partition stops on the message, loudly, until the input or the contract is fixed.
    Fail,
    /// The value becomes null and the original is kept in the row's `_rescued_data` (only for
    /// nullable columns).
    Rescue,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::DeadLetter => "dead_letter",
            OnError::Null => "null",
            OnError::Fail => "fail",
            OnError::Rescue => "rescue",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    #[serde(default = "yes")]
    pub nullable: bool,
    #[serde(default)]
    pub unit: EpochUnit,
    /// Defaults to the contract's `on_error`.
    #[serde(default)]
    pub on_error: Option<OnError>,
    /// `decimal`: total digits (1-38) and digits after the point.
    #[serde(default)]
    pub precision: Option<u8>,
    #[serde(default)]
    pub scale: Option<i8>,
    #[serde(default)]
    pub rounding: Rounding,
    /// `timestamp`: chrono `strftime` formats tried after RFC 3339, e.g. `"%d.%m.%Y %H:%M"`.
    #[serde(default)]
    pub formats: Vec<String>,
    /// `timestamp`: IANA zone of text without an offset (default UTC), e.g. `"Europe/Berlin"`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// `binary`: how text input is read.
    #[serde(default)]
    pub encoding: BinaryEncoding,
    /// Earlier names of this column (normalized), so a renamed source column keeps landing here.
    #[serde(default)]
    pub aliases: Vec<String>,
}

impl Column {
    /// A column of `ty` with every option at its default.
    pub fn new(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.to_string(),
            ty,
            nullable: true,
            unit: EpochUnit::default(),
            on_error: None,
            precision: None,
            scale: None,
            rounding: Rounding::default(),
            formats: Vec::new(),
            timezone: None,
            encoding: BinaryEncoding::default(),
            aliases: Vec::new(),
        }
    }

    pub fn arrow_type(&self) -> DataType {
        match self.ty {
            ColumnType::String | ColumnType::Json => DataType::Utf8,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => timestamp_type(),
            ColumnType::Decimal => {
                DataType::Decimal128(self.precision.unwrap_or(38), self.scale.unwrap_or(0))
            }
            ColumnType::Binary => DataType::Binary,
        }
    }

    /// The zone of zone-less timestamp text.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone
            .as_deref()
            .and_then(|z| z.parse().ok())
            .unwrap_or(chrono_tz::UTC)
    }

    /// The rule for this column's errors, given the contract-wide default.
    pub fn on_error(&self, default: OnError) -> OnError {
        self.on_error.unwrap_or(default)
    }
}

fn yes() -> bool {
    true
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

    fn check(&self, file: &str) -> Result<(), ContractError> {
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
            let err = |reason: &str| ContractError::Column {
                file: file.to_string(),
                column: c.name.clone(),
                reason: reason.to_string(),
            };
            if c.name.is_empty() {
                return Err(err("name must not be empty"));
            }
            if c.name.starts_with('_') {
                return Err(err(
                    "names starting with `_` are reserved for metadata columns",
                ));
            }
            if matches!(c.name.as_str(), "event_date" | "event_hour") {
                return Err(err("is reserved for partition columns"));
            }
            if self.columns[..i].iter().any(|o| o.name == c.name) {
                return Err(err("is defined twice"));
            }
            match (c.ty, c.precision, c.scale) {
                (ColumnType::Decimal, Some(p), s) if (1..=38).contains(&p) => {
                    if s.is_some_and(|s| s < 0 || s as u8 > p) {
                        return Err(err("`scale` must be between 0 and `precision`"));
                    }
                }
                (ColumnType::Decimal, _, _) => {
                    return Err(err("a decimal needs `precision` between 1 and 38"));
                }
                (_, None, None) => {}
                _ => return Err(err("`precision` and `scale` apply to decimal columns only")),
            }
            if c.ty != ColumnType::Decimal && c.rounding != Rounding::Error {
                return Err(err("`rounding` applies to decimal columns only"));
            }
            if c.ty != ColumnType::Timestamp && (!c.formats.is_empty() || c.timezone.is_some()) {
                return Err(err(
                    "`formats` and `timezone` apply to timestamp columns only",
                ));
            }
            if let Some(z) = &c.timezone
                && z.parse::<chrono_tz::Tz>().is_err()
            {
                return Err(err(&format!("`{z}` is not an IANA time zone")));
            }
            if c.ty != ColumnType::Binary && c.encoding != BinaryEncoding::Base64 {
                return Err(err("`encoding` applies to binary columns only"));
            }
            for a in &c.aliases {
                if self.columns.iter().any(|o| &o.name == a)
                    || self.columns[..i].iter().any(|o| o.aliases.contains(a))
                {
                    return Err(err(&format!(
                        "alias `{a}` is already a column or another column's alias"
                    )));
                }
            }
            if !c.nullable && matches!(c.on_error(self.on_error), OnError::Null | OnError::Rescue) {
                return Err(err(
                    "`on_error = \"null\"` or `\"rescue\"` needs a nullable column (it is `nullable = false`)",
                ));
            }
        }
        Ok(())
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
        fields.extend(
            partition_columns
                .iter()
                .map(|p| Field::new(*p, DataType::Utf8, false)),
        );
        Arc::new(Schema::new(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(name: &str, text: &str) -> Result<Contract, ContractError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        Contract::load(&path)
    }

    #[test]
    fn toml_and_json_contracts_load() {
        let t = load_str(
            "a.toml",
            "[[columns]]\nname = \"id\"\ntype = \"int64\"\nnullable = false\n\n[[columns]]\nname = \"ts\"\ntype = \"timestamp\"\nunit = \"us\"\n",
        )
        .unwrap();
        assert_eq!(t.columns.len(), 2);
        assert_eq!(t.columns[1].unit, EpochUnit::Us);
        let j = load_str(
            "a.json",
            r#"{"columns": [{"name": "id", "type": "int32"}]}"#,
        )
        .unwrap();
        assert!(j.columns[0].nullable);
    }

    #[test]
    fn bad_contracts_are_rejected_with_the_column() {
        for (text, needle) in [
            (
                "[[columns]]\nname = \"id\"\ntype = \"uuid\"\n",
                "unknown variant",
            ),
            ("[[columns]]\nname = \"_x\"\ntype = \"int32\"\n", "reserved"),
            (
                "[[columns]]\nname = \"a\"\ntype = \"int32\"\n[[columns]]\nname = \"a\"\ntype = \"int32\"\n",
                "twice",
            ),
            ("columns = []\n", "at least one"),
            (
                "[[columns]]\nname = \"a\"\ntype = \"int32\"\nnullable = false\non_error = \"null\"\n",
                "needs a nullable column",
            ),
            (
                "[[columns]]\nname = \"a\"\ntype = \"int32\"\non_error = \"ignore\"\n",
                "unknown variant",
            ),
            (
                "[[columns]]\nname = \"a\"\ntype = \"decimal\"\n",
                "needs `precision`",
            ),
            (
                "[[columns]]\nname = \"a\"\ntype = \"decimal\"\nprecision = 4\nscale = 5\n",
                "between 0 and `precision`",
            ),
            (
                "[[columns]]\nname = \"a\"\ntype = \"int64\"\nscale = 2\n",
                "decimal columns only",
            ),
            (
                "[[columns]]\nname = \"a\"\ntype = \"timestamp\"\ntimezone = \"Mars/Olympus\"\n",
                "not an IANA time zone",
            ),
            (
                "[[columns]]\nname = \"a\"\ntype = \"string\"\nformats = [\"%Y\"]\n",
                "timestamp columns only",
            ),
            (
                "[[columns]]\nname = \"a\"\ntype = \"int32\"\ncolour = 1\n",
                "unknown field",
            ),
        ] {
            let err = load_str("c.toml", text).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn rescuing_contracts_get_a_rescued_data_column() {
        let plain = load_str("a.toml", "[[columns]]\nname = \"id\"\ntype = \"int64\"\n").unwrap();
        assert!(!plain.rescues());
        let r = load_str(
            "r.toml",
            "[drift]\nnew_column = \"rescue\"\n[[columns]]\nname = \"id\"\ntype = \"int64\"\n",
        )
        .unwrap();
        assert!(r.rescues());
        let s = r.table_schema(&["event_date"]);
        assert_eq!(s.field(9).name(), RESCUED_COLUMN);
        assert_eq!(s.field(10).name(), "event_date");
    }

    #[test]
    fn table_schema_has_metadata_and_partitions_last() {
        let c = load_str("a.toml", "[[columns]]\nname = \"id\"\ntype = \"int64\"\n").unwrap();
        let s = c.table_schema(&["event_date"]);
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names[0], "id");
        assert_eq!(&names[1..9], METADATA_COLUMNS);
        assert_eq!(names[9], "event_date");
    }
}
