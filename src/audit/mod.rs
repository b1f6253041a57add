//! The audit ledger: a Delta table (`_bronze_runs` beside the datasets by default) with one row per
//! commit of every dataset table and per event a run reports (start, end, failed commits, dropped
//! batches).
//!
//! Commit rows are not sent by the pipeline: the ledger follows each dataset table's Delta log and
//! transcribes every new version, recording in the same ledger commit a `txn` action per dataset
//! (app id `bronze-audit:<dataset>`, version = last table version transcribed). So a commit is in the
//! ledger exactly once even when a process dies between its data commit and its ledger commit, or when
//! several processes follow the same tables: the same conflict checking that guards the data path
//! refuses a second transcription of the same versions.

mod query;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::Transaction;
use deltalake::logstore::LogStoreRef;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::{Compression, Config};
use crate::sink::delta_log::{self, LogEntry};
use crate::sink::{SinkError, TableSink};

pub use query::{RunsFilter, SchemaEvent, recent_counts, runs, schema_events};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Sink(Box<SinkError>),
    #[error("audit ledger: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("audit ledger {uri}: {message}")]
    Query { uri: String, message: String },
}

impl From<SinkError> for AuditError {
    fn from(e: SinkError) -> Self {
        AuditError::Sink(Box::new(e))
    }
}

/// One row of the ledger. Counts are null where they do not apply to the kind.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AuditRecord {
    /// Unique per row: `<dataset>@<version>` for a transcribed commit, a fresh UUID for an event.
    pub record_id: String,
    /// `commit`, `run_started`, `run_finished`, `commit_failed`, `batch_dropped`, or the Delta
    /// operation of a commit bronze did not make (`create_table`, `optimize`, ...).
    pub kind: String,
    /// `succeeded`, `failed` or `running`.
    pub status: String,
    pub run_id: Option<String>,
    pub dataset: Option<String>,
    /// The table a transcribed commit belongs to (the dataset's, or its dead-letter table).
    pub table_uri: Option<String>,
    pub table_version: Option<i64>,
    pub operation: Option<String>,
    pub batch_id: Option<String>,
    pub request_id: Option<String>,
    /// JSON list of `{topic, partition, first_offset, last_offset, rows}`.
    pub offsets: Option<String>,
    pub rows_in: Option<i64>,
    pub rows_written: Option<i64>,
    pub rows_deduplicated: Option<i64>,
    pub rows_dead_lettered: Option<i64>,
    pub files_added: Option<i64>,
    pub files_removed: Option<i64>,
    pub bytes: Option<i64>,
    /// Microseconds since the epoch (UTC).
    pub started_at: Option<i64>,
    pub finished_at: i64,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    /// Anything else, as JSON.
    pub detail: Option<String>,
    /// Partition column: the UTC date of `finished_at`.
    pub event_date: String,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn date_of(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// Run totals for the `run_finished` row.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunTotals {
    pub rows_in: u64,
    pub rows_written: u64,
    pub rows_deduplicated: u64,
    pub rows_dead_lettered: u64,
    pub files: u64,
    pub bytes: u64,
}

impl AuditRecord {
    fn event(kind: &str, status: &str, run_id: &str) -> Self {
        let at = now_us();
        AuditRecord {
            record_id: uuid::Uuid::now_v7().to_string(),
            kind: kind.to_string(),
            status: status.to_string(),
            run_id: Some(run_id.to_string()),
            finished_at: at,
            event_date: date_of(at),
            ..AuditRecord::default()
        }
    }

    pub fn run_started(run_id: &str, datasets: &[String]) -> Self {
        let mut r = Self::event("run_started", "running", run_id);
        r.started_at = Some(r.finished_at);
        r.detail = Some(serde_json::json!({ "datasets": datasets }).to_string());
        r
    }

