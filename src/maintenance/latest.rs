//! The `latest` view of a dataset: a second Delta table holding the newest row of every key, derived
//! from the dataset's (history) table without a whole-table MERGE.
//!
//! The view is partitioned by a hash bucket of the key (`_bucket`). A refresh reads only the data files
//! the history table added since the version the view last applied (from the Delta log), keeps the
//! newest change per key among them (the dataset's ordering column, then history version, then offset),
//! and rewrites just the buckets those keys fall in: their old files are removed and the merged rows
//! added, in one commit that also records the history version applied (a `txn` action, app id
//! `bronze-latest:<dataset>`), so a refresh that dies half-way is simply done again. A delete (`op = d`)
//! removes its key. Memory: the changed keys' positions, plus the rows of the buckets of one pass; when
//! the rows to merge exceed `latest.max_bytes` the buckets are merged in several passes, each reading
//! the new files again.
//!
//! A refresh starts over from the whole history (a rebuild) when the view is new or the log no longer
//! has a version it needs.
//!
//! Over 600 lines on purpose: a refresh is one algorithm (plan the passes, merge each pass, commit), and
//! its steps share the bucket and file bookkeeping; split apart they would pass that state around.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::kernel::Transaction;
use serde::Serialize;
use tracing::{info, warn};

use super::MaintenanceError;
use super::carry_forward::{self, Donors, KeyColumn, earlier_donors, earlier_rows, rows_lacking};
use crate::config::{Config, ConfigUpdates, DatasetConfig, LatestConfig};
use crate::contract::UNAVAILABLE_COLUMN;
use crate::sink::{SinkError, TableSink};
use crate::transform::{Cell, OrderValue, key_of_arrow};

/// The view's partition column.
pub const BUCKET_COLUMN: &str = "_bucket";

/// What one refresh did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LatestReport {
    pub dataset: String,
    /// History versions applied: (after, up to and including).
    pub from_version: Option<u64>,
    pub to_version: Option<u64>,
    /// Rebuilt from the whole history.
    pub rebuilt: bool,
    pub files_read: usize,
    pub rows_read: u64,
    /// Keys whose newest change was an insert/update/read (written) or a delete (removed).
    pub keys_upserted: u64,
    pub keys_deleted: u64,
    pub buckets_rewritten: usize,
    pub passes: usize,
    pub files_removed: usize,
    pub files_added: usize,
    /// A view version committed by this refresh.
    pub version: Option<u64>,
    /// Another writer committed to the view first; the refresh is left to the next round.
    pub conflict: bool,
    pub duration_ms: u64,
}

/// The newest change of one key among the new files.
#[derive(Clone)]
pub(super) struct Change {
    pub bucket: u32,
    pub order: OrderValue,
    pub version: u64,
    pub offset: i64,
    pub delete: bool,
    /// Where its row is: index into the new files, row within the file.
    pub file: usize,
    pub row: usize,
    /// Columns its row lacks (`_unavailable_columns`): carried forward from the key's previous value.
    pub unavailable: Vec<String>,
}

impl Change {
    pub fn newer_than(&self, other: &Change) -> bool {
        (&self.order, self.version, self.offset) > (&other.order, other.version, other.offset)
    }
}

/// A history file to read, and the history version that added it.
pub(super) struct NewFile {
    pub path: String,
    pub partition_values: HashMap<String, Option<String>>,
    pub size: i64,
    pub version: u64,
}

/// What every step of one refresh reads.
pub(super) struct Sources<'a> {
    pub history: &'a TableSink,
    pub history_schema: &'a SchemaRef,
    pub view_schema: &'a SchemaRef,
    pub d: &'a DatasetConfig,
    /// The history files this refresh applies.
    pub files: &'a [NewFile],
}

/// The view files one refresh removes and adds, in one commit.
#[derive(Default)]
struct Edits {
    removes: Vec<deltalake::kernel::Remove>,
    adds: Vec<deltalake::kernel::Add>,
}

