//! The ceiling: pgbench running the booking transaction of [`clickstay::rooms::booking`] straight
//! against PostgreSQL, one pgbench process per shard, with the same stays as the HTTP clients.
//!
//! The script is made from [`RESERVE_SQL`] itself, so the SQL cannot drift: each `$n` becomes
//! the pgbench variable drawn for it. It runs BEGIN, the statement, then COMMIT when every night
//! was taken and ROLLBACK otherwise, exactly as `booking::reserve` does.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use clickstay::rooms::booking::RESERVE_SQL;

use crate::common::stats::RunStats;
use crate::common::workload::Workload;

/// pgbench expressions for the statement's parameters, in order `$1`..`$6`.
const PARAMETERS: [(&str, &str); 6] = [
    ("$1", "gen_random_uuid()"),
    ("$2", ":hotel::bigint"),
    ("$3", ":room_type::integer"),
    ("$4", "(:first_night::date + :offset::integer)"),
    ("$5", "(:first_night::date + :offset::integer + :nights::integer)"),
    ("$6", ":client_id::bigint"),
];

/// Draws a stay like [`Workload::pick`] (the shard is fixed per pgbench process) into the
/// variables `hotel`, `room_type`, `nights` and `offset`; every script starts with it.
pub const DRAW_STAY: &str = "\\set hotel :first_hotel + :shards * random(0, :hotels_on_shard - 1)
\\if random(1, 100) <= :hot_percent
\\set hotel :first_hotel
\\endif
\\set room_type random(1, 2 + :hotel % 4)
\\set nights random(1, :max_nights)
\\set offset random(0, :days - :max_nights)
";

/// Ends a booking whose statement set `nights_taken`: COMMIT when it took every night.
pub const COMMIT_IF_ALL_NIGHTS: &str = "\\gset
\\if :nights_taken = :nights
COMMIT;
\\else
ROLLBACK;
\\endif
";

/// The booking transaction of the application as a pgbench script.
pub fn script() -> String {
    let mut statement = RESERVE_SQL.to_string();
    for (placeholder, expression) in PARAMETERS {
        statement = statement.replace(placeholder, expression);
    }
    format!(
        "{DRAW_STAY}BEGIN;
{statement}
{COMMIT_IF_ALL_NIGHTS}"
    )
}

/// Where pgbench is: `$PATH`, else the Debian location of PostgreSQL 15.
pub fn find_pgbench() -> Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("pgbench")).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/lib/postgresql/15/bin/pgbench")])
        .find(|path| path.is_file())
        .context("pgbench not found in PATH nor /usr/lib/postgresql/15/bin (apt-get install postgresql-client)")
}

/// What pgbench runs where: the program, the shard URLs and a scratch folder.
pub struct Pgbench<'a> {
    pub program: &'a Path,
    pub urls: &'a [String],
    pub work_dir: &'a Path,
}

/// Runs `script` with pgbench on every shard at once for `duration`, `clients` connections in
/// all. `reservations` is left 0: the caller counts new rows in the database.
pub async fn run(
    pgbench: &Pgbench<'_>,
    script: &str,
    workload: &Workload,
    clients: usize,
    duration: Duration,
) -> Result<RunStats> {
    let Pgbench { program: pgbench, urls, work_dir } = *pgbench;
    let script_path = work_dir.join("reserve.pgbench");
    std::fs::write(&script_path, script).with_context(|| format!("cannot write {}", script_path.display()))?;
    let started = Instant::now();
    let mut children = Vec::new();
    for (shard, url) in urls.iter().enumerate() {
        let shard_clients = (clients / urls.len() + usize::from(shard < clients % urls.len())).max(1);
        let prefix = work_dir.join(format!("shard{shard}"));
        let variables = [
            ("shards", urls.len().to_string()),
            ("first_hotel", workload.first_hotel(shard).to_string()),
            ("hotels_on_shard", workload.hotels_on(shard).to_string()),
            ("hot_percent", workload.hot_percent.to_string()),
            ("max_nights", workload.max_nights.to_string()),
            ("days", workload.days.to_string()),
            ("first_night", workload.first_night.to_string()),
        ];
        let mut command = Command::new(pgbench);
        command
            .args(["--no-vacuum", "--protocol=prepared", "--jobs=1", "--log"])
            .arg(format!("--client={shard_clients}"))
            .arg(format!("--time={}", duration.as_secs().max(1)))
            .arg(format!("--log-prefix={}", prefix.display()))
            .arg(format!("--file={}", script_path.display()))
            .args(variables.iter().flat_map(|(name, value)| ["--define".to_string(), format!("{name}={value}")]))
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(command.spawn().with_context(|| format!("cannot run {}", pgbench.display()))?);
    }
    let mut stats = RunStats::default();
    for (shard, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!("pgbench on shard {shard} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        }
        stats.attempts += processed(&stdout).with_context(|| format!("pgbench output of shard {shard}:\n{stdout}"))?;
        stats.errors += failed(&stdout);
    }
    stats.elapsed = started.elapsed().min(duration.max(Duration::from_secs(1)));
    stats.latencies_us = read_latency_logs(work_dir)?;
    Ok(stats)
}

/// "number of transactions actually processed: N" (N, possibly followed by "/M").
fn processed(stdout: &str) -> Result<u64> {
    let line = stdout
        .lines()
        .find(|line| line.starts_with("number of transactions actually processed:"))
        .context("no transaction count in pgbench output")?;
    let value = line.split(':').nth(1).unwrap_or("").trim();
    value.split('/').next().unwrap_or("").trim().parse().context("bad transaction count")
}

/// "number of failed transactions: N (x%)", when pgbench reports failures.
fn failed(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("number of failed transactions:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Per-transaction latencies from the `--log` files (third field, microseconds), then removes
/// the files.
fn read_latency_logs(work_dir: &Path) -> Result<Vec<u32>> {
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(work_dir)? {
        let path = entry?.path();
        let is_log = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("shard"));
        if !is_log {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        latencies.extend(text.lines().filter_map(|line| line.split_whitespace().nth(2)?.parse::<u32>().ok()));
        std::fs::remove_file(&path)?;
    }
    Ok(latencies)
}
