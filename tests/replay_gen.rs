//! `clickstay gen`: reproducible files of the requested shape, checked with the
//! independent parser of `common/oracle.rs`.

#[path = "common/oracle.rs"]
mod oracle;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use oracle::{Format, Problem};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_clickstay");

fn gen_output(out: &Path, events: u64, options: &[&str]) -> Output {
    Command::new(BIN)
        .args(["gen", "--events", &events.to_string(), "--out"])
        .arg(out)
        .args(options)
        .output()
        .expect("run clickstay gen")
}

/// Generates a file and returns it with the counts of the summary line:
/// lines, valid, very late, malformed.
fn generate(dir: &Path, name: &str, events: u64, options: &[&str]) -> (PathBuf, [u64; 4]) {
    let path = dir.join(name);
    let output = gen_output(&path, events, options);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "gen failed: {stderr}");
    let numbers: Vec<u64> =
        stderr.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    let counts = numbers[..4].try_into().unwrap_or_else(|_| panic!("summary {stderr:?}"));
    (path, counts)
}

/// The data lines of a generated file (without the CSV header).
fn data_lines(path: &Path, format: Format) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    assert_eq!(lines.pop().as_deref(), Some(&b""[..]), "the file ends with a newline");
    if format == Format::Csv {
        assert_eq!(lines.remove(0), oracle::CSV_HEADER.as_bytes());
    }
    lines
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes() {
    let dir = TempDir::new().unwrap();
    for (extension, extra) in [("csv", "0"), ("jsonl", "0.1")] {
        let options = |seed| vec!["--seed", seed, "--malformed-fraction", extra, "--late-fraction", "0.05"];
        let (a, _) = generate(dir.path(), &format!("a.{extension}"), 20_000, &options("7"));
        let (b, _) = generate(dir.path(), &format!("b.{extension}"), 20_000, &options("7"));
        let (c, _) = generate(dir.path(), &format!("c.{extension}"), 20_000, &options("8"));
        let (a, b, c) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), std::fs::read(c).unwrap());
        assert!(a == b, "{extension}: same seed, different files");
        assert!(a != c, "{extension}: different seeds, same file");
        assert!(a.len() > 20_000 * 40, "{extension}: the file has its lines");
    }
}

#[test]
fn events_have_the_requested_times_popularity_and_countries() {
    let dir = TempDir::new().unwrap();
    // 1000 events per second: event i is nominally at start + i ms.
    let start: u64 = 1_767_225_600_000;
    let options = [
        "--rate",
        "1000",
        "--ads",
        "1000",
        "--users",
        "5000",
        "--late-fraction",
        "0.01",
        "--max-disorder-ms",
        "2000",
        "--late-ms",
        "70000..80000",
        "--seed",
        "3",
    ];
    let (path, [lines, valid, late, malformed]) = generate(dir.path(), "shape.csv", 100_000, &options);
    assert_eq!((lines, valid, malformed), (100_000, 100_000, 0));
    assert!((800..1_200).contains(&late), "about 1% very late: {late}");

    let mut clicks_per_ad: BTreeMap<u64, u64> = BTreeMap::new();
    let mut countries = BTreeSet::new();
    let mut very_late = 0;
    for (i, line) in data_lines(&path, Format::Csv).iter().enumerate() {
        let click = oracle::parse_line(line, Format::Csv)
            .unwrap_or_else(|p| panic!("line {i} {:?}: {p:?}", String::from_utf8_lossy(line)));
        let nominal = start + i as u64;
        let behind = nominal.checked_sub(click.click_ts).unwrap_or_else(|| panic!("event {i} is in the future"));
        match behind {
            0..=2_000 => {}
            70_000..=80_000 => very_late += 1,
            _ => panic!("event {i} is {behind} ms behind its nominal time"),
        }
        assert!((1..=1000).contains(&click.ad_id) && (1..=5000).contains(&click.user_id), "{click:?}");
        *clicks_per_ad.entry(click.ad_id).or_default() += 1;
        countries.insert(click.country);
    }
    assert_eq!(very_late, late, "the summary counts the very late events");
    assert_eq!(countries.len(), 20);
    // Zipf with exponent 1 over 1000 ads: the top ad has about 1/H(1000) = 13% of the clicks.
    let mut popularity: Vec<u64> = clicks_per_ad.values().copied().collect();
    popularity.sort_unstable_by(|a, b| b.cmp(a));
    assert!((11_000..15_500).contains(&popularity[0]), "top ad has {} clicks", popularity[0]);
    assert!(popularity[0] > 5 * popularity[9], "skewed: {:?}", &popularity[..10]);
    let (top_ad, _) = clicks_per_ad.iter().max_by_key(|(_, clicks)| **clicks).unwrap();
    assert_ne!(*top_ad, 1, "popularity is not the order of the ids");
}

