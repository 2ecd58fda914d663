//! The streaming job through service faults: the broker frozen (SIGSTOP) for a few seconds and
//! PostgreSQL restarted under it (the job retries with backoff, says so in its log, and ends
//! with the tables of an undisturbed run), and a foreign producer's spelling of the events
//! (JSON escapes, key order, whitespace, extra keys), which gives the plain spelling's tables.
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

    let calm_tables = dump_tables(&calm.db);
    let troubled_tables = dump_tables(&troubled.db);
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
    if n % 3 == 0 {
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
    let kafka = broker::kafka_config(&job.topic, job.partitions as i32);
    let producer: BaseProducer = clickstay::clicks::produce::producer_config(&kafka).create().unwrap();
    for (event, line) in lines {
        let key = event.ad_id.to_string();
        let mut record = BaseRecord::to(&job.topic).key(&key).payload(line);
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

/// The events of a JSON Lines file of valid events, with their foreign spelling.
fn foreign_lines(events: &Path) -> Vec<(ClickEvent, String)> {
    let text = std::fs::read_to_string(events).unwrap();
    let lines: Vec<_> = text
        .lines()
        .enumerate()
        .map(|(n, line)| {
            let event = event::parse_json(line.as_bytes(), line.len()).expect("gen writes valid events");
            let foreign = foreign_spelling(&event, n);
            assert_ne!(foreign, line);
            (event, foreign)
        })
        .collect();
    lines
}

#[test]
fn a_foreign_producers_spelling_gives_the_plain_spellings_tables() {
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
        let mut tables = dump_tables(&job.db);
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
