//! `clickstay replay` against the brute-force oracle in `common/oracle.rs`.
//!
//! Every case replays one file with 1, 2 and 4 worker threads and with two
//! processes of two threads (`clickstay launch`), and checks each run against
//! the oracle: exact counts, counts by country and top-N (in file order), the
//! late and rejected lines as multisets, and the numbers of the summary line.
//! The ordered result files must also be byte-identical across the four runs.

#[path = "common/oracle.rs"]
mod oracle;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use oracle::{Format, Outcome, Problem, Spec, Summary};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_clickstay");

/// The result files whose order is specified, compared byte for byte across runs.
const ORDERED_FILES: [&str; 3] = ["ad_click_counts.csv", "ad_click_counts_by_country.csv", "top_ads.csv"];

// ---------------------------------------------------------------------------------------------
// Running the binary.

/// How a replay is run.
#[derive(Clone, Copy, Debug)]
enum Cluster {
    /// One process with this many worker threads (`-w`).
    Threads(usize),
    /// Two local processes of two threads each, through `clickstay launch`.
    TwoProcesses,
}

const CLUSTERS: [Cluster; 4] = [Cluster::Threads(1), Cluster::Threads(2), Cluster::Threads(4), Cluster::TwoProcesses];

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn describe(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Writes `events` lines with `clickstay gen` and the given extra options.
fn generate(dir: &Path, name: &str, events: u64, options: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let output =
        run(Command::new(BIN).args(["gen", "--events", &events.to_string(), "--out"]).arg(&path).args(options));
    assert!(output.status.success(), "gen failed: {}", describe(&output));
    path
}

/// Two ports that were free a moment ago on the loopback interface.
fn free_ports() -> [u16; 2] {
    let listeners = [(); 2].map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"));
    listeners.map(|l| l.local_addr().unwrap().port())
}

/// The spec file for `spec`: the shipped one for the default parameters, or a
/// copy with other parameters written into `dir`.
fn spec_file(spec: &Spec, dir: &Path) -> PathBuf {
    if *spec == Spec::DEFAULT {
        return Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/ad_clicks.toml");
    }
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec.to_toml()).expect("write spec");
    path
}

/// Runs `clickstay replay` (through `launch` for several processes) and returns its output.
fn replay(spec: &Path, input: &Path, format: Option<&str>, cluster: Cluster, out: &Path) -> Output {
    let mut replay_args: Vec<String> = vec!["replay".into(), "--dataflow".into(), spec.display().to_string()];
    replay_args.extend(["--input".into(), input.display().to_string(), "--out".into(), out.display().to_string()]);
    if let Some(format) = format {
        replay_args.extend(["--format".into(), format.into()]);
    }
    let mut command = Command::new(BIN);
    match cluster {
        Cluster::Threads(threads) => {
            command.args(&replay_args).args(["-w", &threads.to_string()]);
        }
        Cluster::TwoProcesses => {
            let [a, b] = free_ports();
            let config = out.with_extension("workers.toml");
            std::fs::write(
                &config,
                format!("[cluster]\nprocesses = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\nthreads = 2\n"),
            )
            .expect("write cluster config");
            command.arg("launch").arg("--config").arg(&config).arg("--").args(&replay_args);
        }
    }
    run(&mut command)
}

// ---------------------------------------------------------------------------------------------
// Reading and comparing the results.

/// A CSV result file as rows of fields, header first.
fn read_table(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    reader
        .records()
        .map(|r| r.unwrap_or_else(|e| panic!("{}: {e}", path.display())).iter().map(String::from).collect())
        .collect()
}

/// Asserts two tables are equal, showing the first difference rather than both tables.
fn assert_same_rows(actual: &[Vec<String>], expected: &[Vec<String>], what: &str) {
    if let Some(i) = (0..actual.len().max(expected.len())).find(|&i| actual.get(i) != expected.get(i)) {
        panic!(
            "{what}: row {i} differs (of {} rows, oracle has {}):\n  replay: {:?}\n  oracle: {:?}",
            actual.len(),
            expected.len(),
            actual.get(i),
            expected.get(i)
        );
    }
}

