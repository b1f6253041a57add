//! Fan-outs: one `[[datasets]]` entry that makes a table of every topic its `topic_pattern` matches,
//! named by `table_name` from the pattern's capture groups (`{schema}_{table}`, `{1}`) or from the
//! Debezium `source` block of the topic's first messages (`{source.db}_{source.table}`, for topics
//! whose names do not tell the table), with `[datasets.tables.<name>]` for what differs per table. A
//! whole Debezium connector (one topic per source table) is then one declaration.
//!
//! A fan-out's tables are ordinary datasets once made: the configuration grows by one
//! [`DatasetConfig`] per topic (at start from the cluster's topics, later when the group assigns a new
//! one), checked by the same rules as a dataset written out by hand.

use std::collections::BTreeMap;

use regex::{Captures, Regex};

use super::raw::{RawDataset, RawTableOverride};
use super::validate::DatasetContext;
use super::{Config, ConfigError, DatasetConfig};

/// The scalar fields of a Debezium envelope's `source` block as text (`db`, `schema`, `table`, ...):
/// what `{source.<field>}` of a `table_name` reads.
pub type SourceBlock = BTreeMap<String, String>;

/// `(?P<name>`, `(?<name>` and `(?:` of a pattern.
static GROUP_SYNTAX: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();

/// One fan-out entry, kept whole so that tables can be made from it while running.
#[derive(Debug, Clone)]
pub struct FanOut {
    /// The entry's `name` (tables carry it in [`DatasetConfig::fan_out`]).
    pub name: String,
    /// Position among `[[datasets]]`, for error keys.
    index: usize,
    pattern: Regex,
    table_name: String,
    template: RawDataset,
    overrides: BTreeMap<String, RawTableOverride>,
    context: DatasetContext,
}

