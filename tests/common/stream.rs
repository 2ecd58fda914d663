//! Helpers for the streaming-job tests: a job's config, running and killing it, producing
//! events, replaying the same file, and reading back its tables and archive.
//!
//! Include with `#[path = "common/stream.rs"] mod stream;` next to `broker` and `pg`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::broker;

pub const BIN: &str = env!("CARGO_BIN_EXE_clickstay");

fn spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/ad_clicks.toml")
}

fn check(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// One streaming job: its topic, database, archive and config file.
pub struct Job {
    pub dir: PathBuf,
    pub name: String,
    pub topic: String,
    pub partitions: u32,
    pub db: String,
    pub config: PathBuf,
    pub archive: PathBuf,
    /// The dataflow spec it runs (`dataflows/ad_clicks.toml` unless [`Job::with_spec`]).
    pub spec: PathBuf,
}

impl Job {
    /// A job named `name` on a new topic of `partitions` partitions, writing to `db`.
    pub fn new(dir: &Path, name: &str, partitions: u32, db: &str) -> Job {
        Job::on_topic(dir, name, &broker::fresh_topic(&format!("clicks-{name}")), partitions, db)
    }

    /// Another job reading the same topic into another database and archive.
    pub fn sibling(&self, name: &str, db: &str) -> Job {
        Job::on_topic(&self.dir, name, &self.topic, self.partitions, db)
    }

    fn on_topic(dir: &Path, name: &str, topic: &str, partitions: u32, db: &str) -> Job {
        let config = dir.join(format!("{name}.toml"));
        let text = format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\npartitions = {partitions}\n\n[postgres]\nclicks = \"{db}\"\n",
            broker::brokers()
        );
        std::fs::write(&config, text).unwrap();
        Job {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            topic: topic.to_string(),
            partitions,
            db: db.to_string(),
            config,
            archive: dir.join(format!("archive_{name}")),
            spec: spec(),
        }
    }

    /// A connection that sees the job's result tables (the schema named after the job) and
    /// the jobs' own tables (`public`) by their plain names.
    pub fn connect(&self) -> postgres::Client {
        let mut client = postgres::Client::connect(&self.db, postgres::NoTls).unwrap();
        client.batch_execute(&format!("SET search_path TO \"{}\", public", self.name)).unwrap();
        client
    }

    /// The same job running another spec.
    pub fn with_spec(self, spec: &Path) -> Job {
        Job { spec: spec.to_path_buf(), ..self }
    }

    /// `clickstay run` for this job, on two workers, draining once the topic is quiet for 2 s.
    pub fn command(&self) -> Command {
        self.command_draining_after(2)
    }

    /// `clickstay run` for this job, draining once the topic is quiet for `seconds`.
    pub fn command_draining_after(&self, seconds: u32) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .arg("--dataflow")
            .arg(&self.spec)
            .arg("--config")
            .arg(&self.config)
            .args(["--job", &self.name, "-w", "2", "--checkpoint-interval", "0.05"])
            .args(["--exit-when-idle", &seconds.to_string()])
            .arg("--archive")
            .arg(&self.archive)
            .env_remove("CLICKSTAY_KAFKA_BROKERS")
            .env_remove("CLICKSTAY_CLICKS_DB");
        command
    }

    /// `clickstay launch` of this job as `processes` local processes of `threads` threads each
    /// (a cluster config beside the job's, on free ports), draining once the topic is quiet
    /// for 2 s. The launcher runs in a process group of its own, so that a test can kill the
    /// whole cluster at once.
    pub fn launch_command(&self, processes: usize, threads: usize) -> Command {
        self.launch_command_with(processes, threads, &[], 2)
    }

    /// [`Job::launch_command`] with the launcher's own options (`--max-restarts 0`), draining
    /// once the topic is quiet for `idle` seconds.
    pub fn launch_command_with(&self, processes: usize, threads: usize, launcher: &[&str], idle: u32) -> Command {
        let config = self.dir.join(format!("{}-cluster-{processes}x{threads}.toml", self.name));
        let text = std::fs::read_to_string(&self.config).unwrap();
        let addresses: Vec<String> = (0..processes).map(|_| format!("\"127.0.0.1:{}\"", free_port())).collect();
        let cluster = format!("\n[cluster]\nprocesses = [{}]\nthreads = {threads}\n", addresses.join(", "));
        std::fs::write(&config, text + &cluster).unwrap();
        let mut command = Command::new(BIN);
        command.arg("launch").arg("--config").arg(&config).args(launcher).arg("--");
        command.arg("run").arg("--dataflow").arg(&self.spec);
        command.args(["--job", &self.name, "--checkpoint-interval", "0.05", "--exit-when-idle", &idle.to_string()]);
        command.arg("--archive").arg(&self.archive);
        command.env_remove("CLICKSTAY_KAFKA_BROKERS").env_remove("CLICKSTAY_CLICKS_DB");
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
    }

    /// The job's own archive directory (jobs may share `--archive`).
    pub fn own_archive(&self) -> PathBuf {
        clickstay::clicks::archive::job_root(&self.archive, &self.name)
    }

    /// Runs the job until it drains and exits successfully; its log.
    pub fn run_to_end(&self, env: &[(&str, &str)]) -> String {
        let mut command = self.command();
        command.envs(env.iter().copied());
        let output = check(command.output().unwrap(), &format!("clickstay run (job {})", self.name));
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Runs the job with fault injection that must make it die.
    pub fn run_expecting_crash(&self, env: &[(&str, &str)]) {
        let output = self.command().envs(env.iter().copied()).output().unwrap();
        assert!(
            !output.status.success(),
            "the job was expected to crash:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Messages this job has committed as consumed (the sum of its partitions' next offsets).
    pub fn committed_offsets(&self) -> i64 {
        let Ok(mut client) = postgres::Client::connect(&self.db, postgres::NoTls) else { return 0 };
        client
            .query_one("SELECT coalesce(sum(next_offset), 0)::bigint FROM source_offsets WHERE job = $1", &[&self.name])
            .map_or(0, |row| row.get(0))
    }

    /// Starts the job, waits until it has committed progress beyond where it stood (so it is
    /// mid-stream, not starting up or idle), waits `extra` more and kills it with SIGKILL.
    /// False if it ended before that.
    pub fn run_and_kill(&self, extra: Duration) -> bool {
        let before = self.committed_offsets();
        let mut child = self.command().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.committed_offsets() <= before && std::time::Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(extra);
        let running = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        running
    }

    /// (partition, offset) of every event in the job's archive files.
    pub fn archived_offsets(&self) -> Vec<(i32, i64)> {
        self.archived_positions().into_iter().map(|(partition, _, offset)| (partition, offset)).collect()
    }

    /// (partition, incarnation, offset) of every event in the job's archive files.
    pub fn archived_positions(&self) -> Vec<(i32, i32, i64)> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let mut offsets = Vec::new();
        let mut pending = vec![self.own_archive()];
        while let Some(path) = pending.pop() {
            if path.is_dir() {
                pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
                for row in reader.get_row_iter(None).unwrap() {
                    let row = row.unwrap();
                    let (mut partition, mut incarnation, mut offset) = (None, None, None);
                    for (name, field) in row.get_column_iter() {
                        match (name.as_str(), field) {
                            ("partition", parquet::record::Field::Int(p)) => partition = Some(*p),
                            ("incarnation", parquet::record::Field::Int(i)) => incarnation = Some(*i),
                            ("offset", parquet::record::Field::Long(o)) => offset = Some(*o),
                            _ => {}
                        }
                    }
                    let column = |name: &str| format!("{name} column");
                    offsets.push((
                        partition.unwrap_or_else(|| panic!("{}", column("partition"))),
                        incarnation.unwrap_or_else(|| panic!("{}", column("incarnation"))),
                        offset.unwrap_or_else(|| panic!("{}", column("offset"))),
                    ));
                }
            }
        }
        offsets
    }

    /// Each partition's committed archive ranges, in its current incarnation, follow each other
    /// from 0 to its next offset.
    pub fn check_archive_ranges_contiguous(&self) {
        let mut client = postgres::Client::connect(&self.db, postgres::NoTls).unwrap();
        let next: BTreeMap<i32, (i32, i64)> = client
            .query("SELECT partition, incarnation, next_offset FROM source_offsets WHERE job = $1", &[&self.name])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        for (partition, (incarnation, next_offset)) in next {
            let ranges = client
                .query(
                    "SELECT first_offset, next_offset FROM raw_archive
                     WHERE job = $1 AND partition = $2 AND incarnation = $3 ORDER BY first_offset",
                    &[&self.name, &partition, &incarnation],
                )
                .unwrap();
            let mut expected_first = 0i64;
            for range in ranges {
                let (first, next): (i64, i64) = (range.get(0), range.get(1));
                assert_eq!(first, expected_first, "partition {partition}: archive ranges leave a gap or overlap");
                expected_first = next;
            }
            assert_eq!(
                expected_first, next_offset,
                "partition {partition}: archive stops short of the committed offset"
            );
        }
    }
}

/// Runs `command` (a launcher leading its process group) to its end, failing after 3 minutes
/// rather than hanging the suite; its log (stderr).
pub fn run_to_success(mut command: Command, what: &str) -> String {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let log = collect_stderr(&mut child);
    let ended = wait_or_kill(&mut child, Duration::from_secs(180));
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(ended && status.success(), "{what} failed ({status}, ended by itself: {ended}):\n{log}");
    log
}

/// Reads a child's piped stderr to its end on a thread of its own (so that the child never
/// blocks on a full pipe); join it for the text.
pub fn collect_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
        log
    })
}

