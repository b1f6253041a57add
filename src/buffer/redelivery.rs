//! Exact redeliveries across flushes: Debezium re-emits events after a connector restart (same key, same
//! source position). In-flush dedup catches them inside one flush; this bounded window of recently
//! committed (key, source position) pairs catches them in later flushes.

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::transform::Row;

/// Identity of a source event: its key and its position in the source log. `None` when either is
/// unknown (keyless datasets, plain JSON): such rows are never taken for redeliveries.
pub fn source_event_id(row: &Row) -> Option<u64> {
    let (key, pos) = (row.dedup_key.as_ref()?, row.source_pos.as_ref()?);
    let mut h = DefaultHasher::new();
    (key, pos, row.op.as_str()).hash(&mut h);
    Some(h.finish())
}

/// The ids of the last `capacity` committed source events. Only committed rows enter it, so a batch
/// that is dropped (stale, revoked) never hides its rows when they are read again.
pub struct RedeliveryWindow {
    capacity: usize,
    ids: HashSet<u64>,
    order: VecDeque<u64>,
}

impl RedeliveryWindow {
    pub fn new(capacity: usize) -> Self {
        RedeliveryWindow {
            capacity,
            ids: HashSet::new(),
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