impl FanOut {
    /// Entry `i` checked: every setting as for a dataset, every override as for its table.
    pub(super) fn new(
        context: &DatasetContext,
        i: usize,
        mut raw: RawDataset,
        datasets: &[DatasetConfig],
        before: &[FanOut],
    ) -> Result<FanOut, ConfigError> {
        let file = context.file();
        let key = |field: &str| format!("datasets[{i}].{field}");
        let invalid = |field: &str, reason: String| ConfigError::invalid(file, key(field), reason);
        let Some(table_name) = raw.table_name.take() else {
            return Err(invalid(
                "tables",
                "table overrides need a fan-out: set `table_name`".into(),
            ));
        };
        let (Some(pattern), true) = (raw.topic_pattern.clone(), raw.topics.is_empty()) else {
            return Err(invalid(
                "table_name",
                "a fan-out reads `topic_pattern` (a regex), not `topics`".into(),
            ));
        };
        let pattern = Regex::new(&pattern).map_err(|e| invalid("topic_pattern", e.to_string()))?;
        for field in std::iter::once(&table_name).chain(raw.schema.as_ref()) {
            if let Some(p) = unknown_placeholder(&pattern, field) {
                let names: Vec<&str> = pattern.capture_names().flatten().collect();
                return Err(invalid(
                    "table_name",
                    format!(
                        "`{{{p}}}` is not a capture group of `topic_pattern` (named: {names:?}, or \
                         {{1}}..{{{}}}) nor a field of the messages' source block ({{source.table}})",
                        pattern.captures_len() - 1
                    ),
                ));
            }
        }
        if datasets.iter().any(|d| d.name == raw.name) || before.iter().any(|f| f.name == raw.name)
        {
            return Err(invalid(
                "name",
                format!("dataset `{}` is defined twice", raw.name),
            ));
        }
        let overrides = std::mem::take(&mut raw.tables);
        // The template must make a valid dataset, and each override a valid table.
        context.dataset(i, raw.clone(), &[])?;
        for (name, o) in &overrides {
            let mut probe = raw.clone();
            probe.name = name.clone();
            o.apply(&mut probe);
            context.dataset(i, probe, &[]).map_err(|e| match e {
                ConfigError::Invalid { file, key, reason } => ConfigError::Invalid {
                    file,
                    key: key.replacen(
                        &format!("datasets[{i}]"),
                        &format!("datasets[{i}].tables.{name}"),
                        1,
                    ),
                    reason,
                },
                other => other,
            })?;
        }
        Ok(FanOut {
            name: raw.name.clone(),
            index: i,
            pattern,
            table_name,
            template: raw,
            overrides,
            context: context.clone(),
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        !topic.starts_with("__") && self.pattern.is_match(topic)
    }

    /// The pattern as librdkafka subscribes to it (a leading `^` marks a regex). librdkafka's regex
    /// engine knows no named or non-capturing groups: they become plain groups, which match the same
    /// topics.
    pub fn subscription(&self) -> String {
        let plain = GROUP_SYNTAX
            .get_or_init(|| {
                Regex::new(r"\(\?(P?<[A-Za-z_][A-Za-z0-9_]*>|:)").expect("a valid regex")
            })
            .replace_all(self.pattern.as_str(), "(");
        if plain.starts_with('^') {
            plain.into_owned()
        } else {
            format!("^{plain}")
        }
    }

    /// Whether the table names come from the messages (`{source.<field>}`), not the topic alone.
    pub fn names_from_messages(&self) -> bool {
        std::iter::once(&self.table_name)
            .chain(self.template.schema.as_ref())
            .any(|t| t.contains(SOURCE_PLACEHOLDER))
    }

    pub(super) fn dead_letter_topic(&self) -> &Option<String> {
        &self.template.dead_letters.topic
    }

    /// The dataset of `topic`, checked against the datasets there are (`before`). `sources`: the
    /// source blocks of the topic's first messages, for names made of them (which must all agree).
    fn make(
        &self,
        topic: &str,
        before: &[DatasetConfig],
        sources: &[SourceBlock],
    ) -> Option<Result<DatasetConfig, ConfigError>> {
        let caps = self
            .pattern
            .captures(topic)
            .filter(|_| self.matches(topic))?;
        let source = match self.agreed_source(topic, &caps, sources) {
            Ok(source) => source,
            Err(e) => return Some(Err(e)),
        };
        let rendered = |t: &str| {
            render(t, &caps, source).map_err(|field| {
                ConfigError::invalid(
                    self.context.file(),
                    format!("datasets[{}].schema", self.index),
                    format!("a message of `{topic}` has no `{field}` in its source block"),
                )
            })
        };
        let mut raw = self.template.clone();
        raw.topics = vec![topic.to_string()];
        raw.topic_pattern = None;
        let named = rendered(&self.table_name).and_then(|name| {
            let schema = raw.schema.as_deref().map(rendered).transpose()?;
            Ok((table_name(&name), schema))
        });
        match named {
            Ok((name, schema)) => (raw.name, raw.schema) = (name, schema),
            Err(e) => return Some(Err(e)),
        }
        if let Some(o) = self.overrides.get(&raw.name) {
            o.apply(&mut raw);
        }
        Some(self.context.dataset(self.index, raw, before).map(|mut d| {
            d.fan_out = Some(self.name.clone());
            d
        }))
    }
}

impl FanOut {
    /// The source block names are rendered from: none when names come from the topic alone, else
    /// the first of `sources`, once every one of them gives the same table name (a topic that carries
    /// several source tables would mix them in one table).
    fn agreed_source<'s>(
        &self,
        topic: &str,
        caps: &Captures<'_>,
        sources: &'s [SourceBlock],
    ) -> Result<Option<&'s SourceBlock>, ConfigError> {
        if !self.names_from_messages() {
            return Ok(None);
        }
        let invalid = |reason: String| {
            ConfigError::invalid(
                self.context.file(),
                format!("datasets[{}].table_name", self.index),
                reason,
            )
        };
        let Some(first) = sources.first() else {
            return Err(invalid(format!(
                "the table of `{topic}` is named by its messages' source block, and it has no \
                 message with one yet"
            )));
        };
        let mut names = std::collections::BTreeSet::new();
        for source in sources {
            let name = render(&self.table_name, caps, Some(source)).map_err(|field| {
                invalid(format!(
                    "a message of `{topic}` has no `{field}` in its source block"
                ))
            })?;
            names.insert(table_name(&name));
        }
        if names.len() > 1 {
            return Err(invalid(format!(
                "`{topic}` carries changes of several source tables ({}); a fan-out makes one \
                 table per topic: route each source table to a topic of its own",
                names.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Some(first))
    }
}

impl Config {
    /// The dataset `topic` feeds: a dataset of the file, a table a fan-out made before, or a table a
    /// fan-out makes now (then the last dataset). `None` when nothing claims the topic.
    pub fn claim_topic(
        &mut self,
        topic: &str,
        sources: &[SourceBlock],
    ) -> Result<Option<usize>, ConfigError> {
        if let Some(d) = self.dataset_for_topic(topic) {
            return Ok(Some(d));
        }
        match self.fan_out_table(topic, sources) {
            Some(made) => self.add_dataset(made?).map(Some),
            None => Ok(None),
        }
    }

    /// The table a fan-out would make of `topic` (not added), if one matches it; `sources` as for
    /// [`Config::fan_out_reads_messages`].
    pub fn fan_out_table(
        &self,
        topic: &str,
        sources: &[SourceBlock],
    ) -> Option<Result<DatasetConfig, ConfigError>> {
        self.fan_out_of(topic)
            .and_then(|f| f.make(topic, &self.datasets, sources))
    }

    /// The format of `topic`'s messages when the fan-out that claims it names its table by them: the
    /// source blocks of the topic's first messages are then needed to make the table.
    pub fn fan_out_reads_messages(&self, topic: &str) -> Option<super::Format> {
        self.fan_out_of(topic)
            .filter(|f| f.names_from_messages())
            .map(|f| f.template.format)
    }

    /// The first fan-out whose pattern matches `topic`.
    fn fan_out_of(&self, topic: &str) -> Option<&FanOut> {
        self.fan_outs.iter().find(|f| f.matches(topic))
    }

    /// Add a dataset made while running (its index), if it shares no table with the others.
    pub fn add_dataset(&mut self, d: DatasetConfig) -> Result<usize, ConfigError> {
        let mut all = self.datasets.clone();
        all.push(d);
        super::validate::distinct_tables(&self.file, &all, &self.audit)?;
        self.datasets = all;
        Ok(self.datasets.len() - 1)
    }

    /// A table for every topic of `topics` a fan-out matches (in name order, so every member and
    /// command makes the same datasets), with the source blocks of its first messages where names
    /// come from them. A topic whose table cannot be made is returned with why; the others are made
    /// regardless.
    pub fn expand_fan_outs<'a>(
        &mut self,
        topics: impl IntoIterator<Item = &'a str>,
        sources: &std::collections::HashMap<String, Vec<SourceBlock>>,
    ) -> Vec<(String, ConfigError)> {
        let mut topics: Vec<&str> = topics.into_iter().collect();
        topics.sort_unstable();
        let mut errors = Vec::new();
        for t in topics {
            let blocks = sources.get(t).map_or(&[][..], Vec::as_slice);
            if let Err(e) = self.claim_topic(t, blocks) {
                errors.push((t.to_string(), e));
            }
        }
        errors
    }

    /// What the group member subscribes to: every dataset's topics and every fan-out's pattern.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .datasets
            .iter()
            .filter(|d| d.fan_out.is_none())
            .flat_map(|d| d.topics.subscriptions())
            .collect();
        out.extend(self.fan_outs.iter().map(FanOut::subscription));
        out
    }
}

/// How a placeholder names a field of the messages' source block.
const SOURCE_PLACEHOLDER: &str = "{source.";

/// `{name}` and `{n}` of `template` replaced by the capture groups (an unmatched optional group is
/// empty), `{source.<field>}` by the field of `source`; the placeholder of a field `source` lacks (or
/// of any field, with no `source`) is the error.
fn render(
    template: &str,
    caps: &Captures<'_>,
    source: Option<&SourceBlock>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let p = &after[..close];
        if let Some(field) = p.strip_prefix("source.") {
            let value = source
                .and_then(|s| s.get(field))
                .ok_or_else(|| p.to_string())?;
            out.push_str(value);
        } else {
            let value = match p.parse::<usize>() {
                Ok(n) => caps.get(n),
                Err(_) => caps.name(p),
            };
            out.push_str(value.map_or("", |m| m.as_str()));
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The first placeholder of `template` that is no capture group of `pattern`.
fn unknown_placeholder(pattern: &Regex, template: &str) -> Option<String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let p = &after[..close];
        let known = match (p.parse::<usize>(), p.strip_prefix("source.")) {
            (Ok(n), _) => n >= 1 && n < pattern.captures_len(),
            (_, Some(field)) => {
                !field.is_empty() && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }
            _ => pattern.capture_names().flatten().any(|n| n == p),
        };
        if !known {
            return Some(p.to_string());
        }
        rest = &after[close + 1..];
    }
    None
}

/// A rendered name as a dataset name: source names keep their letters, digits, `_` and `-`; anything
/// else (`.`, spaces, quotes of quoted identifiers) becomes `_`.
fn table_name(rendered: &str) -> String {
    rendered
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration of one `[[datasets]]` entry (`dataset`, its keys), with a one-column contract
    /// `c.toml`, in a directory of its own.
    fn load(dataset: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("c.toml"),
            "[[columns]]\nname = \"id\"\ntype = \"int64\"\n",
        )
        .unwrap();
        let text = format!(
            "schema_dir = \"{}\"\n[kafka]\nbootstrap_servers = \"b:9092\"\ngroup_id = \"g\"\n\
             [storage]\nroot = \"{}\"\n[[datasets]]\n{dataset}",
            dir.path().display(),
            dir.path().join("lake").display()
        );
        let file = dir.path().join("bronze.toml");
        std::fs::write(&file, text).unwrap();
        let cfg = Config::load(&file).unwrap();
        (dir, cfg)
    }

