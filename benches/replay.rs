//! Replay throughput and memory: `cargo bench --bench replay`.
//!
//! Generates click files with `clickstay gen` (kept in `target/bench-data/`,
//! named by their parameters, so re-runs skip generation), replays each with
//! the requested worker counts and prints wall time, events/s and the child's
//! peak RSS (from `wait4`). It prints figures only: speed is not asserted.
//!
//! Environment:
//! - `CLICKSTAY_BENCH_EVENTS`: CSV sizes, default `1000000,10000000`
//! - `CLICKSTAY_BENCH_JSONL_EVENTS`: JSON Lines sizes, default `1000000` (empty: none)
//! - `CLICKSTAY_BENCH_WORKERS`: worker threads per replay, default `1,2`
//! - `CLICKSTAY_BENCH_ADS`: numbers of distinct ads for the CSV files, default `100000,1000`.
//!   With 1000 ads the result files stay small, so peak RSS shows the state of the open
//!   panes alone; with 100000 ads it also includes the (sorted) results, which grow with
//!   the number of panes.
//! - `CLICKSTAY_BENCH_RUNS`: replays per configuration (best time, largest RSS), default 1

#[path = "common/rusage.rs"]
mod rusage;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const BIN: &str = env!("CARGO_BIN_EXE_clickstay");
/// Seed of every generated file; part of the cached file's name.
const SEED: u64 = 42;
/// Bump when `clickstay gen` changes its output, so cached files are not reused.
const DATA_VERSION: u32 = 1;

fn main() -> Result<()> {
    let csv_sizes = env_list("CLICKSTAY_BENCH_EVENTS", "1000000,10000000")?;
    let jsonl_sizes = env_list("CLICKSTAY_BENCH_JSONL_EVENTS", "1000000")?;
    let workers = env_list("CLICKSTAY_BENCH_WORKERS", "1,2")?;
    let ad_counts = env_list("CLICKSTAY_BENCH_ADS", "100000,1000")?;
    let runs = env_list("CLICKSTAY_BENCH_RUNS", "1")?.first().copied().unwrap_or(1).max(1);

    let data_dir = target_dir().join("bench-data");
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/ad_clicks.toml");

    let default_ads = ad_counts.first().copied().unwrap_or(100_000);
    let inputs: Vec<(&str, u64, u64)> = ad_counts
        .iter()
        .flat_map(|&ads| csv_sizes.iter().map(move |&n| ("csv", n, ads)))
        .chain(jsonl_sizes.iter().map(|&n| ("jsonl", n, default_ads)))
        .collect();
    let mut rows = Vec::new();
    for (format, events, ads) in inputs {
        let input = data_file(&data_dir, format, events, ads)?;
        for &threads in &workers {
            let mut best: Option<Measurement> = None;
            for _ in 0..runs {
                let m = replay(&spec, &input, threads)?;
                best = Some(match best {
                    None => m,
                    Some(b) => {
                        Measurement { wall: b.wall.min(m.wall), peak_rss_kib: b.peak_rss_kib.max(m.peak_rss_kib), ..m }
                    }
                });
            }
            let m = best.expect("at least one run");
            eprintln!("  {format} {events} events, -w {threads}: {:.2} s, {}", m.wall.as_secs_f64(), m.summary);
            rows.push((format, events, ads, threads, m));
        }
    }

    println!();
    println!(
        "{:<6} {:>11} {:>7} {:>8} {:>9} {:>13} {:>14}",
        "format", "events", "ads", "workers", "seconds", "events/s", "peak RSS MiB"
    );
    for (format, events, ads, threads, m) in rows {
        let seconds = m.wall.as_secs_f64();
        println!(
            "{format:<6} {events:>11} {ads:>7} {threads:>8} {seconds:>9.2} {:>13.0} {:>14.1}",
            events as f64 / seconds,
            m.peak_rss_kib as f64 / 1024.0
        );
    }
    Ok(())
}

/// A comma-separated list of numbers from the environment (or the default).
fn env_list(name: &str, default: &str) -> Result<Vec<u64>> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_string());
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('_', "").parse().with_context(|| format!("{name}: {s:?} is not a number")))
        .collect()
}

/// The cargo target directory (where `bench-data/` is kept between runs).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

/// The file of `events` generated events over `ads` ads in `format`, generated now unless it is cached.
fn data_file(dir: &Path, format: &str, events: u64, ads: u64) -> Result<PathBuf> {
    let path = dir.join(format!("clicks-v{DATA_VERSION}-seed{SEED}-ads{ads}-{events}.{format}"));
    if path.exists() {
        eprintln!("reusing {}", path.display());
        return Ok(path);
    }
    // Written under another name first, so an interrupted run leaves no truncated cache.
    let partial = path.with_extension(format!("{format}.partial"));
    let started = Instant::now();
    let status = Command::new(BIN)
        .args(["gen", "--events", &events.to_string(), "--ads", &ads.to_string(), "--seed", &SEED.to_string()])
        .args(["--format", format, "--out"])
        .arg(&partial)
        .status()
        .context("cannot run clickstay gen")?;
    ensure!(status.success(), "clickstay gen failed for {}: {status}", path.display());
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("gen: {events} {format} events in {seconds:.2} s ({:.0} events/s)", events as f64 / seconds);
    std::fs::rename(&partial, &path).with_context(|| format!("cannot rename {}", partial.display()))?;
    Ok(path)
}

struct Measurement {
    wall: Duration,
    peak_rss_kib: i64,
    summary: String,
}

/// Runs one replay and measures its wall time and the peak RSS of the child.
fn replay(spec: &Path, input: &Path, threads: u64) -> Result<Measurement> {
    let out = tempfile::TempDir::new()?;
    let stdout_path = out.path().join("stdout.txt");
    let started = Instant::now();
    let child = Command::new(BIN)
        .arg("replay")
        .arg("--dataflow")
        .arg(spec)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out.path().join("results"))
        .args(["-w", &threads.to_string()])
        .stdout(File::create(&stdout_path)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start clickstay replay")?;
    let (status, peak_rss_kib) = rusage::wait4(child.id(), true)?.context("wait4 returned before the replay exited")?;
    let wall = started.elapsed();
    if status != 0 {
        bail!("clickstay replay of {} with -w {threads} failed (wait status {status})", input.display());
    }
    let summary = std::fs::read_to_string(&stdout_path)?.trim().to_string();
    Ok(Measurement { wall, peak_rss_kib, summary })
}
