//! The streaming job through service faults: the broker frozen (SIGSTOP) for a few seconds and
//! PostgreSQL restarted under it. The job retries with backoff, says so in its log, and ends
//! with the tables of an undisturbed run. And through topology changes: a topic deleted and
//! recreated under a job's checkpoint, partitions added while it runs.
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

use stream::{Job, dump_tables, fresh_database, generate, produce, replay_csv};

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

    let calm_tables = dump_tables(&calm.db);
    let troubled_tables = dump_tables(&troubled.db);
    for table in ["ad_click_counts", "ad_click_counts_by_country", "top_ads", "late_clicks", "rejected_events"] {
        assert!(!calm_tables[table].is_empty(), "{table} is empty: the test proves nothing");
        assert_eq!(troubled_tables[table], calm_tables[table], "{table} differs from the undisturbed run");
    }
    troubled.check_archive_ranges_contiguous();
}

/// The result tables compared with replay.
const COUNT_TABLES: [&str; 3] = ["ad_click_counts", "ad_click_counts_by_country", "top_ads"];

/// A topic deleted and recreated under a job's checkpoint, with fewer new events than the job
/// had consumed: the restart stops, naming topic, partition and offsets. With
/// `--allow-offset-gap` it records the gap once and counts the new events: the tables hold the
/// old events' results (all final: the first run drained) plus exactly what replay gives for
/// the new ones (a day later, so no window holds both).
#[test]
fn recreated_topic_stops_the_job_unless_the_gap_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let in_order = ["--rate", "1000", "--late-fraction", "0"];
    let old = generate(dir.path(), "old.jsonl", 30_000, &in_order);
    let day_later = (1_767_225_600_000u64 + 86_400_000).to_string();
    let new_options = [&in_order[..], &["--seed", "2", "--start-ms", &day_later]].concat();
    let new = generate(dir.path(), "new.jsonl", 10_000, &new_options);
    let job = Job::new(dir.path(), "recreated", 1, &fresh_database("faults_recreated"));
    produce(&job, &old);
    job.run_to_end(&[]);
    let old_tables = dump_tables(&job.db);

    broker::recreate_topic(&job.topic, 1);
    produce(&job, &new);
    let output = job.command().output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the job read on over a recreated topic:\n{log}");
    for part in [
        format!("`{}` partition 0", job.topic),
        "consumed up to 30000".to_string(),
        "earliest offset is 0".to_string(),
        "latest ".to_string(),
        "--allow-offset-gap".to_string(),
    ] {
        assert!(log.contains(&part), "the error does not name {part:?}:\n{log}");
    }
    assert_eq!(dump_tables(&job.db), old_tables, "the refused start changed the tables");

    let allowed = job.command().arg("--allow-offset-gap").output().unwrap();
    let log = String::from_utf8_lossy(&allowed.stderr);
    assert!(allowed.status.success(), "the job failed with --allow-offset-gap:\n{log}");
    let gaps = source_gaps(&job);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (topic, partition, from, to, kind) = gaps[0].clone();
    assert_eq!((topic.as_str(), partition, to, kind.as_str()), (job.topic.as_str(), 0, 30_000, "shrunk"));
    assert!(from <= 10_000, "the gap starts past the new end: {from}");

    let replayed = replay_csv(dir.path(), &new);
    let tables = dump_tables(&job.db);
    for table in COUNT_TABLES {
        let expected = [old_tables[table].clone(), replayed[table].clone()].concat();
        assert!(!replayed[table].is_empty(), "{table}: replay is empty, the test proves nothing");
        assert_eq!(tables[table], expected, "{table}: not the old results plus replay of the new events");
    }
    let offsets = &tables["source_offsets"];
    assert_eq!(offsets.len(), 1);
    assert_eq!(offsets[0][3], "10000", "the new events' offsets are not committed");

    // Started again: the committed checkpoint matches the topic, no new gap.
    job.run_to_end(&[]);
    assert_eq!(source_gaps(&job), gaps);
}

/// A topic with more partitions than the config (and, on the second run, than the
/// checkpoint): worker 0 finds them in the metadata and every worker adds them in the same
/// round, by the mechanism that picks up partitions added while running (tansu cannot add
/// partitions to a topic, and deleting one under a running librdkafka consumer crashes the
/// consumer). Every event is counted; the data is in order, so the tables equal replay.
#[test]
fn partitions_beyond_config_and_checkpoint_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(
        dir.path(),
        "events.jsonl",
        40_000,
        &["--rate", "2000", "--max-disorder-ms", "0", "--late-fraction", "0"],
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = (dir.path().join("first.jsonl"), dir.path().join("second.jsonl"));
    std::fs::write(&first, lines[..20_000].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[20_000..].join("\n") + "\n").unwrap();
    let job = Job::new(dir.path(), "grown", 2, &fresh_database("faults_grown"));
    broker::recreate_topic(&job.topic, 4);

    produce(&job, &first);
    let log = job.run_to_end(&[("RUST_LOG", "info")]);
    assert!(log.contains("the source has new partitions"), "no partition was added:\n{log}");
    assert_eq!(partitions_committed(&job), ["0", "1", "2", "3"], "not every partition was read");
    produce(&job, &second);
    job.run_to_end(&[]);

    let tables = dump_tables(&job.db);
    assert_eq!(partitions_committed(&job), ["0", "1", "2", "3"]);
    let replayed = replay_csv(dir.path(), &events);
    for table in COUNT_TABLES {
        assert!(!tables[table].is_empty(), "{table} is empty: the test proves nothing");
        assert_eq!(tables[table], replayed[table], "{table} differs from replay");
    }
    assert!(tables["late_clicks"].is_empty(), "in-order events came out late");
}

/// The partitions of the job's committed offsets.
fn partitions_committed(job: &Job) -> Vec<String> {
    dump_tables(&job.db)["source_offsets"].iter().map(|r| r[2].clone()).collect()
}

/// The job's `source_gaps` rows: (topic, partition, from, to, kind).
fn source_gaps(job: &Job) -> Vec<(String, i32, i64, i64, String)> {
    let mut client = postgres::Client::connect(&job.db, postgres::NoTls).unwrap();
    let rows = client
        .query(
            "SELECT topic, partition, from_offset, to_offset, kind FROM source_gaps WHERE job = $1 ORDER BY 2, 3",
            &[&job.name],
        )
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect()
}
