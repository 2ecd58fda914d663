//! The raw-event archive's cost: `cargo bench --bench archive`.
//!
//! Writes `CLICKSTAY_BENCH_ARCHIVE_EVENTS` generated events (default 2,000,000; the generator's
//! defaults, seed 1) as the streaming job does at its checkpoints: ranges of
//! `CLICKSTAY_BENCH_ARCHIVE_RANGE` consecutive events (default 100,000, about what one
//! partition reads between two checkpoints of a 10M-event backlog) of one partition each,
//! through `clicks::archive::write_archive` into a temporary directory. Prints the best of
//! three runs: events/s, CPU ns per event of this thread, bytes per event; and reads every file
//! back to check that the events survive. Speed is not asserted.

#[path = "common/rusage.rs"]
mod rusage;
#[path = "../tests/common/scripts.rs"]
mod scripts;
#[path = "common/services.rs"]
mod services;

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use clickstay::clicks::archive::{ArchiveRange, read_archive_file, write_archive};
use clickstay::clicks::event::ClickEvent;
use clickstay::clicks::generate::{Generated, Generator, GeneratorOptions};

#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    generator: GeneratorOptions,
}

/// This thread's CPU time so far, in seconds.
fn thread_cpu() -> f64 {
    // SAFETY: an all-zero timespec is valid; clock_gettime writes it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

fn main() -> Result<()> {
    let count = services::env_u64("CLICKSTAY_BENCH_ARCHIVE_EVENTS", 2_000_000)? as usize;
    let range_len = services::env_u64("CLICKSTAY_BENCH_ARCHIVE_RANGE", 100_000)?.max(1) as usize;
    let options = Defaults::parse_from(["archive"]).generator;
    let mut generator = Generator::new(&options, count as u64, 10_000.0, clickstay::clicks::event::Format::Csv)?;
    let mut events: Vec<(u64, ClickEvent)> = Vec::with_capacity(count);
    while let Some(item) = generator.next_item() {
        if let Generated::Valid { event, .. } = item {
            events.push((events.len() as u64, event));
        }
    }
    let mut best: Option<(f64, f64, u64)> = None;
    for run in 0..3 {
        let dir = tempfile::tempdir()?;
        let (started, cpu) = (Instant::now(), thread_cpu());
        let mut files = Vec::new();
        for (index, chunk) in events.chunks(range_len).enumerate() {
            let first = chunk[0].0;
            let range =
                ArchiveRange { partition: (index % 8) as u32, incarnation: 0, first, next: first + chunk.len() as u64 };
            files.extend(write_archive(dir.path(), "bench_archive_topic", range, chunk)?);
        }
        let (seconds, cpu) = (started.elapsed().as_secs_f64(), thread_cpu() - cpu);
        let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).sum();
        eprintln!("run {run}: {:.3} s, {:.3} CPU s, {bytes} bytes in {} files", seconds, cpu, files.len());
        if run == 0 {
            let mut back: Vec<(u64, ClickEvent)> = Vec::new();
            for file in &files {
                back.extend(read_archive_file(file)?);
            }
            back.sort_by_key(|(offset, _)| *offset);
            ensure!(back == events, "the archive does not read back as the events written");
        }
        if best.is_none_or(|(_, c, _)| cpu < c) {
            best = Some((seconds, cpu, bytes));
        }
    }
    let (seconds, cpu, bytes) = best.context("three runs")?;
    let n = events.len() as f64;
    println!();
    println!("raw-event archive ({} events, ranges of {range_len}; best of 3 by CPU)", events.len());
    println!("{:<32} {:>12.0}", "events/s", n / seconds);
    println!("{:<32} {:>12.0}", "CPU ns per event", cpu * 1e9 / n);
    println!("{:<32} {:>12.1}", "bytes per event", bytes as f64 / n);
    Ok(())
}
