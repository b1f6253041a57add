//! The JSON formats, read in one pass straight into a row's fields: no JSON tree for the envelope,
//! field names and text borrowed from the message (unless they carry escapes), `source` reduced to
//! the four fields bronze keeps while it is read, and `before` only skipped over unless the event is a
//! delete. Building a `serde_json::Value` tree of every envelope and copying `after` out of it was
//! most of the decoding cost (allocations and ordered-map inserts per field).

use std::borrow::Cow;
use std::fmt;

use compact_str::{CompactString, ToCompactString, format_compact};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::{Change, DecodeError, Decoded, Fields, Op, Skip};
use crate::config::Format;

/// One field value of a JSON row; text borrows from the message where it can.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonField<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    /// Arrays and objects, as a JSON tree (json columns, rescued fields, Debezium's
    /// `VariableScaleDecimal`).
    Nested(Value),
}

/// A JSON row's fields, in message order.
pub type JsonRow<'a> = Vec<(Cow<'a, str>, JsonField<'a>)>;

impl JsonField<'_> {
    pub fn into_json(self) -> Value {
        match self {
            JsonField::Null => Value::Null,
            JsonField::Bool(b) => Value::Bool(b),
            JsonField::Number(n) => Value::Number(n),
            JsonField::Str(s) => Value::String(s.into_owned()),
            JsonField::Nested(v) => v,
        }
    }

    /// The JSON kind, as error messages name it.
    pub fn kind(&self) -> &'static str {
        match self {
            JsonField::Null => "null",
            JsonField::Bool(_) => "boolean",
            JsonField::Number(_) => "number",
            JsonField::Str(_) => "string",
            JsonField::Nested(v) => super::json_kind(v),
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            JsonField::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            JsonField::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A scalar as text: strings as they are, anything else as its JSON.
    fn into_text(self) -> CompactString {
        match self {
            JsonField::Str(s) => s.into(),
            JsonField::Number(n) => n.to_compact_string(),
            other => other.into_json().to_compact_string(),
        }
    }
}

impl From<Value> for JsonField<'static> {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => JsonField::Null,
            Value::Bool(b) => JsonField::Bool(b),
            Value::Number(n) => JsonField::Number(n),
            Value::String(s) => JsonField::Str(Cow::Owned(s)),
            nested => JsonField::Nested(nested),
        }
    }
}

/// The fields of a parsed JSON object, as a row.
pub fn row_from_map(map: Map<String, Value>) -> JsonRow<'static> {
    map.into_iter()
        .map(|(k, v)| (Cow::Owned(k), JsonField::from(v)))
        .collect()
}

/// Decode one JSON message value (`json` and `debezium-json`).
pub fn decode(format: Format, value: Option<&[u8]>) -> Result<Decoded<'_>, DecodeError> {
    let Some(bytes) = value else {
        return Ok(Decoded::Skip(Skip::Tombstone));
    };
    // Checked once up front, so string fields need no check of their own (and skipped ones are held to
    // it too).
    let text = std::str::from_utf8(bytes).map_err(DecodeError::Utf8)?;
    if format != Format::DebeziumJson {
        return match serde_json::from_str::<Slot>(text)? {
            Slot::Row(row) => Ok(Decoded::Change(Change {
                op: Op::Create,
                row: Some(Fields::Json(row)),
                source_ts_ms: None,
                source_pos: None,
            })),
            Slot::Null => Err(DecodeError::NotAnObject("null")),
            Slot::Other(kind) => Err(DecodeError::NotAnObject(kind)),
        };
    }
    match serde_json::from_str::<Top>(text)? {
        // A wrapped null payload is how the legacy JsonConverter writes a tombstone.
        Top::Null => Ok(Decoded::Skip(Skip::Tombstone)),
        Top::Other(kind) => Err(DecodeError::NotAnObject(kind)),
        Top::Envelope(envelope) => envelope.into_change(),
    }
}