/// Checks one replay's output directory and summary against the oracle.
fn check_against_oracle(out: &Path, stdout: &str, expected: &Outcome, run: &str) {
    let file = |name: &str| out.join(name);
    // Which lines were rejected or late explains a wrong count best: checked first.
    check_rejected(&file("rejected.csv"), expected, run);

    let mut late = read_table(&file("late_clicks.csv"));
    assert_eq!(late.first().map(|h| h.join(",")).as_deref(), Some(oracle::CSV_HEADER), "{run}: late_clicks.csv header");
    late.remove(0);
    late.sort();
    let mut expected_late: Vec<Vec<String>> = expected.late.iter().map(oracle::Click::row).collect();
    expected_late.sort();
    assert_same_rows(&late, &expected_late, &format!("{run}: late_clicks.csv (sorted)"));

    assert_same_rows(
        &read_table(&file("ad_click_counts.csv")),
        &expected.counts_table(),
        &format!("{run}: ad_click_counts.csv"),
    );
    assert_same_rows(
        &read_table(&file("ad_click_counts_by_country.csv")),
        &expected.counts_by_country_table(),
        &format!("{run}: ad_click_counts_by_country.csv"),
    );
    assert_same_rows(&read_table(&file("top_ads.csv")), &expected.top_table(), &format!("{run}: top_ads.csv"));

    let summary = Summary::parse(stdout).unwrap_or_else(|e| panic!("{run}: {e}"));
    assert_eq!(summary, Summary::of(expected), "{run}: summary line {stdout:?}");
}

/// The rejected lines must be exactly the oracle's, each with a reason naming its problem and its raw text.
fn check_rejected(path: &Path, expected: &Outcome, run: &str) {
    let mut rows = read_table(path);
    assert_eq!(rows.first().map(|h| h.join(",")).as_deref(), Some("line,reason,raw"), "{run}: rejected.csv header");
    rows.remove(0);
    let mut actual: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for row in rows {
        let [line, reason, raw] = <[String; 3]>::try_from(row).unwrap_or_else(|r| panic!("{run}: rejected row {r:?}"));
        let line: u64 = line.parse().unwrap_or_else(|_| panic!("{run}: rejected line number {line:?}"));
        assert!(actual.insert(line, (reason, raw)).is_none(), "{run}: line {line} rejected twice");
    }
    let expected_lines: BTreeMap<u64, &str> = expected.rejected.iter().map(|r| (r.line, r.raw.as_str())).collect();
    let wrongly_rejected: Vec<(&u64, &str)> = actual
        .iter()
        .filter(|(line, _)| !expected_lines.contains_key(line))
        .map(|(l, (_, raw))| (l, raw.as_str()))
        .take(5)
        .collect();
    let not_rejected: Vec<(&u64, &&str)> =
        expected_lines.iter().filter(|(line, _)| !actual.contains_key(line)).take(5).collect();
    assert!(
        wrongly_rejected.is_empty() && not_rejected.is_empty(),
        "{run}: {} lines rejected, the oracle rejects {}; valid but rejected (line, raw): {wrongly_rejected:?}; \
         invalid but not rejected: {not_rejected:?}",
        actual.len(),
        expected_lines.len()
    );
    for rejected in &expected.rejected {
        let (reason, raw) = &actual[&rejected.line];
        assert!(
            rejected.problem.named_by(reason),
            "{run}: line {} is rejected for {:?}, but the reason {reason:?} names none of {:?}",
            rejected.line,
            rejected.problem,
            rejected.problem.keywords()
        );
        assert_eq!(raw, &rejected.raw, "{run}: raw text of rejected line {}", rejected.line);
    }
}

/// What the oracle expects from replaying `input`.
fn expect(input: &Path, format: Format, spec: &Spec) -> Outcome {
    oracle::replay(input, format, spec).expect("the oracle reads the input")
}

