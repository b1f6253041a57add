//! Start-up sweep of data files that no commit references: what a crash between the Parquet upload
//! and the Delta commit leaves behind. Only files older than a grace period are removed, because a
//! live process of the same group may be between its own upload and commit.

use std::collections::HashSet;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tracing::info;

use super::{SinkError, TableSink};

/// Delete unreferenced `.parquet` files older than `grace`. Returns how many were deleted.
pub async fn sweep_orphans(sink: &TableSink, grace: Duration) -> Result<usize, SinkError> {
    let table = sink.table();
    let storage = |source| SinkError::Storage {
        uri: sink.uri.clone(),
        source,
    };
    let snapshot = table.snapshot().map_err(|e| sink.delta_err(e))?;
    let mut referenced: HashSet<String> = snapshot
        .log_data()
        .iter()
        .flat_map(|f| [f.path().to_string(), f.object_store_path().to_string()])
        .collect();
    let log_store = table.log_store();
    let tombstones: Vec<String> = snapshot
        .all_tombstones(log_store.as_ref())
        .map_ok(|t| t.path().to_string())
        .try_collect()
        .await
        .map_err(|e| sink.delta_err(e))?;
    referenced.extend(tombstones);
    let store = table.object_store();
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let candidates: Vec<object_store::ObjectMeta> = store
        .list(None)
        .try_filter(|m| {
            let p = m.location.as_ref();
            futures::future::ready(
                !p.starts_with("_delta_log") && p.ends_with(".parquet") && m.last_modified < cutoff,
            )
        })
        .try_collect()
        .await
        .map_err(storage)?;
    let mut deleted = 0;
    for meta in candidates {
        let decoded = percent_decode(meta.location.as_ref());
        if referenced.contains(&decoded) || referenced.contains(meta.location.as_ref()) {
            continue;
        }
        store.delete(&meta.location).await.map_err(storage)?;
        deleted += 1;
    }
    if deleted > 0 {
        info!(table = %sink.uri, deleted, "removed uncommitted data files left by an earlier run");
    }
    Ok(deleted)
}

pub(super) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
