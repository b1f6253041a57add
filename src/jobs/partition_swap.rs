//! The partition swap that backfills and extracts end in: the time partitions a request replaces
//! (from a range or from labels), the new files written in chunks, and one commit that removes every
//! live file of those partitions and adds the new ones (a replaceWhere in the log).
//!
//! A swap must never add a file outside the partitions it removes: that file's partition would keep its
//! old files too and its rows would be doubled. `files_to_replace` refuses such a swap before it is
//! committed.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use deltalake::kernel::{Add, Remove, Transaction};

use crate::buffer::DatasetBuffer;
use crate::config::PartitionBy;
use crate::pipeline::PipelineError;
use crate::sink::TableSink;
pub use crate::transform::PartitionValues;
use crate::transform::span_of_partitions;

/// A partition named as `2026-11-01` (date tables) or `2026-11-01/05` (date/hour tables).
pub fn parse_partition(by: PartitionBy, label: &str) -> Result<PartitionValues, String> {
    let bad = || {
        format!(
            "partition `{label}` is not {}",
            match by {
                PartitionBy::DateHour => "YYYY-MM-DD/HH",
                _ => "YYYY-MM-DD",
            }
        )
    };
    let (date, hour) = match (by, label.split_once('/')) {
        (PartitionBy::DateHour, Some((d, h))) => (d, Some(h)),
        (PartitionBy::Date, None) => (label, None),
        _ => return Err(bad()),
    };
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
    let mut values = vec![("event_date".to_string(), Some(date.to_string()))];
    if let Some(h) = hour {
        match h.parse::<u32>() {
            Ok(n) if n < 24 && h.len() == 2 => {
                values.push(("event_hour".to_string(), Some(h.into())))
            }
            _ => return Err(bad()),
        }
    }
    Ok(values)
}

/// The time span `[start, end)` of the partitions named by `labels`, in µs.
pub fn span_of(by: PartitionBy, labels: &[String]) -> Result<(i64, i64), String> {
    let partitions = labels
        .iter()
        .map(|l| parse_partition(by, l))
        .collect::<Result<Vec<_>, _>>()?;
    span_of_partitions(&partitions).ok_or_else(|| "no partitions given".to_string())
}

/// The partitions of `by` that overlap `[from_us, to_us)`.
pub fn partitions_between(by: PartitionBy, from_us: i64, to_us: i64) -> BTreeSet<PartitionValues> {
    let step = match by {
        PartitionBy::None => return BTreeSet::new(),
        PartitionBy::Date => ChronoDuration::days(1),
        PartitionBy::DateHour => ChronoDuration::hours(1),
    };
    let (Some(from), Some(to)) = (
        DateTime::<Utc>::from_timestamp_micros(from_us),
        DateTime::<Utc>::from_timestamp_micros(to_us),
    ) else {
        return BTreeSet::new();
    };
    let mut t = match by {
        PartitionBy::DateHour => from
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0)),
        _ => from.date_naive().and_hms_opt(0, 0, 0).map(|t| t.and_utc()),
    }
    .unwrap_or(from);
    let mut out = BTreeSet::new();
    while t < to {
        let mut values = vec![(
            "event_date".to_string(),
            Some(t.format("%Y-%m-%d").to_string()),
        )];
        if by == PartitionBy::DateHour {
            values.push(("event_hour".to_string(), Some(format!("{:02}", t.hour()))));
        }
        out.insert(values);
        t += step;
    }
    out
}

pub fn label(values: &PartitionValues) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("null")))
        .collect::<Vec<_>>()
        .join("/")
}

