//! Time partitions: which partition a row's time falls in, and the time span of a partition.

use std::sync::Arc;

use chrono::{DateTime, Timelike};

use crate::config::PartitionBy;

/// A table partition as its sorted (column, value) pairs, e.g. `[("event_date", "2026-11-01")]`.
pub type PartitionValues = Vec<(String, Option<String>)>;

/// The time range `[start, end)` in µs since the epoch of a partition made by [`partition_values`]: the
/// day of `event_date`, or the hour of `event_date` and `event_hour`. `None` for any other partition.
pub fn partition_span(values: &[(String, Option<String>)]) -> Option<(i64, i64)> {
    let get = |k: &str| {
        values
            .iter()
            .find(|(c, _)| c == k)
            .and_then(|(_, v)| v.as_deref())
    };
    let day = chrono::NaiveDate::parse_from_str(get("event_date")?, "%Y-%m-%d").ok()?;
    let (hour, len) = match get("event_hour") {
        Some(h) => (h.parse().ok()?, 3_600_000_000),
        None => (0, 86_400_000_000),
    };
    let start = day.and_hms_opt(hour, 0, 0)?.and_utc().timestamp_micros();
    Some((start, start + len))
}

/// The smallest range covering every one of `partitions` (see [`partition_span`]).
pub fn span_of_partitions<'a>(
    partitions: impl IntoIterator<Item = &'a PartitionValues>,
) -> Option<(i64, i64)> {
    partitions
        .into_iter()
        .map(|p| partition_span(p))
        .try_fold(None, |acc: Option<(i64, i64)>, span| {
            let (start, end) = span?;
            Some(Some(
                acc.map_or((start, end), |(a, b)| (a.min(start), b.max(end))),
            ))
        })
        .flatten()
}

/// `event_date` (and `event_hour`) of a time in microseconds since the epoch, UTC, with the span
/// `[start, end)` of times that share them.
pub(super) fn partition_of(by: PartitionBy, time_us: i64) -> (i64, i64, Arc<[String]>) {
    const HOUR: i64 = 3_600_000_000;
    let len = match by {
        PartitionBy::None => return (i64::MIN, i64::MAX, Arc::new([])),
        PartitionBy::Date => 24 * HOUR,
        PartitionBy::DateHour => HOUR,
    };
    let (t, start, end) = match DateTime::from_timestamp_micros(time_us) {
        Some(t) => {
            let start = time_us.div_euclid(len) * len;
            (t, start, start.saturating_add(len))
        }
        // Beyond chrono's range: the epoch's values, for this time alone.
        None => (DateTime::default(), time_us, time_us.saturating_add(1)),
    };
    let date = t.format("%Y-%m-%d").to_string();
    let values = match by {
        PartitionBy::DateHour => vec![date, format!("{:02}", t.hour())],
        _ => vec![date],
    };
    (start, end, values.into())
}
