//! What the mapper needs of an incoming field value, for JSON and for Avro: its type for drift reports
//! and evolution, a JSON form for rescued data, and its coercion into a column's cell. Avro's typed
//! values convert directly; text and numbers that need the column's rules (formats, epoch unit, binary
//! encoding) take the same path as JSON, so both formats follow one set of rules.

use serde_json::Value;

use super::coerce::{self, Cell, CoerceError, fit_decimal};
use super::unavailable::Placeholder;
use crate::contract::{Column, ColumnType};
use crate::decode::{AvroField, JsonField};

pub(super) trait Incoming: Clone {
    fn is_null(&self) -> bool;
    /// The input type, in the format's own terms.
    fn kind(&self) -> &'static str;
    /// The column type a new column for this value gets (with a decimal's precision and scale);
    /// `None` for null, which says nothing of the type.
    fn infer(&self) -> Option<(ColumnType, Option<(u8, i8)>)>;
    fn into_json(self) -> Value;
    fn coerce(self, col: &Column) -> Result<Cell, CoerceError>;
    /// The wider column type this value needs, when it is a widening of `col`'s (int32→int64,
    /// float32→float64, date→timestamp, decimal precision up at the same scale); `None` when the column
    /// takes it as it is or the value is of another type altogether.
    fn widening(&self, col: &Column) -> Option<(ColumnType, Option<(u8, i8)>)>;
    /// Whether this is the source's placeholder for a value it did not deliver.
    fn is_placeholder(&self, p: &Placeholder) -> bool;
}

impl Incoming for JsonField<'_> {
    fn is_null(&self) -> bool {
        matches!(self, JsonField::Null)
    }

    fn kind(&self) -> &'static str {
        JsonField::kind(self)
    }

    fn infer(&self) -> Option<(ColumnType, Option<(u8, i8)>)> {
        ColumnType::infer(&self.clone().into_json()).map(|t| (t, None))
    }

    fn into_json(self) -> Value {
        JsonField::into_json(self)
    }

    /// Text into a text column keeps its (borrowed) string; everything else follows the JSON rules,
    /// which for scalars other than text costs no allocation.
    fn coerce(self, col: &Column) -> Result<Cell, CoerceError> {
        match (col.ty, self) {
            (ColumnType::String | ColumnType::Json, JsonField::Str(s)) => Ok(Cell::Str(s.into())),
            (_, other) => coerce::coerce(col, other.into_json()),
        }
    }

    /// JSON has no types beyond its values: an integer beyond int32 in an int32 column.
    fn widening(&self, col: &Column) -> Option<(ColumnType, Option<(u8, i8)>)> {
        let n = self.as_i64()?;
        (col.ty == ColumnType::Int32 && i32::try_from(n).is_err())
            .then_some((ColumnType::Int64, None))
    }

    fn is_placeholder(&self, p: &Placeholder) -> bool {
        match self {
            JsonField::Str(s) => p.is_text(s),
            JsonField::Nested(v) => p.is_json(v),
            _ => false,
        }
    }
}

impl Incoming for AvroField {
    fn is_null(&self) -> bool {
        matches!(self, AvroField::Null)
    }