/// Decode a message key into its fields (Debezium keys may be wrapped too). `None` for keys that are
/// not JSON objects; such keys simply contribute nothing.
pub fn decode_key(key: &[u8]) -> Option<JsonRow<'static>> {
    let parsed: Value = serde_json::from_slice(key).ok()?;
    let parsed = match parsed {
        Value::Object(mut m)
            if m.len() == 2 && m.contains_key("schema") && m.contains_key("payload") =>
        {
            m.remove("payload").unwrap_or(Value::Null)
        }
        other => other,
    };
    match parsed {
        Value::Object(m) => Some(row_from_map(m)),
        _ => None,
    }
}

/// A message value's top level under `debezium-json`.
enum Top<'a> {
    Envelope(Box<Envelope<'a>>),
    Null,
    Other(&'static str),
}

/// The envelope fields bronze reads; every other field is skipped without being built.
#[derive(Default)]
struct Envelope<'a> {
    op: Option<JsonField<'a>>,
    after: Option<Slot<'a>>,
    /// Read only for deletes: `op` usually comes after it.
    before: Option<&'a RawValue>,
    source: Option<Source<'a>>,
    ts_ms: Option<JsonField<'a>>,
    /// The Kafka Connect JsonConverter wrapper `{"schema": ..., "payload": ...}`: a `schema` field, the
    /// payload, and whether any field but these two was there.
    schema: bool,
    payload: Option<Top<'a>>,
    other_fields: bool,
}

/// The `source` fields that give the change's time and log position.
#[derive(Default)]
struct Source<'a> {
    ts_ms: Option<JsonField<'a>>,
    lsn: Option<JsonField<'a>>,
    file: Option<JsonField<'a>>,
    pos: Option<JsonField<'a>>,
    row: Option<JsonField<'a>>,
}

/// What a row field (`after`, `before`, a plain JSON message) held.
enum Slot<'a> {
    Row(JsonRow<'a>),
    Null,
    Other(&'static str),
}

impl<'a> Envelope<'a> {
    fn into_change(self) -> Result<Decoded<'a>, DecodeError> {
        // Only `schema` and `payload`: the wrapper, whose envelope is the payload.
        if self.schema
            && !self.other_fields
            && let Some(payload) = self.payload
        {
            return match payload {
                Top::Envelope(inner) => inner.into_change(),
                Top::Null => Ok(Decoded::Skip(Skip::Tombstone)),
                Top::Other(kind) => Err(DecodeError::NotAnObject(kind)),
            };
        }
        let op_str = self
            .op
            .as_ref()
            .and_then(JsonField::as_str)
            .ok_or(DecodeError::MissingOp)?;
        if op_str == "m" {
            return Ok(Decoded::Skip(Skip::LogicalMessage));
        }
        let op = Op::parse(op_str).ok_or_else(|| DecodeError::UnknownOp(op_str.to_string()))?;
        let source = self.source.unwrap_or_default();
        let source_ts_ms = source
            .ts_ms
            .as_ref()
            .and_then(JsonField::as_i64)
            .or_else(|| self.ts_ms.as_ref().and_then(JsonField::as_i64));
        let source_pos = source.position();
        let row = match op {
            Op::Truncate => None,
            Op::Delete => {
                let before = match self.before {
                    Some(raw) => Some(serde_json::from_str::<Slot>(raw.get())?),
                    None => None,
                };
                Some(row_of(before, "before", op)?)
            }
            Op::Create | Op::Update | Op::Read => Some(row_of(self.after, "after", op)?),
        };
        Ok(Decoded::Change(Change {
            op,
            row,
            source_ts_ms,
            source_pos,
        }))
    }
}

fn row_of<'a>(
    slot: Option<Slot<'a>>,
    field: &'static str,
    op: Op,
) -> Result<Fields<'a>, DecodeError> {
    match slot {
        Some(Slot::Row(row)) => Ok(Fields::Json(row)),
        // A delete without `before` (e.g. REPLICA IDENTITY NOTHING) still carries its key in the message key.
        Some(Slot::Null) | None if op == Op::Delete => Ok(Fields::Json(Vec::new())),
        Some(Slot::Null) | None => Err(DecodeError::MissingRow {
            op: op.as_str(),
            field,
        }),
        Some(Slot::Other(found)) => Err(DecodeError::RowNotObject { field, found }),
    }
}

