//! The live dashboards in headless Chromium (Debian's `chromium`, installed by
//! `scripts/setup.sh`), while the real job runs: the click job's page shows the same top ads
//! (ids and clicks, in order) as `GET /v1/ads/popular_ads`, and says the query API is off under
//! `--metrics-listen` alone; the rooms page shows the same rooms free per night and room type as
//! the availability API after a few bookings, and the bookings by outcome the test made. Each
//! test keeps a screenshot in `target/dashboard-*.png`.
//!
//! Chromium runs with `--virtual-time-budget`: it advances the page's clock (its once-a-second
//! polling) only while no fetch is pending, so the DOM it prints holds the answers of several
//! rounds of polling.

#[path = "common/broker.rs"]
mod broker;
#[path = "common/hotels.rs"]
mod hotels;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;
#[path = "common/shop.rs"]
mod shop;
#[path = "common/stream.rs"]
mod stream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stream::{BIN, Job, free_port, generate, produce};

/// Where the screenshots go: the build's `target/` (the binary is `target/release/clickstay`).
fn artifact(name: &str) -> PathBuf {
    Path::new(BIN).parent().and_then(Path::parent).expect("the binary is in target/PROFILE/").join(name)
}

/// Headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`), in a fresh
/// profile; its standard output.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=5000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run chromium ({error}): install Debian's chromium (scripts/setup.sh)"));
    assert!(output.status.success(), "chromium {args:?} {url} failed: {}", output.status);
    String::from_utf8(output.stdout).unwrap()
}

/// The page's DOM after its scripts ran for a few seconds of virtual time.
fn dom(url: &str) -> String {
    chromium(url, &["--dump-dom"])
}

/// Writes the page as a PNG to `target/{name}` and checks that it is one.
fn screenshot(url: &str, name: &str) {
    let path = artifact(name);
    let _ = std::fs::remove_file(&path);
    chromium(url, &["--window-size=1280,1000", &format!("--screenshot={}", path.display())]);
    let png = std::fs::read(&path).unwrap_or_else(|error| panic!("no screenshot at {}: {error}", path.display()));
    assert!(png.starts_with(b"\x89PNG"), "{} is not a PNG", path.display());
}

/// The attributes of every element of `html` that has attribute `key`, in document order (a
/// tag's attributes by name; enough for the pages' own `data-*` attributes, which hold no `>`).
fn elements_with(html: &str, key: &str) -> Vec<BTreeMap<String, String>> {
    let needle = format!(" {key}=\"");
    html.split('<')
        .filter_map(|tag| tag.split_once('>').map(|(inside, _)| inside))
        .filter(|inside| inside.contains(&needle))
        .map(|inside| {
            let mut attributes = BTreeMap::new();
            let mut rest = inside;
            while let Some((before, after)) = rest.split_once("=\"") {
                let name = before.rsplit(' ').next().unwrap_or_default().to_string();
                let (value, tail) = after.split_once('"').unwrap_or((after, ""));
                attributes.insert(name, value.replace("&amp;", "&"));
                rest = tail;
            }
            attributes
        })
        .collect()
}

