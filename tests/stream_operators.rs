//! `clickstay run` as an operator runs it, against the real broker and PostgreSQL: clusters of
//! several processes started on a fresh database and killed, one instance per job (a second
//! is refused, a replaced one cannot commit), jobs sharing an archive and a database, and a
//! restart with a changed spec.

#[path = "common/broker.rs"]
mod broker;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;
#[path = "common/stream.rs"]
mod stream;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use stream::{
    Job, assert_equals_replay, assert_equals_undisturbed, children, dump_tables, fresh_database, generate, kill,
    produce, run_to_success, wait_or_kill,
};

const RESULTS: [&str; 5] =
    ["ad_click_counts", "ad_click_counts_by_country", "top_ads", "late_clicks", "rejected_events"];

/// Clusters of 2 processes x 1 and 2 x 2 threads start on a fresh database every time (each
/// process used to create the tables at once, and one died), and end with replay's tables: on
/// a 1-partition topic with late and malformed events (lateness exactly as replay judges it),
/// and on an 8-partition topic with in-order events.
#[test]
fn launched_clusters_start_on_a_fresh_database_and_equal_replay() {
    let dir = tempfile::tempdir().unwrap();
    let exact = generate(
        dir.path(),
        "exact.jsonl",
        20_000,
        &["--rate", "100", "--late-fraction", "0.01", "--malformed-fraction", "0.01"],
    );
    let ordered = generate(
        dir.path(),
        "ordered.jsonl",
        40_000,
        &["--rate", "200", "--late-fraction", "0", "--max-disorder-ms", "0"],
    );
    for (events, partitions) in [(&exact, 1), (&ordered, 8)] {
        for (processes, threads) in [(2, 1), (2, 2), (2, 1), (2, 2)] {
            let name = format!("p{partitions}c{processes}x{threads}r{}", next_suffix());
            let job = Job::new(dir.path(), &name, partitions, &fresh_database("stream_cluster"));
            produce(&job, events);
            run_to_success(job.launch_command(processes, threads), &format!("launch of {name}"));
            assert_equals_replay(&job, events, &name);
        }
    }
}

/// A short distinct suffix, so that repeated layouts get their own job, topic and archive.
fn next_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

/// A 2-process cluster killed with SIGKILL mid-stream (process 1, process 0, then both at
/// once), restarted by hand each time (a launcher that does not restart it,
/// `--max-restarts 0`), ends with exactly the tables of an undisturbed run.
#[test]
fn killed_cluster_ends_as_if_never_killed() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(
        dir.path(),
        "events.jsonl",
        400_000,
        &["--rate", "1000", "--late-fraction", "0.01", "--malformed-fraction", "0.002"],
    );
    let calm = Job::new(dir.path(), "calm", 4, &fresh_database("cluster_calm"));
    produce(&calm, &events);
    run_to_success(calm.launch_command(2, 1), "the undisturbed cluster");

    let troubled = calm.sibling("troubled", &fresh_database("cluster_troubled"));
    let mut kills = 0;
    for victim in ["process 1", "process 0", "both", "process 1"] {
        let before = troubled.committed_offsets();
        let mut launcher = troubled
            .launch_command_with(2, 1, &["--max-restarts", "0"], 2)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while troubled.committed_offsets() <= before && Instant::now() < deadline {
            if launcher.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let processes = children(launcher.id());
        if processes.len() == 2 {
            kills += 1;
            match victim {
                "process 0" => kill(processes[0]),
                "process 1" => kill(processes[1]),
                _ => processes.iter().for_each(|p| kill(*p)),
            }
        }
        // The launcher stops the surviving process and exits; nothing of the cluster is left.
        assert!(wait_or_kill(&mut launcher, Duration::from_secs(30)), "the launcher did not stop after {victim} died");
    }
    assert!(kills >= 3, "only {kills} clusters were still running when killed: make the input larger");
    run_to_success(troubled.launch_command(2, 1), "the restarted cluster");

    assert_equals_undisturbed(&troubled, &calm, "the killed cluster");
}

