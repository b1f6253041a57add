//! Decode: Kafka message bytes into a [`Change`] (or a reason to skip the message).
//!
//! Supported formats:
//! * `debezium-json`: the Debezium envelope, bare or inside the Kafka Connect `{"schema", "payload"}`
//!   wrapper. Rows come from `after`; deletes from `before` (which may carry only the key).
//! * `json`: one JSON object per message, taken as an insert.
//! * `debezium-avro`, `avro`: the same in Confluent-framed Avro, writer schemas from the registry
//!   (see [`avro`] and [`registry`]).

pub mod avro;
pub mod json;
pub mod registry;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::{Format, SourceBlock};
pub use avro::AvroField;
pub use json::{JsonField, JsonRow};
use registry::{Registry, RegistryError};

/// The kind of change, as Debezium spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
    /// Snapshot read.
    Read,
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            _ => return None,
        })
    }
}

/// The fields of a row, as the format delivers them, in message order.
#[derive(Debug, Clone, PartialEq)]
pub enum Fields<'a> {
    /// Text borrowed from the message where it can.
    Json(JsonRow<'a>),
    /// In the writer schema's field order.
    Avro(Vec<(compact_str::CompactString, AvroField)>),
}

impl Fields<'_> {
    /// The fields as one JSON object (a later duplicate name wins, as in any JSON reader).
    pub fn to_json_map(&self) -> Map<String, Value> {
        match self {
            Fields::Json(row) => row
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone().into_json()))
                .collect(),
            Fields::Avro(row) => row
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_json()))
                .collect(),
        }
    }

    /// Fields from a parsed JSON object.
    pub fn from_json_map(map: Map<String, Value>) -> Fields<'static> {
        Fields::Json(json::row_from_map(map))
    }
}

/// One decoded change event, borrowing from the message it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<'a> {
    pub op: Op,
    /// Column values: `after` for c/u/r, `before` for d, none for t.
    pub row: Option<Fields<'a>>,
    /// `source.ts_ms`: when the change happened in the source database.
    pub source_ts_ms: Option<i64>,
    /// Position in the source log: Postgres `lsn`, MySQL `file:pos`.
    pub source_pos: Option<compact_str::CompactString>,
}

/// Messages that are valid but carry no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Null value: Kafka tombstone (log compaction marker after a delete).
    Tombstone,
    /// Debezium logical decoding message (`op = "m"`), not a row change.
    LogicalMessage,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Tombstone => "tombstone",
            Skip::LogicalMessage => "logical_message",
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Decoded<'a> {
    Change(Change<'a>),
    Skip(Skip),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("value is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("value is not valid JSON: {0}")]
    Utf8(std::str::Utf8Error),
    #[error("value is a JSON {0}, expected an object")]
    NotAnObject(&'static str),
    #[error("Debezium envelope has no `op` field")]
    MissingOp,
    #[error("Debezium envelope has unknown op `{0}`")]
    UnknownOp(String),
    #[error("Debezium `{op}` event has no `{field}` row")]
    MissingRow {
        op: &'static str,
        field: &'static str,
    },
    #[error("Debezium `{field}` must be an object or null, found {found}")]
    RowNotObject {
        field: &'static str,
        found: &'static str,
    },
    #[error("value does not start with the Confluent magic byte 0x00 (found 0x{0:02x})")]
    MagicByte(u8),
    #[error("value is {0} bytes, shorter than the 5-byte Confluent Avro header")]
    ShortAvro(usize),
    #[error("{0}")]
    UnknownSchema(String),
    #[error("{0}")]
    BadWriterSchema(String),
    #[error("schema id {0} was not looked up before decoding")]
    SchemaNotLoaded(u32),
    #[error("value is not a valid Avro datum of its writer schema: {0}")]
    Avro(String),
}

impl DecodeError {
    /// Short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Json(_) | DecodeError::Utf8(_) => "invalid_json",
            DecodeError::NotAnObject(_) => "not_an_object",
            DecodeError::MissingOp | DecodeError::UnknownOp(_) => "bad_op",
            DecodeError::MissingRow { .. } | DecodeError::RowNotObject { .. } => "bad_envelope",
            DecodeError::MagicByte(_) => "bad_magic_byte",
            DecodeError::ShortAvro(_) | DecodeError::Avro(_) => "invalid_avro",
            DecodeError::UnknownSchema(_) => "unknown_schema_id",
            DecodeError::BadWriterSchema(_) => "bad_writer_schema",
            DecodeError::SchemaNotLoaded(_) => "registry_unavailable",
        }
    }
}