/// Bring `d`'s latest view up to the newest version of its table.
pub async fn refresh(cfg: &Config, d: &DatasetConfig) -> Result<LatestReport, MaintenanceError> {
    let started = Instant::now();
    let Some(view_cfg) = &d.latest else {
        return Err(MaintenanceError::NotConfigured(d.name.clone()));
    };
    let mut report = LatestReport {
        dataset: d.name.clone(),
        ..LatestReport::default()
    };
    let options = cfg.storage_options();
    let Some(history) = TableSink::existing(&d.table_uri, &options).await? else {
        return Ok(report);
    };
    let Some(head) = history.version() else {
        return Ok(report);
    };
    let history_schema = history.arrow_schema()?;
    let view_schema = view_schema(&history_schema);
    let mut view = match TableSink::existing(&view_cfg.table_uri, &options).await? {
        Some(v) => v,
        None => {
            let (uri, codec) = (&view_cfg.table_uri, cfg.storage.compression);
            let schema = view_schema.clone();
            TableSink::open(uri, schema, &[BUCKET_COLUMN], true, &options, codec).await?
        }
    };
    let app_id = crate::txn::latest_view(&d.name);
    let applied = view.committed_offset(&app_id).await?.map(|v| v as u64);
    report.from_version = applied;
    report.to_version = Some(head);
    if applied.is_some_and(|a| a >= head) {
        return Ok(report);
    }
    widen_view(&mut view, &view_schema).await?;
    let files = match new_files(&history, applied, head).await? {
        Some(files) => files,
        None => {
            report.rebuilt = true;
            live_files(&history)?
        }
    };
    report.files_read = files.len();
    let src = Sources {
        history: &history,
        history_schema: &history_schema,
        view_schema: &view_schema,
        d,
        files: &files,
    };
    let changes = newest_changes(&src, view_cfg, &mut report).await?;
    let earlier = earlier_donors(&src, &changes).await?;
    // With nothing but skipped offsets the commit only records the version, so the next refresh
    // starts after it.
    let edits = if changes.is_empty() && !report.rebuilt {
        Edits::default()
    } else {
        rewrite_buckets(&src, &view, view_cfg, &changes, &earlier, &mut report).await?
    };
    commit(&mut view, &view_schema, edits, &app_id, head, &mut report).await?;
    Ok(finish(report, started))
}

/// Plan the passes over the changed buckets and merge them; on failure, the files written so far
/// are deleted.
async fn rewrite_buckets(
    src: &Sources<'_>,
    view: &TableSink,
    view_cfg: &LatestConfig,
    changes: &HashMap<String, Change>,
    earlier: &HashMap<KeyColumn, Change>,
    report: &mut LatestReport,
) -> Result<Edits, MaintenanceError> {
    let mut by_bucket: BTreeMap<u32, Vec<(&String, &Change)>> = BTreeMap::new();
    for (key, c) in changes {
        by_bucket.entry(c.bucket).or_default().push((key, c));
    }
    let buckets: Vec<u32> = if report.rebuilt {
        (0..view_cfg.buckets).collect()
    } else {
        by_bucket.keys().copied().collect()
    };
    let mut view_files = files_by_bucket(view)?;
    let passes = plan_passes(
        &view_files,
        &buckets,
        src.files,
        &by_bucket,
        view_cfg.max_bytes,
    );
    report.passes = passes.len();
    let mut edits = Edits::default();
    for pass in &passes {
        let merged = merge_pass(
            src,
            view,
            &mut view_files,
            pass,
            &by_bucket,
            earlier,
            report.rebuilt,
        );
        let merged = merged.await;
        match merged {
            Ok(pass_edits) => {
                edits.removes.extend(pass_edits.removes);
                edits.adds.extend(pass_edits.adds);
            }
            Err(e) => {
                view.discard_files(&edits.adds).await;
                return Err(e);
            }
        }
    }
    report.buckets_rewritten = buckets.len();
    report.keys_deleted = changes.values().filter(|c| c.delete).count() as u64;
    report.keys_upserted = changes.len() as u64 - report.keys_deleted;
    Ok(edits)
}

