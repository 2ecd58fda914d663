//! The streaming job through service faults: the broker frozen (SIGSTOP) for a few seconds and
//! PostgreSQL restarted under it (the job retries with backoff, says so in its log, and ends
//! with the tables of an undisturbed run), and a foreign producer's spelling of the events
//! (JSON escapes, key order, whitespace, extra keys), which gives the plain spelling's tables;
//! a PostgreSQL refusal, reported with its SQLSTATE; a database locked for 30 s under ingest,
//! which the memory bound (`--max-buffered-bytes`) rides out without losing anything; and
//! topology changes: a topic deleted and recreated under a job's checkpoint, a topic with more
//! partitions than configured.
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

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use clickstay::clicks::event::{self, ClickEvent, IpText};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use stream::{Job, dump_tables, fresh_database, generate, produce, replay_csv};

/// The tests of this file one at a time: each freezes, restarts or locks a service the others
/// would feel.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERVICES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERVICES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn script(name: &str, args: &[&str]) {
    scripts::run_script(name, args, Stdio::inherit()).unwrap();
}

#[test]
fn broker_frozen_and_postgres_restarted() {
    let _services = one_at_a_time();
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
    pg::restart_server();
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

/// `event` as another JSON writer might spell it: every letter of the country and every dot of
/// the address as a `\uXXXX` escape (the ip's first digit too, every third event), the keys in
/// another order, whitespace, and extra keys with nested values; three spellings in turn.
fn foreign_spelling(event: &ClickEvent, n: usize) -> String {
    let escape_all = |text: &str| text.chars().map(|c| format!("\\u{:04X}", c as u32)).collect::<String>();
    let mut ip = IpText::default().format(event.ip).replace('.', "\\u002e");
    if n.is_multiple_of(3) {
        ip = format!("\\u{:04x}{}", ip.as_bytes()[0], &ip[1..]);
    }
    let country = escape_all(event.country.as_str());
    let (ad, ts, user) = (event.ad_id, event.click_ts, event.user_id);
    match n % 3 {
        0 => format!(
            r#"{{ "country" : "{country}", "ip" : "{ip}", "user_id" : {user}, "click_ts" : {ts}, "ad_id" : {ad} }}"#
        ),
        1 => format!(
            "{{\n\t\"schema\": {{\"name\": \"click\", \"version\": [1, 2.5e0]}},\r\n\t\"ad_id\": {ad},\"user_id\":{user},\
             \"country\":\"{country}\",\"click_ts\":{ts},\"ip\":\"{ip}\",\"tags\":[null,true,\"\\\"x\\\"\"]\n}}"
        ),
        _ => format!(
            r#"{{"click_ts":{ts},"ad_id":{ad},"session":{{"id":"s\u00e9-{n}","nested":{{"deep":[{{}}]}}}},"ip":"{ip}","user_id":{user},"country":"{country}","score":-0.5}}"#
        ),
    }
}

/// Sends every line of `lines` to the job's topic as is, keyed by the event's `ad_id` with the
/// producer settings of `clickstay produce` (so each event lands in the partition the plain
/// spelling's does, in the same order). The topic must exist.
fn produce_verbatim(job: &stream::Job, lines: &[(ClickEvent, String)]) {
    send_lines(job, lines, None);
}

/// Sends every line of `lines` as is, keyed by the event's `ad_id`: to partition `ad_id %
/// partitions`, or where the producer's partitioner puts the key.
fn send_lines(job: &stream::Job, lines: &[(ClickEvent, String)], partitions: Option<u64>) {
    let kafka = broker::kafka_config(&job.topic, job.partitions as i32);
    let producer: BaseProducer = clickstay::clicks::produce::producer_config(&kafka).create().unwrap();
    for (event, line) in lines {
        let key = event.ad_id.to_string();
        let mut record = BaseRecord::to(&job.topic).key(&key).payload(line);
        if let Some(partitions) = partitions {
            record = record.partition((event.ad_id % partitions) as i32);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((error, back)) => {
                    assert!(
                        matches!(error.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)),
                        "cannot send a foreign-spelled event: {error}"
                    );
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// The events of a JSON Lines file of valid events, with their lines.
fn plain_lines(events: &Path) -> Vec<(ClickEvent, String)> {
    let text = std::fs::read_to_string(events).unwrap();
    let parse = |line: &str| event::parse_json(line.as_bytes(), line.len()).expect("gen writes valid events");
    text.lines().map(|line| (parse(line), line.to_string())).collect()
}

/// The events of a JSON Lines file of valid events, with their foreign spelling.
fn foreign_lines(events: &Path) -> Vec<(ClickEvent, String)> {
    let foreign = |(n, (event, line)): (usize, (ClickEvent, String))| {
        let foreign = foreign_spelling(&event, n);
        assert_ne!(foreign, line);
        (event, foreign)
    };
    plain_lines(events).into_iter().enumerate().map(foreign).collect()
}

#[test]
fn a_foreign_producers_spelling_gives_the_plain_spellings_tables() {
    let _services = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let events = generate(dir.path(), "events.jsonl", 50_000, &["--rate", "1000", "--late-fraction", "0.01"]);
    let plain = Job::new(dir.path(), "plain", 4, &fresh_database("faults_plain"));
    produce(&plain, &events);
    plain.run_to_end(&[]);

    let foreign = Job::new(dir.path(), "foreign", 4, &fresh_database("faults_foreign"));
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    produce(&foreign, &empty); // creates the topic
    produce_verbatim(&foreign, &foreign_lines(&events));
    foreign.run_to_end(&[]);

    // The rows name their topic (late_clicks, source_offsets): the two jobs read two topics.
    let without_topic = |job: &Job| {
        let mut tables = dump_tables(job);
        for rows in tables.values_mut() {
            for row in rows.iter_mut() {
                row.retain(|cell| *cell != job.topic && *cell != job.name);
            }
        }
        tables
    };
    let plain_tables = without_topic(&plain);
    let foreign_tables = without_topic(&foreign);
    assert!(foreign_tables["rejected_events"].is_empty(), "rejected: {:?}", &foreign_tables["rejected_events"][..1]);
    for table in ["ad_click_counts", "ad_click_counts_by_country", "top_ads", "late_clicks"] {
        assert!(!plain_tables[table].is_empty(), "{table} is empty: the test proves nothing");
        assert_eq!(foreign_tables[table], plain_tables[table], "{table} differs from the plain spelling's");
    }
    assert_eq!(foreign_tables["source_offsets"], plain_tables["source_offsets"], "partitions or offsets differ");
}

#[test]
fn a_postgres_error_names_sqlstate_message_and_purpose() {
    let _services = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database("faults_no_create");
    // A role that may connect but not create tables: PostgreSQL itself refuses the job's tables.
    let role = db.rsplit('/').next().unwrap().replace("faults_no_create", "reader");
    let mut admin = postgres::Client::connect(&db, postgres::NoTls).unwrap();
    admin.batch_execute(&format!("CREATE ROLE {role} LOGIN")).unwrap();
    let job = Job::new(dir.path(), "no_create", 1, &db.replacen("postgres@", &format!("{role}@"), 1));
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    produce(&job, &empty); // creates the topic
    let output = job.command().env("RUST_BACKTRACE", "1").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the job ran without the right to create its tables:\n{stderr}");
    assert!(
        stderr.contains("cannot create") && stderr.contains("SQLSTATE 42501: permission denied for schema public"),
        "the error does not name the purpose, SQLSTATE and message:\n{stderr}"
    );
    assert!(!stderr.contains("db error"), "{stderr}");
}

/// The job's resident memory in bytes (VmRSS), or `None` once it has exited.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// A job that is killed should the test fail before it ends (else it would run on).
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `--max-buffered-bytes` of the memory test.
const BOUND: u64 = 32 << 20;
/// What the bound does not count: the binary and its libraries (24 MiB before the lock),
/// librdkafka's prefetch queue (8 MiB of messages a worker, plus librdkafka's own overhead for
/// each message), the archive file being written at a cut, the allocator's retained pages, the
/// dataflow's open panes. Measured here: the peak was 189 to 215 MiB over two runs with this
/// bound (up to 183 MiB over it) and 408 MiB without any bound, so the limit below tells the
/// two apart with room either way.
const ALLOWANCE: u64 = 224 << 20;

#[test]
fn a_locked_database_under_ingest_keeps_memory_bounded_and_loses_nothing() {
    let _services = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Few ads: the result rows are few, the raw events held for the archive are what grows.
    let events = generate(dir.path(), "events.jsonl", 3_000_000, &["--ads", "10", "--late-fraction", "0.001"]);
    let job = Job::new(dir.path(), "locked", 1, &fresh_database("faults_locked"));
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    produce(&job, &empty); // creates the topic
    let mut command = job.command_draining_after(10);
    command.args(["--max-buffered-bytes", &BOUND.to_string()]).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = KillOnDrop(Some(command.spawn().unwrap()));
    let pid = child.0.as_ref().unwrap().id();

    let mut locker = job.connect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let tables_exist = "SELECT to_regclass('ad_click_counts') IS NOT NULL";
    while !locker.query_one(tables_exist, &[]).unwrap().get::<_, bool>(0) {
        assert!(std::time::Instant::now() < deadline, "the job never created its tables");
        std::thread::sleep(Duration::from_millis(50));
    }
    let baseline = rss_bytes(pid).unwrap();
    let mut lock = locker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE ad_click_counts IN ACCESS EXCLUSIVE MODE").unwrap();
    let producer = {
        let (job_config, events) = (job.config.clone(), events.clone());
        std::thread::spawn(move || {
            let status = Command::new(stream::BIN)
                .args(["produce", "--config"])
                .arg(&job_config)
                .arg("--input")
                .arg(&events)
                .env_remove("CLICKSTAY_KAFKA_BROKERS")
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "clickstay produce failed");
        })
    };
    let locked_until = std::time::Instant::now() + Duration::from_secs(30);
    let mut peak = 0;
    while std::time::Instant::now() < locked_until {
        peak = peak.max(rss_bytes(pid).expect("the job died while the database was locked"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let committed_while_locked = job.committed_offsets();
    lock.rollback().unwrap();
    producer.join().unwrap();
    let output = child.0.take().unwrap().wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the job failed:\n{log}");
    eprintln!(
        "RSS: {} MiB before the lock, peak {} MiB while locked (bound {} MiB + allowance {} MiB)",
        baseline >> 20,
        peak >> 20,
        BOUND >> 20,
        ALLOWANCE >> 20
    );
    assert!(
        peak < BOUND + ALLOWANCE,
        "peak RSS {} MiB while the database was locked, over the bound of {} MiB plus {} MiB",
        peak >> 20,
        BOUND >> 20,
        ALLOWANCE >> 20
    );

    let tables = dump_tables(&job);
    let replayed = replay_csv(dir.path(), &events);
    for table in ["ad_click_counts", "ad_click_counts_by_country", "top_ads"] {
        assert!(!tables[table].is_empty(), "{table} is empty: the test proves nothing");
        assert_eq!(tables[table], replayed[table], "{table} differs from replay: events lost or doubled");
    }
    assert_eq!(tables["late_clicks"].len(), replayed["late_clicks"].len(), "late clicks differ from replay");
    assert_eq!(job.committed_offsets(), 3_000_000, "not every event was committed");
    eprintln!("committed while locked: {committed_while_locked}");
}

/// The result tables compared with replay.
const COUNT_TABLES: [&str; 3] = ["ad_click_counts", "ad_click_counts_by_country", "top_ads"];

/// A topic deleted and recreated under a job's checkpoint, with fewer new events than the job
/// had consumed: the restart stops, naming topic, partition and offsets. With
/// `--allow-offset-gap` it records the gap once and counts the new events in the partition's
/// next incarnation: the tables hold the old events' results (all final: the first run drained)
/// plus exactly what replay gives for the new ones (a day later, so no window holds both). The
/// new events are the old ones a day later (same seed): their late and rejected records sit on
/// the very offsets of old ones, and both are kept, as are both incarnations' archives.
#[test]
fn recreated_topic_stops_the_job_unless_the_gap_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let options = ["--rate", "1000", "--late-fraction", "0.01", "--malformed-fraction", "0.01"];
    let old = generate(dir.path(), "old.jsonl", 30_000, &options);
    let day_later = (1_767_225_600_000u64 + 86_400_000).to_string();
    let new_options = [&options[..], &["--start-ms", &day_later]].concat();
    let new = generate(dir.path(), "new.jsonl", 10_000, &new_options);
    let job = Job::new(dir.path(), "recreated", 1, &fresh_database("faults_recreated"));
    produce(&job, &old);
    job.run_to_end(&[]);
    let old_tables = dump_tables(&job);

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
    assert_eq!(dump_tables(&job), old_tables, "the refused start changed the tables");

    let allowed = job.command().arg("--allow-offset-gap").output().unwrap();
    let log = String::from_utf8_lossy(&allowed.stderr);
    assert!(allowed.status.success(), "the job failed with --allow-offset-gap:\n{log}");
    let gaps = source_gaps(&job);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (topic, partition, from, to, kind, incarnation) = gaps[0].clone();
    let gap = (topic.as_str(), partition, to, kind.as_str(), incarnation);
    assert_eq!(gap, (job.topic.as_str(), 0, 30_000, "shrunk", 1));
    assert!(from <= 10_000, "the gap starts past the new end: {from}");

    let replayed = replay_csv(dir.path(), &new);
    let tables = dump_tables(&job);
    for table in COUNT_TABLES {
        let expected = [old_tables[table].clone(), replayed[table].clone()].concat();
        assert!(!replayed[table].is_empty(), "{table}: replay is empty, the test proves nothing");
        assert_eq!(tables[table], expected, "{table}: not the old results plus replay of the new events");
    }
    // Late and rejected records: the old incarnation's rows (offsets repeat) beside the new.
    for (table, replay_table) in [("late_clicks", "late_clicks"), ("rejected_events", "rejected")] {
        let incarnation = |rows: &[Vec<String>], i: &str| rows.iter().filter(|r| r[2] == i).count();
        let (old_rows, rows) = (&old_tables[table], &tables[table]);
        assert!(!replayed[replay_table].is_empty(), "{table}: no new records, the test proves nothing");
        assert_eq!(incarnation(rows, "0"), old_rows.len(), "{table}: the old incarnation's rows changed");
        assert_eq!(&rows[..old_rows.len()], &old_rows[..], "{table}: the old incarnation's rows changed");
        assert_eq!(incarnation(rows, "1"), replayed[replay_table].len(), "{table}: new records lost");
        let offset = |row: &Vec<String>| row[3].clone();
        let reused = rows.iter().filter(|r| r[2] == "1" && old_rows.iter().any(|o| offset(o) == offset(r))).count();
        assert!(reused > 0, "{table}: no new record reuses an old offset, the test proves nothing");
    }
    let archived = job.archived_positions();
    let unique: std::collections::BTreeSet<_> = archived.iter().collect();
    assert_eq!(unique.len(), archived.len(), "an event is archived twice");
    let valid = |file: &Path, rejected: usize| std::fs::read_to_string(file).unwrap().lines().count() - rejected;
    let in_incarnation = |i| archived.iter().filter(|(_, inc, _)| *inc == i).count();
    assert_eq!(in_incarnation(0), valid(&old, old_tables["rejected_events"].len()), "old archive");
    assert_eq!(in_incarnation(1), valid(&new, replayed["rejected"].len()), "new archive");
    // raw_archive lists the new incarnation's ranges from offset 0 beside the old ones.
    job.check_archive_ranges_contiguous();
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

    let tables = dump_tables(&job);
    assert_eq!(partitions_committed(&job), ["0", "1", "2", "3"]);
    let replayed = replay_csv(dir.path(), &events);
    for table in COUNT_TABLES {
        assert!(!tables[table].is_empty(), "{table} is empty: the test proves nothing");
        assert_eq!(tables[table], replayed[table], "{table} differs from replay");
    }
    assert!(tables["late_clicks"].is_empty(), "in-order events came out late");
}

/// Partitions added to the topic while the job runs: the job finds them within seconds, reads
/// them from offset 0 and counts their events. tansu cannot add partitions to a topic, so the
/// topic has 8 from the start and the job sees 4 until the test adds the others
/// (`CLICKSTAY_VISIBLE_PARTITIONS_FILE`, applied where the job asks the brokers for the count);
/// nothing is written to the 4 hidden ones before. In-order data: the tables equal replay.
#[test]
fn partitions_added_while_running_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let in_order = ["--rate", "2000", "--max-disorder-ms", "0", "--late-fraction", "0"];
    let events = generate(dir.path(), "events.jsonl", 40_000, &in_order);
    let lines = plain_lines(&events);
    let job = Job::new(dir.path(), "added", 4, &fresh_database("faults_added"));
    broker::recreate_topic(&job.topic, 8);
    let visible = dir.path().join("visible-partitions");
    std::fs::write(&visible, "4").unwrap();

    // Quiet for 8 s: longer than finding the new partitions takes (every 2 s).
    let mut command = job.command_draining_after(8);
    command.env("CLICKSTAY_VISIBLE_PARTITIONS_FILE", &visible).env("RUST_LOG", "info");
    let log_path = dir.path().join("job.log");
    let child = command.stderr(std::fs::File::create(&log_path).unwrap()).spawn().unwrap();
    let mut child = KillOnDrop(Some(child));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}:\n{}", log());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let (first, second) = lines.split_at(lines.len() / 2);
    send_lines(&job, first, Some(4));
    wait_for("the first half to commit", &|| job.committed_offsets() == first.len() as i64);
    assert_eq!(partitions_committed(&job), ["0", "1", "2", "3"], "the hidden partitions were read");

    std::fs::remove_file(&visible).unwrap();
    wait_for("the new partitions to be read", &|| log().contains("reading new partitions from offset 0"));
    send_lines(&job, second, Some(8));
    wait_for("the second half to commit", &|| job.committed_offsets() == lines.len() as i64);
    // Drains (and makes every pane final) once the topic is quiet.
    let status = child.0.take().unwrap().wait().unwrap();
    assert!(status.success(), "the job failed:\n{}", log());
    assert_eq!(partitions_committed(&job), ["0", "1", "2", "3", "4", "5", "6", "7"]);

    let tables = dump_tables(&job);
    let replayed = replay_csv(dir.path(), &events);
    for table in COUNT_TABLES {
        assert!(!tables[table].is_empty(), "{table} is empty: the test proves nothing");
        assert_eq!(tables[table], replayed[table], "{table} differs from replay");
    }
    assert!(tables["late_clicks"].is_empty(), "in-order events came out late");
}

/// The partitions of the job's committed offsets.
fn partitions_committed(job: &Job) -> Vec<String> {
    dump_tables(job)["source_offsets"].iter().map(|r| r[2].clone()).collect()
}

/// The job's `source_gaps` rows: (topic, partition, from, to, kind, incarnation).
fn source_gaps(job: &Job) -> Vec<(String, i32, i64, i64, String, i32)> {
    let mut client = postgres::Client::connect(&job.db, postgres::NoTls).unwrap();
    let rows = client
        .query(
            "SELECT topic, partition, from_offset, to_offset, kind, incarnation FROM source_gaps
             WHERE job = $1 ORDER BY 2, 3",
            &[&job.name],
        )
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect()
}
