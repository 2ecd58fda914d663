//! Streaming job throughput, memory and latency: `cargo bench --bench stream`.
//!
//! Prints figures only: speed is not asserted.
//!
//! 1. Broker and Postgres: `CLICKSTAY_KAFKA_BROKERS` / `CLICKSTAY_TEST_PG` (a base URL
//!    `postgres://postgres@127.0.0.1:PORT/postgres`) when set, else started here with
//!    `scripts/broker.sh` / `scripts/postgres.sh` and stopped at the end.
//! 2. Throughput: `CLICKSTAY_BENCH_STREAM_EVENTS` events (default 10,000,000) are produced
//!    unpaced to a fresh 8-partition topic; then a bare consumer (`bare_consume` of `tests/common/broker.rs`) reads
//!    them all (the ceiling), then `clickstay run -w 2 --exit-when-idle 2` aggregates them. The
//!    job's time is from its start until `source_offsets` (polled every 50 ms) has committed
//!    every event, so the 2 s idle wait before it exits is not counted. Peak RSS is the job's
//!    `ru_maxrss` from `wait4`; the raw archive's size is every file under its `--archive`.
//!    CPU seconds from the job's start to its exit (its idle wait included): the job's from
//!    `wait4`, PostgreSQL's (postmaster and backends) and the broker's from `/proc`, when their
//!    directories are known (started here, or `CLICKSTAY_PG_DIR` / `CLICKSTAY_BROKER_DIR`).
//!    Then a digest of every result table (rows and md5, topic names left out): two builds
//!    with equal outputs on the same events print equal digests. `CLICKSTAY_BENCH_BIN` runs
//!    another build of `clickstay`, to compare two builds in one sitting.
//! 3. Latency: the spec with 1 s panes, 200 ms out-of-orderness, 1 s lateness and 5 s/1 s
//!    top-N windows; the job runs first, then `clickstay produce --rate R` sends
//!    `CLICKSTAY_BENCH_STREAM_SECONDS` (default 20) seconds of events in real time at
//!    `CLICKSTAY_BENCH_STREAM_RATE` (default 50,000) events/s, event times starting now. Every
//!    20 ms `ad_click_counts` is polled for new `window_start`s; a pane's latency is the
//!    wall-clock time it was first seen minus (pane end + max_out_of_orderness), i.e. what the
//!    job adds beyond the watermark delay (checkpoint interval, 1 s by default, included).
//!
//! 4. Metrics cost, only with `CLICKSTAY_BENCH_STREAM_METRICS_COST=1` (instead of 2 and 3): the
//!    throughput run four times, interleaved, without a metrics listener (the recorder is not
//!    installed: the metrics calls do nothing) and with `--metrics-listen` scraped once a second.
//!
//! With the defaults a run takes about 1.5 minutes on the 2-core development machine (plus
//! starting the broker and Postgres): producing 10M ~12 s, bare consumer ~5 s, job ~15 s,
//! latency run ~30 s. Smaller sizes (e.g. `CLICKSTAY_BENCH_STREAM_EVENTS=2000000`) work too.

#[path = "../tests/common/broker.rs"]
mod broker;
#[path = "common/rusage.rs"]
mod rusage;
#[path = "../tests/common/scripts.rs"]
mod scripts;
#[path = "common/services.rs"]
mod services;

use std::collections::BTreeMap;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clickstay::config::KafkaConfig;
use postgres::Client;
use services::{
    Services, WORKERS, committed_offsets, connect, env_u64, fresh_name, kill, log_tail, now_ms, percentile,
    write_config,
};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const PARTITIONS: i32 = 8;