    fn kind(&self) -> &'static str {
        AvroField::kind(self)
    }

    fn infer(&self) -> Option<(ColumnType, Option<(u8, i8)>)> {
        use AvroField as A;
        Some(match self {
            A::Null => return None,
            A::Boolean(_) => (ColumnType::Bool, None),
            A::Int(_) => (ColumnType::Int32, None),
            A::Long(_) | A::Time(_) => (ColumnType::Int64, None),
            A::Float(_) => (ColumnType::Float32, None),
            A::Double(_) => (ColumnType::Float64, None),
            A::String(_) => (ColumnType::String, None),
            A::Bytes(_) => (ColumnType::Binary, None),
            A::Decimal {
                scale,
                precision: Some(p),
                ..
            } => match i8::try_from(*scale) {
                Ok(s) if *p <= 38 => (ColumnType::Decimal, Some((*p, s))),
                _ => (ColumnType::String, None),
            },
            // A variable scale has no one column type that holds every value exactly: keep the text.
            A::Decimal {
                precision: None, ..
            } => (ColumnType::String, None),
            A::Date(_) => (ColumnType::Date, None),
            A::Timestamp(_) => (ColumnType::Timestamp, None),
            A::Nested(_) => (ColumnType::Json, None),
        })
    }

    fn into_json(self) -> Value {
        self.to_json()
    }

    /// The writer's type decides, whatever the value: a `long` is a widening of an int32 column even
    /// when this value would fit.
    fn widening(&self, col: &Column) -> Option<(ColumnType, Option<(u8, i8)>)> {
        use AvroField as A;
        match (col.ty, self) {
            (ColumnType::Int32, A::Long(_)) => Some((ColumnType::Int64, None)),
            (ColumnType::Float32, A::Double(_)) => Some((ColumnType::Float64, None)),
            (ColumnType::Date, A::Timestamp(_)) => Some((ColumnType::Timestamp, None)),
            (
                ColumnType::Decimal,
                A::Decimal {
                    scale,
                    precision: Some(p),
                    ..
                },
            ) if i32::from(col.scale.unwrap_or(0)) == *scale
                && *p > col.precision.unwrap_or(38)
                && *p <= 38 =>
            {
                Some((ColumnType::Decimal, Some((*p, col.scale.unwrap_or(0)))))
            }
            _ => None,
        }
    }

    fn is_placeholder(&self, p: &Placeholder) -> bool {
        match self {
            AvroField::String(s) => p.is_text(s),
            AvroField::Bytes(b) => p.is_bytes(b),
            AvroField::Nested(v) => p.is_json(v),
            _ => false,
        }
    }

    fn coerce(self, col: &Column) -> Result<Cell, CoerceError> {
        use AvroField as A;
        match (col.ty, self) {
            (_, A::Null) => Ok(Cell::Null),
            (ColumnType::String | ColumnType::Json, A::String(s)) => Ok(Cell::Str(s.into())),
            // Other values as their JSON text, by the JSON rules (`other` is not null here).
            (ColumnType::String | ColumnType::Json, other) => coerce::coerce(col, other.to_json()),
            (ColumnType::Bool, A::Boolean(b)) => Ok(Cell::Bool(b)),
            (ColumnType::Int32, A::Int(i)) => Ok(Cell::Int32(i)),
            (ColumnType::Int32, A::Long(i)) => {
                i32::try_from(i)
                    .map(Cell::Int32)
                    .map_err(|_| CoerceError::OutOfRange {
                        expected: "int32",
                        value: i.to_string(),
                    })
            }
            (ColumnType::Int64, A::Int(i)) => Ok(Cell::Int64(i64::from(i))),
            (ColumnType::Int64, A::Long(i)) => Ok(Cell::Int64(i)),
            (ColumnType::Float32, A::Float(f)) => Ok(Cell::Float32(f)),
            (ColumnType::Float64, A::Float(f)) => Ok(Cell::Float64(f64::from(f))),
            (ColumnType::Float64, A::Double(f)) => Ok(Cell::Float64(f)),
            // Debezium's io.debezium.time.Date is an int of days.
            (ColumnType::Date, A::Date(d) | A::Int(d)) => Ok(Cell::Date(d)),
            (ColumnType::Timestamp, A::Timestamp(us)) => Ok(Cell::Timestamp(us)),
            (ColumnType::Timestamp, A::Date(d)) => {
                Ok(Cell::Timestamp(i64::from(d) * 86_400_000_000))
            }
            (
                ColumnType::Decimal,
                A::Decimal {
                    unscaled, scale, ..
                },
            ) => fit_decimal(col, unscaled, scale)
                .map(Cell::Decimal)
                .ok_or_else(|| {
                    decimal_out_of_range(A::Decimal {
                        unscaled,
                        scale,
                        precision: None,
                    })
                }),
            // Connect's Decimal without the Avro logical type: the unscaled bytes in the column's scale.
            (ColumnType::Decimal, A::Bytes(b)) => {
                let scale = i32::from(col.scale.unwrap_or(0));
                match crate::decode::avro::unscaled(&b) {
                    Some(u) => fit_decimal(col, u, scale)
                        .map(Cell::Decimal)
                        .ok_or_else(|| decimal_out_of_range(A::Bytes(b))),
                    None => Err(decimal_out_of_range(A::Bytes(b))),
                }
            }
            (ColumnType::Binary, A::Bytes(b)) => Ok(Cell::Binary(b)),
            (_, other) => {
                let kind = other.kind();
                coerce::coerce(col, other.to_json()).map_err(|e| e.found(kind))
            }
        }
    }
}

fn decimal_out_of_range(v: AvroField) -> CoerceError {
    CoerceError::OutOfRange {
        expected: "the column's decimal precision and scale",
        value: v.to_json().to_string().chars().take(80).collect(),
    }
}
