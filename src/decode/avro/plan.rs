//! Avro binary read straight into fields: a writer schema compiled once into a plan of nodes, then
//! each datum walked along it, without apache-avro's value tree (a `Value` per field, a box per union,
//! a `String` per field name) that the typed fields were built from before. The envelope's other side
//! (`before` of an insert, `after` of a delete) and the blocks nobody reads are skipped, not built.
//!
//! Fields come out exactly as [`super::Names::field`] makes them from a value tree, which stays the
//! reader of the schemas a plan does not compile (`BigDecimal`, the only type Debezium never writes)
//! and the oracle of this room's tests.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, Name, ResolvedSchema, UuidSchema};
use compact_str::CompactString;
use serde_json::Value as Json;

use super::{AvroField, unscaled};
use crate::decode::DecodeError;

/// A writer schema compiled for reading (see the module docs).
#[derive(Debug)]
pub struct Plan {
    nodes: Vec<Node>,
}

/// Index of the root node.
const ROOT: usize = 0;

#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    UuidText,
    /// A uuid as 16 raw bytes (`bytes` of that length, or `fixed`).
    UuidBytes {
        fixed: bool,
    },
    Date,
    TimeMillis,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    TimestampNanos,
    Decimal {
        precision: Option<u8>,
        scale: i32,
        fixed: Option<usize>,
    },
    Enum(Vec<String>),
    Fixed(usize),
    Union(Vec<usize>),
    Record {
        fields: Vec<(CompactString, usize)>,
        /// Debezium's `VariableScaleDecimal` (`{scale: int, value: bytes}`): read as a decimal.
        variable_scale: bool,
    },
    Array(usize),
    Map(usize),
    /// A named type whose definition is still being compiled (a recursive reference).
    Pending,
}

/// Why a schema gets no plan: the value tree reads it.
#[derive(Debug)]
pub struct Unsupported;

impl Plan {
    pub fn compile(schema: &Schema, names: &ResolvedSchema<'_>) -> Result<Plan, Unsupported> {
        let mut compiler = Compiler {
            nodes: Vec::new(),
            named: HashMap::new(),
            names,
        };
        compiler.node(schema)?;
        Ok(Plan {
            nodes: compiler.nodes,
        })
    }

    /// The datum's root, when it is a record: its fields in schema order.
    fn root_fields(&self) -> Option<&[(CompactString, usize)]> {
        match &self.nodes[ROOT] {
            Node::Record { fields, .. } => Some(fields),
            _ => None,
        }
    }

    /// A record datum's fields (a plain `avro` row, or a key).
    pub fn row(
        &self,
        datum: &[u8],
    ) -> Result<Option<Vec<(CompactString, AvroField)>>, DecodeError> {
        let Some(fields) = self.root_fields() else {
            return Ok(None);
        };
        let mut cur = Cursor::new(datum);
        let row = self.fields(fields, &mut cur)?;
        cur.finish()?;
        Ok(Some(row))
    }

    /// A Debezium envelope datum, read for what the decoder needs of it: `op`, the source time and
    /// position, and where `before` and `after` start (read later, the one the op names).
    pub fn envelope(&self, datum: &[u8]) -> Result<Option<Envelope>, DecodeError> {
        let Some(fields) = self.root_fields() else {
            return Ok(None);
        };
        let mut cur = Cursor::new(datum);
        let mut e = Envelope {
            op: None,
            before: None,
            after: None,
            source_ts_ms: None,
            source_pos: None,
            ts_ms: None,
        };
        for (name, node) in fields {
            match name.as_str() {
                "op" => e.op = self.text(*node, &mut cur)?,
                "ts_ms" => e.ts_ms = self.long(*node, &mut cur)?,
                "source" => (e.source_ts_ms, e.source_pos) = self.source(*node, &mut cur)?,
                "before" => {
                    e.before = Some((*node, cur.pos));
                    self.skip(*node, &mut cur)?;
                }
                "after" => {
                    e.after = Some((*node, cur.pos));
                    self.skip(*node, &mut cur)?;
                }
                _ => self.skip(*node, &mut cur)?,
            }
        }
        cur.finish()?;
        Ok(Some(e))
    }

