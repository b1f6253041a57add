//! The one optimistic-commit policy: read the newest snapshot, decide and attempt a commit against
//! it; when a concurrent commit won, read again and decide again, up to the table's attempt limit.
//!
//! Every writer's exactly-once check depends on the snapshot it decided on (txn versions, the files to
//! remove), so a conflict is never retried blindly by delta-rs (`with_max_retries(0)` in the attempts):
//! the writer's attempt runs again from the refreshed snapshot. A conflict (an attempt that returned
//! `None`) is the only retriable outcome; an error ends the loop at once. Each writer loops as
//!
//! ```text
//! let mut retry = sink.retry("backfill");
//! loop {
//!     retry.next(&mut sink).await?;          // re-reads the table; TooManyConflicts past the limit
//!     ... decide on the snapshot ...
//!     if let Some(version) = sink.try_commit(..).await? { return Ok(version) }
//! }
//! ```
//!
//! (A closure-taking helper would read better, but an async closure borrowing the sink makes the
//! commit task's future fail `Send` for every lifetime: rust-lang/rust#110338.)

use tracing::warn;

use super::{SinkError, TableSink};

/// Attempts a commit gets when the configuration does not say (`[storage] commit_attempts`).
pub const DEFAULT_COMMIT_ATTEMPTS: usize = 20;

/// The attempts of one optimistic commit (see the module docs).
#[derive(Debug)]
pub struct Retry {
    writer: &'static str,
    limit: usize,
    attempt: usize,
    /// The last attempt went ahead on the snapshot of the sink's own previous commit, unread: when
    /// another writer had committed since, it lost without a conflict of its own.
    unread: bool,
}

impl Retry {
    /// Begin the next attempt on a freshly read snapshot (or, first, on the one the sink's own last
    /// commit made): its number, from 1. Reaching here again means the previous attempt conflicted
    /// (it is counted and logged, unless it only ran unread); past the limit the commit gives up
    /// with [`SinkError::TooManyConflicts`].
    pub async fn next(&mut self, sink: &mut TableSink) -> Result<usize, SinkError> {
        if std::mem::take(&mut self.unread) {
            // Not a conflict: the table had only moved on since the sink's own commit.
            self.attempt -= 1;
        } else if self.attempt == 0 && sink.own_commit_snapshot {
            // Against a remote store a re-read is a round trip per commit, and a snapshot the
            // sink's own commit made is as new as a re-read would give unless another writer
            // committed since, which the attempt then finds out and this comes here again.
            self.attempt = 1;
            self.unread = true;
            return Ok(1);
        } else if self.attempt > 0 {
            metrics::counter!("bronze_commit_retries_total", "writer" => self.writer).increment(1);
            warn!(table = %sink.uri, writer = self.writer, attempt = self.attempt, limit = self.limit,
                "commit conflict; re-reading the table and retrying");
        }
        if self.attempt >= self.limit {
            return Err(SinkError::TooManyConflicts {
                uri: sink.uri.clone(),
                attempts: self.limit,
            });
        }
        self.attempt += 1;
        sink.refresh().await?;
        Ok(self.attempt)
    }

    /// Whether the current attempt goes ahead unread (on the sink's own last commit's snapshot):
    /// losing it is no conflict.
    pub fn unread(&self) -> bool {
        self.unread
    }

    /// Attempts that lost to another commit so far.
    pub fn conflicts(&self) -> usize {
        self.attempt.saturating_sub(1)
    }
}

impl TableSink {
    /// The attempts of a commit by `writer` (named in metrics and logs), up to this table's limit.
    pub fn retry(&self, writer: &'static str) -> Retry {
        Retry {
            writer,
            limit: self.commit_attempts,
            attempt: 0,
            unread: false,
        }
    }

    /// The attempt limit of [`TableSink::retry`] on this table.
    pub fn with_commit_attempts(mut self, attempts: usize) -> Self {
        self.commit_attempts = attempts.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::testing::{int64_rows as rows, int64_table as table};

    #[tokio::test]
    async fn a_conflict_is_retried_on_the_newer_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut ours = table(dir.path()).await;
        let mut theirs = table(dir.path()).await;
        let mut seen_versions = Vec::new();
        let mut retry = ours.retry("test");
        let version = loop {
            let n = retry.next(&mut ours).await.unwrap();
            seen_versions.push(ours.version());
            if n == 1 {
                // Another writer commits after our snapshot was read: our attempt must lose.
                let adds = theirs.write_files(&[rows(0..3)]).await.unwrap();
                theirs
                    .try_commit(&adds, vec![], vec![], None)
                    .await
                    .unwrap();
            }
            let adds = ours.write_files(&[rows(3..5)]).await.unwrap();
            match ours.try_commit(&adds, vec![], vec![], None).await.unwrap() {
                Some(v) => break v,
                None => ours.discard_files(&adds).await,
            }
        };
        assert_eq!(
            seen_versions,
            vec![Some(0), Some(1)],
            "the retry read the other commit"
        );
        assert_eq!((version, retry.conflicts()), (2, 1));
        assert_eq!(ours.stats(0).unwrap().rows, 5);
    }

    #[tokio::test]
    async fn after_its_own_commit_a_sink_goes_ahead_unread_and_rereads_when_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut ours = table(dir.path()).await;
        let mut theirs = table(dir.path()).await;
        // Commit `v` through `sink`'s retry loop: (attempt, version seen, unread) of each attempt.
        async fn commit(
            sink: &mut TableSink,
            v: i64,
        ) -> (u64, Vec<(usize, Option<u64>, bool)>, usize) {
            let mut retry = sink.retry("test");
            let mut seen = Vec::new();
            loop {
                let n = retry.next(sink).await.unwrap();
                seen.push((n, sink.version(), retry.unread()));
                let adds = sink.write_files(&[rows(v..v + 1)]).await.unwrap();
                match sink.try_commit(&adds, vec![], vec![], None).await.unwrap() {
                    Some(version) => return (version, seen, retry.conflicts()),
                    None => sink.discard_files(&adds).await,
                }
            }
        }
        assert_eq!(
            commit(&mut ours, 0).await,
            (1, vec![(1, Some(0), false)], 0)
        );
        // Nothing else committed: the next attempt goes ahead on the snapshot of its own commit.
        assert_eq!(commit(&mut ours, 1).await, (2, vec![(1, Some(1), true)], 0));
        // Another writer commits: the unread attempt loses, the next re-reads; not a conflict.
        theirs.refresh().await.unwrap();
        assert_eq!(commit(&mut theirs, 2).await.0, 3);
        assert_eq!(
            commit(&mut ours, 3).await,
            (4, vec![(1, Some(2), true), (1, Some(3), false)], 0)
        );
        ours.refresh().await.unwrap();
        assert_eq!(ours.stats(0).unwrap().rows, 4);
    }

    #[tokio::test]
    async fn conflicts_stop_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = table(dir.path()).await.with_commit_attempts(3);
        let mut retry = sink.retry("test");
        let mut attempts = 0;
        let err = loop {
            match retry.next(&mut sink).await {
                Ok(_) => attempts += 1,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, SinkError::TooManyConflicts { attempts: 3, .. }),
            "{err}"
        );
        assert_eq!((attempts, retry.conflicts()), (3, 2));
    }
}