fn finish(mut report: LatestReport, started: Instant) -> LatestReport {
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

/// The history table's columns (its partition columns as plain columns) and the bucket.
fn view_schema(history: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = history
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(BUCKET_COLUMN, DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// Columns the history widened are widened in the view first (rewriting it), so merged rows fit.
async fn widen_view(view: &mut TableSink, wanted: &SchemaRef) -> Result<(), SinkError> {
    let have = view.arrow_schema()?;
    for f in wanted.fields() {
        if let Ok(v) = have.field_with_name(f.name())
            && crate::contract::is_widening(v.data_type(), f.data_type())
        {
            view.widen_column(f.name(), f.data_type()).await?;
        }
    }
    Ok(())
}

/// Files the history added after `applied` up to `head`; `None` when a rebuild is needed (no version
/// applied yet, or the log no longer has one of them).
async fn new_files(
    history: &TableSink,
    applied: Option<u64>,
    head: u64,
) -> Result<Option<Vec<NewFile>>, SinkError> {
    let Some(applied) = applied else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for version in applied + 1..=head {
        let Some(added) = history.files_added_in(version).await? else {
            warn!(table = %history.uri(), version, "log entry gone: rebuilding the latest view");
            return Ok(None);
        };
        out.extend(added.into_iter().map(|a| NewFile {
            path: a.path,
            partition_values: a.partition_values,
            size: a.size,
            version,
        }));
    }
    Ok(Some(out))
}

/// Every live file of the history (a rebuild); the version of each is the snapshot's.
fn live_files(history: &TableSink) -> Result<Vec<NewFile>, SinkError> {
    let version = history.version().unwrap_or(0);
    Ok(history
        .removes_where(|_| true)?
        .into_iter()
        .map(|r| NewFile {
            path: r.path,
            partition_values: r.partition_values.unwrap_or_default(),
            size: r.size.unwrap_or(0),
            version,
        })
        .collect())
}

/// Stable across processes and releases (the bucket of a key must never move): FNV-1a.
fn bucket_of(key: &str, buckets: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(buckets)) as u32
}

/// The columns that identify and order a row: key columns, the ordering column, `_offset`, `_op`.
fn identity_columns(d: &DatasetConfig) -> Vec<&str> {
    let mut cols: Vec<&str> = d.key_columns.iter().map(String::as_str).collect();
    cols.push(d.ordering_column.as_str());
    cols.push("_offset");
    cols.push("_op");
    cols.dedup();
    cols
}

/// Key, order value, offset and op of every row of `batch` (which has [`identity_columns`]).
pub(super) fn identities(
    batch: &RecordBatch,
    d: &DatasetConfig,
) -> Vec<Option<(String, OrderValue, i64, bool)>> {
    let keys: Vec<&dyn Array> = d
        .key_columns
        .iter()
        .filter_map(|k| batch.column_by_name(k).map(|c| c.as_ref()))
        .collect();
    let order = batch.column_by_name(&d.ordering_column);
    let offset = batch
        .column_by_name("_offset")
        .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>());
    let op = batch
        .column_by_name("_op")
        .and_then(|c| c.as_string_opt::<i32>());
    let (Some(offset), Some(op)) = (offset, op) else {
        return vec![None; batch.num_rows()];
    };
    let complete = keys.len() == d.key_columns.len();
    (0..batch.num_rows())
        .map(|i| {
            let mut key = String::new();
            if !complete || op.value(i) == "t" || !key_of_arrow(&keys, i, &mut key) {
                return None;
            }
            let order = order
                .and_then(|c| Cell::from_arrow(c.as_ref(), i))
                .map_or(OrderValue::Null, |c| c.order_value());
            Some((key, order, offset.value(i), op.value(i) == "d"))
        })
        .collect()
}

/// Phase one: the newest change of every key in the new files (positions only, not rows).
async fn newest_changes(
    src: &Sources<'_>,
    view_cfg: &LatestConfig,
    report: &mut LatestReport,
) -> Result<HashMap<String, Change>, SinkError> {
    let mut changes: HashMap<String, Change> = HashMap::new();
    for (f, file) in src.files.iter().enumerate() {
        let mut row = 0;
        for batch in read_identities(src, file).await? {
            report.rows_read += batch.num_rows() as u64;
            let unavailable = batch.column_by_name(UNAVAILABLE_COLUMN);
            for (i, id) in identities(&batch, src.d).into_iter().enumerate() {
                if let Some((key, order, offset, delete)) = id {
                    let change = Change {
                        bucket: bucket_of(&key, view_cfg.buckets),
                        order,
                        version: file.version,
                        offset,
                        delete,
                        file: f,
                        row,
                        unavailable: carry_forward::names_at(unavailable, i),
                    };
                    match changes.get(&key) {
                        Some(old) if !change.newer_than(old) => {}
                        _ => {
                            changes.insert(key, change);
                        }
                    }
                }
                row += 1;
            }
        }
    }
    Ok(changes)
}

/// A history file's identity columns and its rows' `_unavailable_columns`.
pub(super) async fn read_identities(
    src: &Sources<'_>,
    file: &NewFile,
) -> Result<Vec<RecordBatch>, SinkError> {
    let mut columns = identity_columns(src.d);
    columns.push(UNAVAILABLE_COLUMN);
    let (path, values, schema) = (&file.path, &file.partition_values, src.history_schema);
    src.history
        .read_file(path, values, schema, Some(&columns))
        .await
}

/// The view's live files by bucket, as the remove actions a rewrite of the bucket commits.
fn files_by_bucket(
    view: &TableSink,
) -> Result<HashMap<u32, Vec<deltalake::kernel::Remove>>, SinkError> {
    let mut out: HashMap<u32, Vec<deltalake::kernel::Remove>> = HashMap::new();
    for r in view.removes_where(|_| true)? {
        let bucket = r
            .partition_values
            .as_ref()
            .and_then(|p| p.get(BUCKET_COLUMN).cloned().flatten())
            .and_then(|b| b.parse().ok())
            .unwrap_or_default();
        out.entry(bucket).or_default().push(r);
    }
    Ok(out)
}

/// Group buckets into passes whose estimated merge memory stays under `max_bytes`: a bucket's view
/// files plus its share of the new files, decoded (≈ 4× their Parquet size).
fn plan_passes(
    view_files: &HashMap<u32, Vec<deltalake::kernel::Remove>>,
    buckets: &[u32],
    files: &[NewFile],
    by_bucket: &BTreeMap<u32, Vec<(&String, &Change)>>,
    max_bytes: usize,
) -> Vec<Vec<u32>> {
    const DECODED_PER_PARQUET_BYTE: u64 = 4;
    let new_bytes: u64 = files.iter().map(|f| f.size.max(0) as u64).sum();
    let changes: usize = by_bucket.values().map(Vec::len).sum::<usize>().max(1);
    let view_bytes = |b: u32| -> u64 {
        view_files
            .get(&b)
            .into_iter()
            .flatten()
            .map(|r| r.size.unwrap_or(0).max(0) as u64)
            .sum()
    };
    let mut passes: Vec<Vec<u32>> = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    let mut used = 0u64;
    for &b in buckets {
        let share = by_bucket.get(&b).map_or(0, Vec::len) as u64 * new_bytes / changes as u64;
        let cost = (view_bytes(b) + share) * DECODED_PER_PARQUET_BYTE;
        if !current.is_empty() && used + cost > max_bytes as u64 {
            passes.push(std::mem::take(&mut current));
            used = 0;
        }
        current.push(b);
        used += cost;
    }
    if !current.is_empty() {
        passes.push(current);
    }
    passes
}

/// Phase two, one pass: read the new files once for the rows of the pass's buckets, merge each
/// bucket with its view rows, write it.
async fn merge_pass(
    src: &Sources<'_>,
    view: &TableSink,
    view_files: &mut HashMap<u32, Vec<deltalake::kernel::Remove>>,
    pass: &[u32],
    by_bucket: &BTreeMap<u32, Vec<(&String, &Change)>>,
    earlier: &HashMap<KeyColumn, Change>,
    rebuild: bool,
) -> Result<Edits, MaintenanceError> {
    let mut new_rows = pass_rows(src, view, pass, by_bucket).await?;
    let (earlier, by_column) = earlier_rows(src, view, pass, earlier).await?;
    let mut edits = Edits::default();
    for b in pass {
        let bucket = b.to_string();
        let old = view_files.remove(b).unwrap_or_default();
        let changed: HashMap<&String, &Change> = by_bucket
            .get(b)
            .into_iter()
            .flatten()
            .map(|(k, c)| (*k, *c))
            .collect();
        let mut out: Vec<RecordBatch> = Vec::new();
        let mut superseded: Vec<&String> = Vec::new();
        let mut prior: Vec<RecordBatch> = Vec::new();
        if !rebuild {
            for r in &old {
                let values = r.partition_values.clone().unwrap_or_default();
                for batch in view
                    .read_file(&r.path, &values, src.view_schema, None)
                    .await?
                {
                    let (keep, beaten) = keep_unchanged(&batch, src.d, &changed);
                    superseded.extend(beaten);
                    let lacking = rows_lacking(&batch, src.d, &changed);
                    if !lacking.is_empty() {
                        prior.push(take_rows(&batch, &lacking).map_err(|e| arrow_error(view, e))?);
                    }
                    out.push(take_rows(&batch, &keep).map_err(|e| arrow_error(view, e))?);
                }
            }
        }
        let (prior, by_key) = carry_forward::by_key(&prior, src.view_schema, src.d)
            .map_err(|e| arrow_error(view, e))?;
        let donors = Donors {
            earlier: earlier.as_ref(),
            by_column: Some(&by_column),
            prior: prior.as_ref(),
            by_key,
        };
        for batch in new_rows.remove(b).unwrap_or_default() {
            let keep = drop_beaten(&batch, src.d, &superseded);
            let batch = take_rows(&batch, &keep).map_err(|e| arrow_error(view, e))?;
            let batch = carry_forward::fill_rows(&batch, src.d, &donors)
                .map_err(|e| arrow_error(view, e))?;
            let batch = with_bucket(&batch, src.view_schema, &bucket);
            out.push(batch.map_err(|e| arrow_error(view, e))?);
        }
        out.retain(|b| b.num_rows() > 0);
        edits.removes.extend(old);
        if !out.is_empty() {
            let merged = arrow::compute::concat_batches(src.view_schema, &out)
                .map_err(|e| arrow_error(view, e))?;
            edits.adds.extend(view.write_files(&[merged]).await?);
        }
    }
    Ok(edits)
}

/// The rows of a pass's changes (deletes have none), read file by file, by bucket.
async fn pass_rows(
    src: &Sources<'_>,
    view: &TableSink,
    pass: &[u32],
    by_bucket: &BTreeMap<u32, Vec<(&String, &Change)>>,
) -> Result<HashMap<u32, Vec<RecordBatch>>, MaintenanceError> {
    // file -> [(row, bucket)]
    let mut wanted: HashMap<usize, Vec<(usize, u32)>> = HashMap::new();
    for b in pass {
        for (_, c) in by_bucket.get(b).into_iter().flatten() {
            if !c.delete {
                wanted.entry(c.file).or_default().push((c.row, *b));
            }
        }
    }
    let mut new_rows: HashMap<u32, Vec<RecordBatch>> = HashMap::new();
    for (f, rows) in wanted {
        let file = &src.files[f];
        let batches = src
            .history
            .read_file(&file.path, &file.partition_values, src.history_schema, None)
            .await?;
        let whole = arrow::compute::concat_batches(src.history_schema, &batches)
            .map_err(|e| arrow_error(view, e))?;
        let mut per_bucket: HashMap<u32, Vec<u32>> = HashMap::new();
        for (row, b) in rows {
            per_bucket.entry(b).or_default().push(row as u32);
        }
        for (b, rows) in per_bucket {
            let taken = take_rows(&whole, &rows).map_err(|e| arrow_error(view, e))?;
            new_rows.entry(b).or_default().push(taken);
        }
    }
    Ok(new_rows)
}

/// Rows of a view batch to keep: keys without a change, and keys whose view row is newer than the
/// change (returned as beaten, so the change is dropped).
fn keep_unchanged<'a>(
    batch: &RecordBatch,
    d: &DatasetConfig,
    changed: &HashMap<&'a String, &Change>,
) -> (Vec<u32>, Vec<&'a String>) {
    let mut keep = Vec::new();
    let mut beaten = Vec::new();
    for (i, id) in identities(batch, d).into_iter().enumerate() {
        match id {
            Some((key, order, _, _)) => match changed.get_key_value(&key) {
                None => keep.push(i as u32),
                // Ties go to the change: it is the later write.
                Some((k, c)) if order > c.order => {
                    keep.push(i as u32);
                    beaten.push(*k);
                }
                Some(_) => {}
            },
            None => keep.push(i as u32),
        }
    }
    (keep, beaten)
}