/// Replays `input` on every cluster shape, checks each against the oracle's
/// `expected` outcome and the runs against each other.
fn check_replay(input: &Path, format_flag: Option<&str>, spec: &Spec, expected: &Outcome) {
    let dir = TempDir::new().unwrap();
    let spec_path = spec_file(spec, dir.path());
    let mut first_run: Option<(Cluster, BTreeMap<&str, Vec<u8>>)> = None;
    for cluster in CLUSTERS {
        let out = dir.path().join(format!("{cluster:?}").replace(['(', ')'], ""));
        let output = replay(&spec_path, input, format_flag, cluster, &out);
        let run = format!("{} with {cluster:?}", input.display());
        assert!(output.status.success(), "{run}: replay failed: {}", describe(&output));
        check_against_oracle(&out, &String::from_utf8_lossy(&output.stdout), expected, &run);

        let files: BTreeMap<&str, Vec<u8>> =
            ORDERED_FILES.iter().map(|name| (*name, std::fs::read(out.join(name)).unwrap())).collect();
        match &first_run {
            None => first_run = Some((cluster, files)),
            Some((first, first_files)) => {
                for name in ORDERED_FILES {
                    assert!(first_files[name] == files[name], "{run}: {name} differs from the run with {first:?}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle itself, on inputs small enough to compute by hand.

fn oracle_on(text: &str, format: Format, spec: &Spec) -> Outcome {
    oracle::replay_bytes(text.as_bytes(), format, spec).expect("valid input")
}

/// Events at the edges of panes and of lateness under the default spec, all
/// `offset` ms later (a multiple of the pane keeps the edges where they are).
fn boundary_events(offset: u64) -> String {
    let events = [(1, 0, 1, "US"), (2, 59_999, 1, "DE"), (1, 60_000, 2, "US"), (1, 124_999, 3, "US")]
        .into_iter()
        .chain([(2, 59_999, 4, "DE"), (1, 125_000, 5, "US"), (2, 59_999, 6, "DE"), (3, 0, 7, "FR")]);
    let mut text = String::from("ad_id,click_ts,user_id,ip,country");
    for (ad_id, ts, user_id, country) in events {
        text += &format!("\n{ad_id},{},{user_id},1.1.1.1,{country}", ts + offset);
    }
    text
}

#[test]
fn oracle_counts_panes_windows_and_late_events_as_computed_by_hand() {
    // Pane 60 s, watermark = max - 5 s, lateness 60 s: an event is late once the
    // watermark reaches its pane end + 60 s, i.e. max seen >= pane end + 65 s.
    let outcome = oracle_on(&boundary_events(0), Format::Csv, &Spec::DEFAULT);
    // Max 124999: wm 119999 < 60000 + 60000, so line 6 is on time; after 125000
    // wm = 120000 = pane end 60000 + 60000: lines 8 and 9 are late.
    assert_eq!(outcome.late.iter().map(|c| c.user_id).collect::<Vec<_>>(), [6, 7]);
    assert_eq!(outcome.read, 8);
    assert_eq!(outcome.accepted, 6);
    assert_eq!(
        outcome.counts.into_iter().collect::<Vec<_>>(),
        [((0, 1), 1), ((0, 2), 2), ((60_000, 1), 1), ((120_000, 1), 2)]
    );
    assert_eq!(outcome.counts_by_country[&(0, 2, "DE".to_string())], 2);
    // Windows of 300 s sliding by 60 s: ts 0 is in the windows starting at -240 s .. 0.
    let top: Vec<(i64, usize, u64, u64)> =
        outcome.top.iter().map(|t| (t.window_start, t.rank, t.ad_id, t.clicks)).collect();
    assert_eq!(
        top,
        [
            (-240_000, 1, 2, 2),
            (-240_000, 2, 1, 1),
            (-180_000, 1, 1, 2),
            (-180_000, 2, 2, 2),
            (-120_000, 1, 1, 4),
            (-120_000, 2, 2, 2),
            (-60_000, 1, 1, 4),
            (-60_000, 2, 2, 2),
            (0, 1, 1, 4),
            (0, 2, 2, 2),
            (60_000, 1, 1, 3),
            (120_000, 1, 1, 2),
        ]
    );
    assert!(outcome.top.iter().all(|t| t.window_end == t.window_start + 300_000));
}

#[test]
fn oracle_rejects_each_malformed_kind() {
    let long = format!("{:0>5000},1,1,1.1.1.1,US", 1);
    let text = format!(
        "ad_id,click_ts,user_id,ip,country\r\n1,1,1,1.1.1.1,US\r\n\n{long}\nx,1,1,1.1.1.1,US\n1,-1,1,1.1.1.1,US\n\
         1,253402300800000,1,1.1.1.1,US\n1,1,1,1.1.1,US\n1,1,1,1.1.1.1,UK\n1,1,1,1.1.1.1\n1,1,1,1.1.1.1,us"
    );
    let outcome = oracle_on(&text, Format::Csv, &Spec::DEFAULT);
    let problems: Vec<(u64, Problem)> = outcome.rejected.iter().map(|r| (r.line, r.problem)).collect();
    assert_eq!(
        problems,
        [
            (3, Problem::EmptyLine),
            (4, Problem::TooLong),
            (5, Problem::Field("ad_id")),
            (6, Problem::Field("click_ts")),
            (7, Problem::Field("click_ts")),
            (8, Problem::Field("ip")),
            (9, Problem::Field("country")),
            (10, Problem::FieldCount),
            (11, Problem::Field("country")),
        ]
    );
    assert_eq!(outcome.rejected[1].raw.len(), 4096);
    assert_eq!(outcome.accepted, 1);

    let json = "{\"ad_id\":1,\"click_ts\":2,\"user_id\":3,\"ip\":\"1.2.3.4\",\"country\":\"JP\",\"x\":[]}\n\
                {\"ad_id\":\"1\",\"click_ts\":2,\"user_id\":3,\"ip\":\"1.2.3.4\",\"country\":\"JP\"}\n\
                {\"ad_id\":1,\"click_ts\":2.5,\"user_id\":3,\"ip\":\"1.2.3.4\",\"country\":\"JP\"}\n\
                {\"ad_id\":1,\"click_ts\":2,\"ip\":\"1.2.3.4\",\"country\":\"JP\"}\n\
                [1,2,3]\n\
                {\"ad_id\":1,";
    let outcome = oracle_on(json, Format::Jsonl, &Spec::DEFAULT);
    let problems: Vec<(u64, Problem)> = outcome.rejected.iter().map(|r| (r.line, r.problem)).collect();
    assert_eq!(
        problems,
        [
            (2, Problem::Field("ad_id")),
            (3, Problem::Field("click_ts")),
            (4, Problem::Field("user_id")),
            (5, Problem::Json),
            (6, Problem::Json),
        ]
    );
    assert_eq!(outcome.accepted, 1);
}

#[test]
fn oracle_knows_the_249_assigned_country_codes() {
    let codes: Vec<&str> = oracle::ISO_3166_ALPHA2.split(' ').collect();
    assert_eq!(codes.len(), 249);
    assert!(codes.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
}

#[test]
fn oracle_treats_a_bad_header_as_an_error_and_no_bytes_as_no_events() {
    assert!(oracle::replay_bytes(b"ad_id,click_ts,user_id,ip\n1,2,3,1.1.1.1\n", Format::Csv, &Spec::DEFAULT).is_err());
    for (text, format) in [("", Format::Csv), ("", Format::Jsonl), ("ad_id,click_ts,user_id,ip,country\n", Format::Csv)]
    {
        let outcome = oracle_on(text, format, &Spec::DEFAULT);
        assert_eq!((outcome.read, outcome.accepted, outcome.rejected.len()), (0, 0, 0), "{text:?}");
    }
    // A JSON Lines file of one newline has one (empty, rejected) line.
    assert_eq!(oracle_on("\n", Format::Jsonl, &Spec::DEFAULT).rejected.len(), 1);
}

#[test]
fn summary_numbers_are_found_in_the_line() {
    let summary =
        Summary::parse("replay: read 1,000 lines, accepted 990, late 7, rejected 3 in 0.5 s (2000 events/s)\n");
    assert_eq!(summary, Ok(Summary { read: 1000, accepted: 990, late: 7, rejected: 3 }));
    assert!(Summary::parse("read 5 accepted 5").is_err());
}

// ---------------------------------------------------------------------------------------------
// Replay against the oracle.

/// Generates `events` lines of a small stream (200 ads over 1000 simulated
/// seconds: several panes and windows, many ties in the top-N) with `options`
/// added, and returns the file with the oracle's outcome under `spec`.
fn small_stream(dir: &TempDir, name: &str, events: u64, options: &str, spec: &Spec) -> (PathBuf, Outcome) {
    let mut all = vec!["--ads", "200", "--rate", "50"];
    all.extend(options.split_whitespace());
    let input = generate(dir.path(), name, events, &all);
    let format = if name.ends_with(".jsonl") { Format::Jsonl } else { Format::Csv };
    let expected = expect(&input, format, spec);
    (input, expected)
}

#[test]
fn in_order_events() {
    let dir = TempDir::new().unwrap();
    let (input, expected) =
        small_stream(&dir, "in_order.csv", 50_000, "--max-disorder-ms 0 --late-fraction 0 --seed 11", &Spec::DEFAULT);
    assert_eq!((expected.accepted, expected.late_count(), expected.rejected_count()), (50_000, 0, 0));
    assert!(expected.top.len() > 100, "the case has many windows");
    check_replay(&input, None, &Spec::DEFAULT, &expected);
}

#[test]
fn disordered_events_some_beyond_the_allowed_lateness() {
    let dir = TempDir::new().unwrap();
    // Up to 150 s of disorder: most of it absorbed, the oldest events late.
    let (input, expected) = small_stream(
        &dir,
        "disordered.csv",
        50_000,
        "--max-disorder-ms 150000 --late-fraction 0 --seed 12",
        &Spec::DEFAULT,
    );
    assert!(expected.late_count() > 100 && expected.accepted > 20_000, "{:?}", Summary::of(&expected));
    check_replay(&input, None, &Spec::DEFAULT, &expected);
}

#[test]
fn many_very_late_events() {
    let dir = TempDir::new().unwrap();
    let (input, expected) =
        small_stream(&dir, "late.csv", 40_000, "--late-fraction 0.2 --late-ms 30000..400000 --seed 13", &Spec::DEFAULT);
    // Lateness below 65 s + a pane can still be accepted: both outcomes occur.
    assert!(expected.late_count() > 4_000, "{:?}", Summary::of(&expected));
    assert!(expected.accepted > 32_000, "{:?}", Summary::of(&expected));
    check_replay(&input, None, &Spec::DEFAULT, &expected);
}

#[test]
fn generated_malformed_lines() {
    let dir = TempDir::new().unwrap();
    let (input, expected) = small_stream(
        &dir,
        "malformed.csv",
        40_000,
        "--malformed-fraction 0.05 --late-fraction 0.01 --seed 14",
        &Spec::DEFAULT,
    );
    assert!((1_600..2_400).contains(&expected.rejected_count()), "{:?}", Summary::of(&expected));
    check_replay(&input, None, &Spec::DEFAULT, &expected);
}

#[test]
fn json_lines_with_late_and_malformed_lines() {
    let dir = TempDir::new().unwrap();
    let (input, expected) = small_stream(
        &dir,
        "events.jsonl",
        30_000,
        "--malformed-fraction 0.03 --late-fraction 0.02 --seed 15",
        &Spec::DEFAULT,
    );
    assert!(expected.rejected_count() > 500 && expected.late_count() > 300, "{:?}", Summary::of(&expected));
    check_replay(&input, None, &Spec::DEFAULT, &expected);
}

#[test]
fn non_default_spec() {
    let spec = Spec {
        pane_ms: 30_000,
        max_out_of_orderness_ms: 2_000,
        allowed_lateness_ms: 10_000,
        window_size_ms: 90_000,
        window_slide_ms: 30_000,
        top_n: 3,
    };
    let dir = TempDir::new().unwrap();
    let (input, expected) =
        small_stream(&dir, "spec.csv", 30_000, "--max-disorder-ms 30000 --late-fraction 0.01 --seed 16", &spec);
    assert!(expected.late_count() > 300, "{:?}", Summary::of(&expected));
    assert!(expected.top.iter().all(|t| t.rank <= 3 && t.window_end - t.window_start == 90_000));
    // The default spec would have judged the same events differently.
    let default = oracle::replay(&input, Format::Csv, &Spec::DEFAULT).unwrap();
    assert_ne!(default.late_count(), expected.late_count());
    check_replay(&input, None, &spec, &expected);
}

/// One line of each malformed kind, CRLF endings, an over-long line, the
/// largest valid time (which makes every later event late), and a last line
/// without a newline.
const HAND_WRITTEN_CSV: &str = "ad_id,click_ts,user_id,ip,country\n\
101,1767225600000,1,10.0.0.1,US\n\
102,1767225601000,2,10.0.0.2,DE\r\n\
\n\
\r\n\
abc,1767225602000,3,10.0.0.3,US\n\
18446744073709551616,1767225602000,3,10.0.0.3,US\n\
103,1767225602000,-3,10.0.0.3,US\n\
104,-5,4,10.0.0.4,US\n\
104,1767225602000.5,4,10.0.0.4,US\n\
104,253402300800000,4,10.0.0.4,US\n\
106,1767225603000,6,10.0.0.256,US\n\
106,1767225603000,6,010.0.0.6,US\n\
106,1767225603000,6,10.0.6,US\n\
106,1767225603000,6,10.0.0.6,us\n\
106,1767225603000,6,10.0.0.6,UK\n\
106,1767225603000,6,10.0.0.6,XX\n\
106,1767225603000,6,10.0.0.6,USA\n\
107,1767225604000,7,10.0.0.7\n\
107,1767225604000,7,10.0.0.7,US,extra\n\
{LONG}\n\
108,x,8,10.0.0.8,US\r\n\
\x20109,1767225605000,9,10.0.0.9,US\n\
110,1767225606000,10,10.0.0.10,SE\n\
110,1767225606500,10,10.0.0.10,SE\r\n\
111,253402300799999,11,1.2.3.4,US\n\
112,1767225607000,12,1.2.3.5,US\n\
113,1767225608000,13,1.2.3.6,US";

#[test]
fn hand_written_malformed_csv() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("malformed.csv");
    let long = format!("{:0>5000},1767225604000,7,10.0.0.7,US", 107);
    std::fs::write(&input, HAND_WRITTEN_CSV.replace("{LONG}", &long)).unwrap();
    let expected = expect(&input, Format::Csv, &Spec::DEFAULT);
    let rejected: Vec<u64> = expected.rejected.iter().map(|r| r.line).collect();
    assert_eq!(rejected, (4..=23).collect::<Vec<_>>());
    assert_eq!(Summary::of(&expected), Summary { read: 27, accepted: 5, late: 2, rejected: 20 });
    check_replay(&input, None, &Spec::DEFAULT, &expected);
}

#[test]
fn hand_written_malformed_json_lines() {
    let lines = [
        r#"{"ad_id":1,"click_ts":1767225600000,"user_id":1,"ip":"10.0.0.1","country":"US"}"#,
        r#"{"country":"DE","ip":"10.0.0.2","user_id":2,"click_ts":1767225601000,"ad_id":2,"extra":{"a":[1]}}"#,
        r#"  { "ad_id" : 3 , "click_ts" : 1767225602000 , "user_id" : 3 , "ip" : "10.0.0.3" , "country" : "FR" }  "#,
        "",
        r#"{"ad_id":4,"click_ts":1767225602000,"user_id":4,"ip":"10.0.0.4","country":"US""#,
        r#"[4,1767225602000,4,"10.0.0.4","US"]"#,
        r#"{"ad_id":"4","click_ts":1767225602000,"user_id":4,"ip":"10.0.0.4","country":"US"}"#,
        r#"{"ad_id":-4,"click_ts":1767225602000,"user_id":4,"ip":"10.0.0.4","country":"US"}"#,
        r#"{"ad_id":4,"click_ts":1767225602000.5,"user_id":4,"ip":"10.0.0.4","country":"US"}"#,
        r#"{"ad_id":4,"click_ts":-1,"user_id":4,"ip":"10.0.0.4","country":"US"}"#,
        r#"{"ad_id":4,"click_ts":"1767225602000","user_id":4,"ip":"10.0.0.4","country":"US"}"#,
        r#"{"ad_id":4,"click_ts":1767225602000,"ip":"10.0.0.4","country":"US"}"#,
        r#"{"ad_id":4,"click_ts":1767225602000,"user_id":4,"ip":167772164,"country":"US"}"#,
        r#"{"ad_id":4,"click_ts":1767225602000,"user_id":4,"ip":"10.0.0.4","country":"ZZ"}"#,
        r#"{"ad_id":4,"click_ts":1767225602000,"user_id":4,"ip":"10.0.0.4","country":null}"#,
        "{LONG}",
        "not json at all\r",
        "{\"ad_id\":5,\"click_ts\":1767225603000,\"user_id\":5,\"ip\":\"10.0.0.5\",\"country\":\"JP\"}\r",
    ];
    let long =
        format!(r#"{{"ad_id":{:>5000},"click_ts":1767225604000,"user_id":7,"ip":"10.0.0.7","country":"US"}}"#, 7);
    let text = lines.join("\n").replace("{LONG}", &long) + "\n";
    let dir = TempDir::new().unwrap();
    // Not named .jsonl: the format comes from --format.
    let input = dir.path().join("events.log");
    std::fs::write(&input, text).unwrap();
    let expected = expect(&input, Format::Jsonl, &Spec::DEFAULT);
    let rejected: Vec<u64> = expected.rejected.iter().map(|r| r.line).collect();
    assert_eq!(rejected, (4..=17).collect::<Vec<_>>());
    assert_eq!(expected.accepted, 4);
    check_replay(&input, Some("jsonl"), &Spec::DEFAULT, &expected);
}

#[test]
fn empty_inputs() {
    let dir = TempDir::new().unwrap();
    for (name, text, format) in [
        ("header_only.csv", "ad_id,click_ts,user_id,ip,country\n", Format::Csv),
        ("zero_bytes.csv", "", Format::Csv),
        ("zero_bytes.jsonl", "", Format::Jsonl),
    ] {
        let input = dir.path().join(name);
        std::fs::write(&input, text).unwrap();
        let expected = expect(&input, format, &Spec::DEFAULT);
        assert_eq!(Summary::of(&expected), Summary { read: 0, accepted: 0, late: 0, rejected: 0 }, "{name}");
        check_replay(&input, None, &Spec::DEFAULT, &expected);
    }
}

#[test]
fn events_at_the_lateness_boundary() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("boundary.csv");
    std::fs::write(&input, boundary_events(1_767_225_600_000)).unwrap();
    let expected = expect(&input, Format::Csv, &Spec::DEFAULT);
    assert_eq!(expected.late.iter().map(|c| c.user_id).collect::<Vec<_>>(), [6, 7]);
    check_replay(&input, None, &Spec::DEFAULT, &expected);
}

#[test]
fn one_event() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("one.csv");
    std::fs::write(&input, "ad_id,click_ts,user_id,ip,country\n4711,1767225600123,99123,10.1.2.3,US\n").unwrap();
    let expected = expect(&input, Format::Csv, &Spec::DEFAULT);
    // One pane, and the five sliding windows that contain it, each with rank 1 only.
    assert_eq!(expected.counts.len(), 1);
    assert_eq!(expected.top.len(), 5);
    check_replay(&input, None, &Spec::DEFAULT, &expected);
}

#[test]
fn a_csv_file_without_the_header_fails_naming_file_and_line() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("no_header.csv");
    std::fs::write(&input, "4711,1767225600123,99123,10.1.2.3,US\n").unwrap();
    assert!(oracle::replay(&input, Format::Csv, &Spec::DEFAULT).is_err());
    let spec = spec_file(&Spec::DEFAULT, dir.path());
    let output = replay(&spec, &input, None, Cluster::Threads(1), &dir.path().join("out"));
    assert!(!output.status.success(), "replay accepted a file without header: {}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no_header.csv") && stderr.contains("line 1"), "{}", describe(&output));
}

#[test]
fn a_sink_file_outside_out_is_refused_and_nothing_is_written() {
    let dir = TempDir::new().unwrap();
    let input = generate(dir.path(), "events.csv", 1_000, &["--seed", "3"]);
    let shipped = std::fs::read_to_string(spec_file(&Spec::DEFAULT, dir.path())).unwrap();
    let spec = dir.path().join("escape.toml");
    let escaping = "[sinks.top_ads]\ninput = \"top_ads\"\nfile = \"../escaped.csv\"";
    std::fs::write(&spec, shipped.replace("[sinks.top_ads]\ninput = \"top_ads\"", escaping)).unwrap();
    let out = dir.path().join("out");
    let output = replay(&spec, &input, None, Cluster::Threads(1), &out);
    assert!(!output.status.success(), "replay accepted a file outside --out: {}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for part in ["escape.toml", "sink `top_ads`", "file:", "`../escaped.csv` must be a plain file name"] {
        assert!(stderr.contains(part), "`{part}` missing: {}", describe(&output));
    }
    assert!(!dir.path().join("escaped.csv").exists() && !dir.path().join("escaped.csv.tmp").exists());
}
