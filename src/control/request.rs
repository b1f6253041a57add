//! Requests on the control topic: parsing and validation, each rejection with a code and a reason.
//! The contract is documented in `schemas/control/request.schema.json`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, DatasetConfig, PartitionBy};
use crate::jobs::backfill::{self, BackfillRequest};
use crate::jobs::extract::{ExtractMode, ExtractRequest};

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Backfill,
    Extract,
    Compact,
    Vacuum,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backfill => "backfill",
            Kind::Extract => "extract",
            Kind::Compact => "compact",
            Kind::Vacuum => "vacuum",
        }
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub request_id: String,
    pub dataset: String,
    pub kind: Kind,
    /// `[from, to)` in µs since the epoch (backfill, extract); with explicit partitions, their span.
    pub range: Option<(i64, i64)>,
    /// Explicit partitions of a backfill (`range.partitions`).
    pub partitions: Vec<String>,
    pub force: bool,
    pub dry_run: bool,
    /// Vacuum: files removed longer ago than this go (default `vacuum.retention`).
    pub retention: Option<Duration>,
    /// Compact: also partitions that are not sealed yet.
    pub all_partitions: bool,
    /// Backfill / extract: `kafka` or `postgres` (the dataset's extract source).
    pub source: String,
    /// Extract without a range: `incremental` (default) or `full`.
    pub extract_mode: Option<String>,
    pub requested_by: Option<String>,
    /// What the request asks, without its id and `force`: a second request under the same id must ask
    /// the same thing.
    pub fingerprint: String,
}

impl Request {
    /// Backfills from a database and extracts run as extracts.
    pub fn is_extract(&self) -> bool {
        self.kind == Kind::Extract || self.source == "postgres"
    }

    pub fn extract(&self) -> ExtractRequest {
        let mode = match (self.range, self.extract_mode.as_deref()) {
            (Some((from_us, to_us)), _) => ExtractMode::Range { from_us, to_us },
            (None, Some("full")) => ExtractMode::Full,
            (None, _) => ExtractMode::Incremental,
        };
        ExtractRequest {
            request_id: self.request_id.clone(),
            dataset: self.dataset.clone(),
            mode,
            force: self.force,
            dry_run: self.dry_run,
            requested_by: self.requested_by.clone(),
        }
    }

    pub fn backfill(&self) -> BackfillRequest {
        let (from_us, to_us) = self.range.unwrap_or_default();
        BackfillRequest {
            request_id: self.request_id.clone(),
            dataset: self.dataset.clone(),
            from_us,
            to_us,
            partitions: self.partitions.clone(),
            force: self.force,
            dry_run: self.dry_run,
            requested_by: self.requested_by.clone(),
        }
    }
}

/// Why a request is not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub request_id: Option<String>,
    pub dataset: Option<String>,
    /// Stable code: `bad_json`, `missing_id`, `unknown_kind`, `unknown_dataset`, `missing_range`,
    /// `bad_range`, `inverted_range`, `range_too_large`, `not_partitioned`, `unknown_source`,
    /// `source_not_configured`, `bad_option`, `duplicate_id`.
    pub code: &'static str,
    pub reason: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct RawRequest {
    request_id: Option<String>,
    dataset: Option<String>,
    kind: Option<String>,
    range: Option<RawRange>,
    source: Option<String>,
    #[serde(default)]
    options: RawOptions,
    requested_by: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct RawRange {
    from: Option<String>,
    to: Option<String>,
    /// Explicit partitions instead of from/to: `2026-11-01`, or `2026-11-01/05` on date/hour tables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    partitions: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct RawOptions {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
    retention: Option<String>,
    #[serde(default)]
    all_partitions: bool,
    mode: Option<String>,
}

/// An RFC 3339 time or a UTC date (`YYYY-MM-DD`), in µs since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()?
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_micros())
}

