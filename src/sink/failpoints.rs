//! Fault injection for the crash, outage and background-commit tests, switched on by environment
//! variables a test sets on the process (never in a configuration file).

/// Failure injection for crash tests: `BRONZE_FAILPOINT=<name>` aborts the process at that point:
/// `after_upload` (Parquet files written, Delta commit not made), `after_dead_letters` (dead letters
/// committed, rows not).
pub(crate) fn failpoint(name: &str) {
    if std::env::var("BRONZE_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("bronze: failpoint `{name}` hit, aborting");
        std::process::abort();
    }
}

/// Failure injection for backpressure tests: while the file named by `BRONZE_FAIL_COMMITS_WHILE`
/// exists, every commit fails as a storage outage would (after the upload, like a failed log write).
pub(super) fn injected_outage() -> bool {
    std::env::var_os("BRONZE_FAIL_COMMITS_WHILE").is_some_and(|p| std::path::Path::new(&p).exists())
}

/// Delay injection for tests of commits running in the background: while the file named by
/// `BRONZE_HOLD_COMMITS_WHILE` exists, a commit waits between its upload and its log write.
pub(super) async fn held_commit() {
    let Some(path) = std::env::var_os("BRONZE_HOLD_COMMITS_WHILE") else {
        return;
    };
    while std::path::Path::new(&path).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