fn main() -> Result<()> {
    let events = env_u64("CLICKSTAY_BENCH_STREAM_EVENTS", 10_000_000)?;
    let rate = env_u64("CLICKSTAY_BENCH_STREAM_RATE", 50_000)?;
    let seconds = env_u64("CLICKSTAY_BENCH_STREAM_SECONDS", 20)?;
    ensure!(events > 0 && rate > 0 && seconds > 0, "event count, rate and seconds must be positive");

    let services = Services::start()?;
    eprintln!("broker {}, postgres {}", services.brokers, services.pg_base);
    let work = tempfile::tempdir().context("cannot create a temporary directory")?;
    if std::env::var("CLICKSTAY_BENCH_STREAM_METRICS_COST").is_ok_and(|v| v == "1") {
        return metrics_cost(&services, work.path(), events);
    }

    let throughput = throughput(&services, work.path(), events, false)?;
    let latency = latency(&services, work.path(), rate, seconds)?;

    println!();
    println!(
        "streaming job benchmark (-w {WORKERS}, {PARTITIONS} partitions; shared, noisy machine: figures are indicative)"
    );
    println!("{:<44} {:>14}", "figure", "value");
    println!("{:<44} {:>14}", "events (throughput run)", events);
    println!("{:<44} {:>14.0}", "produce (unpaced) messages/s", throughput.produce_rate);
    println!("{:<44} {:>14.0}", "bare consumer messages/s", throughput.bare_rate);
    println!("{:<44} {:>14.0}", "job events/s (until all committed)", throughput.job_rate);
    println!("{:<44} {:>14.2}", "ratio job / bare", throughput.job_rate / throughput.bare_rate);
    println!("{:<44} {:>14.2}", "job seconds until all committed", throughput.job_seconds);
    println!("{:<44} {:>14.1}", "job peak RSS MiB", throughput.peak_rss_kib as f64 / 1024.0);
    println!("{:<44} {:>14.1}", "raw archive MB", throughput.archive_bytes as f64 / 1e6);
    println!(
        "{:<44} {:>14.1}",
        "raw archive MB per 10M events",
        throughput.archive_bytes as f64 / 1e6 * 1e7 / events as f64
    );
    let per_10m = |cpu: f64| cpu * 1e7 / events as f64;
    let shown = |cpu: Option<f64>| cpu.map_or("unknown".to_string(), |c| format!("{:.1}", per_10m(c)));
    println!("{:<44} {:>14.1}", "CPU s per 10M events: job", per_10m(throughput.job_cpu));
    println!("{:<44} {:>14}", "CPU s per 10M events: PostgreSQL", shown(throughput.postgres_cpu));
    println!("{:<44} {:>14}", "CPU s per 10M events: broker", shown(throughput.broker_cpu));
    println!("{:<44} {:>14}", "latency run: events/s x seconds", format!("{rate} x {seconds}"));
    println!("{:<44} {:>14}", "panes seen", latency.panes);
    println!("{:<44} {:>14.0}", "pane latency beyond watermark p50 ms", latency.beyond_p50);
    println!("{:<44} {:>14.0}", "pane latency beyond watermark p99 ms", latency.beyond_p99);
    println!("{:<44} {:>14.0}", "first seen - pane end p50 ms", latency.plain_p50);
    println!("{:<44} {:>14.0}", "first seen - pane end p99 ms", latency.plain_p99);
    println!("results digest (table rows md5): {}", throughput.digest);
    drop(services);
    Ok(())
}

struct Throughput {
    produce_rate: f64,
    bare_rate: f64,
    job_rate: f64,
    job_seconds: f64,
    peak_rss_kib: i64,
    /// The bytes of the job's raw archive (every file under it) once it has exited.
    archive_bytes: u64,
    /// Each result table's rows and an md5 of them (see [`results_digest`]).
    digest: String,
    /// CPU seconds from the job's start to its exit (including its 2 s idle wait): the job's
    /// own, PostgreSQL's (server and backends) and the broker's (`None`: its directory is unknown).
    job_cpu: f64,
    postgres_cpu: Option<f64>,
    broker_cpu: Option<f64>,
}

