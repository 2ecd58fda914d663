//! What the batch benchmarks (replay, reconcile) share: the cached generated input files, lists
//! of numbers from the environment, and measuring a `clickstay` child (wall time, peak RSS, its
//! stdout).
//!
//! Include with `#[path = "common/batch.rs"] mod batch;` next to `rusage`.
#![allow(dead_code)] // each benchmark uses a different part

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::rusage;

pub const BIN: &str = env!("CARGO_BIN_EXE_clickstay");
/// The generator's seed for every cached input file.
pub const SEED: u64 = 42;
/// Bumped when the generator's output changes, so that stale cached files are not reused.
pub const DATA_VERSION: u32 = 1;

/// Where cargo builds (`CARGO_TARGET_DIR`, or `./target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

/// The file of `events` generated events over `ads` ads in `format` (under
/// `target/bench-data`), generated now unless it is cached.
pub fn data_file(format: &str, events: u64, ads: u64) -> Result<PathBuf> {
    let dir = target_dir().join("bench-data");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
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

/// A comma-separated list of numbers from the environment (or the default).
pub fn env_list(name: &str, default: &str) -> Result<Vec<u64>> {
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

/// One run of a child: its wall time, peak RSS and stdout (its summary line).
pub struct Measurement {
    pub wall: Duration,
    pub peak_rss_kib: i64,
    pub summary: String,
}

/// The fastest of `runs` runs, with the highest peak RSS of them all.
pub fn best_of(runs: u64, mut run: impl FnMut() -> Result<Measurement>) -> Result<Measurement> {
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
pub fn measure(command: &mut Command, work: &Path) -> Result<Measurement> {
    let stdout_path = work.join("stdout.txt");
    let started = Instant::now();
    let child =
        command.stdout(File::create(&stdout_path)?).stderr(Stdio::null()).spawn().context("cannot start clickstay")?;
    let rusage::Exited { status, peak_rss_kib, .. } =
        rusage::wait4(child.id(), true)?.context("wait4 returned before the child exited")?;
    let wall = started.elapsed();
    let summary = std::fs::read_to_string(&stdout_path)?.trim().to_string();
    if status != 0 {
        bail!("{command:?} failed (wait status {status}):\n{summary}");
    }
    Ok(Measurement { wall, peak_rss_kib, summary })
}
