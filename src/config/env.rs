//! Environment overrides (`BRONZE__SECTION__KEY=value`) and `${env:VAR}` interpolation, applied to the
//! parsed TOML tree before it is typed, so overridden values go through the same validation.

use std::path::Path;

use super::ConfigError;

/// Prefix of override variables. Path segments are separated by `__`; datasets are addressed by name:
/// `BRONZE__DATASETS__ORDERS__TABLE=s3://lake/orders`.
pub const ENV_PREFIX: &str = "BRONZE__";

pub(super) fn apply_overrides(
    file: &Path,
    tree: &mut toml::Table,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    let mut overrides: Vec<&(String, String)> = vars
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    // Deterministic order, so two variables for the same key always resolve the same way.
    overrides.sort();
    for (name, raw) in overrides {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                file,
                name.clone(),
                "environment override has an empty path segment",
            ));
        }
        let value = parse_value(raw);
        set_path(file, name, tree, &path, value)?;
    }
    Ok(())
}

/// Values are read as TOML literals when they parse as one (numbers, booleans, arrays), else as strings.
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(
    file: &Path,
    var: &str,
    tree: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), ConfigError> {
    let (head, rest) = path.split_first().expect("path is non-empty");
    if rest.is_empty() {
        tree.insert(head.clone(), value);
        return Ok(());
    }
    if head == "datasets" {
        let (name, rest) = rest.split_first().expect("checked above");
        if rest.is_empty() {
            return Err(ConfigError::invalid(
                file,
                var,
                "a dataset override needs a field: BRONZE__DATASETS__<NAME>__<FIELD>",
            ));
        }
        let datasets = tree
            .get_mut("datasets")
            .and_then(toml::Value::as_array_mut)
            .ok_or_else(|| ConfigError::invalid(file, var, "the file defines no datasets"))?;
        let wanted = name.replace('-', "_");
        let dataset = datasets
            .iter_mut()
            .filter_map(toml::Value::as_table_mut)
            .find(|d| {
                d.get("name")
                    .and_then(toml::Value::as_str)
                    .is_some_and(|n| n.to_ascii_lowercase().replace('-', "_") == wanted)
            })
            .ok_or_else(|| ConfigError::invalid(file, var, format!("no dataset named `{name}`")))?;
        return set_path(file, var, dataset, rest, value);
    }
    let child = tree
        .entry(head.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match child.as_table_mut() {
        Some(t) => set_path(file, var, t, rest, value),
        None => Err(ConfigError::invalid(
            file,
            var,
            format!("`{head}` is not a table, cannot set a key below it"),
        )),
    }
}

/// Replace `${env:NAME}` in every string value. Secrets stay out of the file and out of logs.
pub(super) fn interpolate(
    file: &Path,
    tree: &mut toml::Table,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    fn walk(
        file: &Path,
        key: &str,
        v: &mut toml::Value,
        vars: &[(String, String)],
    ) -> Result<(), ConfigError> {
        match v {
            toml::Value::String(s) if s.contains("${env:") => {
                *s = substitute(file, key, s, vars)?;
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(file, &format!("{key}[{i}]"), item, vars)?;
                }
            }
            toml::Value::Table(t) => {
                for (k, item) in t.iter_mut() {
                    let child = if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    };
                    walk(file, &child, item, vars)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    for (k, v) in tree.iter_mut() {
        walk(file, k, v, vars)?;
    }
    Ok(())
}

fn substitute(
    file: &Path,
    key: &str,
    s: &str,
    vars: &[(String, String)],
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${env:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let end = after
            .find('}')
            .ok_or_else(|| ConfigError::invalid(file, key, "unterminated `${env:` reference"))?;
        let name = &after[..end];
        let value = vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| {
                ConfigError::invalid(
                    file,
                    key,
                    format!("environment variable `{name}` is not set"),
                )
            })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
