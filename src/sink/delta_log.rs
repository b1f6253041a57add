//! Reading single entries of a table's Delta log, for the audit ledger and `bronze status`: cheaper
//! than loading a snapshot, and it sees every commit, not only the live files.

use deltalake::DeltaTableError;
use deltalake::logstore::LogStore;

/// What one commit did, from its log entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogEntry {
    pub version: u64,
    /// commitInfo.timestamp, in ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// The Delta operation (`WRITE`, `CREATE TABLE`, `OPTIMIZE`, ...).
    pub operation: Option<String>,
    /// What bronze recorded in commitInfo (run id, batch id, offsets, counts), for its own commits.
    pub bronze: Option<serde_json::Value>,
    pub files_added: u64,
    pub bytes_added: i64,
    pub files_removed: u64,
}

/// The entry of `version`, or `None` when the log has no such version (not written yet, or removed
/// by log cleanup).
pub async fn read_entry(
    store: &dyn LogStore,
    version: u64,
) -> Result<Option<LogEntry>, DeltaTableError> {
    let Some(bytes) = store.read_commit_entry(version).await? else {
        return Ok(None);
    };
    Ok(Some(parse_entry(version, &bytes)?))
}

/// What the log holds after `version`: the newest version, and whether any entry since changed the
/// table's metadata (its schema or partitioning). Reads at most `limit` entries; `None` for "more
/// than that", which a caller treats as a change.
pub async fn changes_after(
    store: &dyn LogStore,
    version: u64,
    limit: u64,
) -> Result<Option<(u64, bool)>, DeltaTableError> {
    let mut newest = version;
    let mut metadata = false;
    while newest - version < limit {
        let Some(bytes) = store.read_commit_entry(newest + 1).await? else {
            return Ok(Some((newest, metadata)));
        };
        metadata |= bytes
            .split(|b| *b == b'\n')
            .any(|line| line.starts_with(br#"{"metaData""#));
        newest += 1;
    }
    Ok(None)
}

/// The txn actions (app id, version) of commit `version`, in the order written; `None` when the
/// log no longer has that version.
pub(super) async fn read_txns(
    store: &dyn LogStore,
    version: u64,
) -> Result<Option<Vec<(String, i64)>>, DeltaTableError> {
    let Some(bytes) = store.read_commit_entry(version).await? else {
        return Ok(None);
    };
    parse_txns(version, &bytes).map(Some)
}

fn parse_txns(version: u64, bytes: &[u8]) -> Result<Vec<(String, i64)>, DeltaTableError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Txn {
        app_id: String,
        version: i64,
    }
    #[derive(serde::Deserialize)]
    struct Line {
        txn: Option<Txn>,
    }
    let mut out = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let action: Line = serde_json::from_slice(line)
            .map_err(|e| DeltaTableError::Generic(format!("log version {version}: {e}")))?;
        if let Some(t) = action.txn {
            out.push((t.app_id, t.version));
        }
    }
    Ok(out)
}

/// A data file a commit added.
#[derive(Debug, Clone, PartialEq)]
pub struct AddedFile {
    pub path: String,
    pub partition_values: std::collections::HashMap<String, Option<String>>,
    pub size: i64,
}

/// The files commit `version` added with `dataChange = true` (new rows, not rewrites); `None` when the
/// log no longer has that version.
pub async fn added_files(
    store: &dyn LogStore,
    version: u64,
) -> Result<Option<Vec<AddedFile>>, DeltaTableError> {
    let Some(bytes) = store.read_commit_entry(version).await? else {
        return Ok(None);
    };
    parse_adds(version, &bytes).map(Some)
}