/// The pids of a process's children (the launcher's processes of the cluster).
pub fn children(pid: u32) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace().map(|p| p.parse().unwrap()).collect()
}

/// Sends SIGKILL to `pid`.
pub fn kill(pid: u32) {
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

/// Waits for `child` to exit; after `timeout` kills it and its process group (when it leads
/// one). Whether it exited by itself.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).stderr(Stdio::null()).status();
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// `troubled` (a job that was killed, restarted, rescaled) ends with exactly the tables of
/// `calm`, an undisturbed run over the same topic: every result table, the committed offsets,
/// and an archive that holds each event once, in ranges without gaps.
pub fn assert_equals_undisturbed(troubled: &Job, calm: &Job, what: &str) {
    let (calm_tables, troubled_tables) = (dump_tables(calm), dump_tables(troubled));
    for table in ["ad_click_counts", "ad_click_counts_by_country", "top_ads", "late_clicks", "rejected_events"] {
        assert!(!calm_tables[table].is_empty() || table == "rejected_events", "{what}: {table} is empty");
        assert_eq!(troubled_tables[table], calm_tables[table], "{what}: {table} differs from the undisturbed run");
    }
    let next = |tables: &BTreeMap<String, Vec<Vec<String>>>| -> Vec<String> {
        tables["source_offsets"].iter().map(|r| r[3].clone()).collect()
    };
    assert_eq!(next(&troubled_tables), next(&calm_tables), "{what}: committed offsets differ");
    troubled.check_archive_ranges_contiguous();
    let archived = troubled.archived_offsets();
    let unique: std::collections::BTreeSet<_> = archived.iter().collect();
    assert_eq!(unique.len(), archived.len(), "{what}: an event is archived twice");
}

/// A TCP port free right now on 127.0.0.1, for a cluster process to listen on. Taken below the
/// kernel's ephemeral range (32768 and up), where the tests' own client connections (to
/// PostgreSQL, the broker) would otherwise take it between this check and the listen; ports
/// are spread by process id and handed out once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        let port = (20_000 + (std::process::id() * 97 + offset) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A fresh database on the test server (created on a throwaway runtime: these tests are sync).
pub fn fresh_database(prefix: &str) -> String {
    tokio::runtime::Runtime::new().unwrap().block_on(super::pg::fresh_database(prefix))
}

/// Writes `events` events with `clickstay gen` (JSON Lines: the wire format).
pub fn generate(dir: &Path, name: &str, events: u64, options: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut command = Command::new(BIN);
    command.args(["gen", "--events", &events.to_string(), "--format", "jsonl", "--out"]).arg(&path).args(options);
    check(command.output().unwrap(), "clickstay gen");
    path
}

/// Sends every line of `file` to the job's topic, as is.
pub fn produce(job: &Job, file: &Path) {
    check(produce_command(job, file).output().unwrap(), "clickstay produce");
}

/// `clickstay produce` of every line of `file` to the job's topic (add `--rate` to pace it).
pub fn produce_command(job: &Job, file: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("produce")
        .arg("--config")
        .arg(&job.config)
        .arg("--input")
        .arg(file)
        .env_remove("CLICKSTAY_KAFKA_BROKERS");
    command
}

/// `clickstay replay` of `events`: each result file's rows (header dropped), by table name.
pub fn replay_csv(dir: &Path, events: &Path) -> BTreeMap<String, Vec<Vec<String>>> {
    let out = dir.join("replay");
    let mut command = Command::new(BIN);
    command.arg("replay").arg("--dataflow").arg(spec()).arg("--input").arg(events).arg("--out").arg(&out);
    check(command.output().unwrap(), "clickstay replay");
    let mut tables = BTreeMap::new();
    for table in ["ad_click_counts", "ad_click_counts_by_country", "top_ads", "late_clicks", "rejected"] {
        let mut reader = csv::Reader::from_path(out.join(format!("{table}.csv"))).unwrap();
        let rows = reader.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect();
        tables.insert(table.to_string(), rows);
    }
    tables
}

/// Checks that `job`'s tables equal `replay` of `events` (`what` names the case in failures)
/// and returns them: the count tables row for row (none may be empty), late clicks on the
/// event's fields (Kafka adds topic, partition, incarnation and offset), rejected lines by line number and
/// raw text (offset + 1 is the line number of a JSON Lines file on a 1-partition topic).
pub fn assert_equals_replay(job: &Job, events: &Path, what: &str) -> BTreeMap<String, Vec<Vec<String>>> {
    let replayed = replay_csv(&job.dir.join(format!("replay-{}", job.name)), events);
    let tables = dump_tables(job);
    for table in ["ad_click_counts", "ad_click_counts_by_country", "top_ads"] {
        assert!(!tables[table].is_empty(), "{what}: {table} is empty: the test proves nothing");
        assert_eq!(tables[table], replayed[table], "{what}: {table} differs from replay");
    }
    let late_events = |rows: &Vec<Vec<String>>, skip: usize| -> Vec<Vec<String>> {
        let mut events: Vec<Vec<String>> = rows.iter().map(|r| r[skip..].to_vec()).collect();
        events.sort();
        events
    };
    assert_eq!(late_events(&tables["late_clicks"], 4), late_events(&replayed["late_clicks"], 0), "{what}: late_clicks");
    let rejected: std::collections::BTreeSet<(u64, String)> =
        tables["rejected_events"].iter().map(|r| (r[3].parse::<u64>().unwrap() + 1, r[5].clone())).collect();
    let replay_rejected: std::collections::BTreeSet<(u64, String)> =
        replayed["rejected"].iter().map(|r| (r[0].parse().unwrap(), r[2].clone())).collect();
    assert_eq!(rejected, replay_rejected, "{what}: rejected_events");
    tables
}

/// The job's result tables as text rows, in a fixed order, times as epoch milliseconds (as in
/// the replay files).
pub fn dump_tables(job: &Job) -> BTreeMap<String, Vec<Vec<String>>> {
    let ms = |column: &str| format!("(extract(epoch from {column}) * 1000)::bigint");
    let queries = [
        ("ad_click_counts", format!("SELECT {}, ad_id, clicks FROM ad_click_counts ORDER BY 1, 2", ms("window_start"))),
        (
            "ad_click_counts_by_country",
            format!(
                "SELECT {}, ad_id, country, clicks FROM ad_click_counts_by_country ORDER BY 1, 2, 3",
                ms("window_start")
            ),
        ),
        (
            "top_ads",
            format!(
                "SELECT {}, {}, rank, ad_id, clicks FROM top_ads ORDER BY 1, 3",
                ms("window_start"),
                ms("window_end")
            ),
        ),
        ("late_clicks", "SELECT * FROM late_clicks ORDER BY partition, incarnation, \"offset\"".to_string()),
        ("rejected_events", "SELECT * FROM rejected_events ORDER BY partition, incarnation, \"offset\"".to_string()),
        (
            "source_offsets",
            "SELECT job, topic, partition, next_offset FROM source_offsets ORDER BY partition".to_string(),
        ),
    ];
    let mut client = job.connect();
    let mut tables = BTreeMap::new();
    for (table, query) in queries {
        let mut rows = Vec::new();
        for message in client.simple_query(&query).unwrap() {
            if let postgres::SimpleQueryMessage::Row(row) = message {
                rows.push((0..row.len()).map(|i| row.get(i).unwrap_or("").to_string()).collect());
            }
        }
        tables.insert(table.to_string(), rows);
    }
    tables
}
