//! Values the source did not deliver. Debezium has no value for an unchanged TOASTed column of a
//! Postgres row (large `text`, `jsonb`, `bytea` in a table without `REPLICA IDENTITY FULL`) and sends
//! its placeholder instead: as the text itself, as base64 or hex of it in binary columns (per
//! `binary.handling.mode`), and as an array holding it for array columns. Stored as if it were the
//! value, the placeholder would overwrite the real one in the newest row per key; the mapper makes
//! such a column null and names it in the row's `_unavailable_columns` instead.

use base64::Engine;
use serde_json::Value;

/// The placeholder in every form a column can carry it.
#[derive(Debug, Clone)]
pub(super) struct Placeholder {
    text: String,
    base64: String,
    hex: String,
}

impl Placeholder {
    pub fn new(text: &str) -> Self {
        Placeholder {
            text: text.to_string(),
            base64: base64::engine::general_purpose::STANDARD.encode(text),
            hex: text.bytes().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// A text value (a string column, or a binary one in base64 or hex).
    pub fn is_text(&self, s: &str) -> bool {
        s == self.text || s == self.base64 || s.eq_ignore_ascii_case(&self.hex)
    }

    /// A binary value (Avro `bytes`).
    pub fn is_bytes(&self, b: &[u8]) -> bool {
        b == self.text.as_bytes()
    }

    /// A nested value: an array column's placeholder is an array of the placeholder alone.
    pub fn is_json(&self, v: &Value) -> bool {
        match v {
            Value::String(s) => self.is_text(s),
            Value::Array(items) => {
                matches!(items.as_slice(), [Value::String(s)] if self.is_text(s))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_the_placeholder_is_seen_and_nothing_else() {
        let p = Placeholder::new("__debezium_unavailable_value");
        assert!(p.is_text("__debezium_unavailable_value"));
        // binary.handling.mode = base64 / hex
        assert!(p.is_text("X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="));
        assert!(p.is_text("5f5f646562657a69756d5f756e617661696c61626c655f76616c7565"));
        assert!(p.is_text("5F5F646562657A69756D5F756E617661696C61626C655F76616C7565"));
        assert!(p.is_bytes(b"__debezium_unavailable_value"));
        assert!(p.is_json(&serde_json::json!(["__debezium_unavailable_value"])));
        assert!(!p.is_text("__debezium_unavailable_value "));
        assert!(!p.is_text(""));
        assert!(!p.is_json(&serde_json::json!(["__debezium_unavailable_value", "x"])));
        assert!(!p.is_json(&serde_json::json!({"v": "__debezium_unavailable_value"})));
        assert!(!p.is_bytes(b"other"));
        // A connector with its own `unavailable.value.placeholder`.
        assert!(Placeholder::new("<toast>").is_text("<toast>"));
    }
}