fn parse_adds(version: u64, bytes: &[u8]) -> Result<Vec<AddedFile>, DeltaTableError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Add {
        path: String,
        #[serde(default)]
        partition_values: std::collections::HashMap<String, Option<String>>,
        #[serde(default)]
        size: i64,
        data_change: bool,
    }
    let mut out = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let action: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| DeltaTableError::Generic(format!("log version {version}: {e}")))?;
        let Some(add) = action.get("add") else {
            continue;
        };
        let add: Add = serde_json::from_value(add.clone())
            .map_err(|e| DeltaTableError::Generic(format!("log version {version}: add: {e}")))?;
        if add.data_change {
            // Paths in the log are URL-encoded, as object_store's `from_url_path` expects them.
            out.push(AddedFile {
                path: add.path,
                partition_values: add.partition_values,
                size: add.size,
            });
        }
    }
    Ok(out)
}

fn parse_entry(version: u64, bytes: &[u8]) -> Result<LogEntry, DeltaTableError> {
    let mut entry = LogEntry {
        version,
        ..LogEntry::default()
    };
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let action: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| DeltaTableError::Generic(format!("log version {version}: {e}")))?;
        if let Some(info) = action.get("commitInfo") {
            entry.timestamp_ms = info.get("timestamp").and_then(serde_json::Value::as_i64);
            entry.operation = info
                .get("operation")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string);
            entry.bronze = info.get("bronze").cloned();
        } else if let Some(add) = action.get("add") {
            entry.files_added += 1;
            entry.bytes_added += add
                .get("size")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0);
        } else if action.get("remove").is_some() {
            entry.files_removed += 1;
        }
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commit_info_adds_and_removes() {
        let log = br#"{"commitInfo":{"timestamp":1700000000123,"operation":"WRITE","bronze":{"run_id":"r1","rows_written":3}}}
{"txn":{"appId":"g:t:0","version":41}}
{"add":{"path":"a.parquet","size":100,"dataChange":true}}
{"add":{"path":"b.parquet","size":250,"dataChange":true}}
{"remove":{"path":"old.parquet","dataChange":true}}
"#;
        let e = parse_entry(7, log).unwrap();
        assert_eq!(e.version, 7);
        assert_eq!(e.timestamp_ms, Some(1_700_000_000_123));
        assert_eq!(e.operation.as_deref(), Some("WRITE"));
        assert_eq!(e.bronze.unwrap()["rows_written"], 3);
        assert_eq!((e.files_added, e.bytes_added, e.files_removed), (2, 350, 1));
    }

    #[test]
    fn added_files_are_the_data_changing_adds() {
        let log = br#"{"commitInfo":{"operation":"OPTIMIZE"}}
{"add":{"path":"event_date=2026-01-01/a.parquet","partitionValues":{"event_date":"2026-01-01"},"size":10,"dataChange":true}}
{"add":{"path":"b.parquet","partitionValues":{},"size":20,"dataChange":false}}
{"remove":{"path":"old.parquet","dataChange":true}}
"#;
        let adds = parse_adds(3, log).unwrap();
        assert_eq!(adds.len(), 1);
        assert_eq!(adds[0].path, "event_date=2026-01-01/a.parquet");
        assert_eq!(
            adds[0].partition_values["event_date"].as_deref(),
            Some("2026-01-01")
        );
    }

    #[test]
    fn txns_are_read_in_order() {
        let log = br#"{"commitInfo":{"operation":"WRITE"}}
{"txn":{"appId":"g:t:0","version":41,"lastUpdated":1}}
{"add":{"path":"a.parquet","size":100,"dataChange":true}}
{"txn":{"appId":"g:t:1","version":7}}
"#;
        let txns = parse_txns(2, log).unwrap();
        assert_eq!(
            txns,
            vec![("g:t:0".to_string(), 41), ("g:t:1".to_string(), 7)]
        );
        assert!(parse_txns(2, b"{\"txn\":{\"appId\":").is_err());
    }

    #[test]
    fn a_torn_line_is_an_error_not_an_empty_commit() {
        assert!(parse_entry(1, b"{\"commitInfo\":{").is_err());
    }
}
