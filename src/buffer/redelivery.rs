//! Exact redeliveries across flushes: Debezium re-emits events after a connector restart (same key, same
//! source position). In-flush dedup catches them inside one flush; this bounded window of recently
//! committed (key, source position) pairs catches them in later flushes.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use arrow::array::{Array, AsArray, RecordBatch};

use crate::transform::{Row, key_of_arrow};

/// Identity of a source event: its key and its position in the source log. `None` when either is
/// unknown (keyless datasets, plain JSON): such rows are never taken for redeliveries.
pub fn source_event_id(row: &Row) -> Option<u64> {
    let (key, pos) = (row.dedup_key.as_ref()?, row.source_pos.as_ref()?);
    Some(event_id(key, pos, row.op.as_str()))
}

/// Fixed-seeded: ids are recomputed from the table at start and must come out the same in every run.
fn event_id(key: &str, pos: &str, op: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0).hash_one((key, pos, op))
}

/// The ids of committed rows read back from the table, oldest first: `batches` hold the key columns (as
/// the table types them, in `key_columns` order), then `_source_pos` and `_op`. The key text is made
/// exactly as the mapper makes a row's dedup key, so a row read back has the id it had when it was
/// written.
pub fn event_ids_of(batches: &[RecordBatch], key_columns: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut key = String::new();
    for b in batches {
        if b.num_columns() < key_columns + 2 {
            continue;
        }
        let (pos, op) = (b.column(key_columns), b.column(key_columns + 1));
        let (Some(pos), Some(op)) = (pos.as_string_opt::<i32>(), op.as_string_opt::<i32>()) else {
            continue;
        };
        let keys: Vec<&dyn Array> = (0..key_columns).map(|c| b.column(c).as_ref()).collect();
        for i in 0..b.num_rows() {
            if pos.is_null(i) || op.is_null(i) || !key_of_arrow(&keys, i, &mut key) {
                continue;
            }
            ids.push(event_id(&key, pos.value(i), op.value(i)));
        }
    }
    ids
}

/// The ids of the last `capacity` committed source events. Only committed rows enter it, so a batch
/// that is dropped (stale, revoked) never hides its rows when they are read again.
pub struct RedeliveryWindow {
    capacity: usize,
    ids: foldhash::HashSet<u64>,
    order: VecDeque<u64>,
}

impl RedeliveryWindow {
    pub fn new(capacity: usize) -> Self {
        RedeliveryWindow {
            capacity,
            ids: foldhash::HashSet::default(),
            order: VecDeque::new(),
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }

    /// Remember committed ids, forgetting the oldest beyond the capacity.
    pub fn extend(&mut self, ids: impl IntoIterator<Item = u64>) {
        if self.capacity == 0 {
            return;
        }
        for id in ids {
            if self.ids.insert(id) {
                self.order.push_back(id);
            }
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    /// Memory held, for the budget.
    pub fn bytes(&self) -> usize {
        self.order.len() * 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_newest_ids() {
        let mut w = RedeliveryWindow::new(2);
        w.extend([1, 2, 3]);
        assert!(!w.contains(1) && w.contains(2) && w.contains(3));
        let mut off = RedeliveryWindow::new(0);
        off.extend([1]);
        assert!(!off.contains(1));
    }
}