    /// One side of an envelope (`before`, `after`), found at `at` by [`Plan::envelope`].
    pub fn side(&self, datum: &[u8], (node, at): (usize, usize)) -> Result<Side, DecodeError> {
        let mut cur = Cursor {
            buf: datum,
            pos: at,
            depth: 0,
        };
        let node = self.branch(node, &mut cur)?;
        Ok(match &self.nodes[node] {
            Node::Null => Side::Null,
            Node::Record { fields, .. } => Side::Row(self.fields(fields, &mut cur)?),
            _ => Side::NotARecord,
        })
    }

    fn fields(
        &self,
        fields: &[(CompactString, usize)],
        cur: &mut Cursor<'_>,
    ) -> Result<Vec<(CompactString, AvroField)>, DecodeError> {
        fields
            .iter()
            .map(|(name, node)| Ok((name.clone(), self.field(*node, cur)?)))
            .collect()
    }

    /// Follow a union to the branch the datum was written with.
    fn branch(&self, node: usize, cur: &mut Cursor<'_>) -> Result<usize, DecodeError> {
        let mut node = node;
        while let Node::Union(branches) = &self.nodes[node] {
            let i = cur.long()?;
            node = *usize::try_from(i)
                .ok()
                .and_then(|i| branches.get(i))
                .ok_or_else(|| avro_err(format!("union branch {i} of {}", branches.len())))?;
        }
        Ok(node)
    }

    fn field(&self, node: usize, cur: &mut Cursor<'_>) -> Result<AvroField, DecodeError> {
        cur.enter()?;
        let out = self.field_at(node, cur);
        cur.depth -= 1;
        out
    }

    fn field_at(&self, node: usize, cur: &mut Cursor<'_>) -> Result<AvroField, DecodeError> {
        let node = self.branch(node, cur)?;
        Ok(match &self.nodes[node] {
            Node::Null => AvroField::Null,
            Node::Boolean => AvroField::Boolean(cur.boolean()?),
            Node::Int => AvroField::Int(cur.int()?),
            Node::Long => AvroField::Long(cur.long()?),
            Node::Float => AvroField::Float(cur.float()?),
            Node::Double => AvroField::Double(cur.double()?),
            Node::Bytes => AvroField::Bytes(cur.bytes()?.to_vec()),
            Node::String => AvroField::String(cur.text()?.to_string()),
            Node::UuidText => {
                let text = cur.text()?;
                let uuid = uuid::Uuid::parse_str(text)
                    .map_err(|e| avro_err(format!("uuid `{text}`: {e}")))?;
                AvroField::String(uuid.as_hyphenated().to_string())
            }
            Node::UuidBytes { fixed } => {
                let raw = if *fixed { cur.take(16)? } else { cur.bytes()? };
                let uuid =
                    uuid::Uuid::from_slice(raw).map_err(|e| avro_err(format!("uuid: {e}")))?;
                AvroField::String(uuid.as_hyphenated().to_string())
            }
            Node::Date => AvroField::Date(cur.int()?),
            Node::TimeMillis => AvroField::Time(i64::from(cur.int()?) * 1000),
            Node::TimeMicros => AvroField::Time(cur.long()?),
            Node::TimestampMillis => {
                let ms = cur.long()?;
                ms.checked_mul(1000)
                    .map_or(AvroField::Long(ms), AvroField::Timestamp)
            }
            Node::TimestampMicros => AvroField::Timestamp(cur.long()?),
            Node::TimestampNanos => AvroField::Timestamp(cur.long()?.div_euclid(1000)),
            Node::Decimal {
                precision,
                scale,
                fixed,
            } => {
                let raw = match fixed {
                    Some(n) => cur.take(*n)?,
                    None => cur.bytes()?,
                };
                match unscaled(raw) {
                    Some(unscaled) => AvroField::Decimal {
                        unscaled,
                        scale: *scale,
                        precision: *precision,
                    },
                    None => AvroField::Nested(Json::String(format!(
                        "decimal wider than 38 digits (scale {scale})"
                    ))),
                }
            }
            Node::Enum(symbols) => {
                let i = cur.long()?;
                let symbol = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or_else(|| avro_err(format!("enum index {i} of {}", symbols.len())))?;
                AvroField::String(symbol.clone())
            }
            Node::Fixed(n) => AvroField::Bytes(cur.take(*n)?.to_vec()),
            Node::Record {
                variable_scale: true,
                ..
            } => {
                let scale = cur.int()?;
                match unscaled(cur.bytes()?) {
                    Some(unscaled) => AvroField::Decimal {
                        unscaled,
                        scale,
                        precision: None,
                    },
                    None => {
                        AvroField::Nested(Json::String("decimal wider than 38 digits".to_string()))
                    }
                }
            }
            Node::Record { fields, .. } => {
                let mut object = serde_json::Map::new();
                for (name, node) in fields {
                    object.insert(name.to_string(), self.field(*node, cur)?.to_json());
                }
                AvroField::Nested(Json::Object(object))
            }
            Node::Array(item) => {
                let mut items = Vec::new();
                cur.blocks(|cur| {
                    items.push(self.field(*item, cur)?.to_json());
                    Ok(())
                })?;
                AvroField::Nested(Json::Array(items))
            }
            Node::Map(value) => {
                let mut entries = Vec::new();
                cur.blocks(|cur| {
                    let key = cur.text()?.to_string();
                    entries.push((key, self.field(*value, cur)?.to_json()));
                    Ok(())
                })?;
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                AvroField::Nested(Json::Object(entries.into_iter().collect()))
            }
            Node::Union(_) | Node::Pending => unreachable!("resolved above / compiled"),
        })
    }

