//! Fan-outs: one `[[datasets]]` entry that makes a table of every topic its `topic_pattern` matches,
//! named by `table_name` from the pattern's capture groups (`{schema}_{table}`, `{1}`), with
//! `[datasets.tables.<name>]` for what differs per table. A whole Debezium connector (one topic per
//! source table) is then one declaration.
//!
//! A fan-out's tables are ordinary datasets once made: the configuration grows by one
//! [`DatasetConfig`] per topic (at start from the cluster's topics, later when the group assigns a new
//! one), checked by the same rules as a dataset written out by hand.

use std::collections::BTreeMap;

use regex::{Captures, Regex};

use super::raw::{RawDataset, RawTableOverride};
use super::validate::DatasetContext;
use super::{Config, ConfigError, DatasetConfig};

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
                         {{1}}..{{{}}})",
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

    pub(super) fn dead_letter_topic(&self) -> &Option<String> {
        &self.template.dead_letters.topic
    }

    /// The table name `topic` gets, if the pattern matches it.
    pub fn table_for(&self, topic: &str) -> Option<String> {
        let caps = self
            .pattern
            .captures(topic)
            .filter(|_| self.matches(topic))?;
        Some(table_name(&render(&self.table_name, &caps)))
    }

    /// The dataset of `topic`, checked against the datasets there are (`before`).
    fn make(
        &self,
        topic: &str,
        before: &[DatasetConfig],
    ) -> Option<Result<DatasetConfig, ConfigError>> {
        let caps = self
            .pattern
            .captures(topic)
            .filter(|_| self.matches(topic))?;
        let mut raw = self.template.clone();
        raw.name = table_name(&render(&self.table_name, &caps));
        raw.topics = vec![topic.to_string()];
        raw.topic_pattern = None;
        raw.schema = raw.schema.map(|s| render(&s, &caps));
        if let Some(o) = self.overrides.get(&raw.name) {
            o.apply(&mut raw);
        }
        Some(self.context.dataset(self.index, raw, before).map(|mut d| {
            d.fan_out = Some(self.name.clone());
            d
        }))
    }
}

impl Config {
    /// The dataset `topic` feeds: a dataset of the file, a table a fan-out made before, or a table a
    /// fan-out makes now (then the last dataset). `None` when nothing claims the topic.
    pub fn claim_topic(&mut self, topic: &str) -> Result<Option<usize>, ConfigError> {
        if let Some(d) = self.dataset_for_topic(topic) {
            return Ok(Some(d));
        }
        match self.fan_out_table(topic) {
            Some(made) => self.add_dataset(made?).map(Some),
            None => Ok(None),
        }
    }

    /// The table a fan-out would make of `topic` (not added), if one matches it.
    pub fn fan_out_table(&self, topic: &str) -> Option<Result<DatasetConfig, ConfigError>> {
        self.fan_outs
            .iter()
            .find_map(|f| f.make(topic, &self.datasets))
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
    /// command makes the same datasets). A topic whose table cannot be made is returned with why; the
    /// others are made regardless.
    pub fn expand_fan_outs<'a>(
        &mut self,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(String, ConfigError)> {
        let mut topics: Vec<&str> = topics.into_iter().collect();
        topics.sort_unstable();
        let mut errors = Vec::new();
        for t in topics {
            if let Err(e) = self.claim_topic(t) {
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

/// `{name}` and `{n}` of `template` replaced by the capture groups (an unmatched optional group is
/// empty).
fn render(template: &str, caps: &Captures<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let p = &after[..close];
        let value = match p.parse::<usize>() {
            Ok(n) => caps.get(n),
            Err(_) => caps.name(p),
        };
        out.push_str(value.map_or("", |m| m.as_str()));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The first placeholder of `template` that is no capture group of `pattern`.
fn unknown_placeholder(pattern: &Regex, template: &str) -> Option<String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let p = &after[..close];
        let known = match p.parse::<usize>() {
            Ok(n) => n >= 1 && n < pattern.captures_len(),
            Err(_) => pattern.capture_names().flatten().any(|n| n == p),
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

    #[test]
    fn names_come_from_named_and_numbered_groups() {
        let re = Regex::new(r"^db1\.(?P<schema>[^.]+)\.(?P<table>.+)$").unwrap();
        let caps = re.captures("db1.public.order lines").unwrap();
        assert_eq!(render("{schema}_{table}", &caps), "public_order lines");
        assert_eq!(
            table_name(&render("{1}__{2}", &caps)),
            "public__order_lines"
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
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("c.toml"),
            "[[columns]]\nname = \"id\"\ntype = \"int64\"\n",
        )
        .unwrap();
        let text = format!(
            "schema_dir = \"{}\"\n[kafka]\nbootstrap_servers = \"b:9092\"\ngroup_id = \"g\"\n\
             [storage]\nroot = \"{}\"\n[[datasets]]\nname = \"db\"\n\
             topic_pattern = '^db\\.(?P<schema>[a-z]+)\\.(?<table>(?:t|u)\\d+)$'\n\
             table_name = \"{{schema}}_{{table}}\"\nformat = \"debezium-json\"\nschema = \"c.toml\"\n\
             [datasets.tables.public_t7]\npartitioning = {{ by = \"none\" }}\n",
            dir.path().display(),
            dir.path().join("lake").display()
        );
        let file = dir.path().join("bronze.toml");
        std::fs::write(&file, text).unwrap();
        let mut cfg = Config::load(&file).unwrap();
        assert_eq!(
            cfg.subscriptions(),
            vec![r"^db\.([a-z]+)\.((t|u)\d+)$".to_string()]
        );
        assert!(cfg.datasets.is_empty());
        assert_eq!(cfg.claim_topic("db.public.t7").unwrap(), Some(0));
        assert_eq!(cfg.claim_topic("db.public.t8").unwrap(), Some(1));
        assert_eq!(
            cfg.claim_topic("db.public.t7").unwrap(),
            Some(0),
            "made once"
        );
        assert_eq!(cfg.claim_topic("db.public.x1").unwrap(), None);
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
}