/// The job's events/s without metrics and with them scraped once a second, twice each, interleaved.
fn metrics_cost(services: &Services, work: &Path, events: u64) -> Result<()> {
    let mut rates: BTreeMap<bool, Vec<f64>> = BTreeMap::new();
    for scraped in [false, true, false, true] {
        let rate = throughput(services, work, events, scraped)?.job_rate;
        eprintln!("metrics {}: {rate:.0} events/s", if scraped { "scraped" } else { "off" });
        rates.entry(scraped).or_default().push(rate);
    }
    let mean = |scraped: bool| rates[&scraped].iter().sum::<f64>() / rates[&scraped].len() as f64;
    println!();
    println!("metrics cost ({events} events, -w {WORKERS}, {PARTITIONS} partitions; two runs each, interleaved)");
    for scraped in [false, true] {
        let runs: Vec<String> = rates[&scraped].iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "{:<36} {:>12.0} events/s  (runs: {})",
            if scraped { "--metrics-listen, scraped 1/s" } else { "no metrics listener" },
            mean(scraped),
            runs.join(", ")
        );
    }
    println!("{:<36} {:>12.3}", "ratio scraped / off", mean(true) / mean(false));
    Ok(())
}

/// Scrapes `GET http://{listen}/metrics` once a second (plain HTTP/1.0 over a socket) until
/// `stop` is set; the number of scrapes that answered.
fn scrape_every_second(
    listen: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut answered = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut stream) = std::net::TcpStream::connect(&listen) {
                let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
                let mut text = String::new();
                if stream.read_to_string(&mut text).is_ok() && text.split_whitespace().nth(1) == Some("200") {
                    answered += 1;
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        answered
    })
}

fn throughput(services: &Services, work: &Path, events: u64, scraped: bool) -> Result<Throughput> {
    let name = fresh_name("bench_stream_tp");
    let kafka = KafkaConfig { brokers: services.brokers.clone(), topic: name.clone(), partitions: PARTITIONS };
    let db = services.create_database(&name)?;
    let config = write_config(work, &name, &kafka, &db)?;
    clickstay::sources::kafka::ensure_topic(&kafka)?;

    eprintln!("producing {events} events to {name}");
    let started = Instant::now();
    let status = services
        .command()
        .args(["produce", "--config"])
        .arg(&config)
        .args(["--events", &events.to_string(), "--rate", "0", "--seed", "1"])
        .status()
        .context("cannot run clickstay produce")?;
    ensure!(status.success(), "clickstay produce failed: {status}");
    let produce_rate = events as f64 / started.elapsed().as_secs_f64();

    eprintln!("bare consumer");
    let (messages, bare_seconds) = broker::bare_consume(&kafka, events, Duration::from_secs(1800))?;
    let bare_rate = messages as f64 / bare_seconds;
    eprintln!("bare consumer: {messages} messages in {bare_seconds:.2} s ({bare_rate:.0}/s)");

    let spec = Path::new(MANIFEST_DIR).join("dataflows/ad_clicks.toml");
    let archive = work.join(format!("{name}-archive"));
    let log = work.join(format!("{name}-job.log"));
    let mut pg = connect(&db)?;
    eprintln!("job (log in {})", log.display());
    let started = Instant::now();
    let listen = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    let mut extra = vec!["--exit-when-idle", "2"];
    if scraped {
        extra.extend(["--metrics-listen", &listen]);
    }
    let cpu_before = services.cpu();
    let child = services.spawn_job(&spec, &config, &archive, &log, &extra)?;
    let stop_scraping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = scraped.then(|| scrape_every_second(listen.clone(), stop_scraping.clone()));
    let pid = child.id();
    let mut committed_at = None;
    let mut last_progress = Instant::now();
    let mut committed = 0;
    let exited = loop {
        if committed_at.is_none() {
            let now = committed_offsets(&mut pg);
            if now >= events {
                committed_at = Some(started.elapsed());
                eprintln!("job committed {now} events in {:.2} s", started.elapsed().as_secs_f64());
            } else if now != committed {
                committed = now;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > Duration::from_secs(300) {
                kill(child)?;
                bail!(
                    "the job made no progress for 300 s at {committed} of {events}; its log ends:\n{}",
                    log_tail(&log)
                );
            }
        }
        if let Some(exited) = rusage::wait4(pid, committed_at.is_some())? {
            break exited;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let exited_at = started.elapsed();
    let cpu_after = services.cpu();
    let rusage::Exited { status, peak_rss_kib, cpu_seconds: job_cpu } = exited;
    let used = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
    stop_scraping.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(scraper) = scraper {
        let answered = scraper.join().expect("the scraper does not panic");
        ensure!(answered > 0, "no scrape of {listen} answered");
    }
    ensure!(status == 0, "clickstay run exited with wait status {status}; its log ends:\n{}", log_tail(&log));
    let job_seconds = match committed_at {
        Some(at) => at.as_secs_f64(),
        None => {
            // The last commit and the exit can both fall between two polls.
            let now = committed_offsets(&mut pg);
            ensure!(
                now >= events,
                "clickstay run exited with {now} of {events} events committed; its log ends:\n{}",
                log_tail(&log)
            );
            eprintln!("job committed the last events and exited between two polls: timing to its exit");
            exited_at.as_secs_f64()
        }
    };
    let digest = results_digest(&mut pg)?;
    let archive_bytes = bytes_under(&archive)?;
    eprintln!("raw archive: {archive_bytes} bytes for {events} events");
    Ok(Throughput {
        produce_rate,
        bare_rate,
        job_rate: events as f64 / job_seconds,
        job_seconds,
        peak_rss_kib,
        archive_bytes,
        digest,
        job_cpu,
        postgres_cpu: used(cpu_before.postgres, cpu_after.postgres),
        broker_cpu: used(cpu_before.broker, cpu_after.broker),
    })
}

/// Each result table (schema `ad_clicks`) as `table rows md5`, the md5 over its rows as JSON
/// without the topic's name (which is fresh in every run), in order: equal outputs of two
/// builds on the same events give equal digests.
fn results_digest(pg: &mut Client) -> Result<String> {
    let tables = pg.query(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'ad_clicks' ORDER BY 1",
        &[],
    )?;
    let mut digest = Vec::new();
    for table in tables {
        let table: String = table.get(0);
        let row = pg.query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(r, E'\\n' ORDER BY r)), '') \
                 FROM (SELECT (to_jsonb(t) - 'topic')::text AS r FROM ad_clicks.\"{table}\" t) rows"
            ),
            &[],
        )?;
        digest.push(format!("{table} {} {}", row.get::<_, i64>(0), row.get::<_, String>(1)));
    }
    Ok(digest.join("; "))
}