    pub fn run_finished(
        run_id: &str,
        started_at_us: i64,
        totals: RunTotals,
        error: Option<&str>,
    ) -> Self {
        let status = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        let mut r = Self::event("run_finished", status, run_id);
        r.started_at = Some(started_at_us);
        r.duration_ms = Some((r.finished_at - started_at_us) / 1000);
        r.rows_in = Some(totals.rows_in as i64);
        r.rows_written = Some(totals.rows_written as i64);
        r.rows_deduplicated = Some(totals.rows_deduplicated as i64);
        r.rows_dead_lettered = Some(totals.rows_dead_lettered as i64);
        r.files_added = Some(totals.files as i64);
        r.bytes = Some(totals.bytes as i64);
        r.error = error.map(str::to_string);
        r
    }

    /// A commit attempt that failed; the batch is kept and retried.
    pub fn commit_failed(run_id: &str, dataset: &str, batch_id: &str, error: &str) -> Self {
        let mut r = Self::event("commit_failed", "failed", run_id);
        r.dataset = Some(dataset.to_string());
        r.batch_id = Some(batch_id.to_string());
        r.error = Some(error.to_string());
        r
    }

    /// The first sighting in this run of one kind of drift on one column.
    pub fn drift(run_id: &str, dataset: &str, e: &crate::transform::DriftEvent) -> Self {
        let status = if e.action == "fail" {
            "failed"
        } else {
            "succeeded"
        };
        let mut r = Self::event("drift", status, run_id);
        r.dataset = Some(dataset.to_string());
        r.rows_in = Some(e.messages as i64);
        r.detail = Some(
            serde_json::json!({
                "kind": e.kind.as_str(), "column": e.column, "observed": e.observed,
                "expected": e.expected, "action": e.action,
            })
            .to_string(),
        );
        r
    }

    /// An operator's decision on a proposed column (`bronze schema approve|reject`): `kind` is
    /// `schema_approved` or `schema_rejected`, `detail` names the column and its type.
    pub fn schema_decision(
        kind: &str,
        run_id: &str,
        dataset: &str,
        detail: serde_json::Value,
        table_version: Option<u64>,
    ) -> Self {
        let mut r = Self::event(kind, "succeeded", run_id);
        r.dataset = Some(dataset.to_string());
        r.table_version = table_version.map(|v| v as i64);
        r.detail = Some(detail.to_string());
        r
    }

    /// The outcome of a control request: `status` is `succeeded`, `failed` or `rejected`.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        run_id: &str,
        request_id: &str,
        dataset: Option<&str>,
        status: &str,
        kind: Option<&str>,
        reason: Option<&str>,
        result: Option<&serde_json::Value>,
    ) -> Self {
        let mut r = Self::event("request", status, run_id);
        r.request_id = Some(request_id.to_string());
        r.dataset = dataset.map(str::to_string);
        r.operation = kind.map(str::to_string);
        r.error = reason.map(str::to_string);
        r.detail = result.map(|v| v.to_string());
        r
    }

    /// A batch dropped because another group member had committed its offsets first.
    pub fn batch_dropped(run_id: &str, dataset: &str, batch_id: &str, rows: usize) -> Self {
        let mut r = Self::event("batch_dropped", "failed", run_id);
        r.dataset = Some(dataset.to_string());
        r.batch_id = Some(batch_id.to_string());
        r.rows_in = Some(rows as i64);
        r.error = Some("offsets already committed by another member (stale batch)".to_string());
        r
    }

    /// The row of one version of a followed table's log.
    fn transcribe(f: &Followed, e: &LogEntry) -> Self {
        let dataset = f.dataset.as_str();
        let finished_at = e.timestamp_ms.map_or_else(now_us, |ms| ms * 1000);
        let b = e.bronze.as_ref();
        let text = |k: &str| b.and_then(|b| b.get(k)?.as_str().map(str::to_string));
        let int = |k: &str| b.and_then(|b| b.get(k)?.as_i64());
        let started_at = int("flush_started_ms").map(|ms| ms * 1000);
        let kind = match (text("kind"), b) {
            (Some(k), _) => k,
            (None, Some(_)) => "commit".to_string(),
            (None, None) => e
                .operation
                .as_deref()
                .unwrap_or("unknown")
                .to_lowercase()
                .replace(' ', "_"),
        };
        AuditRecord {
            record_id: format!("{}@{}", f.name(), e.version),
            kind,
            status: "succeeded".to_string(),
            run_id: text("run_id"),
            dataset: Some(dataset.to_string()),
            table_uri: Some(f.uri.clone()),
            table_version: Some(e.version as i64),
            operation: e.operation.clone(),
            batch_id: text("batch_id"),
            request_id: text("request_id"),
            offsets: b.and_then(|b| b.get("offsets")).map(|o| o.to_string()),
            rows_in: int("rows_in"),
            rows_written: int("rows_written"),
            rows_deduplicated: int("duplicates_dropped"),
            rows_dead_lettered: int("dead_lettered"),
            files_added: Some(e.files_added as i64),
            files_removed: Some(e.files_removed as i64),
            bytes: Some(e.bytes_added),
            started_at,
            finished_at,
            duration_ms: started_at.map(|s| (finished_at - s) / 1000),
            error: None,
            detail: None,
            event_date: date_of(finished_at),
        }
    }
}

