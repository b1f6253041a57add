//! JSON values into typed cells. The rules are deliberately narrow: a value converts when no
//! information is lost (an integral float into an int, digits in a string into a number); anything
//! else is an error that names what was found.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::Value;

use super::OrderValue;
use crate::contract::{ColumnType, EpochUnit};
use crate::decode::json_kind;

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Str(String),
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    /// Days since the epoch.
    Date(i32),
    /// Microseconds since the epoch, UTC.
    Timestamp(i64),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CoerceError {
    #[error("expected {expected}, found {found} `{value}`")]
    Mismatch {
        expected: &'static str,
        found: &'static str,
        value: String,
    },
    #[error("{value} is out of range for {expected}")]
    OutOfRange {
        expected: &'static str,
        value: String,
    },
}

fn mismatch(expected: &'static str, v: &Value) -> CoerceError {
    let mut value = v.to_string();
    if value.len() > 80 {
        let cut = (0..=80)
            .rev()
            .find(|i| value.is_char_boundary(*i))
            .unwrap_or(0);
        value.truncate(cut);
        value.push('…');
    }
    CoerceError::Mismatch {
        expected,
        found: json_kind(v),
        value,
    }
}

pub fn coerce(ty: ColumnType, unit: EpochUnit, v: Value) -> Result<Cell, CoerceError> {
    if v.is_null() {
        return Ok(Cell::Null);
    }
    match ty {
        ColumnType::String => Ok(Cell::Str(match v {
            Value::String(s) => s,
            other => other.to_string(),
        })),
        ColumnType::Json => Ok(Cell::Str(match v {
            // Debezium's io.debezium.data.Json arrives as a string that already holds JSON text.
            Value::String(s) => s,
            other => other.to_string(),
        })),
        ColumnType::Bool => match &v {
            Value::Bool(b) => Ok(Cell::Bool(*b)),
            Value::Number(n) if n.as_i64() == Some(0) => Ok(Cell::Bool(false)),
            Value::Number(n) if n.as_i64() == Some(1) => Ok(Cell::Bool(true)),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "t" | "1" => Ok(Cell::Bool(true)),
                "false" | "f" | "0" => Ok(Cell::Bool(false)),
                _ => Err(mismatch("bool", &v)),
            },
            _ => Err(mismatch("bool", &v)),
        },
        ColumnType::Int32 => {
            let i = integer(&v, "int32")?;
            i32::try_from(i)
                .map(Cell::Int32)
                .map_err(|_| CoerceError::OutOfRange {
                    expected: "int32",
                    value: i.to_string(),
                })
        }
        ColumnType::Int64 => integer(&v, "int64").map(Cell::Int64),
        ColumnType::Float32 => float(&v, "float32").map(|f| Cell::Float32(f as f32)),
        ColumnType::Float64 => float(&v, "float64").map(Cell::Float64),
        ColumnType::Date => match &v {
            Value::Number(_) => {
                let days = integer(&v, "date")?;
                i32::try_from(days)
                    .map(Cell::Date)
                    .map_err(|_| CoerceError::OutOfRange {
                        expected: "date",
                        value: days.to_string(),
                    })
            }
            Value::String(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| Cell::Date(days_since_epoch(d)))
                .map_err(|_| mismatch("date (YYYY-MM-DD or days since epoch)", &v)),
            _ => Err(mismatch("date", &v)),
        },
        ColumnType::Timestamp => match &v {
            Value::Number(_) => {
                let raw = integer(&v, "timestamp")?;
                unit.to_micros(raw)
                    .map(Cell::Timestamp)
                    .ok_or_else(|| CoerceError::OutOfRange {
                        expected: "timestamp",
                        value: raw.to_string(),
                    })
            }
            Value::String(s) => parse_timestamp(s)
                .map(Cell::Timestamp)
                .ok_or_else(|| mismatch("timestamp (RFC 3339 or epoch number)", &v)),
            _ => Err(mismatch("timestamp", &v)),
        },
    }
}

fn integer(v: &Value, expected: &'static str) -> Result<i64, CoerceError> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
                _ => Err(mismatch(expected, v)),
            }
        }
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| mismatch(expected, v)),
        _ => Err(mismatch(expected, v)),
    }
}

fn float(v: &Value, expected: &'static str) -> Result<f64, CoerceError> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| mismatch(expected, v)),
        Value::String(s) => s.trim().parse::<f64>().map_err(|_| mismatch(expected, v)),
        _ => Err(mismatch(expected, v)),
    }
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    (d - epoch).num_days() as i32
}