/// The bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        bytes += if kind.is_dir() { bytes_under(&entry.path())? } else { entry.metadata()?.len() };
    }
    Ok(bytes)
}

struct Latency {
    panes: usize,
    beyond_p50: f64,
    beyond_p99: f64,
    plain_p50: f64,
    plain_p99: f64,
}

/// The spec's `[time]` settings and top-N window, and their short replacements.
const SHORT_PANES: [(&str, &str); 4] = [
    ("pane = \"60s\"", "pane = \"1s\""),
    ("max_out_of_orderness = \"5s\"", "max_out_of_orderness = \"200ms\""),
    ("allowed_lateness = \"60s\"", "allowed_lateness = \"1s\""),
    ("size = \"300s\", slide = \"60s\"", "size = \"5s\", slide = \"1s\""),
];
const PANE_MS: f64 = 1000.0;
const OUT_OF_ORDERNESS_MS: f64 = 200.0;

fn latency(services: &Services, work: &Path, rate: u64, seconds: u64) -> Result<Latency> {
    let name = fresh_name("bench_stream_lat");
    let kafka = KafkaConfig { brokers: services.brokers.clone(), topic: name.clone(), partitions: PARTITIONS };
    let db = services.create_database(&name)?;
    let config = write_config(work, &name, &kafka, &db)?;
    clickstay::sources::kafka::ensure_topic(&kafka)?;

    let spec_path = Path::new(MANIFEST_DIR).join("dataflows/ad_clicks.toml");
    let mut spec =
        std::fs::read_to_string(&spec_path).with_context(|| format!("cannot read {}", spec_path.display()))?;
    for (from, to) in SHORT_PANES {
        ensure!(spec.contains(from), "{} has no `{from}`", spec_path.display());
        spec = spec.replacen(from, to, 1);
    }
    let short_spec = work.join(format!("{name}.toml"));
    std::fs::write(&short_spec, spec).with_context(|| format!("cannot write {}", short_spec.display()))?;

    let archive = work.join(format!("{name}-archive"));
    let log = work.join(format!("{name}-job.log"));
    eprintln!("latency job (log in {})", log.display());
    let mut job = services.spawn_job(&short_spec, &config, &archive, &log, &[])?;
    let result = measure_latency(services, &mut job, &config, &db, rate, seconds, &log);
    kill(job)?;
    result
}

