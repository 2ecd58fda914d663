//! What the click-job benchmarks share: the broker and PostgreSQL (started here unless the
//! environment names them), a job's config and process, and small figures helpers.
//!
//! Include with `#[path = "common/services.rs"] mod services;` next to `broker` and `scripts`.
#![allow(dead_code)] // each benchmark uses a different part

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clickstay::config::KafkaConfig;
use postgres::{Client, NoTls};

use super::scripts::run_script;

pub const BIN: &str = env!("CARGO_BIN_EXE_clickstay");

/// The `clickstay` binary the benchmark runs: `CLICKSTAY_BENCH_BIN` when set (another build,
/// to compare two builds in one sitting), else this build's.
pub fn bin() -> String {
    std::env::var("CLICKSTAY_BENCH_BIN").unwrap_or_else(|_| BIN.to_string())
}
/// Worker threads of the benchmarked job.
pub const WORKERS: &str = "2";

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The broker and the Postgres server; those started here are stopped when this is dropped.
pub struct Services {
    pub brokers: String,
    pub pg_base: String,
    /// The services' directories when started here (stopped on drop).
    broker_dir: Option<String>,
    pg_dir: Option<String>,
}

/// CPU seconds used so far by the broker and by PostgreSQL (server and backends); `None` when
/// the service's directory is unknown.
#[derive(Debug, Clone, Copy)]
pub struct ServicesCpu {
    pub broker: Option<f64>,
    pub postgres: Option<f64>,
}

impl Services {
    pub fn start() -> Result<Services> {
        let mut services = Services { brokers: String::new(), pg_base: String::new(), broker_dir: None, pg_dir: None };
        let tag = std::process::id();
        match std::env::var("CLICKSTAY_KAFKA_BROKERS") {
            Ok(brokers) => services.brokers = brokers.trim().to_string(),
            Err(_) => {
                let dir = format!("/tmp/clickstay-bench-stream-broker-{tag}");
                services.brokers = run_script("broker.sh", &["start", &dir], Stdio::inherit())?;
                services.broker_dir = Some(dir);
            }
        }
        match std::env::var("CLICKSTAY_TEST_PG") {
            Ok(url) => services.pg_base = url.trim().to_string(),
            Err(_) => {
                let dir = format!("/tmp/clickstay-bench-stream-pg-{tag}");
                services.pg_base = run_script("postgres.sh", &["start", &dir], Stdio::inherit())?;
                services.pg_dir = Some(dir);
            }
        }
        Ok(services)
    }

    /// Creates database `name` on the server; its URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        let mut client = connect(&self.pg_base)?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .with_context(|| format!("cannot create {name}"))?;
        let (server, _) = self.pg_base.rsplit_once('/').context("the Postgres URL has no database")?;
        Ok(format!("{server}/{name}"))
    }

    /// The CPU seconds the broker and PostgreSQL have used so far, found from their
    /// directories: started here, or named by `CLICKSTAY_BROKER_DIR` / `CLICKSTAY_PG_DIR`.
    pub fn cpu(&self) -> ServicesCpu {
        let home = |started: &Option<String>, variable: &str| {
            started.as_ref().map(PathBuf::from).or_else(|| std::env::var_os(variable).map(PathBuf::from))
        };
        let tree = |pid_file: Option<PathBuf>| {
            let pid = super::rusage::pid_in(&pid_file?).ok()?;
            super::rusage::tree_cpu_seconds(pid).ok()
        };
        ServicesCpu {
            broker: tree(home(&self.broker_dir, "CLICKSTAY_BROKER_DIR").map(|d| d.join("pid"))),
            postgres: tree(home(&self.pg_dir, "CLICKSTAY_PG_DIR").map(|d| d.join("data/postmaster.pid"))),
        }
    }

    /// `clickstay` with this broker, and no stray database override from the environment.
    pub fn command(&self) -> Command {
        let mut command = Command::new(bin());
        command.env("CLICKSTAY_KAFKA_BROKERS", &self.brokers).env_remove("CLICKSTAY_CLICKS_DB");
        command
    }

    /// `clickstay run` of `spec` with its log in `log`, plus `extra` arguments.
    pub fn spawn_job(&self, spec: &Path, config: &Path, archive: &Path, log: &Path, extra: &[&str]) -> Result<Child> {
        self.command()
            .args(["run", "--dataflow"])
            .arg(spec)
            .arg("--config")
            .arg(config)
            .args(["-w", WORKERS, "--archive"])
            .arg(archive)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(File::create(log).with_context(|| format!("cannot create {}", log.display()))?)
            .spawn()
            .context("cannot start clickstay run")
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some(dir) = self.broker_dir.take() {
            let _ = run_script("broker.sh", &["stop", &dir], Stdio::inherit());
        }
        if let Some(dir) = self.pg_dir.take() {
            let _ = run_script("postgres.sh", &["stop", &dir], Stdio::inherit());
        }
    }
}

pub fn write_config(work: &Path, name: &str, kafka: &KafkaConfig, db: &str) -> Result<PathBuf> {
    let path = work.join(format!("{name}-workers.toml"));
    let text = format!(
        "[kafka]\nbrokers = {:?}\ntopic = {:?}\npartitions = {}\n\n[postgres]\nclicks = {db:?}\n",
        kafka.brokers, kafka.topic, kafka.partitions
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A connection that sees the default job's result tables (schema `ad_clicks`, the shipped
/// spec's name: the benches run without `--job`) and the jobs' own tables by plain names.
pub fn connect(url: &str) -> Result<Client> {
    let mut client = Client::connect(url, NoTls).with_context(|| format!("cannot connect to {url}"))?;
    client.batch_execute("SET search_path TO ad_clicks, public")?;
    Ok(client)
}

/// Events the job has committed: the sum of its partitions' next offsets (0 before its tables exist).
pub fn committed_offsets(pg: &mut Client) -> u64 {
    match pg.query_one("SELECT coalesce(sum(next_offset), 0)::bigint FROM source_offsets", &[]) {
        Ok(row) => row.get::<_, i64>(0) as u64,
        Err(_) => 0,
    }
}

/// The last lines of a job's log, for an error message (the temporary directory goes with it).
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

pub fn kill(mut child: Child) -> Result<()> {
    let _ = child.kill();
    child.wait().context("cannot wait for a killed child")?;
    Ok(())
}

pub fn fresh_name(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), now_ms() as u64)
}

pub fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock before 1970").as_secs_f64() * 1000.0
}

pub fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(text) => text.trim().replace('_', "").parse().with_context(|| format!("{name}: {text:?} is not a number")),
        Err(_) => Ok(default),
    }
}
