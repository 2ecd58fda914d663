//! `clickstay reconcile` against the real broker and PostgreSQL: a streaming run, undisturbed or
//! killed with `kill -9` and restarted, reconciles without a difference (on threads and on two
//! processes); rows changed, deleted, added and swapped in PostgreSQL are reported exactly,
//! `--repair` puts them right and `reconciliations` records every run; bad input gets a clear
//! error.

#[path = "common/broker.rs"]
mod broker;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;
#[path = "common/stream.rs"]
mod stream;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value as Json, json};
use stream::{BIN, Job, free_port, fresh_database, generate, produce};

/// The generator's first event time, 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;
const PANE: u64 = 60_000;
/// A range that holds every event the tests generate (very late ones go 10 minutes back).
const FROM: u64 = T0 - 20 * PANE;
const TO: u64 = T0 + 240 * PANE;

/// The four result tables of the shipped spec and the late clicks.
const TABLES: [&str; 4] = ["ad_click_counts", "ad_click_counts_by_country", "top_ads", "late_clicks"];

fn shipped_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/ad_clicks.toml")
}

/// The shipped spec plus a filtered count (US clicks per ad), the README's example.
fn spec_with_filter(dir: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(shipped_spec()).unwrap();
    text.push_str(
        "\n[nodes.us_clicks]\nop = \"filter\"\ninput = \"clicks\"\nwhere = { country = [\"US\"] }\n\
         [nodes.us_ad_click_counts]\nop = \"count\"\ninput = \"us_clicks\"\ngroup_by = [\"ad_id\"]\n\
         [sinks.us_ad_click_counts]\ninput = \"us_ad_click_counts\"\n",
    );
    let path = dir.join("with_filter.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// What one `clickstay reconcile` did.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    /// The `--report` JSON, when one was written.
    report: Option<Json>,
}

impl Outcome {
    fn table<'a>(&'a self, name: &str) -> &'a Json {
        let report = self.report.as_ref().expect("a report");
        let tables = report["tables"].as_array().unwrap();
        tables.iter().find(|t| t["table"] == name).unwrap_or_else(|| panic!("no table {name} in the report"))
    }

    fn describe(&self) -> String {
        format!("exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// `clickstay reconcile` of `job` over `[from, to)` with `args` (e.g. `-w 2`, `--repair`).
fn reconcile(job: &Job, from: u64, to: u64, args: &[&str]) -> Outcome {
    let mut command = Command::new(BIN);
    command.arg("reconcile");
    reconcile_args(&mut command, job, from, to);
    command.arg("--config").arg(&job.config);
    run(command, job, args)
}

/// The same through `clickstay launch`, on 2 processes of 2 threads.
fn reconcile_on_two_processes(job: &Job, from: u64, to: u64) -> Outcome {
    let cluster = job.dir.join(format!("{}-cluster.toml", job.name));
    let text = std::fs::read_to_string(&job.config).unwrap();
    let (a, b) = (free_port(), free_port());
    let processes = format!("[cluster]\nprocesses = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\nthreads = 2\n\n");
    std::fs::write(&cluster, processes + &text).unwrap();
    let mut command = Command::new(BIN);
    command.arg("launch").arg("--config").arg(&cluster).arg("--").arg("reconcile");
    reconcile_args(&mut command, job, from, to);
    run(command, job, &[])
}

fn reconcile_args(command: &mut Command, job: &Job, from: u64, to: u64) {
    command
        .arg("--dataflow")
        .arg(&job.spec)
        .args(["--job", &job.name, "--from", &from.to_string(), "--to", &to.to_string()])
        .arg("--archive")
        .arg(&job.archive)
        .env_remove("CLICKSTAY_KAFKA_BROKERS")
        .env_remove("CLICKSTAY_CLICKS_DB")
        .env_remove("RUST_BACKTRACE");
}

fn run(mut command: Command, job: &Job, args: &[&str]) -> Outcome {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let report = job.dir.join(format!("report-{}-{n}.json", job.name));
    command.args(args).arg("--report").arg(&report);
    let output = command.output().unwrap();
    let report = std::fs::read(&report).ok().map(|bytes| serde_json::from_slice(&bytes).unwrap());
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        report,
    }
}

/// Exit 0, every table of `tables` checked with rows in it, and no difference anywhere.
fn assert_no_difference(outcome: &Outcome, tables: &[&str]) {
    assert_eq!(outcome.code, 0, "reconcile found a difference or failed:\n{}", outcome.describe());
    let report = outcome.report.as_ref().expect("a report");
    for field in ["differing", "missing", "extra"] {
        assert_eq!(report[field], 0, "{field}:\n{}", outcome.describe());
    }
    for table in tables {
        let t = outcome.table(table);
        assert!(t["checked"].as_u64().unwrap() > 0, "{table} checked no row: the test proves nothing");
        assert_eq!(t["checked"], t["equal"], "{table}");
    }
    assert!(outcome.stdout.contains("no difference in"), "{}", outcome.describe());
}

fn client(job: &Job) -> postgres::Client {
    job.connect()
}

#[test]
fn an_undisturbed_run_reconciles_on_threads_and_processes() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(
        dir.path(),
        "events.jsonl",
        60_000,
        &["--rate", "100", "--late-fraction", "0.01", "--malformed-fraction", "0.01"],
    );
    let spec = spec_with_filter(dir.path());
    let job = Job::new(dir.path(), "calm", 4, &fresh_database("reconcile_calm")).with_spec(&spec);
    produce(&job, &events);
    job.run_to_end(&[]);

    let tables = [&TABLES[..], &["us_ad_click_counts"]].concat();
    let whole = reconcile(&job, FROM, TO, &["-w", "2"]);
    assert_no_difference(&whole, &tables);
    // Rejected lines are not archived, so they are not reconciled.
    let report = whole.report.as_ref().unwrap();
    assert!(report["tables"].as_array().unwrap().iter().all(|t| t["table"] != "rejected_events"));
    assert!(report["archived_events"].as_u64().unwrap() > 55_000);

    // Part of the range: fewer panes, the same verdict, on one thread and on two processes.
    let part = reconcile(&job, T0 + 2 * PANE, T0 + 6 * PANE, &["-w", "1"]);
    assert_no_difference(&part, &tables);
    assert_eq!(part.table("ad_click_counts")["groups"], 4);
    assert_eq!(part.table("top_ads")["groups"], 4);
    let checked = |o: &Outcome| o.report.as_ref().unwrap()["checked"].as_u64().unwrap();
    assert!(checked(&part) < checked(&whole));
    let processes = reconcile_on_two_processes(&job, T0 + 2 * PANE, T0 + 6 * PANE);
    assert_no_difference(&processes, &tables);
    assert_eq!(checked(&processes), checked(&part));
}

