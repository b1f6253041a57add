//! One column of a contract: its type (and how values of other kinds are read into it: rounding,
//! binary encodings, epoch units, text formats), nullability, aliases and its error rule.

use arrow::datatypes::{DataType, TimeUnit};
use serde::Deserialize;

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
