//! Requests that can run here or on the running members: `--submit` posts them on the control topic
//! and follows their status; progress bars for both.

use std::future::Future;
use std::process::ExitCode;

use bronze::config::Config;
use bronze::control::request::{Kind, Request};

/// How a request runs: here or on the running members, for real or as a dry run, reported as text
/// or as JSON.
#[derive(clap::Args)]
pub struct Running {
    /// Report what would be done, commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// Post the request on the control topic and follow its status, instead of running it here
    /// (compact and vacuum need --dataset).
    #[arg(long)]
    pub submit: bool,
}

/// Which request a replace is, for idempotence.
#[derive(clap::Args)]
pub struct Identity {
    /// Default: a new id; give one to make a retry of the same request a no-op.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Run again even if this request id was already committed.
    #[arg(long)]
    pub force: bool,
}

/// With `submit`, post `request()` on the control topic and follow it to its outcome; otherwise run
/// `here` in this process.
pub async fn submit_or_run(
    cfg: &Config,
    submit: bool,
    json: bool,
    request: impl FnOnce() -> anyhow::Result<Request>,
    here: impl Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    if submit {
        submit_request(cfg, &request()?, json).await
    } else {
        here.await
    }
}

/// A control request of `kind` for `dataset`, with a new id unless `fill` sets one.
pub fn control_request(dataset: &str, kind: Kind, fill: impl FnOnce(&mut Request)) -> Request {
    let mut r = Request {
        request_id: format!("cli-{}", uuid::Uuid::now_v7()),
        dataset: dataset.to_string(),
        kind,
        range: None,
        partitions: Vec::new(),
        force: false,
        dry_run: false,
        retention: None,
        all_partitions: false,
        requested_by: std::env::var("USER").ok(),
        source: "kafka".to_string(),
        extract_mode: None,
        fingerprint: String::new(),
    };
    fill(&mut r);
    r
}

/// Post a request on the control topic and wait for its outcome, with a progress bar.
async fn submit_request(cfg: &Config, r: &Request, json: bool) -> anyhow::Result<ExitCode> {
    let bar = progress_bar(
        "{spinner} {msg} [{bar:30}] {pos}/{len}",
        format!("{} {}: submitted", r.kind.as_str(), r.request_id),
        json,
    );
    let on_status = |s: &bronze::control::Status| {
        bar.set_message(format!(
            "{} {}: {}",
            r.kind.as_str(),
            r.request_id,
            s.status
        ));
        if let Some((read, total)) = s.progress {
            show_progress(&bar, read, total);
        }
    };
    let last = bronze::control::submit(cfg, r, &on_status).await;
    bar.finish_and_clear();
    let last = last?;
    if json {
        println!("{}", serde_json::to_string(&last)?);
    } else {
        println!(
            "{} {}: {}{}{}",
            r.kind.as_str(),
            r.request_id,
            last.status,
            if last.no_op { " (no-op)" } else { "" },
            last.reason
                .as_ref()
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
        );
        if let Some(result) = &last.result {
            println!("  {result}");
        }
    }
    Ok(if last.status == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A progress bar on stderr (hidden with --json, and by indicatif when stderr is not a terminal).
pub fn progress_bar(template: &str, message: String, hidden: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(message);
    if hidden {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Run `job` with a progress bar on stderr (`template`, starting with `message`; hidden with `hidden`)
/// that the job's reports (read so far, total) move.
pub async fn with_progress<T>(
    template: &str,
    message: String,
    hidden: bool,
    job: impl AsyncFnOnce(&(dyn Fn(u64, u64) + Sync)) -> T,
) -> T {
    let bar = progress_bar(template, message, hidden);
    let report = |read: u64, total: u64| show_progress(&bar, read, total);
    let out = job(&report).await;
    bar.finish_and_clear();
    out
}

/// `read` of `total` on `bar` (backfill messages, extract rows, a submitted request's progress).
pub fn show_progress(bar: &indicatif::ProgressBar, read: u64, total: u64) {
    bar.set_length(total);
    bar.set_position(read);
}
