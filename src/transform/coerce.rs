//! JSON values into typed cells. The rules are deliberately narrow: a value converts when no
//! information is lost (an integral float into an int, digits in a string into a number); anything
//! else is an error that names what was found.
//!
//! Over 600 lines on purpose: the conversion table of every (JSON kind, column type) pair reads best in
//! one place, where a reviewer can see that each pair is decided and how.

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone};
use compact_str::{CompactString, ToCompactString};
use serde_json::Value;

use super::OrderValue;
use crate::contract::{BinaryEncoding, Column, ColumnType, Rounding};
use crate::decode::json_kind;

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    /// Inline up to 24 bytes: most text cells (codes, names, ids) need no allocation of their own.
    Str(CompactString),
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    /// Days since the epoch.
    Date(i32),
    /// Microseconds since the epoch, UTC.
    Timestamp(i64),
    /// Unscaled value in the column's scale.
    Decimal(i128),
    Binary(Vec<u8>),
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

impl CoerceError {
    /// The same error, naming the input type as `kind` (for inputs handed on as JSON).
    pub(super) fn found(self, kind: &'static str) -> CoerceError {
        match self {
            CoerceError::Mismatch {
                expected, value, ..
            } => CoerceError::Mismatch {
                expected,
                found: kind,
                value,
            },
            other => other,
        }
    }
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

pub fn coerce(col: &Column, v: Value) -> Result<Cell, CoerceError> {
    if v.is_null() {
        return Ok(Cell::Null);
    }
    match col.ty {
        ColumnType::String => Ok(Cell::Str(match v {
            Value::String(s) => s.into(),
            other => other.to_compact_string(),
        })),
        ColumnType::Json => Ok(Cell::Str(match v {
            // Debezium's io.debezium.data.Json arrives as a string that already holds JSON text.
            Value::String(s) => s.into(),
            other => other.to_compact_string(),
        })),
        ColumnType::Bool => bool_of(&v),
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
        ColumnType::Date => date_of(&v),
        ColumnType::Timestamp => timestamp_of(col, &v),
        ColumnType::Decimal => decimal(col, &v).map(Cell::Decimal),
        ColumnType::Binary => binary_of(col, &v),
    }
}

fn bool_of(v: &Value) -> Result<Cell, CoerceError> {
    match v {
        Value::Bool(b) => Ok(Cell::Bool(*b)),
        Value::Number(n) if n.as_i64() == Some(0) => Ok(Cell::Bool(false)),
        Value::Number(n) if n.as_i64() == Some(1) => Ok(Cell::Bool(true)),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" => Ok(Cell::Bool(true)),
            "false" | "f" | "0" => Ok(Cell::Bool(false)),
            _ => Err(mismatch("bool", v)),
        },
        _ => Err(mismatch("bool", v)),
    }
}

