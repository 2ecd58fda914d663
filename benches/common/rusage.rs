//! Waiting for a child process and reading its peak memory, for the benchmarks that run
//! `clickstay` as a child (`benches/replay.rs`, `benches/stream.rs`).
//!
//! Include it with `#[path = "common/rusage.rs"] mod rusage;`.

use anyhow::{Context, Result};

/// `wait4` on the child `pid`: once it has exited, its wait status and peak resident set size
/// in KiB (`ru_maxrss`). With `block`, waits for it to exit; without, answers `None` at once
/// while it still runs.
pub fn wait4(pid: u32, block: bool) -> Result<Option<(i32, i64)>> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let options = if block { 0 } else { libc::WNOHANG };
    // SAFETY: pid is our child, not yet reaped; status and usage point to live locals.
    let got = unsafe { libc::wait4(pid as libc::pid_t, &mut status, options, &mut usage) };
    match got {
        0 => Ok(None),
        -1 => Err(std::io::Error::last_os_error()).context("wait4"),
        _ => Ok(Some((status, usage.ru_maxrss))),
    }
}
