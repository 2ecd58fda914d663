//! `clickstay run` against the real broker and PostgreSQL: the streaming job's tables equal
//! `clickstay replay` over the same events, and a job killed again and again (with `kill -9`,
//! and inside a checkpoint transaction) ends with exactly the tables of an undisturbed run,
//! every offset committed and every event archived once.

#[path = "common/broker.rs"]
mod broker;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;
#[path = "common/stream.rs"]
mod stream;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use stream::{Job, assert_equals_replay, dump_tables, fresh_database, generate, produce};

#[test]
fn one_partition_run_equals_replay() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(
        dir.path(),
        "events.jsonl",
        40_000,
        &["--rate", "100", "--late-fraction", "0.01", "--malformed-fraction", "0.01"],
    );
    let job = Job::new(dir.path(), "replayed", 1, &fresh_database("stream_replay"));
    produce(&job, &events);
    job.run_to_end(&[]);

    let tables = assert_equals_replay(&job, &events, "one partition");
    assert!(!tables["late_clicks"].is_empty());
    assert!(!tables["rejected_events"].is_empty());
}

/// A job started over on tables that already hold its results (its checkpoint deleted, as an
/// operator resetting a job might): each pane's first rows, which the job appends without
/// looking, collide with the old ones, the checkpoint is redone with upserts, and the tables
/// end as they were.
#[test]
fn started_over_on_its_own_tables_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(dir.path(), "events.jsonl", 20_000, &["--rate", "100", "--late-fraction", "0.01"]);
    let job = Job::new(dir.path(), "again", 2, &fresh_database("stream_again"));
    produce(&job, &events);
    job.run_to_end(&[]);
    let first = dump_tables(&job);
    assert!(!first["ad_click_counts"].is_empty());

    let mut client = job.connect();
    client.batch_execute("DELETE FROM source_offsets; DELETE FROM job_checkpoints; DELETE FROM raw_archive").unwrap();
    let log = job.run_to_end(&[]);
    assert!(log.contains("redoing the checkpoint with upserts"), "no pane's first rows collided:\n{log}");
    assert_eq!(dump_tables(&job), first);
}

#[test]
fn killed_again_and_again_ends_as_if_never_killed() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(
        dir.path(),
        "events.jsonl",
        1_000_000,
        &["--rate", "2000", "--late-fraction", "0.01", "--malformed-fraction", "0.002"],
    );
    let undisturbed = Job::new(dir.path(), "calm", 4, &fresh_database("stream_calm"));
    produce(&undisturbed, &events);
    undisturbed.run_to_end(&[]);

    // The same topic, another job name, database and archive.
    let disturbed = undisturbed.sibling("crashy", &fresh_database("stream_crashy"));
    // First a crash inside the third checkpoint transaction, then kill -9 mid-stream at
    // varying moments, each restart resuming from the last committed checkpoint.
    disturbed.run_expecting_crash(&[("CLICKSTAY_CRASH_IN_COMMIT", "3")]);
    let mut kills = 0;
    for delay_ms in [0, 30, 7, 60, 15, 45] {
        if disturbed.run_and_kill(Duration::from_millis(delay_ms)) {
            kills += 1;
        }
    }
    assert!(kills >= 5, "only {kills} runs were still going when killed: make the input larger");
    assert!(disturbed.committed_offsets() > 0);
    disturbed.run_to_end(&[]);

    let calm = dump_tables(&undisturbed);
    let crashy = dump_tables(&disturbed);
    for table in ["ad_click_counts", "ad_click_counts_by_country", "top_ads", "late_clicks", "rejected_events"] {
        assert_eq!(crashy[table].len(), calm[table].len(), "{table}: row counts differ");
        assert_eq!(crashy[table], calm[table], "{table} differs from the undisturbed run");
    }
    let offsets = |tables: &BTreeMap<String, Vec<Vec<String>>>| -> Vec<(String, String)> {
        tables["source_offsets"].iter().map(|r| (r[2].clone(), r[3].clone())).collect()
    };
    assert_eq!(offsets(&crashy), offsets(&calm), "committed offsets differ");

    // Conservation: every message is counted, late or rejected, once.
    let produced = std::fs::read_to_string(&events).unwrap().lines().count() as u64;
    let next_offsets: u64 = offsets(&crashy).iter().map(|(_, next)| next.parse::<u64>().unwrap()).sum();
    assert_eq!(next_offsets, produced, "offsets skipped or beyond what was produced");
    let counted: u64 = crashy["ad_click_counts"].iter().map(|r| r[2].parse::<u64>().unwrap()).sum();
    let late = crashy["late_clicks"].len() as u64;
    let rejected = crashy["rejected_events"].len() as u64;
    assert_eq!(counted + late + rejected, produced);

    // The archive: each partition's committed ranges are contiguous from 0 to its next offset,
    // and the files hold every valid event exactly once.
    let archive = disturbed.archived_offsets();
    let valid = produced - rejected;
    let mut seen = BTreeSet::new();
    for (partition, offset) in &archive {
        assert!(seen.insert((*partition, *offset)), "offset {offset} of partition {partition} archived twice");
    }
    assert_eq!(seen.len() as u64, valid, "archive does not hold every valid event once");
    disturbed.check_archive_ranges_contiguous();
}
