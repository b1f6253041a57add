//! A message the dataset cannot ingest, held with the rows of its flush until it is committed to the
//! dataset's dead-letter table (see `sink::dead_letters`).

/// One message that could not be ingested.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp, ms since the epoch.
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Short, stable label (`invalid_json`, `type_mismatch`, `oversized`, ...), also the metric label.
    pub reason: String,
    /// What exactly was wrong, for people.
    pub error: String,
}

impl DeadLetter {
    /// Memory held, for the budget.
    pub fn bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + headers
            + self.error.len()
            + self.topic.len()
            + 64
    }
}