fn date_of(v: &Value) -> Result<Cell, CoerceError> {
    match v {
        Value::Number(_) => {
            let days = integer(v, "date")?;
            i32::try_from(days)
                .map(Cell::Date)
                .map_err(|_| CoerceError::OutOfRange {
                    expected: "date",
                    value: days.to_string(),
                })
        }
        Value::String(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map(|d| Cell::Date(days_since_epoch(d)))
            .map_err(|_| mismatch("date (YYYY-MM-DD or days since epoch)", v)),
        _ => Err(mismatch("date", v)),
    }
}

fn timestamp_of(col: &Column, v: &Value) -> Result<Cell, CoerceError> {
    match v {
        Value::Number(_) => {
            let raw = integer(v, "timestamp")?;
            col.unit
                .to_micros(raw)
                .map(Cell::Timestamp)
                .ok_or_else(|| CoerceError::OutOfRange {
                    expected: "timestamp",
                    value: raw.to_string(),
                })
        }
        Value::String(s) => parse_timestamp(s, col)
            .map(Cell::Timestamp)
            .ok_or_else(|| mismatch("timestamp (RFC 3339, a listed format or epoch number)", v)),
        _ => Err(mismatch("timestamp", v)),
    }
}

fn binary_of(col: &Column, v: &Value) -> Result<Cell, CoerceError> {
    let Value::String(s) = v else {
        return Err(mismatch("binary", v));
    };
    match col.encoding {
        BinaryEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| mismatch("binary (base64)", v)),
        BinaryEncoding::Hex => hex(s).ok_or_else(|| mismatch("binary (hex)", v)),
        BinaryEncoding::Utf8 => Ok(s.as_bytes().to_vec()),
    }
    .map(Cell::Binary)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The unscaled value of `v` in the column's scale, within its precision.
fn decimal(col: &Column, v: &Value) -> Result<i128, CoerceError> {
    let scale = i32::from(col.scale.unwrap_or(0));
    let expected = "decimal";
    let (unscaled, from_scale) = match v {
        // serde_json keeps non-integers as f64: its shortest text is the number as it was written
        // for up to 15-17 significant digits. Exact decimals travel as text or Debezium bytes.
        Value::Number(n) => match decimal_text(&n.to_string()) {
            Some(Some(d)) => d,
            Some(None) => return Err(out_of_range(v)),
            None => return Err(mismatch(expected, v)),
        },
        Value::String(s) => match decimal_text(s) {
            Some(Some(d)) => d,
            // Numeric text that does not fit: never reread as base64.
            Some(None) => return Err(out_of_range(v)),
            // Debezium `Decimal`: the unscaled two's-complement integer, big-endian, base64.
            None => (
                unscaled_bytes(s).ok_or_else(|| mismatch("decimal (number, text or base64)", v))?,
                scale,
            ),
        },
        // Debezium `VariableScaleDecimal`.
        Value::Object(o) => {
            let s = o.get("scale").and_then(Value::as_i64);
            let value = o.get("value").and_then(Value::as_str);
            match (s, value.and_then(unscaled_bytes)) {
                (Some(s), Some(u)) => (u, s as i32),
                _ => return Err(mismatch("decimal ({scale, value})", v)),
            }
        }
        _ => return Err(mismatch(expected, v)),
    };
    fit_decimal(col, unscaled, from_scale).ok_or_else(|| out_of_range(v))
}

/// `unscaled × 10^-from_scale` in the column's scale and within its precision, rounded by its rule.
pub(super) fn fit_decimal(col: &Column, unscaled: i128, from_scale: i32) -> Option<i128> {
    let precision = u32::from(col.precision.unwrap_or(38));
    let scale = i32::from(col.scale.unwrap_or(0));
    let rescaled = rescale(unscaled, from_scale, scale, col.rounding)?;
    (rescaled.unsigned_abs() < 10u128.pow(precision)).then_some(rescaled)
}

fn out_of_range(v: &Value) -> CoerceError {
    CoerceError::OutOfRange {
        expected: "the column's decimal precision and scale",
        value: v.to_string().chars().take(80).collect(),
    }
}

/// `[-+]digits[.digits][e[-+]digits]` as `Some(Some((unscaled, scale)))`; `Some(None)` when it is such
/// a number but does not fit 38 digits; `None` when the text is not a number at all.
fn decimal_text(s: &str) -> Option<Option<(i128, i32)>> {
    let s = s.trim();
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (neg, digits) = match mantissa.as_bytes().first()? {
        b'-' => (true, &mantissa[1..]),
        b'+' => (false, &mantissa[1..]),
        _ => (false, mantissa),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some(digits_value(int, frac, exp).map(|(u, scale)| (if neg { -u } else { u }, scale)))
}

fn digits_value(int: &str, frac: &str, exp: i32) -> Option<(i128, i32)> {
    let mut unscaled: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        unscaled = unscaled
            .checked_mul(10)?
            .checked_add(i128::from(b - b'0'))?;
    }
    let mut scale = i32::try_from(frac.len()).ok()?.checked_sub(exp)?;
    if scale < 0 {
        unscaled = unscaled.checked_mul(10i128.checked_pow(scale.unsigned_abs())?)?;
        scale = 0;
    }
    Some((unscaled, scale))
}

/// A base64 big-endian two's-complement integer of at most 16 bytes.
fn unscaled_bytes(s: &str) -> Option<i128> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    crate::decode::avro::unscaled(&bytes)
}

