//! `[datasets.schedule]`: when a dataset's incremental extract, compaction and vacuum run without
//! anyone asking. Cron expressions of five fields (minute granularity) or six (seconds first), read
//! in the schedule's time zone; the control-topic owner fires them (see `control::schedule`).

use std::path::Path;
use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::Deserialize;

use super::ConfigError;

/// What a schedule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduledJob {
    /// An incremental extract from the dataset's database source.
    Extract,
    Compact,
    Vacuum,
}

impl ScheduledJob {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduledJob::Extract => "extract",
            ScheduledJob::Compact => "compact",
            ScheduledJob::Vacuum => "vacuum",
        }
    }
}

/// What happens to slots that came due while no member owned the control topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MissedSlots {
    /// The latest missed slot runs once when an owner is back; the earlier ones are folded into it.
    #[default]
    RunOnce,
    /// Missed slots do not run; the latest is recorded as skipped.
    Skip,
}

impl MissedSlots {
    pub fn as_str(self) -> &'static str {
        match self {
            MissedSlots::RunOnce => "run_once",
            MissedSlots::Skip => "skip",
        }
    }
}

/// One cron expression of a schedule.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub job: ScheduledJob,
    /// As written in the configuration.
    pub expression: String,
    pub cron: Cron,
}

/// A dataset's schedule.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    pub jobs: Vec<Scheduled>,
    pub timezone: chrono_tz::Tz,
    pub missed: MissedSlots,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    #[serde(default)]
    extract: Option<String>,
    #[serde(default)]
    compact: Option<String>,
    #[serde(default)]
    vacuum: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    missed: MissedSlots,
}

/// A cron expression of five or six fields (or an alias such as `@hourly`).
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expression)
        .map_err(|e| e.to_string())
}

/// What a dataset's schedule checks against beyond its own section.
pub(super) struct ScheduleContext<'a> {
    pub file: &'a Path,
    /// `datasets[i].schedule`.
    pub key: String,
    pub has_extract: bool,
    pub has_control: bool,
}

impl RawSchedule {
    pub(super) fn resolve(self, ctx: &ScheduleContext<'_>) -> Result<ScheduleConfig, ConfigError> {
        let invalid = |field: &str, reason: String| {
            let key = match field {
                "" => ctx.key.clone(),
                f => format!("{}.{f}", ctx.key),
            };
            ConfigError::invalid(ctx.file, key, reason)
        };
        if !ctx.has_control {
            return Err(invalid(
                "",
                "schedules are fired by the owner of the control topic: add a `[control]` section"
                    .into(),
            ));
        }
        let timezone = match &self.timezone {
            None => chrono_tz::UTC,
            Some(z) => chrono_tz::Tz::from_str(z)
                .map_err(|_| invalid("timezone", format!("`{z}` is not an IANA time zone")))?,
        };
        let mut jobs = Vec::new();
        for (job, expression) in [
            (ScheduledJob::Extract, self.extract),
            (ScheduledJob::Compact, self.compact),
            (ScheduledJob::Vacuum, self.vacuum),
        ] {
            let Some(expression) = expression else {
                continue;
            };
            let field = job.as_str();
            if job == ScheduledJob::Extract && !ctx.has_extract {
                return Err(invalid(
                    field,
                    "an extract schedule needs a database source (`[datasets.extract]`)".into(),
                ));
            }
            let cron = parse_cron(&expression).map_err(|e| {
                invalid(
                    field,
                    format!("`{expression}` is not a cron expression: {e}"),
                )
            })?;
            jobs.push(Scheduled {
                job,
                expression,
                cron,
            });
        }
        if jobs.is_empty() {
            return Err(invalid(
                "",
                "a schedule needs at least one of `extract`, `compact` or `vacuum`".into(),
            ));
        }
        Ok(ScheduleConfig {
            jobs,
            timezone,
            missed: self.missed,
        })
    }
}