fn measure_latency(
    services: &Services,
    job: &mut Child,
    config: &Path,
    db: &str,
    rate: u64,
    seconds: u64,
    log: &Path,
) -> Result<Latency> {
    let mut pg = connect(db)?;
    wait_until_ready(job, &mut pg, log)?;

    let events = rate * seconds;
    let start_ms = now_ms() as u64;
    eprintln!("producing {events} events at {rate}/s in real time");
    let mut produce = services
        .command()
        .args(["produce", "--config"])
        .arg(config)
        .args(["--events", &events.to_string(), "--rate", &rate.to_string(), "--seed", "2"])
        .args(["--start-ms", &start_ms.to_string(), "--max-disorder-ms", "0", "--late-fraction", "0"])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot run clickstay produce")?;

    // window_start (ms) -> wall-clock ms when first seen.
    let mut seen: BTreeMap<i64, f64> = BTreeMap::new();
    let mut produced_at = None;
    let query = pg.prepare(
        "SELECT DISTINCT (extract(epoch from window_start) * 1000)::bigint FROM ad_click_counts \
         WHERE window_start > to_timestamp($1::float8 / 1000)",
    )?;
    loop {
        let after = seen.keys().next_back().copied().unwrap_or(0) as f64;
        let rows = pg.query(&query, &[&after])?;
        let at = now_ms();
        for row in rows {
            seen.entry(row.get::<_, i64>(0)).or_insert(at);
        }
        if produced_at.is_none()
            && let Some(status) = produce.try_wait()?
        {
            ensure!(status.success(), "clickstay produce failed: {status}");
            eprintln!("produce done after {:.2} s", (now_ms() - start_ms as f64) / 1000.0);
            produced_at = Some(Instant::now());
        }
        // After the last event, the panes up to its watermark close within a checkpoint or two.
        if produced_at.is_some_and(|at| at.elapsed() > Duration::from_secs(5)) {
            break;
        }
        if let Some(status) = job.try_wait()? {
            bail!("the latency job exited early ({status}); its log ends:\n{}", log_tail(log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(!seen.is_empty(), "no pane reached ad_click_counts; its log ends:\n{}", log_tail(log));
    let mut plain: Vec<f64> = seen.iter().map(|(&start, &at)| at - (start as f64 + PANE_MS)).collect();
    let mut beyond: Vec<f64> = plain.iter().map(|ms| ms - OUT_OF_ORDERNESS_MS).collect();
    plain.sort_by(f64::total_cmp);
    beyond.sort_by(f64::total_cmp);
    eprintln!("pane latencies beyond the watermark delay (ms, in pane order):");
    let in_order: Vec<String> = seen
        .iter()
        .map(|(&start, &at)| format!("{:.0}", at - (start as f64 + PANE_MS + OUT_OF_ORDERNESS_MS)))
        .collect();
    eprintln!("  {}", in_order.join(" "));
    Ok(Latency {
        panes: seen.len(),
        beyond_p50: percentile(&beyond, 50.0),
        beyond_p99: percentile(&beyond, 99.0),
        plain_p50: percentile(&plain, 50.0),
        plain_p99: percentile(&plain, 99.0),
    })
}

/// Waits until the job is ready: its tables are there (it creates them at start-up), plus a
/// little slack.
fn wait_until_ready(job: &mut Child, pg: &mut Client, log: &Path) -> Result<()> {
    let waiting = Instant::now();
    loop {
        if let Some(status) = job.try_wait()? {
            bail!("the latency job exited early ({status}); its log ends:\n{}", log_tail(log));
        }
        let ready: bool = pg.query_one("SELECT to_regclass('ad_click_counts') IS NOT NULL", &[])?.get(0);
        if ready {
            break;
        }
        ensure!(waiting.elapsed() < Duration::from_secs(60), "the latency job did not create its tables in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}