/// The replace predicate recorded in the commit, e.g. `event_date IN ('2026-11-01', '2026-11-02')`.
pub fn predicate(targets: &BTreeSet<PartitionValues>) -> String {
    targets
        .iter()
        .map(|values| {
            values
                .iter()
                .map(|(k, v)| format!("{k} = '{}'", v.as_deref().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" AND ")
        })
        .map(|c| format!("({c})"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The first new file outside the replaced partitions, if any. Such a file would be added without its
/// partition's old files being removed, doubling their rows: a replace must not commit it.
pub(crate) fn stray_file(
    adds: &[deltalake::kernel::Add],
    replaced: impl Fn(&PartitionValues) -> bool,
) -> Option<String> {
    adds.iter()
        .find(|a| {
            let mut v: PartitionValues = a.partition_values.clone().into_iter().collect();
            v.sort();
            !replaced(&v)
        })
        .map(|a| a.path.clone())
}

/// A row's partition values in the table's sorted form.
pub(crate) fn sorted(values: &[String], columns: &[&str]) -> PartitionValues {
    let mut v: PartitionValues = columns
        .iter()
        .zip(values)
        .map(|(c, v)| (c.to_string(), Some(v.clone())))
        .collect();
    v.sort();
    v
}

/// Write what the buffer holds as Parquet files (not committed yet).
pub(crate) async fn write_chunk(
    buffer: &mut DatasetBuffer,
    sink: &TableSink,
    adds: &mut Vec<deltalake::kernel::Add>,
    counts: &mut (usize, usize),
) -> Result<(), PipelineError> {
    let batch_id = uuid::Uuid::now_v7().to_string();
    let Some(batch) = buffer
        .take(&batch_id)
        .map_err(|e| PipelineError::Stopped(format!("cannot build the backfill batch: {e}")))?
    else {
        return Ok(());
    };
    counts.0 += batch.rows();
    counts.1 += batch.duplicates_dropped;
    adds.extend(sink.write_files(&batch.batches).await?);
    Ok(())
}

/// The runs of request `request_id` the table holds (read from its newest version): `Some` once it
/// was committed.
pub(crate) async fn request_done(
    sink: &mut TableSink,
    request_id: &str,
) -> Result<Option<i64>, PipelineError> {
    sink.refresh().await?;
    Ok(sink
        .committed_offset(&crate::txn::request(request_id))
        .await?)
}

/// Every live file of the partitions `replaced` selects, as removes; `Stopped` (with `adds` deleted)
/// when a new file lies outside them. `what` names the request in the error, `hint` says what to check.
pub(crate) async fn files_to_replace(
    sink: &TableSink,
    adds: &[Add],
    replaced: impl Fn(&PartitionValues) -> bool,
    what: &str,
    hint: &str,
) -> Result<Vec<Remove>, PipelineError> {
    let removes = sink.removes_where(&replaced)?;
    if let Some(stray) = stray_file(adds, &replaced) {
        sink.discard_files(adds).await;
        return Err(PipelineError::Stopped(format!(
            "{what}: file {stray} lies outside the replaced partitions{hint}; nothing committed"
        )));
    }
    Ok(removes)
}

/// One swap attempt: `removes` out and `adds` in with `txns`, recorded as a replace of `predicate`.
/// `Ok(None)` when another commit came first (the new files are kept: the caller decides whether to
/// retry with them); on an error they are deleted.
pub(crate) async fn commit_swap(
    sink: &mut TableSink,
    removes: Vec<Remove>,
    adds: &[Add],
    txns: Vec<Transaction>,
    metadata: Vec<(String, serde_json::Value)>,
    predicate: String,
) -> Result<Option<u64>, PipelineError> {
    match sink
        .try_commit_replace(removes, adds, txns, metadata, Some(predicate), None)
        .await
    {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            sink.discard_files(adds).await;
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    #[test]
    fn ranges_widen_to_the_partitions_they_touch() {
        let days = partitions_between(
            PartitionBy::Date,
            us("2026-11-01T10:00:00Z"),
            us("2026-11-03T00:00:00Z"),
        );
        let labels: Vec<String> = days.iter().map(label).collect();
        assert_eq!(labels, ["event_date=2026-11-01", "event_date=2026-11-02"]);
        let hours = partitions_between(
            PartitionBy::DateHour,
            us("2026-11-01T22:30:00Z"),
            us("2026-11-02T00:00:01Z"),
        );
        let labels: Vec<String> = hours.iter().map(label).collect();
        assert_eq!(
            labels,
            [
                "event_date=2026-11-01/event_hour=22",
                "event_date=2026-11-01/event_hour=23",
                "event_date=2026-11-02/event_hour=00"
            ]
        );
        assert_eq!(
            predicate(&days),
            "(event_date = '2026-11-01') OR (event_date = '2026-11-02')"
        );
    }

    #[test]
    fn explicit_partitions_are_checked_against_the_partitioning() {
        let p = parse_partition(PartitionBy::DateHour, "2026-11-01/05").unwrap();
        assert_eq!(label(&p), "event_date=2026-11-01/event_hour=05");
        assert!(parse_partition(PartitionBy::Date, "2026-11-01/05").is_err());
        assert!(parse_partition(PartitionBy::DateHour, "2026-11-01/24").is_err());
        assert!(parse_partition(PartitionBy::Date, "01.11.2026").is_err());
        let labels = ["2026-11-03".to_string(), "2026-11-01".to_string()];
        assert_eq!(
            span_of(PartitionBy::Date, &labels).unwrap(),
            (us("2026-11-01T00:00:00Z"), us("2026-11-04T00:00:00Z"))
        );
    }
}
