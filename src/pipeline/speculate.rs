//! Mapping on several cores (`pipeline.decode_threads`). The messages one poll finds ready are admitted
//! ahead of their turn, in as many parts as threads: one part on the event loop's thread, the others on
//! threads that live as long as the run, each part by its own clone of the dataset's mapper. The loop
//! then takes the messages in order as before; a speculation stands only if the dataset's contract is
//! still the one it was made under (no column evolved, widened or adopted in between, by this message or
//! an earlier one), otherwise the message is admitted again in its turn. Clones leave no trace of their
//! own: the drift and errors they saw are counted when, and only when, their result is used.
//!
//! The threads are kept rather than spawned per poll: a new thread starts with an empty allocator
//! cache, and the rows it makes (freed on the loop's thread) then cost more than mapping them in turn.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use rdkafka::error::KafkaError;

use super::message::{Message, OwnedMessage};
use super::{Admission, PipelineError, judge};
use crate::config::{Config, DatasetConfig};
use crate::decode::Decoder;
use crate::pipeline::state::DatasetState;
use crate::transform::{Mapper, Observations};

/// Fewer messages of a dataset than this in one poll are admitted in turn: a hand-off is not worth it.
pub(super) const MIN_MESSAGES: usize = 128;

/// At most this many messages, and about this many bytes, are taken from the consumer per poll: ticks
/// (age flushes, gauges, rebalances) are never held up for long, and the copies stay small next to the
/// memory budget.
pub(super) const MAX_MESSAGES: usize = 2048;
pub(super) const MAX_BYTES: usize = 4 << 20;

/// A message admitted ahead of its turn.
pub(super) struct Speculation {
    /// The clone's contract stamp after admitting it (see [`Mapper::generation`]).
    pub generation: u64,
    pub admission: Admission,
    /// Fields the contract does not name.
    pub unknown: u64,
    pub observed: Observations,
}

/// A part of a poll for a decode thread, with everything it maps with. The messages are copies: the
/// consumer's buffers they are read from on the loop cannot be lent to a thread that outlives the poll.
struct Job {
    messages: Vec<OwnedMessage>,
    /// Where each message is in the poll.
    part: Vec<usize>,
    dataset: Arc<DatasetConfig>,
    decoder: Decoder,
    mapper: Mapper,
    done: Sender<Done>,
}

/// A part mapped: the clone comes back with the results, to be used again.
struct Done {
    part: Vec<usize>,
    mapper: Mapper,
    speculations: Vec<Option<Speculation>>,
}

/// The decode threads of a run (none when `decode_threads` is 1). Dropping this ends them.
pub(super) struct Workers {
    jobs: Vec<Sender<Job>>,
}

impl Workers {
    pub(super) fn start(threads: usize) -> Result<Workers, PipelineError> {
        let jobs = (1..threads)
            .map(|n| {
                let (tx, rx) = channel::<Job>();
                std::thread::Builder::new()
                    .name(format!("bronze-decode-{n}"))
                    .spawn(move || serve(rx))
                    .map_err(|e| {
                        PipelineError::Stopped(format!("cannot start a decode thread: {e}"))
                    })?;
                Ok(tx)
            })
            .collect::<Result<_, PipelineError>>()?;
        Ok(Workers { jobs })
    }
}

fn serve(jobs: Receiver<Job>) {
    for job in jobs {
        let Job {
            messages,
            part,
            dataset,
            decoder,
            mut mapper,
            done,
        } = job;
        let speculations = admit_part(
            messages.iter().map(OwnedMessage::view),
            &dataset,
            &decoder,
            &mut mapper,
        );
        let _ = done.send(Done {
            part,
            mapper,
            speculations,
        });
    }
}