/// `unscaled × 10^-from` in scale `to`; `None` on overflow or when digits would be lost under
/// `Rounding::Error`.
fn rescale(unscaled: i128, from: i32, to: i32, rounding: Rounding) -> Option<i128> {
    if from <= to {
        return unscaled.checked_mul(10i128.checked_pow((to - from) as u32)?);
    }
    let divisor = 10i128.checked_pow((from - to) as u32)?;
    let (q, r) = (unscaled / divisor, unscaled % divisor);
    if r == 0 {
        return Some(q);
    }
    let away = q + unscaled.signum();
    let twice = r.unsigned_abs() * 2;
    let half = divisor.unsigned_abs();
    match rounding {
        Rounding::Error => None,
        Rounding::Down => Some(q),
        Rounding::HalfUp => Some(if twice >= half { away } else { q }),
        Rounding::HalfEven => Some(if twice > half || (twice == half && q % 2 != 0) {
            away
        } else {
            q
        }),
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

/// RFC 3339 (Debezium ZonedTimestamp), then the column's `formats`, then a zone-less
/// `YYYY-MM-DD[ T]HH:MM:SS[.f]`. Text without an offset is read in the column's `timezone` (UTC by
/// default); a local time that a DST change skips is an error, one it repeats takes the earlier instant.
fn parse_timestamp(s: &str, col: &Column) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    let defaults = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"];
    let formats = col.formats.iter().map(String::as_str).chain(defaults);
    for fmt in formats {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.timestamp_micros());
        }
        let naive = NaiveDateTime::parse_from_str(s, fmt).ok().or_else(|| {
            NaiveDate::parse_from_str(s, fmt)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        });
        if let Some(t) = naive {
            return col
                .tz()
                .from_local_datetime(&t)
                .earliest()
                .map(|t| t.timestamp_micros());
        }
    }
    None
}

/// Delta's date and timestamp range: 0001-01-01 to 9999-12-31 (days and µs since the epoch).
const MIN_DAYS: i32 = -719_162;
const MAX_DAYS: i32 = 2_932_896;
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

impl Cell {
    /// The cell, if it is a date or timestamp Delta can store (years 1 to 9999); readers such as Spark
    /// refuse others, so they are errors here rather than rows nobody can read.
    pub(crate) fn in_delta_range(self) -> Result<Cell, CoerceError> {
        let out_of_range = |value: String, expected| CoerceError::OutOfRange { expected, value };
        match self {
            Cell::Date(d) if !(MIN_DAYS..=MAX_DAYS).contains(&d) => Err(out_of_range(
                format!("{d} days since the epoch"),
                "a date in years 1 to 9999",
            )),
            Cell::Timestamp(us) if !(MIN_MICROS..=MAX_MICROS).contains(&us) => Err(out_of_range(
                format!("{us} µs since the epoch"),
                "a timestamp in years 1 to 9999",
            )),
            cell => Ok(cell),
        }
    }