    /// Move past a value without building it.
    fn skip(&self, node: usize, cur: &mut Cursor<'_>) -> Result<(), DecodeError> {
        cur.enter()?;
        let out = self.skip_at(node, cur);
        cur.depth -= 1;
        out
    }

    fn skip_at(&self, node: usize, cur: &mut Cursor<'_>) -> Result<(), DecodeError> {
        let node = self.branch(node, cur)?;
        match &self.nodes[node] {
            Node::Null => {}
            Node::Boolean => {
                cur.take(1)?;
            }
            Node::Int
            | Node::Long
            | Node::Date
            | Node::TimeMillis
            | Node::TimeMicros
            | Node::TimestampMillis
            | Node::TimestampMicros
            | Node::TimestampNanos
            | Node::Enum(_) => {
                cur.long()?;
            }
            Node::Float => {
                cur.take(4)?;
            }
            Node::Double => {
                cur.take(8)?;
            }
            Node::Bytes
            | Node::String
            | Node::UuidText
            | Node::UuidBytes { fixed: false }
            | Node::Decimal { fixed: None, .. } => {
                cur.bytes()?;
            }
            Node::UuidBytes { fixed: true } => {
                cur.take(16)?;
            }
            Node::Decimal { fixed: Some(n), .. } | Node::Fixed(n) => {
                cur.take(*n)?;
            }
            Node::Record { fields, .. } => {
                for (_, f) in fields {
                    self.skip(*f, cur)?;
                }
            }
            Node::Array(item) => cur.blocks(|cur| self.skip(*item, cur))?,
            Node::Map(value) => cur.blocks(|cur| {
                cur.bytes()?;
                self.skip(*value, cur)
            })?,
            Node::Union(_) | Node::Pending => unreachable!("resolved above / compiled"),
        }
        Ok(())
    }

    /// A `string` or enum symbol; other values are skipped (`None`), as the value tree's reader
    /// ignored them.
    fn text(&self, node: usize, cur: &mut Cursor<'_>) -> Result<Option<String>, DecodeError> {
        let at = self.branch(node, cur)?;
        match &self.nodes[at] {
            Node::String | Node::Enum(_) => match self.field(at, cur)? {
                AvroField::String(s) => Ok(Some(s)),
                _ => Ok(None),
            },
            _ => self.skip(at, cur).map(|()| None),
        }
    }

    /// A `long`, `int` or millisecond timestamp as written; others skipped (`None`).
    fn long(&self, node: usize, cur: &mut Cursor<'_>) -> Result<Option<i64>, DecodeError> {
        let at = self.branch(node, cur)?;
        match &self.nodes[at] {
            Node::Long | Node::TimestampMillis => cur.long().map(Some),
            Node::Int => cur.int().map(|i| Some(i64::from(i))),
            _ => self.skip(at, cur).map(|()| None),
        }
    }