impl<'a> Source<'a> {
    /// Postgres: `lsn`; MySQL/MariaDB: `file:pos` (plus `:row` for multi-row events).
    fn position(self) -> Option<CompactString> {
        let present = |v: Option<JsonField<'a>>| v.filter(|v| *v != JsonField::Null);
        if let Some(lsn) = present(self.lsn) {
            return Some(lsn.into_text());
        }
        let file = self.file?;
        let file = file.as_str()?;
        let pos = present(self.pos)?;
        let mut s = format_compact!("{file}:{}", pos.into_text());
        if let Some(row) = self
            .row
            .as_ref()
            .and_then(JsonField::as_i64)
            .filter(|r| *r > 0)
        {
            s.push_str(&format_compact!(":{row}"));
        }
        Some(s)
    }
}

/// An object key, borrowed unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for JsonField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = JsonField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(JsonField::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(JsonField::Number(n.into()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(JsonField::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                // As serde_json's own tree does: a float JSON cannot hold is null.
                Ok(Number::from_f64(n).map_or(JsonField::Null, JsonField::Number))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(JsonField::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(JsonField::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(JsonField::Str(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(JsonField::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(JsonField::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Value::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(JsonField::Nested)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Value::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(JsonField::Nested)
            }
        }
        d.deserialize_any(FieldVisitor)
    }
}

/// Visits anything that is not an object as its kind (consuming it): the envelope's and rows' shape
/// errors, and a `source` that is no object.
macro_rules! other_kinds {
    ($other:expr, $null:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other("boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other("number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other("number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other("number"))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other("string"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($null)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($other("array"))
        }
    };
}

impl<'de> Deserialize<'de> for Slot<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SlotVisitor;
        impl<'de> Visitor<'de> for SlotVisitor {
            type Value = Slot<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a row object")
            }
            other_kinds!(Slot::Other, Slot::Null);
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut row = Vec::with_capacity(map.size_hint().unwrap_or(24));
                while let Some(Key(k)) = map.next_key()? {
                    row.push((k, map.next_value()?));
                }
                Ok(Slot::Row(row))
            }
        }
        d.deserialize_any(SlotVisitor)
    }
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Debezium envelope")
            }
            other_kinds!(Top::Other, Top::Null);
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut e = Envelope::default();
                while let Some(Key(k)) = map.next_key()? {
                    match k.as_ref() {
                        "op" => e.op = Some(map.next_value()?),
                        "after" => e.after = Some(map.next_value()?),
                        "before" => e.before = Some(map.next_value()?),
                        "source" => e.source = map.next_value::<SourceOf>()?.0,
                        "ts_ms" => e.ts_ms = Some(map.next_value()?),
                        "schema" => {
                            e.schema = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                        "payload" => e.payload = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    if !matches!(k.as_ref(), "schema" | "payload") {
                        e.other_fields = true;
                    }
                }
                Ok(Top::Envelope(Box::new(e)))
            }
        }
        d.deserialize_any(TopVisitor)
    }
}

/// `source` when it is an object; anything else is no source.
struct SourceOf<'a>(Option<Source<'a>>);

impl<'de> Deserialize<'de> for SourceOf<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = SourceOf<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Debezium source block")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut s = Source::default();
                while let Some(Key(k)) = map.next_key()? {
                    let slot = match k.as_ref() {
                        "ts_ms" => &mut s.ts_ms,
                        "lsn" => &mut s.lsn,
                        "file" => &mut s.file,
                        "pos" => &mut s.pos,
                        "row" => &mut s.row,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value()?);
                }
                Ok(SourceOf(Some(s)))
            }
            other_kinds!((|_: &'static str| SourceOf(None)), SourceOf(None));
        }
        d.deserialize_any(SourceVisitor)
    }
}