/// Why a request is refused: its stable code and the reason (see [`Rejection`]).
type Refusal = (&'static str, String);

/// Parse and validate one control message.
pub fn parse(cfg: &Config, bytes: &[u8]) -> Result<Request, Rejection> {
    let raw: RawRequest = serde_json::from_slice(bytes).map_err(|e| Rejection {
        request_id: None,
        dataset: None,
        code: "bad_json",
        reason: format!("not a JSON request object: {e}"),
    })?;
    validate(cfg, &raw).map_err(|(code, reason)| Rejection {
        request_id: raw.request_id.clone(),
        dataset: raw.dataset.clone(),
        code,
        reason,
    })
}

/// The request `raw` asks for, checked against the configuration, in the order its fields are read.
fn validate(cfg: &Config, raw: &RawRequest) -> Result<Request, Refusal> {
    let request_id = match raw.request_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => return Err(("missing_id", "`request_id` is missing or empty".into())),
    };
    let kind = kind_of(raw.kind.as_deref())?;
    let dataset = raw.dataset.clone().unwrap_or_default();
    let d = cfg
        .dataset(&dataset)
        .ok_or_else(|| ("unknown_dataset", format!("unknown dataset `{dataset}`")))?;
    // Anyone who can write the control topic gets this far (`requested_by` proves nothing): the
    // dataset's own policy says what such a writer may do to its table.
    if !d.control.allows(kind.as_str()) {
        return Err((
            "not_allowed",
            format!(
                "dataset `{dataset}` takes no `{}` requests from the control topic (its \
                 control.allow is {:?})",
                kind.as_str(),
                d.control.allow
            ),
        ));
    }
    if raw.options.force && !d.control.force {
        return Err((
            "force_not_allowed",
            format!("dataset `{dataset}` does not let requests `force` (control.force = false)"),
        ));
    }
    let source = source_of(kind, raw.source.as_deref(), d)?;
    let range = range_of(kind, raw.range.as_ref(), d)?;
    if let Some(e) = range.and_then(|(from, to)| backfill::range_too_long(cfg, from, to)) {
        return Err(("range_too_large", e));
    }
    let partitions = raw
        .range
        .as_ref()
        .map(|r| r.partitions.clone())
        .unwrap_or_default();
    let extract_mode = extract_mode_of(kind, raw.options.mode.as_deref(), range.is_some())?;
    if (kind == Kind::Backfill || range.is_some()) && d.partitioning.by == PartitionBy::None {
        return Err((
            "not_partitioned",
            format!(
                "dataset `{dataset}` is not time-partitioned: there are no partitions to replace"
            ),
        ));
    }
    let retention = match &raw.options.retention {
        Some(r) => Some(
            humantime::parse_duration(r)
                .map_err(|e| ("bad_option", format!("`options.retention` `{r}`: {e}")))?,
        ),
        None => None,
    };
    let fingerprint = serde_json::json!({
        "dataset": dataset, "kind": kind.as_str(), "range": range, "partitions": partitions, "source": source,
        "dry_run": raw.options.dry_run, "retention_s": retention.map(|r| r.as_secs()),
        "all_partitions": raw.options.all_partitions, "mode": extract_mode,
    })
    .to_string();
    Ok(Request {
        request_id,
        dataset,
        kind,
        range,
        partitions,
        force: raw.options.force,
        dry_run: raw.options.dry_run,
        retention,
        all_partitions: raw.options.all_partitions,
        source: source.to_string(),
        extract_mode,
        requested_by: raw.requested_by.clone(),
        fingerprint,
    })
}

fn kind_of(kind: Option<&str>) -> Result<Kind, Refusal> {
    match kind {
        Some("backfill") => Ok(Kind::Backfill),
        Some("extract") => Ok(Kind::Extract),
        Some("compact") => Ok(Kind::Compact),
        Some("vacuum") => Ok(Kind::Vacuum),
        other => Err((
            "unknown_kind",
            format!("`kind` is {other:?}; expected backfill, extract, compact or vacuum"),
        )),
    }
}

/// Where a request reads from: `kafka`, or `postgres` for datasets with a database source (the
/// default of extracts).
fn source_of<'a>(
    kind: Kind,
    source: Option<&'a str>,
    d: &DatasetConfig,
) -> Result<&'a str, Refusal> {
    let source = source.unwrap_or(match kind {
        Kind::Extract => "postgres",
        _ => "kafka",
    });
    match (kind, source) {
        (Kind::Backfill, "kafka") | (Kind::Compact | Kind::Vacuum, _) => Ok(source),
        (Kind::Backfill | Kind::Extract, "postgres") if d.extract.is_some() => Ok(source),
        (Kind::Backfill | Kind::Extract, "postgres") => Err((
            "source_not_configured",
            format!("dataset `{}` has no database source configured", d.name),
        )),
        (_, other) => Err((
            "unknown_source",
            format!("`source` is `{other}`; expected kafka or postgres"),
        )),
    }
}

/// The time range `[from, to)` in µs a request replaces: from `from`/`to`, or spanning the
/// partitions it names. Backfills need one.
fn range_of(
    kind: Kind,
    range: Option<&RawRange>,
    d: &DatasetConfig,
) -> Result<Option<(i64, i64)>, Refusal> {
    let r = match (kind, range) {
        (Kind::Backfill, None) => {
            return Err((
                "missing_range",
                "a backfill needs `range` with `from` and `to`".into(),
            ));
        }
        (_, None) => return Ok(None),
        (_, Some(r)) => r,
    };
    if !r.partitions.is_empty() {
        return crate::jobs::partition_swap::span_of(d.partitioning.by, &r.partitions)
            .map(Some)
            .map_err(|e| ("bad_range", e));
    }
    let time = |name: &str, v: &Option<String>| {
        v.as_deref().and_then(parse_time).ok_or_else(|| {
            (
                "bad_range",
                format!("`range.{name}` is {v:?}, not an RFC 3339 time or a date"),
            )
        })
    };
    let (from, to) = (time("from", &r.from)?, time("to", &r.to)?);
    if from >= to {
        return Err((
            "inverted_range",
            "`range.from` must be before `range.to`".into(),
        ));
    }
    Ok(Some((from, to)))
}