    /// `source.ts_ms` and the position (see [`super::source_info`]).
    fn source(
        &self,
        node: usize,
        cur: &mut Cursor<'_>,
    ) -> Result<(Option<i64>, Option<CompactString>), DecodeError> {
        let at = self.branch(node, cur)?;
        let Node::Record { fields, .. } = &self.nodes[at] else {
            self.skip(at, cur)?;
            return Ok((None, None));
        };
        let (mut ts, mut lsn, mut file, mut pos, mut row) = (None, None, None, None, None);
        for (name, f) in fields {
            match name.as_str() {
                "ts_ms" => ts = self.long(*f, cur)?,
                "lsn" => lsn = self.long(*f, cur)?,
                "file" => file = self.text(*f, cur)?,
                "pos" => pos = self.long(*f, cur)?,
                "row" => row = self.long(*f, cur)?,
                _ => self.skip(*f, cur)?,
            }
        }
        Ok((ts, super::source_position(lsn, file, pos, row)))
    }
}

/// What one side of an envelope holds.
pub enum Side {
    Row(Vec<(CompactString, AvroField)>),
    Null,
    NotARecord,
}

/// What [`Plan::envelope`] found.
pub struct Envelope {
    pub op: Option<String>,
    pub before: Option<(usize, usize)>,
    pub after: Option<(usize, usize)>,
    pub source_ts_ms: Option<i64>,
    pub source_pos: Option<CompactString>,
    pub ts_ms: Option<i64>,
}

struct Compiler<'s, 'n> {
    nodes: Vec<Node>,
    named: HashMap<Name, usize>,
    names: &'n ResolvedSchema<'s>,
}

impl Compiler<'_, '_> {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&mut self, schema: &Schema) -> Result<usize, Unsupported> {
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int => Node::Int,
            Schema::Long => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String => Node::String,
            Schema::Uuid(UuidSchema::String) => Node::UuidText,
            Schema::Uuid(UuidSchema::Bytes) => Node::UuidBytes { fixed: false },
            Schema::Uuid(UuidSchema::Fixed(_)) => Node::UuidBytes { fixed: true },
            Schema::Date => Node::Date,
            Schema::TimeMillis => Node::TimeMillis,
            Schema::TimeMicros => Node::TimeMicros,
            Schema::TimestampMillis | Schema::LocalTimestampMillis => Node::TimestampMillis,
            Schema::TimestampMicros | Schema::LocalTimestampMicros => Node::TimestampMicros,
            Schema::TimestampNanos | Schema::LocalTimestampNanos => Node::TimestampNanos,
            Schema::Decimal(d) => Node::Decimal {
                precision: u8::try_from(d.precision).ok(),
                scale: i32::try_from(d.scale).unwrap_or(0),
                fixed: match &d.inner {
                    InnerDecimalSchema::Bytes => None,
                    InnerDecimalSchema::Fixed(f) => Some(f.size),
                },
            },
            Schema::BigDecimal => return Err(Unsupported),
            Schema::Duration(_) => Node::Fixed(12),
            Schema::Fixed(f) => self.named_leaf(&f.name, Node::Fixed(f.size)),
            Schema::Enum(e) => self.named_leaf(&e.name, Node::Enum(e.symbols.clone())),
            Schema::Union(u) => {
                let branches = u
                    .variants()
                    .iter()
                    .map(|v| self.node(v))
                    .collect::<Result<Vec<_>, _>>()?;
                Node::Union(branches)
            }
            Schema::Array(a) => Node::Array(self.node(&a.items)?),
            Schema::Map(m) => Node::Map(self.node(&m.types)?),
            Schema::Record(r) => {
                let at = self.push(Node::Pending);
                self.named.insert(r.name.clone(), at);
                let fields = r
                    .fields
                    .iter()
                    .map(|f| Ok((CompactString::from(f.name.as_str()), self.node(&f.schema)?)))
                    .collect::<Result<Vec<_>, Unsupported>>()?;
                let variable_scale = matches!(
                    (r.fields.first(), r.fields.get(1), r.fields.len()),
                    (Some(a), Some(b), 2)
                        if matches!((&a.schema, &b.schema), (Schema::Int, Schema::Bytes))
                            && (r.name.name() == "VariableScaleDecimal"
                                || a.name == "scale" && b.name == "value")
                );
                self.nodes[at] = Node::Record {
                    fields,
                    variable_scale,
                };
                return Ok(at);
            }
            Schema::Ref { name } => {
                if let Some(at) = self.named.get(name) {
                    return Ok(*at);
                }
                let schema = self
                    .names
                    .get_names()
                    .get(name)
                    .copied()
                    .ok_or(Unsupported)?;
                return self.node(schema);
            }
        };
        Ok(self.push(node))
    }

    /// An enum or fixed, registered under its name for later references.
    fn named_leaf(&mut self, name: &Name, node: Node) -> Node {
        let at = self.nodes.len();
        self.named.insert(name.clone(), at);
        node
    }
}

