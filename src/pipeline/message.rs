//! The pipeline's view of one Kafka message. Streaming reads it in place, out of the buffer librdkafka
//! fetched it into: copying every key and value (and parsing every message's headers) before decoding
//! was a tenth of the event loop's time. The lanes read it in place too (librdkafka's messages may be
//! read from any thread); an owned copy is made only for a dead letter.

use rdkafka::Message as _;
use rdkafka::message::{BorrowedMessage, Headers};

use crate::buffer::DeadLetter;

/// Header name → value, as a dead letter keeps them.
pub(super) type OwnedHeaders = Vec<(String, Option<Vec<u8>>)>;

/// One message, borrowed from wherever it lives.
#[derive(Clone, Copy)]
pub(crate) struct Message<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp (create or log-append time) in ms, or the time it was read when absent.
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// When bronze took it from the consumer, µs since the epoch: the row's `_ingested_at`.
    pub received_at_us: i64,
    headers: HeaderSource<'a>,
}

/// Headers are read only when asked for (header columns, dead letters): most messages never are.
#[derive(Clone, Copy)]
enum HeaderSource<'a> {
    Kafka(&'a BorrowedMessage<'a>),
    Owned(&'a [(String, Option<Vec<u8>>)]),
}

impl<'a> Message<'a> {
    /// `m` as taken from the consumer at `at_us`.
    pub fn of_kafka(m: &'a BorrowedMessage<'a>, at_us: i64) -> Self {
        Message {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m
                .timestamp()
                .to_millis()
                .unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
            key: m.key(),
            payload: m.payload(),
            received_at_us: at_us,
            headers: HeaderSource::Kafka(m),
        }
    }

    /// A dead letter read again (replay), taken at `at_us`.
    pub fn of_dead_letter(l: &'a DeadLetter, at_us: i64) -> Self {
        Message {
            topic: &l.topic,
            partition: l.partition,
            offset: l.offset,
            timestamp_ms: l.timestamp_ms,
            key: l.key.as_deref(),
            payload: l.value.as_deref(),
            received_at_us: at_us,
            headers: HeaderSource::Owned(&l.headers),
        }
    }

    /// The first header called `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        let value = match self.headers {
            HeaderSource::Kafka(m) => m
                .headers()?
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value),
            HeaderSource::Owned(headers) => headers
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.as_deref()),
        };
        value.map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn owned_headers(&self) -> OwnedHeaders {
        match self.headers {
            HeaderSource::Kafka(m) => m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
            HeaderSource::Owned(headers) => headers.to_vec(),
        }
    }

    /// The message as a dead letter, with why it is one.
    pub fn dead_letter(&self, reason: &str, error: String) -> DeadLetter {
        DeadLetter {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.map(<[u8]>::to_vec),
            value: self.payload.map(<[u8]>::to_vec),
            headers: self.owned_headers(),
            reason: reason.to_string(),
            error,
        }
    }
}