/// Admit `messages` on `mapper`, a clone of the dataset's.
fn admit_part<'a>(
    messages: impl Iterator<Item = Message<'a>>,
    dataset: &DatasetConfig,
    decoder: &Decoder,
    mapper: &mut Mapper,
) -> Vec<Option<Speculation>> {
    messages
        .map(|m| {
            // A writer schema still to be fetched is looked up in turn (it may have to wait).
            if !decoder.is_prepared(m.key, m.payload) {
                return None;
            }
            let mut unknown = 0;
            let admission = judge(dataset, decoder, mapper, &m, &mut unknown);
            Some(Speculation {
                generation: mapper.generation(),
                admission,
                unknown,
                observed: mapper.take_observations(),
            })
        })
        .collect()
}

/// Admit one poll's messages ahead of their turn where it pays. One entry per message, `None` where
/// the message is left to be admitted in turn.
pub(super) fn speculate(
    cfg: &Config,
    datasets: &mut [DatasetState],
    workers: &Workers,
    batch: &[Result<Message<'_>, &KafkaError>],
) -> Result<Vec<Option<Speculation>>, PipelineError> {
    let mut out: Vec<Option<Speculation>> = batch.iter().map(|_| None).collect();
    let threads = workers.jobs.len() + 1;
    if threads < 2 || batch.len() < MIN_MESSAGES {
        return Ok(out);
    }
    let mut by_dataset: Vec<Vec<usize>> = vec![Vec::new(); datasets.len()];
    let mut last: Option<(&str, Option<usize>)> = None;
    for (i, m) in batch.iter().enumerate() {
        let Ok(m) = m else { continue };
        let d = match last {
            Some((topic, d)) if topic == m.topic => d,
            _ => {
                let d = cfg.dataset_for_topic(m.topic);
                last = Some((m.topic, d));
                d
            }
        };
        if let Some(d) = d {
            by_dataset[d].push(i);
        }
    }
    // Every index in `by_dataset` holds a message.
    let message = |i: usize| *batch[i].as_ref().expect("indexed above");
    for (ds, indices) in datasets.iter_mut().zip(by_dataset) {
        if indices.len() < MIN_MESSAGES {
            continue;
        }
        let generation = ds.mapper.generation();
        if ds.spares.len() != threads || ds.spares.iter().any(|m| m.generation() != generation) {
            ds.spares = (0..threads).map(|_| spare(&ds.mapper)).collect();
        }
        let mut parts = indices.chunks(indices.len().div_ceil(threads));
        let own = parts.next().unwrap_or_default();
        let (done_tx, done_rx) = channel();
        let dataset = Arc::new(ds.cfg.clone());
        let mut sent = 0;
        for (part, jobs) in parts.zip(&workers.jobs) {
            let job = Job {
                messages: part.iter().map(|&i| message(i).into_owned()).collect(),
                part: part.to_vec(),
                dataset: dataset.clone(),
                decoder: ds.decoder.clone(),
                mapper: ds.spares.pop().expect("one spare per thread"),
                done: done_tx.clone(),
            };
            jobs.send(job)
                .map_err(|_| PipelineError::Stopped("a decode thread has died".to_string()))?;
            sent += 1;
        }
        drop(done_tx);
        let mut mine = ds.spares.pop().expect("one spare per thread");
        let speculations = admit_part(
            own.iter().map(|&i| message(i)),
            &ds.cfg,
            &ds.decoder,
            &mut mine,
        );
        for (&i, s) in own.iter().zip(speculations) {
            out[i] = s;
        }
        ds.spares.push(mine);
        for _ in 0..sent {
            // Waits for the other parts, which take about as long as this thread's own.
            let done = done_rx.recv().map_err(|_| {
                PipelineError::Stopped("a decode thread died while mapping".to_string())
            })?;
            for (&i, s) in done.part.iter().zip(done.speculations) {
                out[i] = s;
            }
            ds.spares.push(done.mapper);
        }
        let mapped = indices.iter().filter(|&&i| out[i].is_some()).count() as u64;
        metrics::counter!("bronze_parallel_mapped_total", "dataset" => ds.cfg.name.clone())
            .increment(mapped);
    }
    Ok(out)
}

/// A clone of `mapper` with nothing observed yet: what the original saw is its own to report.
fn spare(mapper: &Mapper) -> Mapper {
    let mut m = mapper.clone();
    m.take_observations();
    m
}