/// The ledger table's schema.
pub fn schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let s = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let i = |name: &str| Field::new(name, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        s("record_id", false),
        s("kind", false),
        s("status", false),
        s("run_id", true),
        s("dataset", true),
        s("table_uri", true),
        i("table_version"),
        s("operation", true),
        s("batch_id", true),
        s("request_id", true),
        s("offsets", true),
        i("rows_in"),
        i("rows_written"),
        i("rows_deduplicated"),
        i("rows_dead_lettered"),
        i("files_added"),
        i("files_removed"),
        i("bytes"),
        Field::new("started_at", ts(), true),
        Field::new("finished_at", ts(), false),
        i("duration_ms"),
        s("error", true),
        s("detail", true),
        s("event_date", false),
    ]))
}

const PARTITION_COLUMNS: &[&str] = &["event_date"];

fn to_batch(records: &[AuditRecord]) -> Result<RecordBatch, AuditError> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema()).build_decoder()?;
    decoder.serialize(records)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema())))
}

/// Most log versions transcribed per dataset in one sync, so a long backlog lands in steps.
const MAX_VERSIONS_PER_SYNC: u64 = 2000;

struct Followed {
    dataset: String,
    uri: String,
    dead_letters: bool,
    log: LogStoreRef,
    /// Entries read but not yet recorded, so a retried sync does not read them again.
    cache: HashMap<u64, LogEntry>,
}

impl Followed {
    /// `orders` for a dataset's table, `orders/dead_letters` for its dead-letter table.
    fn name(&self) -> String {
        if self.dead_letters {
            format!("{}/dead_letters", self.dataset)
        } else {
            self.dataset.clone()
        }
    }

    /// The txn app id under which the ledger records how far it transcribed this table.
    fn app_id(&self) -> String {
        crate::txn::audit(&self.name())
    }
}

/// The ledger table and the dataset tables it follows.
pub struct Ledger {
    sink: TableSink,
    followed: Vec<Followed>,
}

impl Ledger {
    /// Open (or create) the ledger of `cfg` and the logs of its datasets.
    pub async fn open(cfg: &Config) -> Result<Ledger, AuditError> {
        let options = cfg.storage_options();
        let sink = TableSink::open(
            &cfg.audit.table_uri,
            schema(),
            PARTITION_COLUMNS,
            false,
            &options,
            Compression::Zstd,
        )
        .await?
        .with_commit_attempts(cfg.storage.commit_attempts);
        let mut ledger = Ledger {
            sink,
            followed: Vec::with_capacity(cfg.datasets.len() * 2),
        };
        ledger.follow(cfg)?;
        Ok(ledger)
    }