/// Rows of new rows to keep: all but the changes a newer view row beat.
fn drop_beaten(batch: &RecordBatch, d: &DatasetConfig, beaten: &[&String]) -> Vec<u32> {
    identities(batch, d)
        .into_iter()
        .enumerate()
        .filter(|(_, id)| !id.as_ref().is_some_and(|(k, ..)| beaten.contains(&k)))
        .map(|(i, _)| i as u32)
        .collect()
}

pub(super) fn take_rows(
    batch: &RecordBatch,
    rows: &[u32],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let indices = UInt32Array::from(rows.to_vec());
    let columns = batch
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c.as_ref(), &indices, None))
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(batch.schema(), columns)
}

/// A history batch as a view batch: same columns plus the bucket.
fn with_bucket(
    batch: &RecordBatch,
    view_schema: &SchemaRef,
    bucket: &str,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(StringArray::from(vec![bucket; batch.num_rows()])));
    RecordBatch::try_new(view_schema.clone(), columns)
}

pub(super) fn arrow_error(view: &TableSink, e: arrow::error::ArrowError) -> MaintenanceError {
    MaintenanceError::Sink(Box::new(SinkError::Query {
        uri: view.uri().to_string(),
        message: e.to_string(),
    }))
}

async fn commit(
    view: &mut TableSink,
    view_schema: &SchemaRef,
    Edits { removes, adds }: Edits,
    app_id: &str,
    head: u64,
    report: &mut LatestReport,
) -> Result<(), MaintenanceError> {
    let txn = Transaction::new_with_last_update(
        app_id,
        head as i64,
        Some(chrono::Utc::now().timestamp_millis()),
    );
    let info = vec![(
        "bronze".to_string(),
        serde_json::json!({
            "kind": "latest_refresh",
            "dataset": report.dataset,
            "history_version": head,
            "rebuilt": report.rebuilt,
        }),
    )];
    report.files_removed = removes.len();
    report.files_added = adds.len();
    crate::sink::failpoint("latest_before_commit");
    match view
        .try_commit_replace(removes, &adds, vec![txn], info, None, Some(view_schema))
        .await
    {
        Ok(Some(version)) => {
            report.version = Some(version);
            info!(dataset = %report.dataset, version, history_version = head, buckets = report.buckets_rewritten,
                upserted = report.keys_upserted, deleted = report.keys_deleted, "latest view refreshed");
            Ok(())
        }
        Ok(None) => {
            view.discard_files(&adds).await;
            report.conflict = true;
            Ok(())
        }
        Err(e) => {
            view.discard_files(&adds).await;
            Err(e.into())
        }
    }
}