/// A datum being read.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Values being read inside one another: a recursive schema lets a datum nest as deep as its
    /// bytes go, and the reader recurses with it.
    depth: usize,
}

/// Nesting beyond this is refused rather than risking the stack; CDC rows nest a few levels.
const MAX_DEPTH: usize = 64;

fn avro_err(what: String) -> DecodeError {
    DecodeError::Avro(what)
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            depth: 0,
        }
    }

    fn enter(&mut self) -> Result<(), DecodeError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(avro_err(format!("values nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            left => Err(avro_err(format!("{left} bytes left after the datum"))),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| avro_err(format!("datum ends inside a value ({n} bytes wanted)")))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A zig-zag varint.
    fn long(&mut self) -> Result<i64, DecodeError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| avro_err("datum ends inside a number".to_string()))?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                break;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(avro_err("a number longer than 64 bits".to_string()))
    }

    fn int(&mut self) -> Result<i32, DecodeError> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| avro_err(format!("int {v} out of range")))
    }

    fn boolean(&mut self) -> Result<bool, DecodeError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(avro_err(format!("boolean byte {b}"))),
        }
    }

    fn float(&mut self) -> Result<f32, DecodeError> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn double(&mut self) -> Result<f64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| avro_err(format!("negative length {n}")))?;
        self.take(n)
    }

    fn text(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|e| avro_err(format!("string: {e}")))
    }

    /// The items of an array or map: blocks of a count (negative: followed by the block's size in
    /// bytes), ended by a zero count.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                count = count
                    .checked_neg()
                    .ok_or_else(|| avro_err("block count out of range".to_string()))?;
                self.long()?;
            }
            // Each item takes at least a byte, except nulls: a count beyond the datum is corrupt.
            if count as u64 > (self.buf.len() - self.pos) as u64 * 8 + 1024 {
                return Err(avro_err(format!("block of {count} items in a short datum")));
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_avro_writes_them() {
        for v in [
            0i64,
            -1,
            1,
            63,
            -64,
            64,
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&Schema::Long)
                .build()
                .unwrap()
                .write_value_to_vec(apache_avro::types::Value::Long(v))
                .unwrap();
            let mut cur = Cursor::new(&bytes);
            assert_eq!(cur.long().unwrap(), v);
            cur.finish().unwrap();
        }
        assert!(Cursor::new(&[0x80, 0x80]).long().is_err(), "cut short");
        assert!(Cursor::new(&[0xff; 11]).long().is_err(), "too long");
    }

    #[test]
    fn a_datum_nesting_past_the_limit_is_refused_not_overflowing() {
        // A linked list: each `next` is null or another node, so a datum can nest without end.
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}"#,
        )
        .unwrap();
        let names = ResolvedSchema::try_from(&schema).unwrap();
        let plan = Plan::compile(&schema, &names).unwrap();
        // Branch 1 (a node) ten thousand times, then branch 0 (null).
        let mut deep = vec![2u8; 10_000];
        deep.push(0);
        let err = plan.row(&deep).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
        // Shallow lists read as nested JSON.
        let row = plan.row(&[2, 2, 0]).unwrap().unwrap();
        assert_eq!(
            row[0].1.to_json(),
            serde_json::json!({"next": {"next": null}})
        );
    }
}
