//! The database side of an extract: one consistent snapshot of Postgres (a leader transaction that
//! exports it), the split column cut into ranges, and one reader per range inside that snapshot,
//! streaming rows as JSON text through a bounded channel.

use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};
use tracing::warn;

use super::{ExtractError, Plan};
use crate::config::ExtractConfig;

/// One row a reader sends: its range and the row as JSON text, or why the reader stopped.
pub(super) type ReadRow = Result<(usize, String), ExtractError>;

/// Rows in flight between the readers and the buffer.
const CHANNEL_ROWS: usize = 4096;

async fn connect(dsn: &str) -> Result<Client, ExtractError> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "postgres connection ended with an error");
        }
    });
    Ok(client)
}

/// `col` quoted as an SQL identifier.
fn ident(col: &str) -> String {
    format!("\"{}\"", col.replace('"', "\"\""))
}

/// The wrapped query's time predicate: `$1` from, `$2` to (unused where open). A full extract has none,
/// so rows without a time are read too.
fn time_predicate(x: &ExtractConfig, from: bool, to: bool) -> String {
    let t = ident(&x.time_column);
    let from = if from {
        format!("{t} >= ($1::text)::timestamptz")
    } else {
        "$1::text IS NOT NULL".to_string()
    };
    let to = if to {
        format!("{t} < ($2::text)::timestamptz")
    } else {
        "$2::text IS NOT NULL".to_string()
    };
    format!("{from} AND {to}")
}

/// The source side of one extract: a leader transaction holding the snapshot, and the ranges of the
/// split column the readers take.
pub(super) struct Snapshot {
    dsn: String,
    pub(super) leader: Client,
    pub(super) id: String,
    pub(super) taken_us: i64,
    /// `FROM (<query>) AS src WHERE <time predicate>`.
    base: String,
    /// The split column as an `int8` expression.
    split: String,
    pub(super) ranges: Vec<(i64, i64)>,
    pub(super) rows: i64,
}

impl Snapshot {
    /// Open the leader transaction, export its snapshot, and cut the rows the plan reads into up to
    /// `max_parallelism` ranges of the split column (integer columns as they are; time columns by
    /// their microseconds since the epoch).
    pub(super) async fn take(x: &ExtractConfig, plan: &Plan) -> Result<Snapshot, ExtractError> {
        let leader = connect(&x.dsn).await?;
        leader
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let row = leader
            .query_one(
                "SELECT pg_export_snapshot(), (extract(epoch from now()) * 1000000)::int8",
                &[],
            )
            .await?;
        let (id, taken_us): (String, i64) = (row.get(0), row.get(1));
        let base = format!(
            "FROM ({}) AS src WHERE {}",
            x.query,
            time_predicate(x, !plan.is_full(), plan.to_us.is_some())
        );
        let column = ident(&x.split_column);
        let split_type: Option<String> = leader
            .query_opt(
                &format!(
                    "SELECT pg_typeof({column})::text FROM ({}) AS src LIMIT 1",
                    x.query
                ),
                &[],
            )
            .await?
            .map(|r| r.get(0));
        let split = match split_type.as_deref() {
            Some(t) if t.starts_with("timestamp") || t == "date" => {
                format!("(extract(epoch from {column}) * 1000000)::int8")
            }
            _ => format!("{column}::int8"),
        };
        let (from_text, to_text) = plan.bounds_text();
        let bounds = leader
            .query_one(
                &format!("SELECT min({split}), max({split}), count(*)::int8 {base}"),
                &[&from_text, &to_text],
            )
            .await?;
        let (low, high, rows): (Option<i64>, Option<i64>, i64) =
            (bounds.get(0), bounds.get(1), bounds.get(2));
        let ranges = match (low, high) {
            (Some(low), Some(high)) => split_ranges(low, high, x.max_parallelism),
            _ => Vec::new(),
        };
        Ok(Snapshot {
            dsn: x.dsn.clone(),
            leader,
            id,
            taken_us,
            base,
            split,
            ranges,
            rows,
        })
    }

    /// One reader per range, each in the exported snapshot, feeding one channel with (range, row as
    /// JSON text).
    pub(super) fn spawn_readers(
        &self,
        plan: &Plan,
    ) -> (mpsc::Receiver<ReadRow>, Vec<tokio::task::JoinHandle<()>>) {
        let (tx, rx) = mpsc::channel::<ReadRow>(CHANNEL_ROWS);
        let mut workers = Vec::new();
        for (i, (a, b)) in self.ranges.iter().copied().enumerate() {
            let tx = tx.clone();
            let dsn = self.dsn.clone();
            let (split, base) = (&self.split, &self.base);
            let sql = format!(
                "SELECT row_to_json(src)::text {base} AND {split} >= $3::int8 AND {split} < $4::int8"
            );
            let snapshot = self.id.clone();
            let (from_text, to_text) = plan.bounds_text();
            workers.push(tokio::spawn(async move {
                let read = async {
                    use futures::StreamExt;
                    let client = connect(&dsn).await?;
                    client
                        .batch_execute(&format!(
                            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
                        ))
                        .await?;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                        [&from_text, &to_text, &a, &b];
                    let rows = client.query_raw(&sql, params).await?;
                    futures::pin_mut!(rows);
                    while let Some(row) = rows.next().await {
                        let text: String = row?.get(0);
                        if tx.send(Ok((i, text))).await.is_err() {
                            break;
                        }
                    }
                    client.batch_execute("COMMIT").await?;
                    Ok::<(), ExtractError>(())
                };
                if let Err(e) = read.await {
                    let _ = tx.send(Err(e)).await;
                }
            }));
        }
        (rx, workers)
    }
}

/// `[low, high]` cut into at most `parallelism` half-open ranges of about equal width.
fn split_ranges(low: i64, high: i64, parallelism: usize) -> Vec<(i64, i64)> {
    let n = parallelism.max(1) as i64;
    let step = ((high - low) / n + 1).max(1);
    let mut ranges = Vec::new();
    let mut a = low;
    while a <= high {
        ranges.push((a, a.saturating_add(step).min(high.saturating_add(1))));
        a = a.saturating_add(step);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_column_is_cut_into_even_ranges_covering_every_value() {
        assert_eq!(split_ranges(1, 10, 3), vec![(1, 5), (5, 9), (9, 11)]);
        assert_eq!(split_ranges(7, 7, 4), vec![(7, 8)]);
        assert_eq!(split_ranges(0, 2, 8), vec![(0, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("up\"date\"d"), "\"up\"\"date\"\"d\"");
    }
}
