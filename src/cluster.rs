//! How many timely workers a job runs on, the one place that starts them, and `clickstay
//! launch` (`launch.rs`), which starts the local processes of a cluster and supervises them.
//!
//! A job runs either on `-w THREADS` threads of one process, or as process `--process I` of the
//! cluster in `workers.toml` (`[cluster] processes = [...]`, `threads = N`). Timely's own
//! getopts parsing is not used: the config is built here from clap's arguments and the file.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use timely::{CommunicationConfig, WorkerConfig};

use crate::config::WorkersConfig;

mod launch;
pub use launch::{LaunchArgs, launch};

/// Worker options shared by every job command.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Worker threads in this process (ignored with --process: `workers.toml` says).
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    pub threads: usize,
    /// The cluster config (`[cluster]`, and `[kafka]` / `[postgres]` for jobs that use them).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run as process I of the cluster in --config (what `clickstay launch` passes).
    #[arg(long, requires = "config")]
    pub process: Option<usize>,
}

/// Where a job's workers run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workers {
    Threads(usize),
    Cluster { addresses: Vec<String>, threads: usize, process: usize },
}

impl Workers {
    /// From the command line (and `workers.toml` when --process is given).
    pub fn from_args(args: &WorkerArgs) -> Result<Self> {
        if args.threads == 0 {
            bail!("-w/--workers: must be at least 1");
        }
        let (Some(path), Some(process)) = (&args.config, args.process) else {
            return Ok(Workers::Threads(args.threads));
        };
        let config = WorkersConfig::load(path)?;
        let cluster = config.cluster()?;
        if process >= cluster.processes.len() {
            bail!(
                "--process {process}: {} lists {} processes (0..{})",
                path.display(),
                cluster.processes.len(),
                cluster.processes.len()
            );
        }
        Ok(Workers::Cluster { addresses: cluster.processes.clone(), threads: cluster.threads, process })
    }

    /// The timely configuration.
    pub fn timely_config(&self) -> timely::Config {
        let communication = match self {
            Workers::Threads(1) => CommunicationConfig::Thread,
            Workers::Threads(n) => CommunicationConfig::Process(*n),
            Workers::Cluster { addresses, threads, process } => CommunicationConfig::Cluster {
                threads: *threads,
                process: *process,
                addresses: addresses.clone(),
                report: false,
                zerocopy: false,
            },
        };
        timely::Config { communication, worker: WorkerConfig::default() }
    }

    /// Is this the process that hosts worker 0 (which writes the outputs)?
    pub fn is_first_process(&self) -> bool {
        !matches!(self, Workers::Cluster { process, .. } if *process != 0)
    }
}

/// Whether a process address of `[cluster]` is on this host (launch starts only those).
fn is_local(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host).trim_matches(['[', ']']);
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// The config a job reads: `--config`, else `workers.toml` when present, else none (the
/// environment alone).
pub fn config_path(args: &WorkerArgs) -> Option<PathBuf> {
    args.config.clone().or_else(|| Path::new("workers.toml").exists().then(|| PathBuf::from("workers.toml")))
}

/// Starts `work` on every local worker of `workers` (threads of this process) and returns at
/// once; join the guards to wait for them. The one place that starts timely workers: the click
/// jobs through [`run_workers`], the rooms view directly.
pub fn start_workers<T: Send + 'static>(
    workers: &Workers,
    work: impl Fn(&mut timely::worker::Worker) -> T + Send + Sync + 'static,
) -> Result<timely::communication::initialize::WorkerGuards<T>> {
    timely::execute(workers.timely_config(), work).map_err(|e| anyhow::anyhow!("cannot start the timely workers: {e}"))
}

/// Runs `work` on every worker of `workers` and returns each local worker's result. A worker
/// that fails stops the whole process: the others would wait for it at every round.
pub fn run_workers<T: Send + 'static>(
    workers: &Workers,
    work: impl Fn(&mut timely::worker::Worker) -> Result<T> + Send + Sync + 'static,
) -> Result<Vec<T>> {
    let guards = start_workers(workers, move |worker| match work(worker) {
        Ok(result) => result,
        Err(error) => {
            tracing::error!("{}", crate::pg_error::report(&error));
            std::process::exit(1);
        }
    })?;
    guards.join().into_iter().map(|r| r.map_err(|e| anyhow::anyhow!("{e}"))).collect()
}

/// Worker 0's `value` on every worker of the cluster, through timely's own channels: what
/// process 0 alone established (a job's restored checkpoint) reaches the workers of the other
/// processes before any dataflow of the job is built. `value` is read on worker 0 only.
pub fn from_worker_0<T: timely::ExchangeData + Clone>(worker: &mut timely::worker::Worker, value: Option<T>) -> T {
    use std::cell::RefCell;
    use std::rc::Rc;
    use timely::dataflow::operators::core::Inspect;
    use timely::dataflow::operators::vec::Broadcast;
    use timely::dataflow::operators::{Input, Probe};
    let received: Rc<RefCell<Option<T>>> = Default::default();
    let store = Rc::clone(&received);
    let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (input, stream) = scope.new_input::<Vec<T>>();
        let (probe, _) = stream.broadcast().inspect(move |value: &T| *store.borrow_mut() = Some(value.clone())).probe();
        (input, probe)
    });
    if worker.index() == 0 {
        input.send(value.expect("worker 0 has the value to share"));
    }
    input.close();
    while !probe.done() {
        worker.step();
    }
    received.take().expect("worker 0 sent a value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses() {
        assert!(is_local("127.0.0.1:2101"));
        assert!(is_local("localhost:2101"));
        assert!(is_local("[::1]:2101"));
        assert!(!is_local("10.0.0.7:2101"));
    }

    #[test]
    fn threads_without_config() {
        let args = WorkerArgs { threads: 4, config: None, process: None };
        assert_eq!(Workers::from_args(&args).unwrap(), Workers::Threads(4));
        assert!(Workers::from_args(&WorkerArgs { threads: 0, ..args }).is_err());
    }
}