    /// Follow the tables of `cfg`'s datasets not followed yet (tables fan-outs made).
    pub fn follow(&mut self, cfg: &Config) -> Result<(), AuditError> {
        let options = cfg.storage_options();
        for d in &cfg.datasets {
            if self.followed.iter().any(|f| f.dataset == d.name) {
                continue;
            }
            for (uri, dead_letters) in [(&d.table_uri, false), (&d.dead_letters.table_uri, true)] {
                self.followed.push(Followed {
                    dataset: d.name.clone(),
                    uri: uri.clone(),
                    dead_letters,
                    log: crate::sink::open_log(uri, &options)?,
                    cache: HashMap::new(),
                });
            }
        }
        Ok(())
    }

    /// Record `events` and every dataset commit not yet in the ledger, in one ledger commit.
    /// Returns the number of rows written.
    pub async fn sync(&mut self, events: &[AuditRecord]) -> Result<usize, AuditError> {
        let mut retry = self.sink.retry("audit");
        loop {
            retry.next(&mut self.sink).await?;
            let mut records = events.to_vec();
            let mut txns = Vec::new();
            for f in &mut self.followed {
                let from = self
                    .sink
                    .committed_offset(&f.app_id())
                    .await?
                    .map_or(0, |v| v as u64 + 1);
                f.cache.retain(|v, _| *v >= from);
                let mut next = from;
                while next - from < MAX_VERSIONS_PER_SYNC {
                    let entry = match f.cache.get(&next) {
                        Some(e) => e.clone(),
                        None => match delta_log::read_entry(f.log.as_ref(), next).await {
                            Ok(Some(e)) => {
                                f.cache.insert(next, e.clone());
                                e
                            }
                            Ok(None) => break,
                            Err(e) => {
                                return Err(SinkError::Delta {
                                    uri: f.log.root_url().to_string(),
                                    source: e,
                                }
                                .into());
                            }
                        },
                    };
                    records.push(AuditRecord::transcribe(f, &entry));
                    next += 1;
                }
                if next > from {
                    txns.push(Transaction::new_with_last_update(
                        f.app_id(),
                        next as i64 - 1,
                        Some(chrono::Utc::now().timestamp_millis()),
                    ));
                }
            }
            if records.is_empty() {
                return Ok(0);
            }
            let adds = self.sink.write_files(&[to_batch(&records)?]).await?;
            let metadata = vec![(
                "bronze".to_string(),
                serde_json::json!({ "kind": "audit", "records": records.len() }),
            )];
            match self.sink.try_commit(&adds, txns, metadata, None).await {
                Ok(Some(version)) => {
                    debug!(version, records = records.len(), "audit ledger committed");
                    return Ok(records.len());
                }
                Ok(None) => {
                    // Another process transcribed some of the same versions: read again.
                    self.sink.discard_files(&adds).await;
                }
                Err(e) => {
                    self.sink.discard_files(&adds).await;
                    return Err(e.into());
                }
            }
        }
    }
}

/// The pipeline's side of the ledger: events go through a channel to a background task that syncs
/// every `interval` and once more when the handle is closed.
pub struct AuditHandle {
    tx: mpsc::UnboundedSender<AuditRecord>,
    task: tokio::task::JoinHandle<()>,
}

/// Records events into the ledger of a running `bronze run` (see [`AuditHandle::recorder`]).
#[derive(Clone)]
pub struct AuditRecorder {
    tx: mpsc::UnboundedSender<AuditRecord>,
}

impl AuditRecorder {
    pub fn record(&self, record: AuditRecord) {
        let _ = self.tx.send(record);
    }
}

/// Events kept while the ledger cannot be written; beyond this the oldest are dropped (and counted).
const MAX_HELD_EVENTS: usize = 10_000;

