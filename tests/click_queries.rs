//! Questions to the running click job (`clickstay run --listen`), against the real broker and
//! PostgreSQL: every answer equals a brute-force count over the produced events whose panes end
//! at or before the answer's `as_of`, while the job ingests, on one process and on two
//! processes of two threads; answers of one request agree with each other; the stream sends a
//! new answer after a pane completes and after a late correction; bad parameters get 400.

#[path = "common/broker.rs"]
mod broker;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;
#[path = "common/stream.rs"]
mod stream;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use stream::{BIN, Job, free_port, generate, produce};

const PANE: u64 = 60_000;

/// A produced event: (ad_id, click_ts, country).
type Event = (u64, u64, String);

fn read_events(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (v["ad_id"].as_u64().unwrap(), v["click_ts"].as_u64().unwrap(), v["country"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Clicks of `ad` (in `country`) in panes of `from..to` that end at or before `as_of`.
fn oracle_count(events: &[Event], ad: u64, country: Option<&str>, from: u64, to: u64, as_of: u64) -> u64 {
    events
        .iter()
        .filter(|(a, ts, c)| {
            let pane = ts - ts % PANE;
            *a == ad && pane >= from && pane < to && pane + PANE <= as_of && country.is_none_or(|x| x == c)
        })
        .count() as u64
}

/// The `n` most clicked ads (clicks descending, ad ascending) in panes of `from..to`.
fn oracle_popular(events: &[Event], country: Option<&str>, n: usize, from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut clicks: BTreeMap<u64, u64> = BTreeMap::new();
    for (ad, ts, c) in events {
        let pane = ts - ts % PANE;
        if pane >= from && pane < to && country.is_none_or(|x| x == c) {
            *clicks.entry(*ad).or_default() += 1;
        }
    }
    let mut ranked: Vec<(u64, u64)> = clicks.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(n);
    ranked
}

/// How the job runs.
#[derive(Clone, Copy)]
enum Cluster {
    OneProcess,
    TwoProcesses,
}

struct Running {
    child: Child,
    url: String,
}

impl Drop for Running {
    /// Kills the job's whole process group: `launch` and the processes it started.
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child's own process group (see `start`).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/ad_clicks.toml")
}

/// Starts `clickstay run --listen` for `job` (no drain: it runs until dropped).
fn start(job: &Job, cluster: Cluster) -> Running {
    let port = free_port();
    let mut run_args: Vec<String> = vec!["run".into(), "--dataflow".into(), spec().display().to_string()];
    run_args.extend(["--job".into(), job.name.clone(), "--checkpoint-interval".into(), "0.2".into()]);
    run_args.extend(["--archive".into(), job.archive.display().to_string()]);
    run_args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
    let mut command = Command::new(BIN);
    command.env_remove("CLICKSTAY_KAFKA_BROKERS").env_remove("CLICKSTAY_CLICKS_DB");
    match cluster {
        Cluster::OneProcess => {
            command.args(&run_args).args(["-w", "2", "--config"]).arg(&job.config);
        }
        Cluster::TwoProcesses => {
            let config = job.dir.join(format!("{}-cluster.toml", job.name));
            let text = std::fs::read_to_string(&job.config).unwrap();
            let (a, b) = (free_port(), free_port());
            std::fs::write(
                &config,
                format!("{text}\n[cluster]\nprocesses = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\nthreads = 2\n"),
            )
            .unwrap();
            command.arg("launch").arg("--config").arg(&config).arg("--").args(&run_args);
        }
    }
    let log = std::fs::File::create(std::env::temp_dir().join(format!("click_queries_{}.log", job.name))).unwrap();
    let child = command.stdout(Stdio::null()).stderr(log).process_group(0).spawn().unwrap();
    Running { child, url: format!("http://127.0.0.1:{port}") }
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until the job answers and its watermark is at least `at_least`.
async fn wait_for_as_of(http: &reqwest::Client, url: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = http.get(format!("{url}/v1/ads/popular_ads?count=1&window=1")).send().await
            && let Ok(body) = response.json::<Value>().await
            && let Some(as_of) = body["as_of"].as_u64()
            && as_of >= at_least
        {
            return as_of;
        }
        assert!(Instant::now() < deadline, "the job did not reach watermark {at_least}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ranked(answer: &Value) -> Vec<(u64, u64)> {
    answer["ads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["ad_id"].as_u64().unwrap(), a["clicks"].as_u64().unwrap()))
        .collect()
}

/// 60,000 events over 40 ads at 200 events/s of event time: in order up to 2 s (less than the
/// spec's 5 s out-of-orderness), none late, none malformed, so every event with a pane before
/// the watermark has been read when the watermark is there.
fn clean_events(dir: &Path, name: &str, seed: u64, start_ms: Option<u64>) -> PathBuf {
    let seed = seed.to_string();
    let mut options = vec!["--rate", "200", "--ads", "40", "--late-fraction", "0", "--malformed-fraction", "0"];
    options.extend(["--max-disorder-ms", "2000", "--seed", &seed]);
    let start = start_ms.map(|ms| ms.to_string());
    if let Some(start) = &start {
        options.extend(["--start-ms", start]);
    }
    generate(dir, name, 60_000, &options)
}

/// Random questions while the second half of the events is produced, each checked against
/// the oracle at its own `as_of`.
async fn answers_equal_the_oracle_while_ingesting(cluster: Cluster, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = pg::fresh_database(name).await;
    let job = Job::new(dir.path(), name, 4, &db);
    let first = clean_events(dir.path(), "first.jsonl", 7, None);
    let events_first = read_events(&first);
    let start_ms = events_first.iter().map(|e| e.1).max().unwrap() + 1;
    let second = clean_events(dir.path(), "second.jsonl", 8, Some(start_ms + 3000));
    let mut events = events_first;
    events.extend(read_events(&second));
    produce(&job, &first);
    let running = start(&job, cluster);
    let http = reqwest::Client::new();
    let first_pane = events.iter().map(|e| e.1 - e.1 % PANE).min().unwrap();
    wait_for_as_of(&http, &running.url, first_pane + 2 * PANE).await;
    let config = job.config.clone();
    let second_path = second.clone();
    let producing = std::thread::spawn(move || {
        let mut command = Command::new(BIN);
        command.arg("produce").arg("--config").arg(&config).arg("--input").arg(&second_path);
        command.args(["--rate", "20000"]).env_remove("CLICKSTAY_KAFKA_BROKERS");
        assert!(command.status().unwrap().success());
    });
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let countries = ["US", "DE", "KR", "JP", "GB", "FR"];
    let mut asked = 0;
    let mut distinct_as_of = std::collections::BTreeSet::new();
    while asked < 60 || !producing.is_finished() {
        let ad = rng.random_range(0..45u64);
        let from = first_pane + PANE * rng.random_range(0..40u64);
        let to = from + PANE * rng.random_range(1..30u64);
        let country = (rng.random_range(0..3) == 0).then(|| countries[rng.random_range(0..countries.len())]);
        let filter = country.map(|c| format!("&country={c}")).unwrap_or_default();
        let (status, body) =
            get(&http, &format!("{}/v1/ads/{ad}/aggregated_count?from={from}&to={to}{filter}", running.url)).await;
        assert_eq!(status, 200, "{body}");
        let as_of = body["as_of"].as_u64().unwrap();
        distinct_as_of.insert(as_of);
        assert_eq!(
            body["count"].as_u64().unwrap(),
            oracle_count(&events, ad, country, from, to, as_of),
            "ad {ad} {from}..{to} {country:?} at {as_of}: {body}"
        );
        let n = rng.random_range(1..15usize);
        let window = rng.random_range(1..20u64);
        let (status, body) =
            get(&http, &format!("{}/v1/ads/popular_ads?count={n}&window={window}{filter}", running.url)).await;
        assert_eq!(status, 200, "{body}");
        let (start, end) = (body["window_start"].as_u64().unwrap(), body["window_end"].as_u64().unwrap());
        assert_eq!((end, end - start), (body["as_of"].as_u64().unwrap(), window * PANE), "{body}");
        assert_eq!(ranked(&body), oracle_popular(&events, country, n, start, end), "{body}");
        asked += 1;
    }
    producing.join().unwrap();
    assert!(distinct_as_of.len() >= 2, "the answers came at one watermark only: {distinct_as_of:?}");

    // One request, one as_of: the by-country counts of an ad add up to its count, and the
    // popular list's clicks are the ads' counts.
    let as_of = wait_for_as_of(&http, &running.url, 0).await;
    let (from, to) = (as_of - 20 * PANE, as_of);
    let popular = json!({"query": "popular_ads", "count": 5, "window": 20});
    let (status, body) = post(&http, &running.url, &json!([popular])).await;
    assert_eq!(status, 200, "{body}");
    let top = ranked(&body[0]);
    let mut queries = vec![popular];
    for (ad, _) in &top {
        queries.push(json!({"query": "aggregated_count", "ad_id": ad, "from": from, "to": to}));
        for country in event_countries(&events, *ad) {
            queries.push(json!({"query": "aggregated_count", "ad_id": ad, "from": from, "to": to, "country": country}));
        }
    }
    let (status, answers) = post(&http, &running.url, &Value::Array(queries.clone())).await;
    assert_eq!(status, 200, "{answers}");
    let answers = answers.as_array().unwrap();
    let as_ofs: std::collections::BTreeSet<u64> = answers.iter().map(|a| a["as_of"].as_u64().unwrap()).collect();
    assert_eq!(as_ofs.len(), 1, "one request, one as_of: {as_ofs:?}");
    let mut total: BTreeMap<u64, u64> = BTreeMap::new();
    let mut by_country: BTreeMap<u64, u64> = BTreeMap::new();
    for (query, answer) in queries.iter().zip(answers).skip(1) {
        let ad = query["ad_id"].as_u64().unwrap();
        let count = answer["count"].as_u64().unwrap();
        if query.get("country").is_some() {
            *by_country.entry(ad).or_default() += count;
        } else {
            total.insert(ad, count);
        }
    }
    assert_eq!(by_country, total, "by-country counts add up to the ads' counts");
    if answers[0]["window_end"] == json!(to) {
        for (ad, clicks) in ranked(&answers[0]) {
            if let Some(count) = total.get(&ad) {
                assert_eq!(*count, clicks, "ad {ad}: popular list vs its count");
            }
        }
    }

    // The job's tables hold the same counts once it has committed (the topic is quiet now).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (client, connection) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("SET search_path TO \"{}\"", job.name)).await.unwrap();
    for (ad, _) in top {
        let (status, body) =
            get(&http, &format!("{}/v1/ads/{ad}/aggregated_count?from={from}&to={to}", running.url)).await;
        assert_eq!(status, 200);
        let as_of = body["as_of"].as_u64().unwrap() as i64;
        let sql: i64 = client
            .query_one(
                "SELECT coalesce(sum(clicks), 0)::bigint FROM ad_click_counts
                  WHERE ad_id = $1::bigint::numeric AND window_start >= to_timestamp($2::bigint / 1000.0)
                    AND window_start < to_timestamp(least($3::bigint, $4::bigint) / 1000.0)",
                &[&(ad as i64), &(from as i64), &(to as i64), &as_of],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(body["count"].as_i64().unwrap(), sql, "ad {ad}: the answer vs ad_click_counts at {as_of}");
    }
}

fn event_countries(events: &[Event], ad: u64) -> std::collections::BTreeSet<String> {
    events.iter().filter(|e| e.0 == ad).map(|e| e.2.clone()).collect()
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = http.post(format!("{url}/v1/ads/query")).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_a_brute_force_count_on_one_process() {
    answers_equal_the_oracle_while_ingesting(Cluster::OneProcess, "queries_one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_a_brute_force_count_on_two_processes_of_two_threads() {
    answers_equal_the_oracle_while_ingesting(Cluster::TwoProcesses, "queries_two").await;
}

/// Every bad parameter gets 400 and a message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_400_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), "queries_bad", 1, &pg::fresh_database("queries_bad").await);
    let events = generate(dir.path(), "e.jsonl", 2_000, &["--rate", "100", "--late-fraction", "0"]);
    produce(&job, &events);
    let running = start(&job, Cluster::OneProcess);
    let http = reqwest::Client::new();
    let as_of = wait_for_as_of(&http, &running.url, 1).await;
    let u = &running.url;
    let cases = [
        (format!("{u}/v1/ads/x/aggregated_count?from=0&to=60000"), "ad_id"),
        (format!("{u}/v1/ads/1/aggregated_count?from=1&to=60000"), "from"),
        (format!("{u}/v1/ads/1/aggregated_count?from=0&to=60001"), "to"),
        (format!("{u}/v1/ads/1/aggregated_count?from=60000&to=60000"), "to"),
        (format!("{u}/v1/ads/1/aggregated_count?to=60000"), "from"),
        (format!("{u}/v1/ads/1/aggregated_count?from=0&to=60000&device=ios"), "device"),
        (format!("{u}/v1/ads/1/aggregated_count?from=0&to=60000&country=XX"), "country"),
        (format!("{u}/v1/ads/popular_ads?count=0&window=5"), "count"),
        (format!("{u}/v1/ads/popular_ads?count=1001&window=5"), "count"),
        (format!("{u}/v1/ads/popular_ads?count=3&window=0"), "window"),
        (format!("{u}/v1/ads/popular_ads?count=3&window=1441"), "window"),
        (format!("{u}/v1/ads/popular_ads?count=3&window=5&as_of=soon"), "as_of"),
        (format!("{u}/v1/ads/1/aggregated_count?from=0&to={as_of}"), "retention"),
    ];
    for (url, named) in cases {
        let (status, body) = get(&http, &url).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert!(body["message"].as_str().unwrap().contains(named), "{url}: {body}");
    }
    let (status, body) = get(&http, &format!("{u}/v1/ads/1/aggregated_count?from=0&to={as_of}")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("beyond_retention")), "{body}");
    let (status, body) = post(&http, u, &json!({"query": "popular_ads"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&http, u, &json!([{"query": "nearest_ads"}])).await;
    assert!(status == 400 && body["message"].as_str().unwrap().contains("query"), "{body}");
}

/// The stream sends the current answer, a new one after a pane completes, and a new one after
/// a late click (within the allowed lateness) corrects a complete pane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_a_new_answer_after_a_pane_completes_and_after_a_correction() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), "queries_sse", 1, &pg::fresh_database("queries_sse").await);
    let t0 = 1_767_225_600_000u64; // a pane boundary
    let line = |ad: u64, ts: u64| {
        format!("{{\"ad_id\":{ad},\"click_ts\":{ts},\"user_id\":1,\"ip\":\"1.2.3.4\",\"country\":\"US\"}}\n")
    };
    let write = |name: &str, lines: &[String]| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.concat()).unwrap();
        path
    };
    // Panes t0 and t0+1m filled; the watermark passes t0+1m (events up to t0+1m+10s).
    let mut first: Vec<String> = (0..100).map(|i| line(1 + i % 3, t0 + i * 700)).collect();
    first.push(line(9, t0 + PANE + 10_000));
    produce(&job, &write("a.jsonl", &first));
    let running = start(&job, Cluster::OneProcess);
    let http = reqwest::Client::new();
    wait_for_as_of(&http, &running.url, t0 + PANE).await;
    let response =
        http.get(format!("{}/v1/ads/popular_ads/stream?count=1000&window=10", running.url)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut events = sse_events(response);
    let first_answer = next_event(&mut events).await;
    assert_eq!(first_answer["window_end"].as_u64(), Some(t0 + PANE), "{first_answer}");
    // A pane completes: events up to t0 + 2m + 10s move the watermark past t0 + 2m.
    produce(&job, &write("b.jsonl", &[line(2, t0 + PANE + 20_000), line(9, t0 + 2 * PANE + 10_000)]));
    let completed = next_event(&mut events).await;
    assert_eq!(completed["window_end"].as_u64(), Some(t0 + 2 * PANE), "{completed}");
    // A late click for the complete pane t0 + 1m (it closes once the watermark reaches
    // t0 + 3m): a correction, not a late click.
    produce(&job, &write("c.jsonl", &[line(3, t0 + PANE + 30_000)]));
    let corrected = next_event(&mut events).await;
    assert_eq!(corrected["window_end"].as_u64(), Some(t0 + 2 * PANE), "{corrected}");
    let clicks = |answer: &Value, ad: u64| ranked(answer).into_iter().find(|(a, _)| *a == ad).map_or(0, |(_, c)| c);
    assert_eq!(clicks(&corrected, 3), clicks(&completed, 3) + 1, "{completed} then {corrected}");
}

type SseEvents = tokio::sync::mpsc::UnboundedReceiver<Value>;

/// The `data:` of each event of a server-sent-events response.
fn sse_events(mut response: reqwest::Response) -> SseEvents {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                    let _ = sender.send(serde_json::from_str(data.trim()).unwrap());
                }
            }
        }
    });
    receiver
}

async fn next_event(events: &mut SseEvents) -> Value {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("no event within 30 s")
        .expect("stream ended")
}
