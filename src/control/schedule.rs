//! Schedules (`[datasets.schedule]`): the owner of the control topic fires each dataset's cron slots
//! for an incremental extract, a compaction and a vacuum.
//!
//! The owner does not run a slot itself: it posts the request `schedule:<dataset>:<job>:<slot>` on
//! the control topic, so the slot runs, is reported on the status topic and recorded in the ledger
//! like any other request. The id is derived from the slot's time, and the handler treats a scheduled
//! id that has a final status as done, so a slot posted twice (by an owner that restarted before the
//! handler took it, or by two members while the control partition moves between them) runs once.
//!
//! A slot that came due while no member owned the control topic is *missed*: with `missed =
//! "run_once"` the latest missed slot runs when an owner is back (the earlier ones are folded into
//! it), with `"skip"` it is recorded as `skipped`. Slots that came due while the handler was busy
//! with a long request are folded into the latest as well: a schedule never queues a backlog.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;

use super::Status;
use crate::config::{Config, MissedSlots, ScheduledJob};

/// The prefix of every scheduled request id.
pub const ID_PREFIX: &str = "schedule:";

/// How often the owner looks at its schedules and at whether it still owns the control topic: a
/// slot is posted at most this late, and one that came due longer than this before the member
/// noticed it owns the topic counts as missed.
pub const TICK: Duration = Duration::from_secs(1);

