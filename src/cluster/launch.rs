//! `clickstay launch`: starts the local processes of the cluster in `workers.toml` and supervises
//! them.
//!
//! Every process runs the same job command (`clickstay COMMAND --config FILE --process I`). The
//! launcher waits for all of them:
//! - every process exits 0 (`run --exit-when-idle`, `replay`): the launcher exits 0;
//! - one fails (a non-zero status, or killed by a signal): the launcher stops the others (SIGTERM,
//!   then SIGKILL after `--stop-timeout`), waits `--restart-backoff` (doubling with each further
//!   restart, up to [`MAX_BACKOFF`]) and starts the whole job again, which restores from its last
//!   checkpoint; after `--max-restarts` restarts it gives up and exits 1. A job that ran for
//!   [`HEALTHY_AFTER`] before it failed has earned a fresh count;
//! - SIGINT (Ctrl-C) or SIGTERM to the launcher: it stops every process the same way and exits 0.
//!
//! The processes get SIGTERM if the launcher itself dies (even by SIGKILL): none is left behind.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tracing::{error, info, warn};

use crate::config::WorkersConfig;
use crate::duration::{format_duration_ms, parse_duration_ms, parse_timeout};

/// The longest wait between two restarts, however many came before.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A job that ran this long before it failed starts its restart count (and backoff) over.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(600);

/// How often the launcher looks at its processes.
const POLL: Duration = Duration::from_millis(20);

/// Options of `clickstay launch`.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// The cluster config whose local processes to start.
    #[arg(long, default_value = "workers.toml")]
    pub config: PathBuf,
    /// Restarts of the whole job after one of its processes failed, before the launcher gives
    /// up and exits 1 (0: never restart). A job that ran for 10 minutes before it failed starts
    /// the count over.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_restarts: u32,
    /// The wait before the first restart; it doubles with every further one, up to 1m (`0s`:
    /// restart at once, every time).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_backoff)]
    pub restart_backoff: Duration,
    /// How long the processes have to exit after the launcher sent them SIGTERM (because one of
    /// them failed, or on Ctrl-C / SIGTERM to the launcher), before it kills them with SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub stop_timeout: Duration,
    /// The job command and its arguments, after `--` (e.g. `-- replay --dataflow ... --out out`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

fn parse_backoff(text: &str) -> Result<Duration, String> {
    parse_duration_ms(text).map(Duration::from_millis)
}

/// Starts the local processes of the cluster and supervises them (see the module's doc):
/// each runs as `clickstay --log-format LOG_FORMAT COMMAND --config FILE --process I`.
pub fn launch(args: &LaunchArgs, log_format: &str) -> Result<()> {
    let config = WorkersConfig::load(&args.config)?;
    let cluster = config.cluster()?;
    let mut local = Vec::new();
    for (index, address) in cluster.processes.iter().enumerate() {
        if super::is_local(address) {
            local.push((index, address.clone()));
        } else {
            eprintln!(
                "process {index} ({address}) is not on this host; start it there with: clickstay {} --config {} --process {index}",
                args.command.join(" "),
                args.config.display()
            );
        }
    }
    if local.is_empty() {
        bail!("{}: none of the cluster's processes is on this host", args.config.display());
    }
    let exe = std::env::current_exe().context("cannot find the clickstay executable")?;
    let supervisor = Supervisor { args, exe, log_format: log_format.to_string(), local };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the launcher's runtime")?;
    runtime.block_on(supervisor.run())
}

struct Supervisor<'a> {
    args: &'a LaunchArgs,
    exe: PathBuf,
    log_format: String,
    /// (process index, address) of the cluster's processes on this host.
    local: Vec<(usize, String)>,
}

/// What ended a run of the job.
enum Ended {
    /// Every process exited 0.
    Done,
    /// Process `process` failed with `status`.
    Failed { process: usize, status: ExitStatus },
    /// The launcher got a stop signal.
    Signal(&'static str),
}

impl Supervisor<'_> {
    async fn run(&self) -> Result<()> {
        let mut stop = std::pin::pin!(crate::signals::stop_signal()?);
        let mut restarts = 0;
        loop {
            let started_at = Instant::now();
            let mut job = self.start()?;
            let ended = tokio::select! {
                ended = job.wait_for_end() => ended?,
                signal = &mut stop => Ended::Signal(signal),
            };
            let (process, status) = match ended {
                Ended::Done => {
                    info!("every process exited successfully");
                    return Ok(());
                }
                Ended::Signal(signal) => {
                    info!(signal, "stopping every process");
                    job.stop(self.args.stop_timeout).await;
                    info!(signal, "stopped every process");
                    return Ok(());
                }
                Ended::Failed { process, status } => (process, status),
            };
            job.stop(self.args.stop_timeout).await;
            if started_at.elapsed() >= HEALTHY_AFTER {
                restarts = 0;
            }
            if restarts >= self.args.max_restarts {
                error!(process, %status, restarts, "the job failed and --max-restarts is spent: giving up");
                bail!(
                    "process {process} failed ({status}) after {restarts} restarts (--max-restarts {}): gave up",
                    self.args.max_restarts
                );
            }
            let backoff = backoff(self.args.restart_backoff, restarts);
            restarts += 1;
            warn!(
                process,
                %status,
                restart = restarts,
                max_restarts = self.args.max_restarts,
                backoff = %format_duration_ms(backoff.as_millis() as u64),
                "a process failed; stopped the others, restarting the job from its last checkpoint"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                signal = &mut stop => {
                    info!(signal, "stopped while waiting to restart");
                    return Ok(());
                }
            }
        }
    }