#[test]
fn after_kill_9_and_restarts_then_tampering_reports_exactly_the_rows_and_repairs_them() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(
        dir.path(),
        "events.jsonl",
        600_000,
        &["--rate", "1000", "--late-fraction", "0.01", "--malformed-fraction", "0.002"],
    );
    let job = Job::new(dir.path(), "crashy", 4, &fresh_database("reconcile_crashy"));
    produce(&job, &events);
    job.run_expecting_crash(&[("CLICKSTAY_CRASH_IN_COMMIT", "3")]);
    let mut kills = 0;
    for delay_ms in [0, 20, 45] {
        if job.run_and_kill(Duration::from_millis(delay_ms)) {
            kills += 1;
        }
    }
    assert!(kills >= 2, "only {kills} runs were still going when killed: make the input larger");
    job.run_to_end(&[]);
    assert_no_difference(&reconcile(&job, FROM, TO, &["-w", "2"]), &TABLES);

    // Tamper, inside [from, to): one count changed, one row deleted, one extra row, two ranks
    // of a window swapped.
    let (from, to) = (T0 + 3 * PANE, T0 + 8 * PANE);
    let ms = |column: &str| format!("(extract(epoch from {column}) * 1000)::bigint");
    let mut pg = client(&job);
    let in_range = format!(
        "window_start >= timestamptz 'epoch' + {from} * interval '1 ms' AND window_start < timestamptz 'epoch' + {to} * interval '1 ms'"
    );
    let changed = pg
        .query_one(
            &format!(
                "UPDATE ad_click_counts SET clicks = clicks + 1 WHERE (window_start, ad_id) =
                   (SELECT window_start, ad_id FROM ad_click_counts WHERE {in_range} ORDER BY 1, 2 LIMIT 1)
                 RETURNING {}, ad_id::text, clicks",
                ms("window_start")
            ),
            &[],
        )
        .unwrap();
    let deleted = pg
        .query_one(
            &format!(
                "DELETE FROM ad_click_counts_by_country WHERE (window_start, ad_id, country) =
                   (SELECT window_start, ad_id, country FROM ad_click_counts_by_country WHERE {in_range}
                    ORDER BY 1 DESC, 2, 3 LIMIT 1)
                 RETURNING {}, ad_id::text, country, clicks",
                ms("window_start")
            ),
            &[],
        )
        .unwrap();
    let extra_pane = from + PANE;
    pg.execute(
        "INSERT INTO ad_click_counts VALUES (timestamptz 'epoch' + $1::bigint * interval '1 ms', 18446744073709551615, 9)",
        &[&(extra_pane as i64)],
    )
    .unwrap();
    let window: i64 = pg
        .query_one(
            &format!("SELECT {} FROM top_ads WHERE {in_range} AND rank = 2 ORDER BY 1 LIMIT 1", ms("window_start")),
            &[],
        )
        .unwrap()
        .get(0);
    let swapped = pg
        .execute(
            "UPDATE top_ads t SET ad_id = o.ad_id, clicks = o.clicks FROM top_ads o
             WHERE t.window_start = timestamptz 'epoch' + $1::bigint * interval '1 ms'
               AND o.window_start = t.window_start AND t.rank IN (1, 2) AND o.rank = 3 - t.rank",
            &[&window],
        )
        .unwrap();
    assert_eq!(swapped, 2);

    let tampered = reconcile(&job, from, to, &["-w", "2"]);
    assert_eq!(tampered.code, 2, "differences must exit 2:\n{}", tampered.describe());
    let report = tampered.report.as_ref().unwrap();
    assert_eq!((&report["differing"], &report["missing"], &report["extra"]), (&json!(3), &json!(1), &json!(1)));
    let counts = tampered.table("ad_click_counts");
    let (pane, ad_id, clicks): (i64, String, i64) = (changed.get(0), changed.get(1), changed.get(2));
    let ad_id: u64 = ad_id.parse().unwrap();
    assert_eq!(
        counts["differing"],
        json!([{"key": {"window_start": pane, "ad_id": ad_id}, "streamed": {"clicks": clicks}, "batch": {"clicks": clicks - 1}}])
    );
    assert_eq!(
        counts["extra"],
        json!([{"key": {"window_start": extra_pane, "ad_id": u64::MAX}, "streamed": {"clicks": 9}, "batch": null}])
    );
    assert_eq!(counts["missing"], json!([]));
    let by_country = tampered.table("ad_click_counts_by_country");
    let (pane, ad_id, country, clicks): (i64, String, String, i64) =
        (deleted.get(0), deleted.get(1), deleted.get(2), deleted.get(3));
    let ad_id: u64 = ad_id.parse().unwrap();
    assert_eq!(
        by_country["missing"],
        json!([{"key": {"window_start": pane, "ad_id": ad_id, "country": country}, "streamed": null, "batch": {"clicks": clicks}}])
    );
    assert_eq!((&by_country["differing"], &by_country["extra"]), (&json!([]), &json!([])));
    let top = tampered.table("top_ads");
    let ranks: Vec<(i64, u64)> = top["differing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["key"]["window_start"].as_i64().unwrap(), d["key"]["rank"].as_u64().unwrap()))
        .collect();
    assert_eq!(ranks, [(window, 1), (window, 2)]);
    for d in top["differing"].as_array().unwrap() {
        assert_ne!(d["streamed"]["ad_id"], d["batch"]["ad_id"]);
    }
    assert_eq!(tampered.table("late_clicks")["differing"], json!([]));
    assert!(tampered.stdout.contains("5 of "), "{}", tampered.describe());

    let repair = reconcile(&job, from, to, &["-w", "2", "--repair"]);
    assert_eq!(repair.code, 2, "the repairing run found the differences:\n{}", repair.describe());
    assert_eq!(repair.report.as_ref().unwrap()["repaired"], 5);
    assert_no_difference(&reconcile(&job, from, to, &["-w", "2"]), &TABLES);
    // The whole range again, repaired included.
    assert_no_difference(&reconcile(&job, FROM, TO, &["-w", "2"]), &TABLES);

    let runs: Vec<(i64, i64, i64)> = client(&job)
        .query("SELECT checked, differing, repaired FROM reconciliations WHERE job = $1 ORDER BY at", &[&job.name])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0).min(1), r.get(1), r.get(2)))
        .collect();
    assert_eq!(runs, [(1, 0, 0), (1, 5, 0), (1, 5, 5), (1, 0, 0), (1, 0, 0)]);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate(dir.path(), "events.jsonl", 5_000, &["--rate", "100"]);
    let job = Job::new(dir.path(), "small", 2, &fresh_database("reconcile_bad"));
    produce(&job, &events);
    job.run_to_end(&[]);
    assert_no_difference(&reconcile(&job, FROM, TO, &[]), &TABLES[..3]);

    let expect_error = |outcome: Outcome, needle: &str| {
        assert_eq!(outcome.code, 1, "expected an error:\n{}", outcome.describe());
        assert!(outcome.stderr.contains(needle), "the error does not say `{needle}`:\n{}", outcome.describe());
        assert!(!outcome.stderr.contains("panicked"), "{}", outcome.describe());
        assert!(outcome.report.is_none(), "no report on an error");
    };
    expect_error(reconcile(&job, T0 + 1, TO, &[]), &format!("--from {} is not on a pane boundary", T0 + 1));
    expect_error(reconcile(&job, T0, T0 + PANE + 500, &[]), "is not on a pane boundary: the panes of");
    expect_error(reconcile(&job, T0, T0, &[]), &format!("--to {T0} is not after --from {T0}"));
    expect_error(reconcile(&job, T0 + PANE, T0, &[]), "is not after --from");
    let unknown = Job { name: "nosuch".to_string(), ..job.sibling("small", &job.db) };
    expect_error(reconcile(&unknown, FROM, TO, &[]), "unknown job `nosuch`");
    let no_archive = Job { archive: dir.path().join("nowhere"), ..job.sibling("small", &job.db) };
    expect_error(reconcile(&no_archive, FROM, TO, &[]), "does not exist");
    // A committed file gone from the archive.
    let file: String = client(&job)
        .query_one("SELECT files[1] FROM raw_archive WHERE job = $1 AND cardinality(files) > 0 LIMIT 1", &[&job.name])
        .unwrap()
        .get(0);
    std::fs::remove_file(job.archive.join(&file)).unwrap();
    expect_error(reconcile(&job, FROM, TO, &[]), &format!("is missing {file}, which raw_archive lists"));
}