/// An extract without a range is `incremental` (the default) or `full`; no other request takes a mode.
fn extract_mode_of(
    kind: Kind,
    mode: Option<&str>,
    has_range: bool,
) -> Result<Option<String>, Refusal> {
    match mode {
        None if kind == Kind::Extract && !has_range => Ok(Some("incremental".to_string())),
        None => Ok(None),
        Some(m @ ("incremental" | "full")) if kind == Kind::Extract && !has_range => {
            Ok(Some(m.to_string()))
        }
        Some(m) => Err((
            "bad_option",
            format!(
                "`options.mode` `{m}` applies to extracts without a range: incremental or full"
            ),
        )),
    }
}

/// The JSON message for a request (what `bronze ... --submit` posts).
pub fn to_json(r: &Request) -> serde_json::Value {
    let time = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    };
    serde_json::to_value(RawRequest {
        request_id: Some(r.request_id.clone()),
        dataset: Some(r.dataset.clone()),
        kind: Some(r.kind.as_str().to_string()),
        range: r.range.map(|(from, to)| match r.partitions.is_empty() {
            true => RawRange {
                from: Some(time(from)),
                to: Some(time(to)),
                partitions: Vec::new(),
            },
            false => RawRange {
                partitions: r.partitions.clone(),
                ..RawRange::default()
            },
        }),
        source: matches!(r.kind, Kind::Backfill | Kind::Extract).then(|| r.source.clone()),
        options: RawOptions {
            force: r.force,
            dry_run: r.dry_run,
            retention: r
                .retention
                .map(|d| humantime::format_duration(d).to_string()),
            all_partitions: r.all_partitions,
            mode: r.extract_mode.clone(),
        },
        requested_by: r.requested_by.clone(),
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dataset whose control topic may ask everything.
    fn config() -> (tempfile::TempDir, Config) {
        crate::config::for_tests(
            "",
            "partitioning = { by = \"date\" }\n\
             control = { allow = [\"backfill\", \"extract\", \"compact\", \"vacuum\"], force = true }",
        )
    }

    #[test]
    fn the_documented_examples_are_valid_requests() {
        let (_dir, cfg) = config();
        let examples =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/control/examples");
        let mut parsed = 0;
        for entry in std::fs::read_dir(examples).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("status-") {
                continue;
            }
            let r = parse(&cfg, &std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            // What `--submit` posts parses back to the same request.
            let again = parse(&cfg, to_json(&r).to_string().as_bytes()).unwrap();
            assert_eq!(again, r, "{name}");
            parsed += 1;
        }
        assert_eq!(parsed, 5);
    }

    #[test]
    fn the_rerun_of_a_request_keeps_its_fingerprint() {
        let (_dir, cfg) = config();
        let first = parse(&cfg, br#"{"request_id": "a", "dataset": "orders", "kind": "backfill", "range": {"from": "2026-11-01", "to": "2026-11-02"}}"#).unwrap();
        let forced = parse(&cfg, br#"{"request_id": "a", "dataset": "orders", "kind": "backfill", "range": {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02"}, "options": {"force": true}}"#).unwrap();
        assert!(forced.force);
        assert_eq!(first.fingerprint, forced.fingerprint);
        let other = parse(&cfg, br#"{"request_id": "a", "dataset": "orders", "kind": "backfill", "range": {"from": "2026-11-01", "to": "2026-11-03"}}"#).unwrap();
        assert_ne!(first.fingerprint, other.fingerprint);
    }

    #[test]
    fn the_dataset_policy_decides_what_the_control_topic_may_ask() {
        let (_dir, cfg) = crate::config::for_tests("", "partitioning = { by = \"date\" }");
        let code = |json: &[u8]| parse(&cfg, json).err().map(|e| e.code);
        // By default: backfills, extracts' kin and compactions, neither vacuums nor `force`.
        assert_eq!(
            code(br#"{"request_id": "c", "dataset": "orders", "kind": "compact"}"#),
            None
        );
        assert_eq!(
            code(br#"{"request_id": "v", "dataset": "orders", "kind": "vacuum", "requested_by": "admin"}"#),
            Some("not_allowed"),
            "requested_by proves nothing"
        );
        let forced = br#"{"request_id": "f", "dataset": "orders", "kind": "backfill", "range": {"from": "2026-11-01", "to": "2026-11-02"}, "options": {"force": true}}"#;
        assert_eq!(code(forced), Some("force_not_allowed"));
        let (_dir, narrow) = crate::config::for_tests(
            "",
            "partitioning = { by = \"date\" }\ncontrol = { allow = [\"compact\"] }",
        );
        let backfill = br#"{"request_id": "b", "dataset": "orders", "kind": "backfill", "range": {"from": "2026-11-01", "to": "2026-11-02"}}"#;
        assert_eq!(
            parse(&narrow, backfill).err().map(|e| e.code),
            Some("not_allowed")
        );
    }
}
