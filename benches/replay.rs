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

#[path = "common/batch.rs"]
mod batch;
#[path = "common/rusage.rs"]
mod rusage;

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use batch::{BIN, Measurement, best_of, data_file, env_list, measure};

fn main() -> Result<()> {
    let csv_sizes = env_list("CLICKSTAY_BENCH_EVENTS", "1000000,10000000")?;
    let jsonl_sizes = env_list("CLICKSTAY_BENCH_JSONL_EVENTS", "1000000")?;
    let workers = env_list("CLICKSTAY_BENCH_WORKERS", "1,2")?;
    let ad_counts = env_list("CLICKSTAY_BENCH_ADS", "100000,1000")?;
    let runs = env_list("CLICKSTAY_BENCH_RUNS", "1")?.first().copied().unwrap_or(1).max(1);

    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/ad_clicks.toml");

    let default_ads = ad_counts.first().copied().unwrap_or(100_000);
    let inputs: Vec<(&str, u64, u64)> = ad_counts
        .iter()
        .flat_map(|&ads| csv_sizes.iter().map(move |&n| ("csv", n, ads)))
        .chain(jsonl_sizes.iter().map(|&n| ("jsonl", n, default_ads)))
        .collect();
    let mut rows = Vec::new();
    for (format, events, ads) in inputs {
        let input = data_file(format, events, ads)?;
        for &threads in &workers {
            let m = best_of(runs, || replay(&spec, &input, threads))?;
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

/// Runs one replay and measures its wall time and the peak RSS of the child.
fn replay(spec: &Path, input: &Path, threads: u64) -> Result<Measurement> {
    let out = tempfile::TempDir::new()?;
    let mut command = Command::new(BIN);
    command.arg("replay").arg("--dataflow").arg(spec).arg("--input").arg(input);
    command.arg("--out").arg(out.path().join("results")).args(["-w", &threads.to_string()]);
    measure(&mut command, out.path())
}