/// The request id of a slot: dataset, job and the slot's time (UTC, to the second).
pub fn slot_id(dataset: &str, job: ScheduledJob, slot: DateTime<Utc>) -> String {
    format!(
        "{ID_PREFIX}{dataset}:{}:{}",
        job.as_str(),
        slot.format("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// The slot time of `id` if it is a scheduled request id of `dataset`'s `job` (dataset names have
/// no `:`).
pub fn slot_of(id: &str, dataset: &str, job: ScheduledJob) -> Option<DateTime<Utc>> {
    let time = id
        .strip_prefix(ID_PREFIX)?
        .strip_prefix(dataset)?
        .strip_prefix(':')?
        .strip_prefix(job.as_str())?
        .strip_prefix(':')?;
    DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// What one schedule asks for at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Post the slot's request; `folded`: earlier slots came due since the last one and are done by
    /// this one.
    Run {
        slot: DateTime<Utc>,
        folded: bool,
    },
    /// Record the slot as skipped (missed, `missed = "skip"`).
    Skip {
        slot: DateTime<Utc>,
    },
}

/// What a schedule asks for at `now`. `last` is its newest slot with a status (or posted), `since`
/// when this member began to own the control topic: a slot at or before it was missed. Without any
/// slot behind it a schedule starts at `since` (a new schedule has no backlog).
pub fn due(
    cron: &Cron,
    tz: chrono_tz::Tz,
    last: Option<DateTime<Utc>>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    missed: MissedSlots,
) -> Due {
    let after = last.unwrap_or(since);
    let Ok(latest) = cron.find_previous_occurrence(&now.with_timezone(&tz), true) else {
        return Due::Nothing;
    };
    let latest = latest.with_timezone(&Utc);
    if latest <= after {
        return Due::Nothing;
    }
    // Skipped slots are recorded before the next one runs, however soon it came due after the owner
    // took over: the owner's first look may come after a slot that was not missed.
    if missed == MissedSlots::Skip
        && latest > since
        && let Ok(missed_slot) = cron.find_previous_occurrence(&since.with_timezone(&tz), true)
        && missed_slot.with_timezone(&Utc) > after
    {
        return Due::Skip {
            slot: missed_slot.with_timezone(&Utc),
        };
    }
    let folded = cron
        .find_next_occurrence(&after.with_timezone(&tz), false)
        .is_ok_and(|first| first.with_timezone(&Utc) < latest);
    match (latest > since, missed) {
        (true, _) | (false, MissedSlots::RunOnce) => Due::Run {
            slot: latest,
            folded,
        },
        (false, MissedSlots::Skip) => Due::Skip { slot: latest },
    }
}

/// A slot to post or record as skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Fire {
    pub request_id: String,
    pub dataset: String,
    pub job: ScheduledJob,
    pub slot: DateTime<Utc>,
    pub folded: bool,
    pub skip: bool,
}

impl Fire {
    /// The control message of the slot's request.
    pub fn request(&self) -> serde_json::Value {
        let mut r = serde_json::json!({
            "request_id": self.request_id,
            "dataset": self.dataset,
            "kind": self.job.as_str(),
            "requested_by": "schedule",
        });
        if self.job == ScheduledJob::Extract {
            r["options"] = serde_json::json!({ "mode": "incremental" });
        }
        r
    }
}

struct Entry {
    dataset: String,
    job: ScheduledJob,
    cron: Cron,
    tz: chrono_tz::Tz,
    missed: MissedSlots,
    /// The newest slot this member posted or skipped (the handler may not have taken it yet).
    fired: Option<DateTime<Utc>>,
}

/// The schedules of every dataset, as the control handler fires them.
pub struct Scheduler {
    entries: Vec<Entry>,
    /// Since when this member owns the control topic (less a tick), while it does.
    since: Option<DateTime<Utc>>,
}

impl Scheduler {
    /// `None` when no dataset has a schedule.
    pub fn new(cfg: &Config) -> Option<Scheduler> {
        let mut s = Scheduler {
            entries: Vec::new(),
            since: None,
        };
        s.add_new(cfg);
        (!s.entries.is_empty()).then_some(s)
    }

    /// The schedules of datasets `cfg` has and this scheduler not yet (tables fan-outs made).
    pub fn add_new(&mut self, cfg: &Config) {
        let known: std::collections::HashSet<String> =
            self.entries.iter().map(|e| e.dataset.clone()).collect();
        let new = cfg
            .datasets
            .iter()
            .filter(|d| !known.contains(&d.name))
            .filter_map(|d| Some((d, d.schedule.as_ref()?)))
            .flat_map(|(d, s)| {
                s.jobs.iter().map(|j| Entry {
                    dataset: d.name.clone(),
                    job: j.job,
                    cron: j.cron.clone(),
                    tz: s.timezone,
                    missed: s.missed,
                    fired: None,
                })
            });
        self.entries.extend(new);
    }

    /// Whether this member owns the control topic at `now`: slots fire only while it does.
    pub fn owned(&mut self, owns: bool, now: DateTime<Utc>) {
        let tick = chrono::Duration::from_std(TICK).unwrap_or_default();
        match owns {
            true => {
                self.since.get_or_insert(now - tick);
            }
            false => {
                self.since = None;
                for e in &mut self.entries {
                    e.fired = None;
                }
            }
        }
    }

    /// The slots due at `now`, given what the status topic knows; each is taken as fired.
    pub fn due_now(&mut self, statuses: &HashMap<String, Status>, now: DateTime<Utc>) -> Vec<Fire> {
        let Some(since) = self.since else {
            return Vec::new();
        };
        let newest = newest_slots(statuses);
        let mut out = Vec::new();
        for e in &mut self.entries {
            let known = newest.get(&(e.dataset.as_str(), e.job.as_str())).copied();
            let last = known.max(e.fired);
            let (slot, folded, skip) = match due(&e.cron, e.tz, last, since, now, e.missed) {
                Due::Nothing => continue,
                Due::Run { slot, folded } => (slot, folded, false),
                Due::Skip { slot } => (slot, false, true),
            };
            e.fired = Some(slot);
            out.push(Fire {
                request_id: slot_id(&e.dataset, e.job, slot),
                dataset: e.dataset.clone(),
                job: e.job,
                slot,
                folded,
                skip,
            });
        }
        out
    }

    /// How long until the next look: the next slot of any schedule, at most a tick away.
    pub fn next_look(&self, now: DateTime<Utc>) -> Duration {
        let next = self
            .entries
            .iter()
            .filter_map(|e| {
                let t = e
                    .cron
                    .find_next_occurrence(&now.with_timezone(&e.tz), false)
                    .ok()?;
                (t.with_timezone(&Utc) - now).to_std().ok()
            })
            .min();
        next.map_or(TICK, |n| n.min(TICK))
    }
}

/// The newest slot with a status of every dataset and job, in one pass over the statuses (asked every
/// tick: one scan per schedule would cost schedules × requests ever made).
fn newest_slots(statuses: &HashMap<String, Status>) -> HashMap<(&str, &str), DateTime<Utc>> {
    let mut out: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
    for id in statuses.keys() {
        let Some(rest) = id.strip_prefix(ID_PREFIX) else {
            continue;
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(dataset), Some(job), Some(time)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(slot) = DateTime::parse_from_rfc3339(time) else {
            continue;
        };
        let slot = slot.with_timezone(&Utc);
        let newest = out.entry((dataset, job)).or_insert(slot);
        *newest = (*newest).max(slot);
    }
    out
}

/// The next slot of a cron expression after `now`, for `bronze status`.
pub fn next_slot(cron: &Cron, tz: chrono_tz::Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&now.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_cron;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn slot_ids_carry_their_slot_and_no_other_schedule_reads_them() {
        let slot = at("2026-12-07T10:00:02Z");
        let id = slot_id("orders", ScheduledJob::Compact, slot);
        assert_eq!(id, "schedule:orders:compact:2026-12-07T10:00:02Z");
        assert_eq!(slot_of(&id, "orders", ScheduledJob::Compact), Some(slot));
        assert_eq!(slot_of(&id, "orders", ScheduledJob::Vacuum), None);
        assert_eq!(slot_of(&id, "order", ScheduledJob::Compact), None);
        assert_eq!(slot_of("backfill-1", "orders", ScheduledJob::Compact), None);
    }

    #[test]
    fn an_on_time_slot_runs_and_a_slot_runs_once() {
        let every_2s = parse_cron("*/2 * * * * *").unwrap();
        let since = at("2026-12-07T10:00:00.500Z");
        let now = at("2026-12-07T10:00:02.100Z");
        let slot = at("2026-12-07T10:00:02Z");
        let run = due(
            &every_2s,
            chrono_tz::UTC,
            None,
            since,
            now,
            MissedSlots::Skip,
        );
        assert_eq!(
            run,
            Due::Run {
                slot,
                folded: false
            }
        );
        let again = due(
            &every_2s,
            chrono_tz::UTC,
            Some(slot),
            since,
            now,
            MissedSlots::Skip,
        );
        assert_eq!(again, Due::Nothing);
        // A new schedule has no backlog: nothing before its owner started.
        let early = at("2026-12-07T10:00:01.900Z");
        let none = due(
            &every_2s,
            chrono_tz::UTC,
            None,
            since,
            early,
            MissedSlots::RunOnce,
        );
        assert_eq!(none, Due::Nothing);
    }

    #[test]
    fn missed_slots_run_once_or_are_skipped_and_busy_slots_fold() {
        let every_2s = parse_cron("*/2 * * * * *").unwrap();
        let last = Some(at("2026-12-07T10:00:02Z"));
        // Down from 10:00:03 to 10:00:09: 04, 06 and 08 were missed.
        let since = at("2026-12-07T10:00:09Z");
        let now = at("2026-12-07T10:00:09.200Z");
        let missed_slot = at("2026-12-07T10:00:08Z");
        let run_once = due(
            &every_2s,
            chrono_tz::UTC,
            last,
            since,
            now,
            MissedSlots::RunOnce,
        );
        assert_eq!(
            run_once,
            Due::Run {
                slot: missed_slot,
                folded: true
            }
        );
        let skip = due(
            &every_2s,
            chrono_tz::UTC,
            last,
            since,
            now,
            MissedSlots::Skip,
        );
        assert_eq!(skip, Due::Skip { slot: missed_slot });
        // The owner's first look came after 10, a slot it owned: 08 is skipped first, then 10 runs.
        let later = at("2026-12-07T10:00:10.300Z");
        let first = due(
            &every_2s,
            chrono_tz::UTC,
            last,
            since,
            later,
            MissedSlots::Skip,
        );
        assert_eq!(first, Due::Skip { slot: missed_slot });
        let then = due(
            &every_2s,
            chrono_tz::UTC,
            Some(missed_slot),
            since,
            later,
            MissedSlots::Skip,
        );
        assert_eq!(
            then,
            Due::Run {
                slot: at("2026-12-07T10:00:10Z"),
                folded: false
            }
        );
        // Owner all along, busy from 10:00:03 to 10:00:07: only 06 runs.
        let since = at("2026-12-07T10:00:00Z");
        let now = at("2026-12-07T10:00:07Z");
        let busy = due(
            &every_2s,
            chrono_tz::UTC,
            last,
            since,
            now,
            MissedSlots::Skip,
        );
        assert_eq!(
            busy,
            Due::Run {
                slot: at("2026-12-07T10:00:06Z"),
                folded: true
            }
        );
    }

    #[test]
    fn the_newest_slot_of_each_schedule_comes_from_one_pass() {
        let statuses: HashMap<String, Status> = [
            "schedule:orders:compact:2026-12-07T10:00:02Z",
            "schedule:orders:compact:2026-12-07T10:00:06Z",
            "schedule:orders:vacuum:2026-12-07T09:00:00Z",
            "schedule:users:compact:2026-12-07T10:00:04Z",
            "backfill-1",
            "schedule:broken",
        ]
        .into_iter()
        .map(|id| (id.to_string(), Status::default()))
        .collect();
        let newest = newest_slots(&statuses);
        assert_eq!(newest.len(), 3);
        assert_eq!(newest[&("orders", "compact")], at("2026-12-07T10:00:06Z"));
        assert_eq!(newest[&("orders", "vacuum")], at("2026-12-07T09:00:00Z"));
        assert_eq!(newest[&("users", "compact")], at("2026-12-07T10:00:04Z"));
    }

    fn config(schedule: &str) -> (tempfile::TempDir, Config) {
        let control = "[control]\ntopic = \"c\"\nstatus_topic = \"s\"";
        crate::config::for_tests(control, &format!("schedule = {schedule}"))
    }

    #[test]
    fn only_the_owner_fires_and_each_slot_once() {
        let (_dir, cfg) = config(r#"{ compact = "*/2 * * * * *" }"#);
        let mut s = Scheduler::new(&cfg).unwrap();
        let none = HashMap::new();
        let start = at("2026-12-07T10:00:00.500Z");
        s.owned(false, start);
        assert!(s.due_now(&none, at("2026-12-07T10:00:02.100Z")).is_empty());
        s.owned(true, start);
        let fired = s.due_now(&none, at("2026-12-07T10:00:02.100Z"));
        assert_eq!(fired.len(), 1);
        assert_eq!(
            fired[0].request_id,
            "schedule:orders:compact:2026-12-07T10:00:02Z"
        );
        assert_eq!(fired[0].request()["kind"], "compact");
        // Posted, its status not published yet: not posted again.
        assert!(s.due_now(&none, at("2026-12-07T10:00:03Z")).is_empty());
        // A later slot another owner ran counts as fired.
        let mut known = HashMap::new();
        let later = slot_id("orders", ScheduledJob::Compact, at("2026-12-07T10:00:04Z"));
        known.insert(later.clone(), Status::default());
        assert!(s.due_now(&known, at("2026-12-07T10:00:05Z")).is_empty());
        assert_eq!(s.due_now(&known, at("2026-12-07T10:00:06.1Z")).len(), 1);
        assert!(s.next_look(at("2026-12-07T10:00:06.5Z")) <= TICK);
    }

    #[test]
    fn slots_are_read_in_the_schedule_time_zone() {
        // 02:00 in Amsterdam is 01:00 UTC in winter.
        let nightly = parse_cron("0 2 * * *").unwrap();
        let tz: chrono_tz::Tz = "Europe/Amsterdam".parse().unwrap();
        let next = next_slot(&nightly, tz, at("2026-12-07T00:30:00Z"));
        assert_eq!(next, Some(at("2026-12-07T01:00:00Z")));
    }
}