/// Decodes the messages of one dataset.
#[derive(Clone)]
pub struct Decoder {
    format: Format,
    /// Set for Avro formats.
    registry: Option<Arc<Registry>>,
}

impl Decoder {
    /// A decoder for `format`; Avro formats need `registry`.
    pub fn new(format: Format, registry: Option<Arc<Registry>>) -> Decoder {
        Decoder { format, registry }
    }

    /// Whether messages name writer schemas to look up ([`Decoder::prepare`]).
    pub fn needs_registry(&self) -> bool {
        self.registry.is_some() && self.format.is_avro()
    }

    /// Look up the writer schemas a message names (value and key), so [`Decoder::decode`] finds them.
    /// Errs only when the registry cannot answer; the message must then wait, not be skipped.
    pub async fn prepare(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), RegistryError> {
        let Some(registry) = self.registry.as_ref().filter(|_| self.format.is_avro()) else {
            return Ok(());
        };
        for bytes in [value, key].into_iter().flatten() {
            if let Ok((id, _)) = avro::frame(bytes) {
                registry.resolve(id).await?;
            }
        }
        Ok(())
    }

    /// Whether every writer schema the message names is looked up already ([`Decoder::prepare`]
    /// would not wait).
    pub fn is_prepared(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> bool {
        let Some(registry) = self.registry.as_ref().filter(|_| self.format.is_avro()) else {
            return true;
        };
        [value, key]
            .into_iter()
            .flatten()
            .all(|bytes| avro::frame(bytes).map_or(true, |(id, _)| registry.cached(id).is_some()))
    }

    /// Decode one message value.
    pub fn decode<'a>(&self, value: Option<&'a [u8]>) -> Result<Decoded<'a>, DecodeError> {
        let Some(bytes) = value else {
            return Ok(Decoded::Skip(Skip::Tombstone));
        };
        match (self.format, &self.registry) {
            (Format::DebeziumAvro | Format::Avro, Some(registry)) => {
                avro::decode(registry, bytes, self.format == Format::DebeziumAvro)
            }
            (Format::DebeziumAvro | Format::Avro, None) => Err(DecodeError::BadWriterSchema(
                "no schema registry is configured for an Avro dataset".to_string(),
            )),
            (format, _) => decode(format, Some(bytes)),
        }
    }

    /// The `source` block of a Debezium envelope (after [`Decoder::prepare`] for Avro); `None` for
    /// a message without one (a tombstone, a heartbeat, a row without an envelope).
    pub fn source_block(&self, value: Option<&[u8]>) -> Option<SourceBlock> {
        let bytes = value?;
        match (self.format, &self.registry) {
            (Format::DebeziumAvro, Some(registry)) => avro::source_block(registry, bytes),
            (Format::DebeziumJson, _) => {
                let v: Value = serde_json::from_slice(bytes).ok()?;
                let envelope = v.get("payload").filter(|p| p.is_object()).unwrap_or(&v);
                let source = envelope.get("source")?.as_object()?;
                Some(
                    source
                        .iter()
                        .filter_map(|(k, v)| match v {
                            Value::String(s) => Some((k.clone(), s.clone())),
                            Value::Number(_) | Value::Bool(_) => Some((k.clone(), v.to_string())),
                            _ => None,
                        })
                        .collect(),
                )
            }
            _ => None,
        }
    }

    /// Decode a message key into its fields: framed Avro when it is (Avro formats), else JSON.
    pub fn decode_key(&self, key: Option<&[u8]>) -> Option<Fields<'static>> {
        let key = key?;
        if let Some(registry) = &self.registry
            && let Some(fields) = avro::decode_key(registry, key)
        {
            return Some(fields);
        }
        decode_key(key).map(Fields::Json)
    }
}

pub use json::{decode, decode_key};

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests;
