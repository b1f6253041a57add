//! The control topic: backfill, compaction and vacuum requests posted as JSON messages (by any producer,
//! or `bronze backfill|compact|vacuum --submit`), run by one member of the group, their progress and
//! outcome published on the status topic (key = request id).
//!
//! One member runs requests: the handlers of all members join the group `<group>.control` on the
//! control topic (one partition), so its owner runs them, one at a time. A request's offset is committed
//! only once its final status (succeeded, failed, rejected) is published, so a request accepted but not
//! finished when its member dies is delivered again to the next owner and resumed (backfills are
//! idempotent by request id, compaction and vacuum by nature) — never forgotten. The status topic is the
//! memory of requests: at start the handler reads it, so a request id that already finished is not run
//! again unless `force` (a no-op status says so), and a different request under a used id is rejected.

pub mod request;
pub mod schedule;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::audit::{AuditRecord, AuditRecorder};
use crate::config::{Config, ConfigUpdates, ControlConfig};
use crate::jobs::backfill;
use crate::maintenance::{self, Scope};
use request::{Kind, Rejection, Request};

/// One status message; the last one of a request id is its state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub request_id: String,
    pub dataset: Option<String>,
    pub kind: Option<String>,
    /// `accepted`, `running`, `succeeded`, `failed`, `rejected`, or `skipped` (a missed scheduled
    /// slot, `missed = "skip"`).
    pub status: String,
    /// Rejections: a stable code (see [`Rejection`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `running`: messages read of those to read so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<(u64, u64)>,
    /// Final statuses: what was done (counts, timings, table version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The request id had already finished: nothing was done again.
    #[serde(default)]
    pub no_op: bool,
    #[serde(default)]
    pub fingerprint: String,
    pub requested_by: Option<String>,
    /// RFC 3339.
    pub at: String,
    pub run_id: String,
}

impl Status {
    pub fn is_final(&self) -> bool {
        matches!(
            self.status.as_str(),
            "succeeded" | "failed" | "rejected" | "skipped"
        )
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// The newest status of every request id on the status topic.
pub fn read_statuses(
    cfg: &Config,
    control: &ControlConfig,
) -> Result<HashMap<String, Status>, KafkaError> {
    let consumer: BaseConsumer = crate::source::connection_config(cfg)
        .set("group.id", format!("{}.control-reader", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&control.status_topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(t.name(), p.id(), timeout)?;
            if high > low {
                tpl.add_partition_offset(t.name(), p.id(), Offset::Offset(low))?;
                ends.insert(p.id(), high);
            }
        }
    }
    let mut out: HashMap<String, Status> = HashMap::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let mut idle = Instant::now();
    while !ends.is_empty() && idle.elapsed() < Duration::from_secs(30) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle = Instant::now();
                if let Some(s) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Status>(p).ok())
                {
                    remember(&mut out, s);
                }
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() >= end - 1)
                {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(out)
}

/// Fold a status into the state of its request id. A rejection says nothing about the id's request (it
/// may be a different request reusing the id), so it does not replace what is known.
fn remember(statuses: &mut HashMap<String, Status>, s: Status) {
    if s.status != "rejected" {
        statuses.insert(s.request_id.clone(), s);
    }
}

/// Publishes status messages.
struct Publisher {
    producer: FutureProducer,
    topic: String,
    run_id: String,
}

impl Publisher {
    async fn send(&self, mut s: Status) -> Status {
        s.at = now();
        s.run_id = self.run_id.clone();
        let body = serde_json::to_vec(&s).unwrap_or_default();
        let record = FutureRecord::to(&self.topic)
            .key(s.request_id.as_bytes())
            .payload(&body);
        if let Err((e, _)) = self.producer.send(record, Duration::from_secs(30)).await {
            warn!(request_id = %s.request_id, error = %e, "could not publish a request status");
        }
        metrics::counter!("bronze_control_statuses_total", "status" => s.status.clone())
            .increment(1);
        s
    }
}

fn status_of(r: &Request, status: &str) -> Status {
    Status {
        request_id: r.request_id.clone(),
        dataset: Some(r.dataset.clone()),
        kind: Some(r.kind.as_str().to_string()),
        status: status.to_string(),
        fingerprint: r.fingerprint.clone(),
        requested_by: r.requested_by.clone(),
        ..Status::default()
    }
}

fn rejected(r: &Rejection) -> Status {
    Status {
        request_id: r.request_id.clone().unwrap_or_default(),
        dataset: r.dataset.clone(),
        status: "rejected".to_string(),
        code: Some(r.code.to_string()),
        reason: Some(r.reason.clone()),
        ..Status::default()
    }
}

/// The control handler of `bronze run`: runs until aborted. Final statuses also go to the audit ledger.
pub fn spawn(
    updates: ConfigUpdates,
    run_id: String,
    audit: Option<AuditRecorder>,
) -> Option<tokio::task::JoinHandle<()>> {
    let control = updates.borrow().control.clone()?;
    Some(tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            if let Err(e) = handle(updates.clone(), &control, &run_id, audit.as_ref()).await {
                metrics::counter!("bronze_control_errors_total").increment(1);
                warn!(error = %e, retry_in = ?backoff, "control topic handler failed; restarting it");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }))
}