    /// The cell of row `i` of a table column (the Arrow types [`Column::arrow_type`] gives); `None` for
    /// other types.
    pub fn from_arrow(array: &dyn arrow::array::Array, i: usize) -> Option<Cell> {
        use arrow::array::{AsArray, types};
        use arrow::datatypes::DataType as T;
        if array.is_null(i) {
            return Some(Cell::Null);
        }
        Some(match array.data_type() {
            T::Utf8 => Cell::Str(array.as_string::<i32>().value(i).into()),
            T::Boolean => Cell::Bool(array.as_boolean().value(i)),
            T::Int32 => Cell::Int32(array.as_primitive::<types::Int32Type>().value(i)),
            T::Int64 => Cell::Int64(array.as_primitive::<types::Int64Type>().value(i)),
            T::Float32 => Cell::Float32(array.as_primitive::<types::Float32Type>().value(i)),
            T::Float64 => Cell::Float64(array.as_primitive::<types::Float64Type>().value(i)),
            T::Date32 => Cell::Date(array.as_primitive::<types::Date32Type>().value(i)),
            T::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => Cell::Timestamp(
                array
                    .as_primitive::<types::TimestampMicrosecondType>()
                    .value(i),
            ),
            T::Decimal128(..) => {
                Cell::Decimal(array.as_primitive::<types::Decimal128Type>().value(i))
            }
            T::Binary => Cell::Binary(array.as_binary::<i32>().value(i).to_vec()),
            _ => return None,
        })
    }