impl AuditHandle {
    /// The ledger's task; it follows the tables `updates` adds, from their first commit.
    pub fn spawn(
        mut ledger: Ledger,
        interval: Duration,
        mut updates: Option<crate::config::ConfigUpdates>,
    ) -> AuditHandle {
        let (tx, mut rx) = mpsc::unbounded_channel::<AuditRecord>();
        let task = tokio::spawn(async move {
            let mut held: Vec<AuditRecord> = Vec::new();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut open = true;
            while open {
                tokio::select! {
                    _ = tick.tick() => {}
                    event = rx.recv() => match event {
                        Some(e) => { held.push(e); continue; }
                        None => open = false,
                    },
                }
                while let Ok(e) = rx.try_recv() {
                    held.push(e);
                }
                if held.len() > MAX_HELD_EVENTS {
                    let excess = held.len() - MAX_HELD_EVENTS;
                    held.drain(..excess);
                    metrics::counter!("bronze_audit_events_dropped_total").increment(excess as u64);
                }
                if let Some(u) = updates
                    .as_mut()
                    .filter(|u| u.has_changed().unwrap_or(false))
                {
                    let cfg = u.borrow_and_update().clone();
                    if let Err(e) = ledger.follow(&cfg) {
                        warn!(error = %e, "cannot follow the new tables; retrying at the next interval");
                        u.mark_changed();
                    }
                }
                match ledger.sync(&held).await {
                    Ok(n) => {
                        held.clear();
                        metrics::counter!("bronze_audit_records_total").increment(n as u64);
                    }
                    Err(e) => {
                        metrics::counter!("bronze_audit_errors_total").increment(1);
                        warn!(error = %e, held = held.len(), "audit ledger write failed; retrying at the next interval");
                    }
                }
            }
        });
        AuditHandle { tx, task }
    }

    pub fn record(&self, record: AuditRecord) {
        // The task only ends after `close`, so a send cannot fail before it.
        let _ = self.tx.send(record);
    }

    /// A handle for another task to record events with. It must be dropped before [`AuditHandle::close`]
    /// can finish.
    pub fn recorder(&self) -> AuditRecorder {
        AuditRecorder {
            tx: self.tx.clone(),
        }
    }

    /// Write what is pending (events and commits) and stop, waiting at most `timeout`.
    pub async fn close(self, timeout: Duration) {
        drop(self.tx);
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            warn!(
                "audit ledger did not finish its last write in time; the next run transcribes the commits"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn followed(dead_letters: bool) -> Followed {
        let uri = "memory:///orders";
        Followed {
            dataset: "orders".into(),
            uri: uri.into(),
            dead_letters,
            log: crate::sink::open_log(uri, &HashMap::new()).unwrap(),
            cache: HashMap::new(),
        }
    }

    #[test]
    fn a_bronze_commit_becomes_a_commit_row() {
        let entry = LogEntry {
            version: 12,
            timestamp_ms: Some(1_790_000_000_500),
            operation: Some("WRITE".into()),
            bronze: Some(serde_json::json!({
                "run_id": "r", "batch_id": "b", "flush_started_ms": 1_790_000_000_000i64,
                "offsets": [{"topic": "t", "partition": 0, "first_offset": 5, "last_offset": 9, "rows": 5}],
                "rows_in": 5, "rows_written": 4, "duplicates_dropped": 1
            })),
            files_added: 2,
            bytes_added: 2048,
            files_removed: 0,
        };
        let r = AuditRecord::transcribe(&followed(false), &entry);
        assert_eq!(r.record_id, "orders@12");
        assert_eq!(
            (r.kind.as_str(), r.status.as_str()),
            ("commit", "succeeded")
        );
        assert_eq!(r.duration_ms, Some(500));
        assert_eq!(
            (r.rows_in, r.rows_written, r.rows_deduplicated),
            (Some(5), Some(4), Some(1))
        );
        assert_eq!(r.event_date, "2026-09-21");
        let batch = to_batch(&[r]).unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), schema());
    }

    #[test]
    fn a_foreign_commit_is_named_by_its_operation() {
        let entry = LogEntry {
            version: 0,
            operation: Some("CREATE TABLE".into()),
            ..LogEntry::default()
        };
        let r = AuditRecord::transcribe(&followed(false), &entry);
        assert_eq!(r.kind, "create_table");
        assert_eq!(r.run_id, None);
        let dlq = AuditRecord::transcribe(&followed(true), &entry);
        assert_eq!(dlq.record_id, "orders/dead_letters@0");
    }
}