/// RFC 3339 (Debezium ZonedTimestamp) or a zone-less `YYYY-MM-DD[ T]HH:MM:SS[.f]`, read as UTC.
fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    None
}

impl Cell {
    /// Append a stable text form, used to compare keys.
    pub(crate) fn write_key(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = match self {
            Cell::Null => write!(out, "\u{0}"),
            Cell::Str(s) => write!(out, "{s}"),
            Cell::Bool(b) => write!(out, "{b}"),
            Cell::Int32(i) => write!(out, "{i}"),
            Cell::Int64(i) => write!(out, "{i}"),
            Cell::Float32(f) => write!(out, "{f}"),
            Cell::Float64(f) => write!(out, "{f}"),
            Cell::Date(d) => write!(out, "{d}"),
            Cell::Timestamp(t) => write!(out, "{t}"),
        };
    }

    pub(crate) fn order_value(&self) -> OrderValue {
        match self {
            Cell::Null => OrderValue::Null,
            Cell::Int32(i) | Cell::Date(i) => OrderValue::Int(i64::from(*i)),
            Cell::Int64(i) | Cell::Timestamp(i) => OrderValue::Int(*i),
            Cell::Bool(b) => OrderValue::Int(i64::from(*b)),
            Cell::Str(s) => OrderValue::Text(s.clone()),
            // Floats are poor ordering columns; their bits keep the order for non-negative values.
            Cell::Float32(f) => OrderValue::Int(f64::from(*f).to_bits() as i64),
            Cell::Float64(f) => OrderValue::Int(f.to_bits() as i64),
        }
    }

    /// Rough in-memory size, for the buffer budget.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Cell::Str(s) => s.len() + 8,
            _ => 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(ty: ColumnType, v: Value) -> Result<Cell, CoerceError> {
        coerce(ty, EpochUnit::Ms, v)
    }

    #[test]
    fn lossless_conversions_succeed() {
        assert_eq!(c(ColumnType::Int64, json!(7)).unwrap(), Cell::Int64(7));
        assert_eq!(c(ColumnType::Int64, json!("42")).unwrap(), Cell::Int64(42));
        assert_eq!(c(ColumnType::Int32, json!(3.0)).unwrap(), Cell::Int32(3));
        assert_eq!(
            c(ColumnType::Float64, json!("1.5")).unwrap(),
            Cell::Float64(1.5)
        );
        assert_eq!(
            c(ColumnType::Bool, json!("true")).unwrap(),
            Cell::Bool(true)
        );
        assert_eq!(
            c(ColumnType::String, json!(12)).unwrap(),
            Cell::Str("12".into())
        );
        assert_eq!(
            c(ColumnType::Json, json!({"a": [1]})).unwrap(),
            Cell::Str(r#"{"a":[1]}"#.into())
        );
        assert_eq!(c(ColumnType::Date, json!(1)).unwrap(), Cell::Date(1));
        assert_eq!(
            c(ColumnType::Date, json!("1970-01-03")).unwrap(),
            Cell::Date(2)
        );
        assert_eq!(
            c(ColumnType::Timestamp, json!(1_000)).unwrap(),
            Cell::Timestamp(1_000_000)
        );
        assert_eq!(
            coerce(ColumnType::Timestamp, EpochUnit::Us, json!(5)).unwrap(),
            Cell::Timestamp(5)
        );
        assert_eq!(
            c(ColumnType::Timestamp, json!("1970-01-01T00:00:01Z")).unwrap(),
            Cell::Timestamp(1_000_000)
        );
        assert_eq!(
            c(ColumnType::Timestamp, json!("1970-01-01 00:00:02.5")).unwrap(),
            Cell::Timestamp(2_500_000)
        );
        assert_eq!(c(ColumnType::Int64, Value::Null).unwrap(), Cell::Null);
    }

    #[test]
    fn lossy_or_wrong_values_fail_with_what_was_found() {
        let e = c(ColumnType::Int64, json!("abc")).unwrap_err();
        assert_eq!(e.to_string(), "expected int64, found string `\"abc\"`");
        assert!(c(ColumnType::Int32, json!(1.5)).is_err());
        assert!(matches!(
            c(ColumnType::Int32, json!(1_i64 << 40)).unwrap_err(),
            CoerceError::OutOfRange { .. }
        ));
        assert!(c(ColumnType::Bool, json!("maybe")).is_err());
        assert!(c(ColumnType::Date, json!("yesterday")).is_err());
        assert!(c(ColumnType::Timestamp, json!([1])).is_err());
        assert!(c(ColumnType::Float64, json!({})).is_err());
    }
}