/// How often the views of a fan-out's tables are looked at when no table had one at start.
const FAN_OUT_LOOK: Duration = Duration::from_secs(10);

/// Refresh every dataset's latest view every `latest.interval`, in the background of `bronze run`.
pub fn spawn_background(updates: ConfigUpdates) -> Option<tokio::task::JoinHandle<()>> {
    let cfg = updates.borrow().clone();
    let every = cfg
        .datasets
        .iter()
        .filter_map(|d| d.latest.as_ref().map(|l| l.interval))
        .min();
    // A fan-out's tables (and their views) may all be made later.
    let every = match every {
        Some(every) => every,
        None if !cfg.fan_outs.is_empty() => FAN_OUT_LOOK,
        None => return None,
    };
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: wait a full interval so start-up is not slowed by it.
        tick.tick().await;
        let mut last_error: HashMap<String, String> = HashMap::new();
        let mut last_run: HashMap<String, Instant> = HashMap::new();
        loop {
            tick.tick().await;
            let cfg = updates.borrow().clone();
            for d in cfg.datasets.iter().filter(|d| d.latest.is_some()) {
                let interval = d.latest.as_ref().map_or(every, |l| l.interval);
                if last_run
                    .get(&d.name)
                    .is_some_and(|t| t.elapsed() < interval)
                {
                    continue;
                }
                last_run.insert(d.name.clone(), Instant::now());
                match refresh(&cfg, d).await {
                    Ok(_) => {
                        last_error.remove(&d.name);
                    }
                    Err(e) => {
                        metrics::counter!("bronze_latest_errors_total", "dataset" => d.name.clone())
                            .increment(1);
                        let text = e.to_string();
                        if last_error.get(&d.name) != Some(&text) {
                            warn!(dataset = %d.name, error = %text, "latest view refresh failed; retrying next interval");
                            last_error.insert(d.name.clone(), text);
                        }
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        // Fixed values: a key's bucket must never change between releases.
        assert_eq!(bucket_of("1\u{1f}", 16), bucket_of("1\u{1f}", 16));
        assert_eq!(bucket_of("", 16), (0xcbf2_9ce4_8422_2325u64 % 16) as u32);
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[bucket_of(&format!("{i}\u{1f}"), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|n| (50..150).contains(n)), "{seen:?}");
    }
}