/// A running instance holds its job: a second one exits naming the job and the holder. Once
/// the first one's lock is gone (its session killed) a new instance may start, and from then
/// on the old one, a zombie, cannot commit: it stops with the fencing error, and the new one
/// ends with replay's tables (nothing doubled by the zombie, nothing lost).
#[test]
fn one_instance_per_job_and_a_zombie_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate(dir.path(), "first.jsonl", 5_000, &["--rate", "100", "--late-fraction", "0.01"]);
    let start_ms = 1_767_225_600_000u64 + 5_000 * 10 + 60_000;
    let second = generate(
        dir.path(),
        "second.jsonl",
        5_000,
        &["--rate", "100", "--late-fraction", "0.01", "--seed", "2", "--start-ms", &start_ms.to_string()],
    );
    let job = Job::new(dir.path(), "holder", 1, &fresh_database("stream_fence"));
    produce(&job, &first);
    let mut zombie = job.command_draining_after(120).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while job.committed_offsets() < 5_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(job.committed_offsets(), 5_000, "the first instance did not catch up");

    let refused = job.command().output().unwrap();
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a second instance ran beside the first");
    assert!(
        message.contains("job `holder` is already running") && message.contains("clickstay run job=holder"),
        "the refusal does not name the job and its holder:\n{message}"
    );

    // The first instance loses its lock but goes on: a zombie.
    let mut client = job.connect();
    let ended: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'clickstay run job=holder %'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended, 1, "the first instance's lock session was not found");
    let successor = job.command_draining_after(4).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    produce(&job, &second);
    let successor_output = successor.wait_with_output().unwrap();
    assert!(
        successor_output.status.success(),
        "the new instance failed:\n{}",
        String::from_utf8_lossy(&successor_output.stderr)
    );
    assert!(wait_or_kill(&mut zombie, Duration::from_secs(30)), "the zombie went on running");
    let zombie_output = zombie.wait_with_output().unwrap();
    let zombie_log = String::from_utf8_lossy(&zombie_output.stderr);
    assert!(!zombie_output.status.success(), "the zombie exited successfully:\n{zombie_log}");
    assert!(zombie_log.contains("taken over by a newer instance"), "the zombie's commit was not fenced:\n{zombie_log}");

    let both = dir.path().join("both.jsonl");
    let text = std::fs::read_to_string(&first).unwrap() + &std::fs::read_to_string(&second).unwrap();
    std::fs::write(&both, text).unwrap();
    assert_equals_replay(&job, &both, "after the zombie");
}

/// Two jobs on their own topics share one database and one `--archive`: each keeps its own
/// results (its schema) and its own archive files, even across restarts (the start-up cleanup
/// of one never removes the other's files).
#[test]
fn two_jobs_share_an_archive_and_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("stream_shared");
    let shared = dir.path().join("shared-archive");
    let events_a = generate(dir.path(), "a.jsonl", 8_000, &["--rate", "100", "--late-fraction", "0.01"]);
    let events_b = generate(dir.path(), "b.jsonl", 6_000, &["--rate", "50", "--seed", "9"]);
    let alpha = Job { archive: shared.clone(), ..Job::new(dir.path(), "alpha", 1, &db) };
    let beta = Job { archive: shared.clone(), ..Job::new(dir.path(), "beta", 1, &db) };
    produce(&alpha, &events_a);
    produce(&beta, &events_b);
    alpha.run_to_end(&[]);
    beta.run_to_end(&[]);
    alpha.run_to_end(&[]); // a restart: its cleanup must leave beta's files alone
    assert_equals_replay(&alpha, &events_a, "alpha");
    assert_equals_replay(&beta, &events_b, "beta");
    for (job, events) in [(&alpha, &events_a), (&beta, &events_b)] {
        let valid = std::fs::read_to_string(events).unwrap().lines().count();
        let archived: BTreeSet<_> = job.archived_offsets().into_iter().collect();
        assert_eq!(archived.len(), valid, "job {}: its archive does not hold each of its events once", job.name);
        job.check_archive_ranges_contiguous();
    }
}

/// A restart with a spec that changes the results is refused with the names of the changes;
/// `--reset-results` drops the old results and the job starts over, ending with the tables a
/// fresh job of the new spec gets.
#[test]
fn a_changed_spec_is_refused_unless_the_results_are_reset() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(dir.path(), "events.jsonl", 8_000, &["--rate", "100", "--late-fraction", "0.01"]);
    let job = Job::new(dir.path(), "respec", 1, &fresh_database("stream_respec"));
    produce(&job, &events);
    job.run_to_end(&[]);

    let shipped = std::fs::read_to_string(&job.spec).unwrap();
    let changed = shipped.replacen("n = 10", "n = 3", 1);
    assert_ne!(changed, shipped, "the shipped spec has no `n = 10` to change");
    let changed_spec = dir.path().join("changed.toml");
    std::fs::write(&changed_spec, changed).unwrap();
    let job = job.with_spec(&changed_spec);
    let refused = job.command().output().unwrap();
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a changed spec was accepted:\n{message}");
    assert!(message.contains("with another spec") && message.contains("--reset-results"), "{message}");
    assert!(message.contains("top_ads") && message.contains('3'), "the change is not named:\n{message}");

    let mut reset = job.command();
    reset.arg("--reset-results");
    run_to_success(reset, "the reset run");
    let fresh = job.sibling("respec_fresh", &fresh_database("stream_respec_fresh")).with_spec(&changed_spec);
    fresh.run_to_end(&[]);
    let (reset_tables, fresh_tables) = (dump_tables(&job), dump_tables(&fresh));
    for table in RESULTS {
        assert_eq!(reset_tables[table], fresh_tables[table], "{table}: the reset job differs from a fresh one");
    }
    let archived = job.archived_offsets();
    let unique: BTreeSet<_> = archived.iter().collect();
    assert_eq!(unique.len(), archived.len(), "the reset left the old archive files");
}