#[test]
fn times_are_clamped_at_zero() {
    let dir = TempDir::new().unwrap();
    let options = ["--start-ms", "0", "--max-disorder-ms", "5000", "--late-fraction", "0.5", "--format", "jsonl"];
    let (path, [_, valid, _, _]) = generate(dir.path(), "zero.data", 2_000, &options);
    let lines = data_lines(&path, Format::Jsonl);
    let clicks: Vec<_> = lines.iter().map(|l| oracle::parse_line(l, Format::Jsonl).expect("valid")).collect();
    assert_eq!(clicks.len() as u64, valid);
    assert!(clicks.iter().filter(|c| c.click_ts == 0).count() > 1_000, "late events before 0 are clamped to 0");
}

#[test]
fn malformed_lines_are_of_every_kind_and_all_rejected() {
    let dir = TempDir::new().unwrap();
    for (name, format, kinds) in [("bad.csv", Format::Csv, 5), ("bad.jsonl", Format::Jsonl, 6)] {
        let (path, [lines, valid, _, malformed]) =
            generate(dir.path(), name, 20_000, &["--malformed-fraction", "0.1", "--seed", "5"]);
        assert!((1_700..2_300).contains(&malformed), "{name}: {malformed} malformed");
        assert_eq!(valid + malformed, lines);
        let mut problems = BTreeSet::new();
        for line in data_lines(&path, format) {
            if let Err(problem) = oracle::parse_line(&line, format) {
                problems.insert(format!("{problem:?}"));
            }
        }
        let outcome = oracle::replay(&path, format, &oracle::Spec::DEFAULT).unwrap();
        assert_eq!(outcome.rejected_count(), malformed, "{name}: the oracle rejects exactly the malformed lines");
        // ad_id or user_id, click_ts, country, too long, and field count (CSV) or JSON (JSONL).
        let expected_kinds = [
            format!("{:?}", Problem::TooLong),
            format!("{:?}", Problem::Field("click_ts")),
            format!("{:?}", Problem::Field("country")),
        ];
        assert!(expected_kinds.iter().all(|k| problems.contains(k)), "{name}: {problems:?}");
        assert!(problems.len() >= kinds, "{name}: only {problems:?}");
    }
}

#[test]
fn bad_arguments_are_named() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("x.csv");
    for (options, words) in [
        (&["--late-ms", "5..1"][..], &["--late-ms", "minimum 5 is greater than maximum 1"][..]),
        (&["--late-ms", "5"], &["--late-ms", "MIN..MAX"]),
        (&["--malformed-fraction", "2"], &["--malformed-fraction", "between 0 and 1"]),
        (&["--rate", "0"], &["--rate", "positive"]),
        (&["--ads", "0"], &["--ads"]),
        (&["--format", "xml"], &["--format", "xml"]),
    ] {
        let output = gen_output(&out, 10, options);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{options:?} was accepted");
        assert!(words.iter().all(|w| stderr.contains(w)), "{options:?}: {stderr}");
    }
    let missing = dir.path().join("no/such/dir/x.csv");
    let output = gen_output(&missing, 10, &[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no/such/dir/x.csv"));
}