async fn handle(
    mut updates: ConfigUpdates,
    control: &ControlConfig,
    run_id: &str,
    audit: Option<&AuditRecorder>,
) -> Result<(), KafkaError> {
    let mut cfg_now = updates.borrow_and_update().clone();
    let cfg = &cfg_now;
    let consumer: StreamConsumer = crate::source::connection_config(cfg)
        .set("group.id", format!("{}.control", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        // A backfill may run for a long time between two polls of this consumer.
        .set("max.poll.interval.ms", "86400000")
        .create()?;
    consumer.subscribe(&[&control.topic])?;
    let publisher = Publisher {
        producer: crate::source::connection_config(cfg)
            .set("enable.idempotence", "true")
            .create()?,
        topic: control.status_topic.clone(),
        run_id: run_id.to_string(),
    };
    let mut statuses = tokio::task::block_in_place(|| read_statuses(cfg, control))?;
    info!(topic = %control.topic, known_requests = statuses.len(), "control topic handler ready");
    let mut scheduler = schedule::Scheduler::new(cfg);
    loop {
        // Requests and schedules of the tables fan-outs made since.
        if updates.has_changed().unwrap_or(false) {
            cfg_now = updates.borrow_and_update().clone();
            match scheduler.as_mut() {
                Some(s) => s.add_new(&cfg_now),
                None => scheduler = schedule::Scheduler::new(&cfg_now),
            }
        }
        let cfg = &cfg_now;
        let look = scheduler
            .as_ref()
            .map_or(Duration::MAX, |s| s.next_look(chrono::Utc::now()));
        tokio::select! {
            m = consumer.recv() => {
                let m = m?;
                let payload = m.payload().unwrap_or_default().to_vec();
                let last = run_request(cfg, &publisher, &statuses, &payload).await;
                record(audit, run_id, &last);
                remember(&mut statuses, last);
                consumer.commit_message(&m, CommitMode::Sync)?;
            }
            () = tokio::time::sleep(look), if scheduler.is_some() => {
                let Some(s) = scheduler.as_mut() else { continue };
                let owns = consumer.assignment().is_ok_and(|a| a.count() > 0);
                let now = chrono::Utc::now();
                s.owned(owns, now);
                for fire in s.due_now(&statuses, now) {
                    if let Some(skipped) = fire_slot(control, &publisher, &fire).await? {
                        record(audit, run_id, &skipped);
                        remember(&mut statuses, skipped);
                    }
                }
            }
        }
    }
}

/// A final status in the audit ledger.
fn record(audit: Option<&AuditRecorder>, run_id: &str, s: &Status) {
    if let Some(a) = audit {
        a.record(AuditRecord::request(
            run_id,
            &s.request_id,
            s.dataset.as_deref(),
            &s.status,
            s.kind.as_deref(),
            s.reason.as_deref(),
            s.result.as_ref(),
        ));
    }
}

/// Post a due slot's request on the control topic, or publish its `skipped` status (returned).
async fn fire_slot(
    control: &ControlConfig,
    publisher: &Publisher,
    fire: &schedule::Fire,
) -> Result<Option<Status>, KafkaError> {
    let (dataset, job) = (fire.dataset.as_str(), fire.job.as_str());
    if fire.skip {
        metrics::counter!("bronze_schedule_slots_total", "dataset" => dataset.to_string(), "job" => job, "outcome" => "skipped")
            .increment(1);
        info!(request_id = %fire.request_id, dataset, job, "scheduled slot missed; skipped");
        let skipped = Status {
            request_id: fire.request_id.clone(),
            dataset: Some(fire.dataset.clone()),
            kind: Some(job.to_string()),
            status: "skipped".to_string(),
            reason: Some(
                "missed while no member owned the control topic (missed = \"skip\")".into(),
            ),
            requested_by: Some("schedule".into()),
            ..Status::default()
        };
        return Ok(Some(publisher.send(skipped).await));
    }
    let body = fire.request().to_string();
    let record = FutureRecord::to(&control.topic)
        .key(fire.request_id.as_bytes())
        .payload(&body);
    publisher
        .producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)?;
    metrics::counter!("bronze_schedule_slots_total", "dataset" => dataset.to_string(), "job" => job, "outcome" => "posted")
        .increment(1);
    info!(request_id = %fire.request_id, dataset, job, folded = fire.folded, "scheduled slot posted");
    Ok(None)
}

/// Validate, run and report one request; returns its final status.
async fn run_request(
    cfg: &Config,
    publisher: &Publisher,
    statuses: &HashMap<String, Status>,
    payload: &[u8],
) -> Status {
    let req = match request::parse(cfg, payload) {
        Ok(r) => r,
        Err(rejection) => {
            info!(code = rejection.code, reason = %rejection.reason, "request rejected");
            return publisher.send(rejected(&rejection)).await;
        }
    };
    let previous = statuses.get(&req.request_id);
    if let Some(answer) = answer_from_history(&req, previous) {
        return publisher.send(answer).await;
    }
    let mut accepted = status_of(&req, "accepted");
    if previous.is_some_and(|p| !p.is_final()) {
        accepted.reason = Some("resumed: its member stopped before finishing it".to_string());
    }
    publisher.send(accepted).await;
    publisher.send(status_of(&req, "running")).await;
    info!(request_id = %req.request_id, dataset = %req.dataset, kind = req.kind.as_str(), "running request");
    let result = execute(cfg, publisher, &req).await;
    let mut s = match result {
        Ok((result, no_op)) => {
            let mut s = status_of(&req, "succeeded");
            s.result = Some(result);
            s.no_op = no_op;
            if no_op {
                s.reason = Some("already committed (by an earlier run of this request)".into());
            }
            s
        }
        Err(e) => {
            let mut s = status_of(&req, "failed");
            s.reason = Some(e);
            s
        }
    };
    metrics::counter!("bronze_control_requests_total", "kind" => req.kind.as_str(), "status" => s.status.clone())
        .increment(1);
    s = publisher.send(s).await;
    s
}

/// The status a request gets from what its id did before, when that settles it: a different
/// request under a used id, a scheduled slot that already ran, a request that already succeeded.
fn answer_from_history(req: &Request, previous: Option<&Status>) -> Option<Status> {
    if let Some(p) = previous
        && p.fingerprint != req.fingerprint
        && !p.fingerprint.is_empty()
    {
        let rejection = Rejection {
            request_id: Some(req.request_id.clone()),
            dataset: Some(req.dataset.clone()),
            code: "duplicate_id",
            reason: format!(
                "request id `{}` was already used for a different request ({})",
                req.request_id, p.status
            ),
        };
        return Some(rejected(&rejection));
    }
    if let Some(p) = previous
        && p.is_final()
        && req.request_id.starts_with(schedule::ID_PREFIX)
        && !req.force
    {
        // A slot posted twice (a restart, a move of the control partition) runs once.
        let mut s = status_of(req, &p.status);
        s.no_op = true;
        s.reason = Some(format!(
            "scheduled slot already {} at {}; not run again",
            p.status, p.at
        ));
        s.result = p.result.clone();
        return Some(s);
    }
    if let Some(p) = previous
        && p.status == "succeeded"
        && !req.force
    {
        let mut s = status_of(req, "succeeded");
        s.no_op = true;
        s.reason = Some(format!(
            "request id already succeeded at {}; not run again (set options.force to rerun)",
            p.at
        ));
        s.result = p.result.clone();
        return Some(s);
    }
    None
}

type ProgressWatch = tokio::sync::watch::Receiver<Option<(u64, u64)>>;

/// A progress callback (read, total) for a backfill or an extract, and where its latest value can be
/// watched. The channel closes when the callback is dropped, with the work that owns it.
fn progress_channel() -> (impl Fn(u64, u64) + Send + Sync, ProgressWatch) {
    let (tx, rx) = tokio::sync::watch::channel(None);
    (
        move |read, total| {
            let _ = tx.send(Some((read, total)));
        },
        rx,
    )
}

/// Publish the latest progress as a `running` status, at most every second, until the work ends.
async fn forward_progress(publisher: &Publisher, req: &Request, mut progress: ProgressWatch) {
    while progress.changed().await.is_ok() {
        let current = *progress.borrow();
        let mut s = status_of(req, "running");
        s.progress = current;
        publisher.send(s).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Run a valid request: its result as JSON, and whether it had been done already.
async fn execute(
    cfg: &Config,
    publisher: &Publisher,
    req: &Request,
) -> Result<(serde_json::Value, bool), String> {
    let d = cfg
        .dataset(&req.dataset)
        .ok_or_else(|| format!("unknown dataset `{}`", req.dataset))?;
    if req.is_extract() {
        let (report, progress) = progress_channel();
        let run = async move { crate::jobs::extract::extract(cfg, &req.extract(), &report).await };
        let (out, ()) = tokio::join!(run, forward_progress(publisher, req, progress));
        let out = out.map_err(|e| e.to_string())?;
        let no_op = out.status == "already_done";
        return Ok((serde_json::to_value(&out).unwrap_or_default(), no_op));
    }
    match req.kind {
        Kind::Backfill => {
            let (report, progress) = progress_channel();
            let run = async move { backfill::backfill(cfg, &req.backfill(), &report).await };
            let (out, ()) = tokio::join!(run, forward_progress(publisher, req, progress));
            let out = out.map_err(|e| e.to_string())?;
            let no_op = out.status == "already_done";
            Ok((serde_json::to_value(&out).unwrap_or_default(), no_op))
        }
        Kind::Compact => {
            let scope = if req.all_partitions {
                Scope::AllPartitions
            } else {
                Scope::Sealed
            };
            let out = maintenance::compact(cfg, d, scope, req.dry_run)
                .await
                .map_err(|e| e.to_string())?;
            Ok((serde_json::to_value(&out).unwrap_or_default(), false))
        }
        Kind::Vacuum => {
            let out = maintenance::vacuum(cfg, d, req.retention, req.dry_run)
                .await
                .map_err(|e| e.to_string())?;
            Ok((serde_json::to_value(&out).unwrap_or_default(), false))
        }
        Kind::Extract => Err("an extract without a database source".into()),
    }
}

/// Post `req` on the control topic and follow its statuses until a final one, calling `progress` with
/// each status on the way.
pub async fn submit(
    cfg: &Config,
    req: &Request,
    progress: &(dyn Fn(&Status) + Sync),
) -> Result<Status, KafkaError> {
    let control = cfg.control.as_ref().ok_or_else(|| {
        KafkaError::ClientCreation("no [control] section in the configuration".into())
    })?;
    // Follow the status topic from its current end, so no status of this request is missed.
    let follower: StreamConsumer = crate::source::connection_config(cfg)
        .set(
            "group.id",
            format!("{}.control-follower", cfg.kafka.group_id),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = tokio::task::block_in_place(|| {
        follower.fetch_metadata(Some(&control.status_topic), Duration::from_secs(10))
    })?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = tokio::task::block_in_place(|| {
                follower.fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
            })?;
            tpl.add_partition_offset(t.name(), p.id(), Offset::Offset(high))?;
        }
    }
    follower.assign(&tpl)?;
    let producer: FutureProducer = crate::source::connection_config(cfg).create()?;
    let body = request::to_json(req).to_string();
    producer
        .send(
            FutureRecord::to(&control.topic)
                .key(req.request_id.as_bytes())
                .payload(&body),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    loop {
        let m = follower.recv().await?;
        let Some(s) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Status>(p).ok())
        else {
            continue;
        };
        if s.request_id != req.request_id {
            continue;
        }
        progress(&s);
        if s.is_final() {
            return Ok(s);
        }
    }
}
