//! The txn versions a sink has looked up, kept current with the table instead of asked for again.
//!
//! Every streaming commit checks the txn version of each partition in its batch (the stale check).
//! delta-rs answers each such question with a replay of the log since the last checkpoint, which
//! against a remote store is at least one round trip per partition per commit. Yet between two of
//! its own commits a sink knows what changed: its own txns, or (when others committed) the entries
//! since the version it knew, read at once. Lookups of app ids it has not seen yet still go to
//! delta-rs.

use std::collections::HashMap;
use std::sync::Mutex;

use deltalake::DeltaTableError;
use deltalake::kernel::Transaction;
use deltalake::logstore::LogStore;
use futures::future::try_join_all;

use super::delta_log;

/// Entries read at once to catch up; further behind, the known versions are forgotten (delta-rs
/// asks the log again for each).
const CATCH_UP_LIMIT: u64 = 32;

/// Known txn versions (`None`: no txn of that app id) as of one table version.
#[derive(Debug, Default)]
pub(super) struct TxnVersions(Mutex<Known>);

#[derive(Debug, Default, Clone)]
struct Known {
    version: Option<u64>,
    apps: HashMap<String, Option<i64>>,
}

impl Clone for TxnVersions {
    fn clone(&self) -> Self {
        TxnVersions(Mutex::new(self.known().clone()))
    }
}

impl TxnVersions {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        // The map is only ever replaced whole or extended: a panic elsewhere leaves it usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The txn version of `app_id` as of table `version`, when known; first catching up with the
    /// entries since the version known (read from `log`).
    pub(super) async fn get(
        &self,
        log: &dyn LogStore,
        version: u64,
        app_id: &str,
    ) -> Result<Option<Option<i64>>, DeltaTableError> {
        let known = self.known().version;
        match known {
            Some(k) if k == version => {}
            Some(k) if k < version && version - k <= CATCH_UP_LIMIT => {
                let entries =
                    try_join_all((k + 1..=version).map(|v| delta_log::read_txns(log, v))).await?;
                let mut known = self.known();
                if known.version != Some(k) {
                    return Ok(None);
                }
                match entries.into_iter().collect::<Option<Vec<_>>>() {
                    Some(entries) => {
                        for (app, v) in entries.into_iter().flatten() {
                            known.apps.insert(app, Some(v));
                        }
                    }
                    // An entry is gone (log cleanup): start over from this version.
                    None => known.apps.clear(),
                }
                known.version = Some(version);
            }
            _ => {
                *self.known() = Known {
                    version: Some(version),
                    apps: HashMap::new(),
                }
            }
        }
        Ok(self.known().apps.get(app_id).copied())
    }

    /// `app_id` has `txn` as of table `version` (asked of delta-rs).
    pub(super) fn learned(&self, version: u64, app_id: &str, txn: Option<i64>) {
        let mut known = self.known();
        if known.version == Some(version) {
            known.apps.insert(app_id.to_string(), txn);
        }
    }

    /// This sink committed `txns` as `version`: known versions one behind move with it.
    pub(super) fn committed(&self, version: u64, txns: &[Transaction]) {
        let mut known = self.known();
        if version > 0 && known.version == Some(version - 1) {
            for t in txns {
                known.apps.insert(t.app_id.clone(), Some(t.version));
            }
            known.version = Some(version);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::testing::{int64_rows, int64_table};

    #[tokio::test]
    async fn known_versions_follow_own_commits_and_catch_up_with_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut ours = int64_table(dir.path()).await;
        let mut theirs = int64_table(dir.path()).await;
        assert_eq!(ours.committed_offset("a").await.unwrap(), None);
        let adds = ours.write_files(&[int64_rows(0..3)]).await.unwrap();
        let txns = vec![Transaction::new("a", 7)];
        assert_eq!(
            ours.try_commit(&adds, txns, vec![], None).await.unwrap(),
            Some(1)
        );
        // Known from the commit itself.
        assert_eq!(ours.committed_offset("a").await.unwrap(), Some(7));
        // Two commits by another writer: read from their entries once the table is re-read.
        for (app, v) in [("a", 9), ("b", 4)] {
            theirs.refresh().await.unwrap();
            let adds = theirs.write_files(&[int64_rows(0..1)]).await.unwrap();
            let txns = vec![Transaction::new(app, v)];
            theirs.try_commit(&adds, txns, vec![], None).await.unwrap();
        }
        ours.refresh().await.unwrap();
        assert_eq!(ours.version(), Some(3));
        assert_eq!(ours.committed_offset("a").await.unwrap(), Some(9));
        assert_eq!(ours.committed_offset("b").await.unwrap(), Some(4));
        assert_eq!(ours.committed_offset("c").await.unwrap(), None);
        // What delta-rs itself says, for every one of them.
        let fresh = int64_table(dir.path()).await;
        for app in ["a", "b", "c"] {
            assert_eq!(
                fresh.committed_offset(app).await.unwrap(),
                ours.committed_offset(app).await.unwrap(),
                "{app}"
            );
        }
    }
}
