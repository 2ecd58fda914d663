//! `/metrics` of the streaming job (`clickstay run --metrics-listen`), scraped while it runs
//! and parsed with a real Prometheus parser: the counters move as the job reads, they add up
//! and agree with the tables, the consumer lag falls to 0 once the topic is drained, and the
//! checkpoint metrics show commits. (`rooms serve`'s metrics are tested in `rooms_view.rs`.)

#[path = "common/broker.rs"]
mod broker;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/prometheus.rs"]
mod prometheus;
#[path = "common/scripts.rs"]
mod scripts;
#[path = "common/stream.rs"]
mod stream;

use std::time::{Duration, Instant};

use prometheus::{label_values, scrape_blocking, value};
use prometheus_parse::Scrape;
use stream::{Job, free_port, fresh_database, generate, produce};

/// Scrapes `base` until `done` holds (at most a minute); the last scrape.
fn scrape_until(base: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scrape = scrape_blocking(base);
        if let Some(scrape) = &scrape
            && done(scrape)
        {
            return scrape.clone();
        }
        let clicks = |scrape: &Scrape| {
            let shown = scrape.samples.iter().filter(|s| s.metric.starts_with("clickstay_clicks_events"));
            let lags = scrape.samples.iter().filter(|s| s.metric == "clickstay_kafka_consumer_lag");
            format!("{:?}", shown.chain(lags).map(|s| (&s.metric, &s.labels, &s.value)).collect::<Vec<_>>())
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in a minute; last scrape: {:?}",
            scrape.map(|s| clicks(&s))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read(scrape: &Scrape) -> f64 {
    value(scrape, "clickstay_clicks_events_read_total", &[]).unwrap_or(0.0)
}

fn count(job: &Job, table: &str) -> f64 {
    job.connect().query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get::<_, i64>(0) as f64
}

#[test]
fn the_streaming_jobs_metrics_move_with_what_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let options = ["--rate", "100", "--late-fraction", "0.02", "--malformed-fraction", "0.01"];
    let first = generate(dir.path(), "first.jsonl", 20_000, &options);
    let second = generate(dir.path(), "second.jsonl", 10_000, &[&options[..], &["--seed", "7"]].concat());
    let job = Job::new(dir.path(), "metered", 4, &fresh_database("stream_metrics"));
    produce(&job, &first);
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let mut child = job.command_draining_after(10).args(["--metrics-listen", &listen]).spawn().unwrap();

    let lags_zero = |s: &Scrape| {
        let lags = prometheus::samples(s, "clickstay_kafka_consumer_lag", &[]);
        lags.len() == 4 && value(s, "clickstay_kafka_consumer_lag", &[]) == Some(0.0)
    };
    let drained = scrape_until(&base, "the first 20,000 read, lag 0", |s| read(s) == 20_000.0 && lags_zero(s));
    produce(&job, &second);
    let scrape = scrape_until(&base, "30,000 read, lag 0, counts settled", |s| {
        let settled = ["accepted", "late", "rejected"]
            .iter()
            .map(|kind| value(s, &format!("clickstay_clicks_events_{kind}_total"), &[]).unwrap_or(0.0))
            .sum::<f64>();
        read(s) == 30_000.0 && lags_zero(s) && settled == 30_000.0
    });
    assert!(read(&drained) < read(&scrape));

    // Per partition and per worker, adding up to the whole.
    assert_eq!(label_values(&scrape, "clickstay_clicks_events_read_total", "partition"), ["0", "1", "2", "3"]);
    assert_eq!(label_values(&scrape, "clickstay_kafka_consumer_lag", "partition"), ["0", "1", "2", "3"]);
    assert_eq!(label_values(&scrape, "clickstay_clicks_worker_records_total", "worker"), ["0", "1"]);
    assert_eq!(value(&scrape, "clickstay_clicks_worker_records_total", &[]), Some(30_000.0));
    // Late and rejected are what the job committed to its tables.
    let committed = scrape_until(&base, "late and rejected committed", |s| {
        value(s, "clickstay_clicks_events_late_total", &[]) == Some(count(&job, "late_clicks"))
            && value(s, "clickstay_clicks_events_rejected_total", &[]) == Some(count(&job, "rejected_events"))
    });
    assert!(value(&committed, "clickstay_clicks_events_late_total", &[]).unwrap() > 0.0);
    assert!(value(&committed, "clickstay_clicks_events_rejected_total", &[]).unwrap() > 0.0);

    // The watermark is the events' time (2020s), not the clock's, and the lag is their age.
    let watermark = value(&scrape, "clickstay_clicks_watermark_seconds", &[]).unwrap();
    let lag = value(&scrape, "clickstay_clicks_watermark_lag_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(watermark > 1.5e9 && (watermark + lag - now).abs() < 60.0, "watermark {watermark}, lag {lag}");
    // Checkpoints committed, timed, recent.
    let checkpoints = value(&scrape, "clickstay_checkpoints_total", &[]).unwrap();
    assert!(checkpoints >= 2.0, "{checkpoints} checkpoints");
    assert!(value(&scrape, "clickstay_postgres_commit_seconds", &[]).unwrap() >= checkpoints);
    assert!(value(&scrape, "clickstay_checkpoint_duration_seconds", &[]).unwrap() >= checkpoints);
    assert!(value(&scrape, "clickstay_checkpoint_age_seconds", &[]).unwrap() < 30.0);
    for gauge in ["clickstay_checkpoint_rows", "clickstay_checkpoint_bytes", "clickstay_clicks_buffered_bytes"] {
        assert!(value(&scrape, gauge, &[]).is_some(), "{gauge} missing");
    }
    assert!(value(&scrape, "clickstay_clicks_open_panes", &[]).is_some());
    assert!(scrape.docs.contains_key("clickstay_clicks_events_read_total"), "no HELP line");
    // The scrapes themselves are timed by route.
    assert!(value(&scrape, "clickstay_http_request_duration_seconds", &[("route", "/metrics")]).unwrap() > 0.0);

    assert!(child.wait().unwrap().success());
}
