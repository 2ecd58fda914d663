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

#[path = "common/batch.rs"]
mod batch;
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

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use batch::{BIN, best_of, data_file, env_list, measure};
use stream::{Job, fresh_database, produce};

/// The seed, ads and version of `benches/replay.rs`'s files, so that the cache is shared.
const ADS: u64 = 100_000;
/// A range holding every generated event: [1970, 2100), on pane boundaries.
const FROM: &str = "0";
const TO: &str = "4102444800000";

fn main() -> Result<()> {
    let events = env_list("CLICKSTAY_BENCH_RECONCILE_EVENTS", "2000000")?[0];
    let workers = env_list("CLICKSTAY_BENCH_WORKERS", "1,2")?;
    let runs = env_list("CLICKSTAY_BENCH_RUNS", "1")?.first().copied().unwrap_or(1).max(1);
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/ad_clicks.toml");
    let input = data_file("csv", events, ADS)?;

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
