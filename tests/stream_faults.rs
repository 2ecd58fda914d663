//! The streaming job through service faults: the broker frozen (SIGSTOP) for a few seconds and
//! PostgreSQL restarted under it. The job retries with backoff, says so in its log, and ends
//! with the tables of an undisturbed run.
//!
//! A test binary of its own: restarting the server would disturb tests running beside it.

#[path = "common/broker.rs"]
mod broker;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;
#[path = "common/stream.rs"]
mod stream;

use std::process::{Command, Stdio};
use std::time::Duration;

use stream::{Job, dump_tables, fresh_database, generate, produce};

fn script(name: &str, args: &[&str]) {
    scripts::run_script(name, args, Stdio::inherit()).unwrap();
}

/// Restarts the test PostgreSQL server in place (same data, same port).
fn restart_postgres() {
    let dir = std::env::var("CLICKSTAY_PG_DIR").unwrap_or_else(|_| "/tmp/clickstay-pg".into());
    let data = format!("{dir}/data");
    let pg_ctl = "/usr/lib/postgresql/15/bin/pg_ctl";
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", pg_ctl]);
        c
    } else {
        Command::new(pg_ctl)
    };
    let status = command.args(["restart", "-m", "fast", "-w", "-D", &data]).stdout(Stdio::null()).status().unwrap();
    assert!(status.success(), "cannot restart PostgreSQL in {data}");
}

#[test]
fn broker_frozen_and_postgres_restarted() {
    let broker_dir = std::env::var("CLICKSTAY_BROKER_DIR").unwrap_or_else(|_| "/tmp/clickstay-test-broker".into());
    let dir = tempfile::tempdir().unwrap();
    let events = generate(
        dir.path(),
        "events.jsonl",
        600_000,
        &["--rate", "2000", "--late-fraction", "0.01", "--malformed-fraction", "0.002"],
    );
    let calm = Job::new(dir.path(), "calm", 4, &fresh_database("faults_calm"));
    produce(&calm, &events);
    calm.run_to_end(&[]);

    let troubled = calm.sibling("troubled", &fresh_database("faults_troubled"));
    // Quiet for 8 s means "drained": longer than the broker is frozen.
    let mut command = troubled.command_draining_after(8);
    command.env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while troubled.committed_offsets() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    script("broker.sh", &["pause", &broker_dir]);
    std::thread::sleep(Duration::from_secs(3));
    script("broker.sh", &["resume", &broker_dir]);
    std::thread::sleep(Duration::from_millis(300));
    restart_postgres();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the job failed:\n{log}");
    assert!(
        log.contains("cannot commit a checkpoint") && log.contains("retry_in_ms"),
        "no retry with backoff was logged:\n{log}"
    );

    let calm_tables = dump_tables(&calm);
    let troubled_tables = dump_tables(&troubled);
    for table in ["ad_click_counts", "ad_click_counts_by_country", "top_ads", "late_clicks", "rejected_events"] {
        assert!(!calm_tables[table].is_empty(), "{table} is empty: the test proves nothing");
        assert_eq!(troubled_tables[table], calm_tables[table], "{table} differs from the undisturbed run");
    }
    troubled.check_archive_ranges_contiguous();
}
