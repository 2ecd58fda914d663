//! Waiting for a child process and reading its peak memory and CPU time, for the benchmarks
//! that run `clickstay` as a child (`benches/replay.rs`, `benches/stream.rs`); and the CPU time
//! of a service's process tree (the broker, PostgreSQL with its backends) from `/proc`.
//!
//! Include it with `#[path = "common/rusage.rs"] mod rusage;`.
#![allow(dead_code)] // each benchmark uses a different part

use anyhow::{Context, Result};

/// A child that has exited, from `wait4`.
#[derive(Debug, Clone, Copy)]
pub struct Exited {
    pub status: i32,
    /// Peak resident set size in KiB (`ru_maxrss`).
    pub peak_rss_kib: i64,
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
}

/// `wait4` on the child `pid`: once it has exited, its wait status, peak RSS and CPU time.
/// With `block`, waits for it to exit; without, answers `None` at once while it still runs.
pub fn wait4(pid: u32, block: bool) -> Result<Option<Exited>> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let options = if block { 0 } else { libc::WNOHANG };
    // SAFETY: pid is our child, not yet reaped; status and usage point to live locals.
    let got = unsafe { libc::wait4(pid as libc::pid_t, &mut status, options, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    match got {
        0 => Ok(None),
        -1 => Err(std::io::Error::last_os_error()).context("wait4"),
        _ => Ok(Some(Exited {
            status,
            peak_rss_kib: usage.ru_maxrss,
            cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        })),
    }
}

/// CPU seconds used so far by `root` and every process below it, living or reaped (the
/// reaped ones through their parents' `cutime`/`cstime`): PostgreSQL's postmaster and its
/// backends, the broker. Processes that exited before a parent reaped them are missed.
pub fn tree_cpu_seconds(root: u32) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut stats = Vec::new();
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // After the command's closing parenthesis: state, ppid, ... (field 3 on).
            let Some((_, rest)) = text.rsplit_once(')') else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            // Fields 4 (ppid), 14-17 (utime, stime, cutime, cstime), counted from 1.
            stats.push((pid, number(1) as u32, number(11) + number(12) + number(13) + number(14)));
        }
    }
    let mut total = 0;
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, used) in &stats {
            if pid == parent {
                total += used;
            }
            if ppid == parent && pid != parent {
                frontier.push(pid);
            }
        }
    }
    Ok(total as f64 / ticks)
}

/// The pid in the first line of `file` (a pid file, PostgreSQL's `postmaster.pid`).
pub fn pid_in(file: &std::path::Path) -> Result<u32> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let first = text.lines().next().unwrap_or_default().trim();
    first.parse().with_context(|| format!("{} does not start with a pid: {first:?}", file.display()))
}