    /// Append a stable text form, used to compare keys.
    pub(crate) fn write_key(&self, out: &mut impl std::fmt::Write) {
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
            Cell::Decimal(d) => write!(out, "{d}"),
            Cell::Binary(b) => b.iter().try_for_each(|x| write!(out, "{x:02x}")),
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
            Cell::Decimal(d) => OrderValue::Int(i64::try_from(*d).unwrap_or(if *d < 0 {
                i64::MIN
            } else {
                i64::MAX
            })),
            Cell::Binary(b) => OrderValue::Text(b.iter().map(|x| format!("{x:02x}")).collect()),
        }
    }

    /// Rough in-memory size, for the buffer budget.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Cell::Str(s) => s.len() + 8,
            Cell::Binary(b) => b.len() + 8,
            Cell::Decimal(_) => 16,
            _ => 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(ty: ColumnType, v: Value) -> Result<Cell, CoerceError> {
        coerce(&Column::new("c", ty), v)
    }

    fn dec(p: u8, s: i8, rounding: Rounding, v: Value) -> Result<Cell, CoerceError> {
        let mut col = Column::new("d", ColumnType::Decimal);
        (col.precision, col.scale, col.rounding) = (Some(p), Some(s), rounding);
        coerce(&col, v)
    }

    #[test]
    fn dates_and_timestamps_stay_in_years_1_to_9999() {
        let ok = |c: Cell| c.clone().in_delta_range() == Ok(c);
        assert!(ok(Cell::Date(MIN_DAYS)) && ok(Cell::Date(MAX_DAYS)));
        assert!(ok(Cell::Timestamp(MIN_MICROS)) && ok(Cell::Timestamp(MAX_MICROS)));
        assert!(Cell::Date(MAX_DAYS + 1).in_delta_range().is_err());
        assert!(Cell::Timestamp(MIN_MICROS - 1).in_delta_range().is_err());
        // 10000-01-01 as epoch milliseconds, and year 0 as text.
        let ts = c(ColumnType::Timestamp, json!(253_402_300_800_000i64)).unwrap();
        assert!(ts.in_delta_range().is_err());
        let mut day = Column::new("d", ColumnType::Date);
        day.nullable = true;
        let year0 = coerce(&day, json!("0000-06-01")).unwrap();
        assert!(year0.in_delta_range().is_err());
        assert_eq!(
            MIN_DAYS,
            (NaiveDate::from_ymd_opt(1, 1, 1).unwrap()
                - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days() as i32
        );
        assert_eq!(
            MAX_DAYS,
            (NaiveDate::from_ymd_opt(9999, 12, 31).unwrap()
                - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days() as i32
        );
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
        let mut micros = Column::new("t", ColumnType::Timestamp);
        micros.unit = crate::contract::EpochUnit::Us;
        assert_eq!(coerce(&micros, json!(5)).unwrap(), Cell::Timestamp(5));
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

    #[test]
    fn decimals_from_numbers_text_and_debezium_bytes() {
        use Rounding::*;
        assert_eq!(
            dec(8, 3, Error, json!(12345.11)).unwrap(),
            Cell::Decimal(12_345_110)
        );
        assert_eq!(
            dec(8, 3, Error, json!("-0.5")).unwrap(),
            Cell::Decimal(-500)
        );
        assert!(
            dec(8, 0, Error, json!(2e10))
                .unwrap_err()
                .to_string()
                .contains("precision")
        );
        assert_eq!(
            dec(12, 0, Error, json!(2e10)).unwrap(),
            Cell::Decimal(20_000_000_000)
        );
        // Debezium Decimal: 0x04D2 = 1234 unscaled, in the column's scale 2 = 12.34.
        assert_eq!(
            dec(10, 2, Error, json!("BNI=")).unwrap(),
            Cell::Decimal(1234)
        );
        // Negative two's complement: 0xFB2E = -1234.
        assert_eq!(
            dec(10, 2, Error, json!("+y4=")).unwrap(),
            Cell::Decimal(-1234)
        );
        // VariableScaleDecimal {scale 3, 1234} = 1.234 -> scale 4.
        assert_eq!(
            dec(10, 4, Error, json!({"scale": 3, "value": "BNI="})).unwrap(),
            Cell::Decimal(12340)
        );
        // Digits beyond the scale: refused unless a rounding mode is set.
        assert!(dec(10, 1, Error, json!("1.25")).is_err());
        assert_eq!(
            dec(10, 1, HalfEven, json!("1.25")).unwrap(),
            Cell::Decimal(12)
        );
        assert_eq!(
            dec(10, 1, HalfEven, json!("1.35")).unwrap(),
            Cell::Decimal(14)
        );
        assert_eq!(
            dec(10, 1, HalfUp, json!("1.25")).unwrap(),
            Cell::Decimal(13)
        );
        assert_eq!(
            dec(10, 1, HalfUp, json!("-1.25")).unwrap(),
            Cell::Decimal(-13)
        );
        assert_eq!(
            dec(10, 1, Down, json!("-1.29")).unwrap(),
            Cell::Decimal(-12)
        );
        assert!(
            dec(38, 0, Error, json!("1e40")).is_err(),
            "overflow is an error, not a wrap"
        );
        assert!(dec(10, 2, Error, json!("1,5")).is_err());
        assert!(dec(10, 2, Error, json!(true)).is_err());
    }

    #[test]
    fn binary_and_zoned_timestamps() {
        assert_eq!(
            c(ColumnType::Binary, json!("Ynl0ZXM=")).unwrap(),
            Cell::Binary(b"bytes".to_vec())
        );
        assert!(c(ColumnType::Binary, json!("not base64!")).is_err());
        let mut hex = Column::new("h", ColumnType::Binary);
        hex.encoding = BinaryEncoding::Hex;
        assert_eq!(
            coerce(&hex, json!("0x00ff")).unwrap(),
            Cell::Binary(vec![0, 255])
        );
        let mut berlin = Column::new("t", ColumnType::Timestamp);
        berlin.formats = vec!["%d.%m.%Y %H:%M".into(), "%d.%m.%Y".into()];
        berlin.timezone = Some("Europe/Berlin".into());
        // 1 Jan 1970 01:00 in Berlin (UTC+1) is the epoch.
        assert_eq!(
            coerce(&berlin, json!("01.01.1970 01:00")).unwrap(),
            Cell::Timestamp(0)
        );
        assert_eq!(
            coerce(&berlin, json!("02.01.1970")).unwrap(),
            Cell::Timestamp(82_800_000_000)
        );
        // 2024-03-31 02:30 does not exist in Berlin (clocks jump from 02:00 to 03:00).
        assert!(coerce(&berlin, json!("31.03.2024 02:30")).is_err());
        // An explicit offset wins over the column's zone.
        assert_eq!(
            coerce(&berlin, json!("1970-01-01T00:00:00Z")).unwrap(),
            Cell::Timestamp(0)
        );
        assert!(coerce(&berlin, json!("0000-00-00 00:00")).is_err());
    }
}