    #[test]
    fn names_come_from_named_and_numbered_groups() {
        let re = Regex::new(r"^db1\.(?P<schema>[^.]+)\.(?P<table>.+)$").unwrap();
        let caps = re.captures("db1.public.order lines").unwrap();
        assert_eq!(
            render("{schema}_{table}", &caps, None).unwrap(),
            "public_order lines"
        );
        assert_eq!(
            table_name(&render("{1}__{2}", &caps, None).unwrap()),
            "public__order_lines"
        );
        let source: SourceBlock = [("db", "shop"), ("table", "orders")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        assert_eq!(
            render("{source.db}_{source.table}_{1}", &caps, Some(&source)).unwrap(),
            "shop_orders_public"
        );
        assert_eq!(
            render("{source.schema}", &caps, Some(&source)).unwrap_err(),
            "source.schema"
        );
        assert_eq!(unknown_placeholder(&re, "{source.table}"), None);
        assert_eq!(
            unknown_placeholder(&re, "{source.}").as_deref(),
            Some("source.")
        );
        assert_eq!(unknown_placeholder(&re, "{schema}_{table}"), None);
        assert_eq!(unknown_placeholder(&re, "{2}"), None);
        assert_eq!(
            unknown_placeholder(&re, "{db}_{table}").as_deref(),
            Some("db")
        );
        assert_eq!(unknown_placeholder(&re, "{3}").as_deref(), Some("3"));
        assert_eq!(unknown_placeholder(&re, "{0}").as_deref(), Some("0"));
    }

    #[test]
    fn librdkafka_subscribes_to_the_pattern_without_group_names() {
        let (_dir, mut cfg) = load(
            "name = \"db\"\n\
             topic_pattern = '^db\\.(?P<schema>[a-z]+)\\.(?<table>(?:t|u)\\d+)$'\n\
             table_name = \"{schema}_{table}\"\nformat = \"debezium-json\"\nschema = \"c.toml\"\n\
             [datasets.tables.public_t7]\npartitioning = { by = \"none\" }\n",
        );
        assert_eq!(
            cfg.subscriptions(),
            vec![r"^db\.([a-z]+)\.((t|u)\d+)$".to_string()]
        );
        assert!(cfg.datasets.is_empty());
        assert_eq!(cfg.claim_topic("db.public.t7", &[]).unwrap(), Some(0));
        assert_eq!(cfg.claim_topic("db.public.t8", &[]).unwrap(), Some(1));
        assert_eq!(
            cfg.claim_topic("db.public.t7", &[]).unwrap(),
            Some(0),
            "made once"
        );
        assert_eq!(cfg.claim_topic("db.public.x1", &[]).unwrap(), None);
        assert_eq!(cfg.fan_out_reads_messages("db.public.t9"), None);
        let (t7, t8) = (&cfg.datasets[0], &cfg.datasets[1]);
        assert_eq!(
            (t7.name.as_str(), t8.name.as_str()),
            ("public_t7", "public_t8")
        );
        assert_eq!(
            t7.partitioning.by,
            super::super::PartitionBy::None,
            "the override"
        );
        assert_eq!(
            t8.partitioning.by,
            super::super::PartitionBy::Date,
            "the template"
        );
        assert!(
            t8.table_uri.ends_with("/lake/public_t8"),
            "{}",
            t8.table_uri
        );
        assert!(
            t8.dead_letters
                .table_uri
                .ends_with("/lake/_dead_letters/public_t8")
        );
        assert_eq!(t8.fan_out.as_deref(), Some("db"));
        assert_eq!(cfg.dataset_for_topic("db.public.t8"), Some(1));
    }

    #[test]
    fn names_from_the_source_block_need_messages_that_agree() {
        let (_dir, mut cfg) = load(
            "name = \"routed\"\ntopic_pattern = '^cdc\\.r[0-9]+$'\n\
             table_name = \"{source.schema}_{source.table}\"\nformat = \"debezium-json\"\n\
             schema = \"c.toml\"\n",
        );
        let block = |schema: &str, table: &str| -> SourceBlock {
            [("schema", schema), ("table", table), ("lsn", "7")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into()
        };
        assert_eq!(
            cfg.fan_out_reads_messages("cdc.r1"),
            Some(super::super::Format::DebeziumJson)
        );
        let unnamed = cfg.claim_topic("cdc.r1", &[]).unwrap_err().to_string();
        assert!(unnamed.contains("no message with one yet"), "{unnamed}");
        let mixed = [block("public", "orders"), block("public", "items")];
        let mixed = cfg.claim_topic("cdc.r1", &mixed).unwrap_err().to_string();
        assert!(mixed.contains("public_items, public_orders"), "{mixed}");
        let agreed = [block("public", "orders"), block("public", "orders")];
        assert_eq!(cfg.claim_topic("cdc.r1", &agreed).unwrap(), Some(0));
        assert_eq!(cfg.datasets[0].name, "public_orders");
        let lacking: SourceBlock = [("db".to_string(), "x".to_string())].into();
        let lacking = cfg
            .claim_topic("cdc.r2", &[lacking])
            .unwrap_err()
            .to_string();
        assert!(lacking.contains("no `source.schema`"), "{lacking}");
    }
}