    /// Starts one run of the job: every local process.
    fn start(&self) -> Result<Job> {
        let mut job = Job { processes: Vec::new() };
        for (index, address) in &self.local {
            let mut command = Command::new(&self.exe);
            command
                .args(["--log-format", &self.log_format])
                .args(&self.args.command)
                .arg("--config")
                .arg(&self.args.config)
                .arg("--process")
                .arg(index.to_string());
            terminate_with_parent(&mut command);
            // On an error, `job` is dropped and stops what it started.
            let child = command.spawn().with_context(|| format!("cannot start process {index}"))?;
            info!(process = index, pid = child.id(), %address, "started");
            job.processes.push(Process { index: *index, child, status: None });
        }
        Ok(job)
    }
}

/// The wait before restart number `restarts + 1`: `first`, doubled `restarts` times, at most
/// [`MAX_BACKOFF`] (and never less than `first`).
fn backoff(first: Duration, restarts: u32) -> Duration {
    let doubled = first.saturating_mul(1 << restarts.min(20));
    doubled.min(MAX_BACKOFF).max(first)
}

/// Asks the kernel to send SIGTERM to the process when the launcher dies, however it dies.
fn terminate_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let launcher = std::process::id() as libc::pid_t;
    // SAFETY: `prctl` and `getppid` are async-signal-safe and touch no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher died between fork and prctl: the signal would never come.
            if libc::getppid() != launcher {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// One run of the job: its local processes.
struct Job {
    processes: Vec<Process>,
}

struct Process {
    index: usize,
    child: Child,
    /// Once it exited.
    status: Option<ExitStatus>,
}

impl Job {
    /// Waits until every process exited 0, or one failed.
    /// Every process that ended since the last look is logged; the first failure is returned.
    async fn wait_for_end(&mut self) -> Result<Ended> {
        loop {
            let mut failed = None;
            for process in self.running() {
                let Some(status) = process.child.try_wait().context("cannot wait for a process")? else { continue };
                process.status = Some(status);
                if status.success() {
                    info!(process = process.index, "process exited successfully");
                } else {
                    error!(process = process.index, pid = process.child.id(), %status, "process failed");
                    failed.get_or_insert(Ended::Failed { process: process.index, status });
                }
            }
            if let Some(failed) = failed {
                return Ok(failed);
            }
            if self.running().next().is_none() {
                return Ok(Ended::Done);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops every process still running: SIGTERM, then SIGKILL to those still there after
    /// `timeout`.
    async fn stop(&mut self, timeout: Duration) {
        for process in self.running() {
            // SAFETY: a plain syscall; the pid is our child's, not yet reaped.
            unsafe { libc::kill(process.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for process in self.running() {
                if let Ok(Some(status)) = process.child.try_wait() {
                    info!(process = process.index, %status, "process stopped");
                    process.status = Some(status);
                }
            }
            if self.running().next().is_none() {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        self.kill();
    }

    /// SIGKILL to every process still running, and wait for it.
    fn kill(&mut self) {
        for process in self.running() {
            warn!(process = process.index, pid = process.child.id(), "process did not stop in time: killing it");
            let _ = process.child.kill();
            process.status = process.child.wait().ok();
        }
    }

    fn running(&mut self) -> impl Iterator<Item = &mut Process> {
        self.processes.iter_mut().filter(|p| p.status.is_none())
    }
}

impl Drop for Job {
    /// A job dropped on an error path (a process that would not start) leaves nothing running.
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let second = Duration::from_secs(1);
        let waits: Vec<u64> = (0..8).map(|r| backoff(second, r).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(Duration::ZERO, 5), Duration::ZERO);
        assert_eq!(backoff(Duration::from_secs(90), 0), Duration::from_secs(90));
        assert_eq!(backoff(second, u32::MAX), MAX_BACKOFF);
    }
}
