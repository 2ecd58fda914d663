//! Reconciliation throughput against replay: `cargo bench --bench reconcile`.
//!
//! Generates a CSV file of click events with `clickstay gen` (kept in `target/bench-data/` under
//! the name `benches/replay.rs` gives it, so either bench reuses the other's file), produces it
//! to a fresh 8-partition topic and runs the streaming job over it once (`clickstay run -w 2
//! --exit-when-idle 2`), which fills PostgreSQL and the raw archive. Then, for each worker
//! count, it times `clickstay replay` of the CSV file and `clickstay reconcile` of the whole
//! archive (every pane, every table compared), and prints wall time, events/s and the child's
//! peak RSS. Reconcile's time includes reading the job's rows back from PostgreSQL and comparing
//! them; its own summary line also gives the dataflow part alone. Figures only: nothing is
//! asserted but that reconcile finds no difference.
//!
//! Services: `CLICKSTAY_KAFKA_BROKERS` / `CLICKSTAY_TEST_PG` when set, else started through
//! `scripts/` as the tests do (and left running, like the tests' own).
//!
//! Environment:
//! - `CLICKSTAY_BENCH_RECONCILE_EVENTS`: events, default 2000000
//! - `CLICKSTAY_BENCH_WORKERS`: worker threads per run, default `1,2`
//! - `CLICKSTAY_BENCH_RUNS`: runs per configuration (best time, largest RSS), default 1

#[path = "../tests/common/broker.rs"]
mod broker;
#[path = "../tests/common/pg.rs"]
mod pg;
#[path = "common/rusage.rs"]
mod rusage;
#[path = "../tests/common/scripts.rs"]
mod scripts;
#[path = "../tests/common/stream.rs"]
mod stream;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use stream::{BIN, Job, fresh_database, produce};

/// The seed, ads and version of `benches/replay.rs`'s files, so that the cache is shared.
const SEED: u64 = 42;
const ADS: u64 = 100_000;
const DATA_VERSION: u32 = 1;
/// A range holding every generated event: [1970, 2100), on pane boundaries.
const FROM: &str = "0";
const TO: &str = "4102444800000";

fn main() -> Result<()> {
    let events = env_list("CLICKSTAY_BENCH_RECONCILE_EVENTS", "2000000")?[0];
    let workers = env_list("CLICKSTAY_BENCH_WORKERS", "1,2")?;
    let runs = env_list("CLICKSTAY_BENCH_RUNS", "1")?.first().copied().unwrap_or(1).max(1);
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/ad_clicks.toml");
    let input = data_file(events)?;

    let work = tempfile::tempdir().context("cannot create a temporary directory")?;
    let job = Job::new(work.path(), "bench", 8, &fresh_database("bench_reconcile"));
    let started = Instant::now();
    produce(&job, &input);
    eprintln!("produced {events} events in {:.1} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    job.run_to_end(&[]);
    eprintln!("streaming job over them in {:.1} s (2 s of it waiting for quiet)", started.elapsed().as_secs_f64());

    let mut rows = Vec::new();
    for &threads in &workers {
        let w = threads.to_string();
        let mut replay = Command::new(BIN);
        replay.args(["replay", "--dataflow"]).arg(&spec).arg("--input").arg(&input);
        replay.arg("--out").arg(work.path().join("replay")).args(["-w", &w]);
        let mut reconcile = Command::new(BIN);
        reconcile.args(["reconcile", "--dataflow"]).arg(&spec).arg("--config").arg(&job.config);
        reconcile.args(["--job", &job.name, "--from", FROM, "--to", TO, "-w", &w]).arg("--archive").arg(&job.archive);
        reconcile.env_remove("CLICKSTAY_CLICKS_DB");
        for (name, command) in [("replay (CSV)", &mut replay), ("reconcile (archive)", &mut reconcile)] {
            let m = best_of(runs, || measure(command, work.path()))?;
            eprintln!(
                "  {name} -w {threads}: {:.2} s\n    {}",
                m.wall.as_secs_f64(),
                m.summary.replace('\n', "\n    ")
            );
            rows.push((name, threads, m));
        }
    }

    println!();
    println!("{events} events, {ADS} ads, 8 partitions (shared, noisy machine: compare within one run)");
    println!("{:<20} {:>8} {:>9} {:>13} {:>14}", "command", "workers", "seconds", "events/s", "peak RSS MiB");
    for (name, threads, m) in rows {
        let seconds = m.wall.as_secs_f64();
        println!(
            "{name:<20} {threads:>8} {seconds:>9.2} {:>13.0} {:>14.1}",
            events as f64 / seconds,
            m.peak_rss_kib as f64 / 1024.0
        );
    }
    Ok(())
}

/// The CSV file of `events` events, generated now unless `benches/replay.rs` left it.
fn data_file(events: u64) -> Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    };
    let dir = target.join("bench-data");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("clicks-v{DATA_VERSION}-seed{SEED}-ads{ADS}-{events}.csv"));
    if path.exists() {
        eprintln!("reusing {}", path.display());
        return Ok(path);
    }
    let partial = path.with_extension("csv.partial");
    let status = Command::new(BIN)
        .args(["gen", "--events", &events.to_string(), "--ads", &ADS.to_string(), "--seed", &SEED.to_string()])
        .args(["--format", "csv", "--out"])
        .arg(&partial)
        .status()
        .context("cannot run clickstay gen")?;
    ensure!(status.success(), "clickstay gen failed: {status}");
    std::fs::rename(&partial, &path).with_context(|| format!("cannot rename {}", partial.display()))?;
    Ok(path)
}

struct Measurement {
    wall: Duration,
    peak_rss_kib: i64,
    summary: String,
}

fn best_of(runs: u64, mut run: impl FnMut() -> Result<Measurement>) -> Result<Measurement> {
    let mut best: Option<Measurement> = None;
    for _ in 0..runs {
        let m = run()?;
        best = Some(match best {
            Some(b) if b.wall <= m.wall => Measurement { peak_rss_kib: b.peak_rss_kib.max(m.peak_rss_kib), ..b },
            Some(b) => Measurement { peak_rss_kib: b.peak_rss_kib.max(m.peak_rss_kib), ..m },
            None => m,
        });
    }
    best.context("no run")
}

/// Runs `command` to its end: wall time, peak RSS, and its stdout (the summary).
fn measure(command: &mut Command, work: &Path) -> Result<Measurement> {
    let stdout_path = work.join("stdout.txt");
    let started = Instant::now();
    let child =
        command.stdout(File::create(&stdout_path)?).stderr(Stdio::null()).spawn().context("cannot start clickstay")?;
    let (status, peak_rss_kib) = rusage::wait4(child.id(), true)?.context("wait4 returned before the child exited")?;
    let wall = started.elapsed();
    let summary = std::fs::read_to_string(&stdout_path)?.trim().to_string();
    if status != 0 {
        bail!("{command:?} failed (wait status {status}):\n{summary}");
    }
    Ok(Measurement { wall, peak_rss_kib, summary })
}

/// A comma-separated list of numbers from the environment (or the default).
fn env_list(name: &str, default: &str) -> Result<Vec<u64>> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_string());
    let list: Vec<u64> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('_', "").parse().with_context(|| format!("{name}: {s:?} is not a number")))
        .collect::<Result<_>>()?;
    ensure!(!list.is_empty(), "{name} is empty");
    Ok(list)
}