/// The value of attribute `key` of the element with `id="{id}"`.
fn attribute_of(html: &str, id: &str, key: &str) -> Option<String> {
    elements_with(html, "id").into_iter().find(|element| element.get("id").map(String::as_str) == Some(id))?.remove(key)
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap_or_else(|error| panic!("GET {url}: {error}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A child process killed (with its process group) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child's own process group (spawned with process_group(0)).
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn spawn(mut command: Command, log: &str) -> Running {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(std::env::temp_dir().join(log)).unwrap();
    Running(command.stdout(Stdio::null()).stderr(log).process_group(0).spawn().unwrap())
}

/// Waits until `url` answers at all.
async fn wait_until_up(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(url).send().await.is_err() {
        assert!(Instant::now() < deadline, "{url} did not answer within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 6,000 clicks on 30 ads at 100 events/s of event time (a minute of event time), none late,
/// none malformed.
const EVENTS: u64 = 6_000;

fn click_events(dir: &Path) -> PathBuf {
    let options = ["--rate", "100", "--ads", "30", "--late-fraction", "0", "--malformed-fraction", "0", "--seed", "5"];
    generate(dir, "events.jsonl", EVENTS, &options)
}

/// `clickstay run` of `job` that never drains by itself (it runs until the test drops it).
fn run_job(job: &Job, listen_flag: &str, port: u16) -> Running {
    let mut command = job.command_draining_after(3600);
    command.args([listen_flag, &format!("127.0.0.1:{port}"), "--idle-timeout", "1"]);
    spawn(command, &format!("dashboard_{}.log", job.name))
}

/// `(ad_id, clicks)` of the page's top-ads table, in its order.
fn page_top_ads(html: &str) -> Vec<(u64, u64)> {
    elements_with(html, "data-ad-id")
        .iter()
        .map(|row| (row["data-ad-id"].parse().unwrap(), row["data-clicks"].parse().unwrap()))
        .collect()
}

fn api_top_ads(answer: &Value) -> Vec<(u64, u64)> {
    let ads = answer["ads"].as_array().unwrap_or_else(|| panic!("no ads in {answer}"));
    ads.iter().map(|ad| (ad["ad_id"].as_u64().unwrap(), ad["clicks"].as_u64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_click_dashboard_shows_the_top_ads_of_the_query_api() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), "dashboard_clicks", 2, &pg::fresh_database("dashboard_clicks").await);
    produce(&job, &click_events(dir.path()));
    let port = free_port();
    let _running = run_job(&job, "--listen", port);
    let (api, http) = (format!("http://127.0.0.1:{port}"), reqwest::Client::new());
    let question = format!("{api}/v1/ads/popular_ads?count=10&window=1");
    wait_until_up(&http, &question).await;

    // Every event read (`/metrics`) and the answer no longer moving: the page must show this very answer.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    let answer = loop {
        let (status, answer) = get(&http, &question).await;
        let metrics = http.get(format!("{api}/metrics")).send().await.unwrap().text().await.unwrap();
        let read: f64 = metrics
            .lines()
            .filter(|line| line.starts_with("clickstay_clicks_events_read_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if status == 200 && read == EVENTS as f64 && answer == last && !api_top_ads(&answer).is_empty() {
            break answer;
        }
        assert!(Instant::now() < deadline, "the job's answer did not settle ({read} events read): {answer}");
        last = answer;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let expected = api_top_ads(&answer);
    assert_eq!(expected.len(), 10, "{answer}");

    let page = format!("{api}/?count=10&window=1");
    let html = dom(&page);
    assert_eq!(attribute_of(&html, "top-ads-panel", "data-state").as_deref(), Some("ready"), "{html}");
    assert_eq!(page_top_ads(&html), expected, "the page's top ads differ from GET /v1/ads/popular_ads");
    assert_eq!(attribute_of(&html, "top-ads-panel", "data-as-of"), Some(answer["as_of"].to_string()));
    // The charts were drawn (uPlot's canvas) and the partitions' table filled.
    assert!(html.matches("<canvas").count() >= 4, "not every chart was drawn");
    let partitions = elements_with(&html, "data-partition");
    assert_eq!(partitions.len(), 2, "{partitions:?}");
    let read: u64 = partitions.iter().map(|row| row["data-read"].parse::<u64>().unwrap()).sum();
    assert_eq!(read, EVENTS, "the page's records read per partition: {partitions:?}");
    screenshot(&page, "dashboard-clicks.png");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_listen_alone_the_click_dashboard_says_the_query_api_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), "dashboard_metrics", 1, &pg::fresh_database("dashboard_metrics").await);
    produce(&job, &generate(dir.path(), "few.jsonl", 200, &["--ads", "5"]));
    let port = free_port();
    let _running = run_job(&job, "--metrics-listen", port);
    let url = format!("http://127.0.0.1:{port}");
    wait_until_up(&reqwest::Client::new(), &format!("{url}/metrics")).await;

    let html = dom(&format!("{url}/"));
    assert_eq!(attribute_of(&html, "top-ads-panel", "data-state").as_deref(), Some("off"), "{html}");
    assert!(html.contains("the query API is off"), "{html}");
    assert!(page_top_ads(&html).is_empty());
}

/// Hotel 3's room types and their rooms, on sale for [`NIGHTS`] nights from `hotels::night(0)`.
const ROOMS: [i32; 3] = [4, 2, 6];
const NIGHTS: u64 = 8;
const HOTEL: i64 = 3;

/// `clickstay rooms serve --dataflow` on the two shards.
fn serve(urls: &[String], port: u16) -> Running {
    let mut command = Command::new(BIN);
    command
        .args(["rooms", "serve", "--dataflow"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/rooms.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "-w", "2"])
        .env("CLICKSTAY_HOTEL_SHARDS", urls.join(","))
        .env_remove(clickstay::rooms::guard::TOKENS_ENV)
        .current_dir(std::env::temp_dir());
    spawn(command, "dashboard_rooms.log")
}

/// Books room type `room_type_id` of the test hotel for nights `from..to`; the status.
async fn book(http: &reqwest::Client, api: &str, room_type_id: i32, from: u64, to: u64) -> u16 {
    let request = json!({
        "reservation_id": uuid::Uuid::now_v7(), "hotel_id": HOTEL, "room_type_id": room_type_id,
        "start_date": hotels::night(from).to_string(), "end_date": hotels::night(to).to_string(), "guest_id": 7,
    });
    http.post(format!("{api}/v1/reservations")).json(&request).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_dashboard_shows_the_availability_api_by_night_and_room_type() {
    let shop::TwoShards { urls, shards, dbs } = shop::two_shards("dashboard_rooms", 4).await;
    let db = &dbs[shards.index_of(HOTEL)];
    hotels::add_hotel(db, HOTEL, "Lyon", "1.00", &ROOMS, hotels::night(0), NIGHTS as i32).await;
    let port = free_port();
    let _server = serve(&urls, port);
    let (api, http) = (format!("http://127.0.0.1:{port}"), reqwest::Client::new());
    wait_until_up(&http, &format!("{api}/healthz")).await;

    // Room type 2 (2 rooms) sold out on nights 2 and 3, a third booking there refused.
    let mut confirmed = 0;
    for (room_type_id, from, to) in [(1, 0, 3), (1, 1, 2), (2, 2, 4), (2, 1, 4), (3, 5, 8)] {
        assert_eq!(book(&http, &api, room_type_id, from, to).await, 201);
        confirmed += 1;
    }
    assert_eq!(book(&http, &api, 2, 3, 5).await, 409);

    // What the API answers for each night once the view reflects every booking (`min_lsn`).
    let lsn: String = db.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let mut expected = BTreeMap::new();
    for night in 0..NIGHTS {
        let (start, end) = (hotels::night(night), hotels::night(night + 1));
        let url = format!("{api}/v1/hotels/{HOTEL}/availability?start={start}&end={end}&min_lsn={lsn}");
        let (status, answer) = get(&http, &url).await;
        assert_eq!(status, 200, "{answer}");
        for room_type in answer["room_types"].as_array().unwrap() {
            let key = (room_type["room_type_id"].as_i64().unwrap(), start.to_string());
            expected.insert(key, room_type["available"].as_i64().unwrap());
        }
    }
    assert_eq!(expected[&(2, hotels::night(2).to_string())], 0, "the test's bookings are not in the API: {expected:?}");
    assert_eq!(expected[&(1, hotels::night(1).to_string())], 2);

    let page = format!("{api}/?hotel={HOTEL}&start={}&nights={NIGHTS}", hotels::night(0));
    let html = dom(&page);
    assert_eq!(attribute_of(&html, "heat-panel", "data-state").as_deref(), Some("ready"), "{html}");
    let shown: BTreeMap<(i64, String), i64> = elements_with(&html, "data-room-type")
        .iter()
        .map(|cell| {
            let key = (cell["data-room-type"].parse().unwrap(), cell["data-night"].clone());
            (key, cell["data-available"].parse().unwrap())
        })
        .collect();
    assert_eq!(shown, expected, "the page's heat map differs from the availability API");
    // Bookings by outcome: the test's own counts.
    let outcomes: BTreeMap<String, String> = elements_with(&html, "data-outcome")
        .into_iter()
        .map(|row| (row["data-outcome"].clone(), row["data-total"].clone()))
        .collect();
    assert_eq!(outcomes.get("confirmed"), Some(&confirmed.to_string()), "{outcomes:?}");
    let sold_out: u64 =
        ["sold_out_view", "sold_out_db"].iter().filter_map(|o| outcomes.get(*o)?.parse::<u64>().ok()).sum();
    assert_eq!(sold_out, 1, "{outcomes:?}");
    assert_eq!(elements_with(&html, "data-lag-seconds").len(), 2, "view lag of both shards");
    screenshot(&page, "dashboard-rooms.png");
}
