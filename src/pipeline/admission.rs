//! Admission: what becomes of one message under its dataset's rules — a row, a skip, or a rejection
//! with its reason (a dead letter, or a stop of its partition). Streaming, its lanes and the batch jobs
//! (backfill, replay) all admit through here, so a message is judged the same way wherever it is read.

use std::time::{Duration, Instant};

use tracing::warn;

use super::message::Message;
use crate::config::{DatasetConfig, InvalidMessage};
use crate::contract::OnError;
use crate::decode::registry::RegistryError;
use crate::decode::{Decoded, Decoder};
use crate::transform::{Mapper, MessageContext, Row};

/// Look up a message's writer schemas, waiting out a registry outage for up to `patience` (batch jobs:
/// backfill, replay). Streaming does not wait here: it rewinds the partition and carries on with others.
pub(crate) async fn prepare_patiently(
    decoder: &Decoder,
    m: &Message<'_>,
    patience: Duration,
) -> Result<(), RegistryError> {
    let deadline = Instant::now() + patience;
    let mut backoff = Duration::from_millis(250);
    loop {
        match decoder.prepare(m.key, m.payload).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() + backoff > deadline => return Err(e),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "waiting for the schema registry");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// How long a backfill or replay waits for an unreachable registry before giving up on a message.
pub(crate) const REGISTRY_PATIENCE: Duration = Duration::from_secs(300);

/// Why a message cannot be ingested, and whether its partition must stop (else it is dead-lettered).
pub(crate) struct Rejection {
    pub reason: &'static str,
    pub error: String,
    pub fail: bool,
    /// A column to widen first (`type_widening = "evolve"`); streaming does it and retries the message.
    pub widen: Option<Widening>,
}

/// A table column to widen, as the mapper asked.
pub(crate) struct Widening {
    pub column: String,
    pub to: crate::contract::ColumnType,
    pub precision_scale: Option<(u8, i8)>,
}

/// What becomes of one message.
pub(crate) enum Admission {
    Row(Box<Row>),
    Skip(crate::decode::Skip),
    Reject(Rejection),
}

/// Check, decode and map one message under its dataset's rules (streaming and dead-letter replay alike).
pub(crate) fn admit(
    cfg: &DatasetConfig,
    decoder: &Decoder,
    mapper: &mut Mapper,
    m: &Message<'_>,
) -> Admission {
    let mut unknown = 0;
    let admission = judge(cfg, decoder, mapper, m, &mut unknown);
    count_observed(&cfg.name, unknown, mapper.take_column_errors());
    admission
}

/// `bronze_unknown_fields_total` and `bronze_coercion_errors_total` for what admitting messages saw.
pub(crate) fn count_observed(dataset: &str, unknown: u64, column_errors: Vec<(String, OnError)>) {
    if unknown > 0 {
        metrics::counter!("bronze_unknown_fields_total", "dataset" => dataset.to_string())
            .increment(unknown);
    }
    for (column, action) in column_errors {
        metrics::counter!("bronze_coercion_errors_total", "dataset" => dataset.to_string(),
            "column" => column, "action" => action.as_str())
        .increment(1);
    }
}

/// [`admit`] without counting: fields the contract does not name are added to `unknown`, errors of
/// the mapping are left in `mapper` ([`Mapper::take_column_errors`]).
pub(crate) fn judge(
    cfg: &DatasetConfig,
    decoder: &Decoder,
    mapper: &mut Mapper,
    m: &Message<'_>,
    unknown: &mut u64,
) -> Admission {
    let rules = &cfg.dead_letters;
    let invalid_fails = rules.on_invalid == InvalidMessage::Fail;
    let size = m.payload.map_or(0, <[u8]>::len);
    if size > rules.max_message_bytes {
        return Admission::Reject(Rejection {
            reason: "oversized",
            error: format!(
                "value is {size} bytes, over the dataset's max_message_bytes ({})",
                rules.max_message_bytes
            ),
            fail: invalid_fails,
            widen: None,
        });
    }
    if rules.require_key && m.key.is_none() {
        return Admission::Reject(Rejection {
            reason: "null_key",
            error: "message has no key and the dataset requires one".to_string(),
            fail: invalid_fails,
            widen: None,
        });
    }
    let change = match decoder.decode(m.payload) {
        Ok(Decoded::Skip(reason)) => return Admission::Skip(reason),
        Ok(Decoded::Change(change)) => change,
        Err(e) => {
            return Admission::Reject(Rejection {
                reason: e.kind(),
                error: e.to_string(),
                fail: invalid_fails,
                widen: None,
            });
        }
    };
    let header = |name: &str| m.header(name);
    let key = || decoder.decode_key(m.key);
    let ctx = MessageContext {
        offset: m.offset,
        key: &key,
        ingested_at_us: m.received_at_us,
        header: &header,
    };
    match mapper.map(change, &ctx, unknown) {
        Ok(row) => Admission::Row(Box::new(row)),
        Err(e) => Admission::Reject(Rejection {
            reason: e.kind(),
            error: e.to_string(),
            fail: e.action() == OnError::Fail,
            widen: match e {
                crate::transform::TransformError::Widen {
                    column,
                    to,
                    precision_scale,
                    ..
                } => Some(Widening {
                    column,
                    to,
                    precision_scale,
                }),
                _ => None,
            },
        }),
    }
}
