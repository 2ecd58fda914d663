//! The HTTP layer of `clickstay rooms serve`, run as a child process against real PostgreSQL
//! (two shards): bounded waits (header-read and request timeouts, the concurrency cap),
//! graceful shutdown on SIGTERM, cross-site refusal, bearer tokens, the loopback-only rule
//! without tokens, and the input rules (repeated hotels, year bounds, stays in the past).

#[path = "common/hotels.rs"]
mod hotels;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;
#[path = "common/shop.rs"]
mod shop;

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate, Utc};
use hotels::night;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;

const BIN: &str = env!("CARGO_BIN_EXE_clickstay");

/// Two fresh, migrated shards, an HTTP client, and the servers' working directory (empty: no
/// `dataflows/rooms.toml` there unless a test puts one).
struct Shop {
    http: reqwest::Client,
    two: shop::TwoShards,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Shop {
    type Target = shop::TwoShards;
    fn deref(&self) -> &shop::TwoShards {
        &self.two
    }
}

impl Shop {
    async fn new() -> Self {
        Shop {
            two: shop::two_shards("rooms_http", 2).await,
            http: reqwest::Client::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn db(&self, hotel_id: i64) -> &tokio_postgres::Client {
        &self.dbs[self.shards.index_of(hotel_id)]
    }

    /// Hotel `hotel_id` with one room type of `rooms` rooms for `days` nights from `first`.
    async fn add_hotel(&self, hotel_id: i64, rooms: i32, first: NaiveDate, days: i32) {
        hotels::add_hotel(self.db(hotel_id), hotel_id, "Lyon", "1.00", &[rooms], first, days).await;
    }

    /// `clickstay rooms serve` on these shards, with `args` and `env` added, and no tokens
    /// from this process's environment.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["rooms", "serve"])
            .args(args)
            .env("CLICKSTAY_HOTEL_SHARDS", self.urls.join(","))
            .env_remove("CLICKSTAY_API_TOKENS")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .stdout(Stdio::null());
        command
    }

    /// Started and answering `/healthz`, on a free loopback port.
    async fn serve(&self, args: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = self.command(&[&["--listen", &listen][..], args].concat(), env).spawn().unwrap();
        let server = Server { child, url: format!("http://{listen}"), address: listen };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.http.get(format!("{}/healthz", server.url)).send().await.is_err() {
            assert!(Instant::now() < deadline, "the server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Connections of the test server left inside a transaction, on either shard's database.
    async fn idle_in_transaction(&self) -> i64 {
        let names: Vec<String> = self.urls.iter().map(|url| url.rsplit('/').next().unwrap().to_string()).collect();
        self.dbs[0]
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1) AND state LIKE 'idle in transaction%'",
                &[&names],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `clickstay rooms check` on these shards succeeds.
    fn assert_check_passes(&self) {
        let output = Command::new(BIN)
            .args(["rooms", "check"])
            .env("CLICKSTAY_HOTEL_SHARDS", self.urls.join(","))
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        assert!(output.status.success(), "rooms check: {}", String::from_utf8_lossy(&output.stderr));
    }

    async fn confirmed(&self, ids: &[uuid::Uuid]) -> i64 {
        let mut count = 0;
        for db in &self.dbs {
            let row = db
                .query_one(
                    "SELECT count(*) FROM reservation WHERE reservation_id = ANY($1) AND status = 'confirmed'",
                    &[&ids],
                )
                .await
                .unwrap();
            count += row.get::<_, i64>(0);
        }
        count
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `serve` child process.
struct Server {
    child: Child,
    url: String,
    address: String,
}

impl Server {
    fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Its exit status, waiting up to `within`.
    async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stay(id: uuid::Uuid, hotel_id: i64, from: NaiveDate, to: NaiveDate) -> Value {
    json!({
        "reservation_id": id, "hotel_id": hotel_id, "room_type_id": 1,
        "start_date": from.to_string(), "end_date": to.to_string(), "guest_id": 7,
    })
}

/// Status and JSON body of an answer.
async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("HTTP request failed");
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

/// A `psql`-like session holding `FOR UPDATE` on one night of `hotel_id`, until committed.
async fn lock_night(shop: &Shop, hotel_id: i64, date: NaiveDate) -> tokio_postgres::Client {
    let locker = pg::connect(&shop.urls[shop.shards.index_of(hotel_id)]).await;
    locker.batch_execute("BEGIN").await.unwrap();
    locker
        .execute("SELECT 1 FROM room_type_inventory WHERE hotel_id = $1 AND date = $2 FOR UPDATE", &[&hotel_id, &date])
        .await
        .unwrap();
    locker
}

/// Waits until some session of `db`'s server waits for a lock.
async fn until_a_lock_is_awaited(db: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = db.query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[]).await.unwrap().get(0);
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no request came to wait for the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_disconnected_after_the_header_timeout() {
    let shop = Shop::new().await;
    let server = shop.serve(&["--header-timeout", "1s"], &[]).await;
    let mut slow = std::net::TcpStream::connect(&server.address).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTT").unwrap();
    // Meanwhile other clients are served.
    let (status, _) = answer(shop.http.get(format!("{}/healthz", server.url))).await;
    assert_eq!(status, StatusCode::OK);
    let mut received = Vec::new();
    let end = slow.read_to_end(&mut received);
    let waited = started.elapsed();
    assert!(end.is_ok() || waited < Duration::from_secs(9), "still connected after {waited:?}: {end:?}");
    assert!(
        Duration::from_millis(900) <= waited && waited < Duration::from_secs(5),
        "disconnected after {waited:?}, with a header timeout of 1 s"
    );
    let received = String::from_utf8_lossy(&received);
    assert!(received.is_empty() || received.starts_with("HTTP/1.1 408"), "{received}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_booking_load_finishes_requests_in_flight_and_exits_0() {
    let shop = Shop::new().await;
    for hotel in [1, 2] {
        shop.add_hotel(hotel, 100_000, night(0), 5).await;
    }
    // The booking held up below must outlast the signal: no timeout of its own cuts it short.
    let patient = ["--lock-timeout", "20s", "--statement-timeout", "20s", "--transaction-timeout", "20s"];
    let mut server =
        shop.serve(&[&patient[..], &["--request-timeout", "20s", "--shutdown-grace", "25s"]].concat(), &[]).await;
    // One booking waits on a night locked from outside when the signal comes.
    let locker = lock_night(&shop, 1, night(4)).await;
    let blocked_id = uuid::Uuid::now_v7();
    let blocked = {
        let request =
            shop.http.post(format!("{}/v1/reservations", server.url)).json(&stay(blocked_id, 1, night(3), night(5)));
        tokio::spawn(async move { request.send().await })
    };
    until_a_lock_is_awaited(shop.db(1)).await;
    // And a steady load of bookings on both shards.
    let mut clients = JoinSet::new();
    for client in 0..8i64 {
        let (http, url) = (shop.http.clone(), server.url.clone());
        clients.spawn(async move {
            let mut answered = Vec::new();
            loop {
                let id = uuid::Uuid::now_v7();
                let body = stay(id, 1 + client % 2, night(0), night(3));
                match http.post(format!("{url}/v1/reservations")).json(&body).send().await {
                    Ok(response) => answered.push((id, response.status())),
                    Err(_) => return answered, // the server stopped accepting
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal(libc::SIGTERM);
    let mut answered = Vec::new();
    while let Some(result) = clients.join_next().await {
        answered.extend(result.unwrap());
    }
    // No new connection is accepted, but the booking in flight is waited for.
    assert!(std::net::TcpStream::connect(&server.address).is_err(), "still accepting after SIGTERM");
    assert_eq!(server.exit_within(Duration::from_millis(500)).await, None, "exited with a request in flight");
    locker.batch_execute("COMMIT").await.unwrap();
    let response = blocked.await.unwrap().expect("the booking in flight at SIGTERM got no answer");
    assert_eq!(response.status(), StatusCode::CREATED);
    let status = server.exit_within(Duration::from_secs(10)).await.expect("no exit after the last request");
    assert!(status.success(), "exit status {status}");

    assert!(answered.len() > 10, "only {} bookings answered before SIGTERM", answered.len());
    assert!(answered.iter().all(|(_, status)| *status == StatusCode::CREATED), "{answered:?}");
    let mut ids: Vec<uuid::Uuid> = answered.iter().map(|(id, _)| *id).collect();
    ids.push(blocked_id);
    assert_eq!(shop.confirmed(&ids).await, ids.len() as i64, "an answered booking is missing");
    assert_eq!(shop.idle_in_transaction().await, 0);
    shop.assert_check_passes();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_503_timeout_and_one_over_the_cap_is_503_busy() {
    let shop = Shop::new().await;
    shop.add_hotel(1, 10, night(0), 5).await;
    let server = shop.serve(&["--request-timeout", "1s", "--max-concurrent", "1"], &[]).await;
    // An availability read waits behind a table lock held from outside.
    let locker = pg::connect(&shop.urls[shop.shards.index_of(1)]).await;
    locker.batch_execute("BEGIN; LOCK TABLE room_type_inventory IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let path = format!("{}/v1/hotels/1/availability?start={}&end={}", server.url, night(0), night(2));
    let slow = tokio::spawn(answer(shop.http.get(&path)));
    until_a_lock_is_awaited(shop.db(1)).await;
    let (status, body) = answer(shop.http.get(format!("{}/healthz", server.url))).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("busy")), "{body}");
    let started = Instant::now();
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("timeout")), "{body}");
    assert!(body["message"].is_string());
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    locker.batch_execute("COMMIT").await.unwrap();
    let (status, body) = answer(shop.http.get(&path)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_are_refused_and_nothing_is_booked() {
    let shop = Shop::new().await;
    shop.add_hotel(1, 10, night(0), 5).await;
    let server = shop.serve(&["--allow-origin", "https://shop.example,http://localhost:3000"], &[]).await;
    let book = |id, origin: Option<&str>, content_type: &str| {
        let mut request = shop
            .http
            .post(format!("{}/v1/reservations", server.url))
            .header("content-type", content_type)
            .body(stay(id, 1, night(0), night(2)).to_string());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        answer(request)
    };
    let refused = [
        (None, "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (None, "application/x-www-form-urlencoded", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (Some("http://evil.example"), "text/plain", StatusCode::FORBIDDEN, "origin_not_allowed"),
        (Some("http://evil.example"), "application/json", StatusCode::FORBIDDEN, "origin_not_allowed"),
        (Some("https://shop.example.evil.example"), "application/json", StatusCode::FORBIDDEN, "origin_not_allowed"),
        (Some("null"), "application/json", StatusCode::FORBIDDEN, "origin_not_allowed"),
    ];
    let mut ids = Vec::new();
    for (origin, content_type, expected, code) in refused {
        let id = uuid::Uuid::now_v7();
        let (status, body) = book(id, origin, content_type).await;
        assert_eq!((status, body["error"].as_str()), (expected, Some(code)), "{origin:?} {content_type}: {body}");
        assert!(body["message"].is_string(), "{body}");
        ids.push(id);
    }
    assert_eq!(shop.confirmed(&ids).await, 0, "a refused request booked");
    let (status, body) = answer(
        shop.http
            .get(format!("{}/v1/hotels/1/availability?start={}&end={}", server.url, night(0), night(1)))
            .header("origin", "http://evil.example"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Allowed origins, and clients that send none, book as before.
    for origin in [Some("https://shop.example"), Some("http://localhost:3000"), None] {
        let (status, body) = book(uuid::Uuid::now_v7(), origin, "application/json; charset=utf-8").await;
        assert_eq!(status, StatusCode::CREATED, "{origin:?}: {body}");
    }
    // A POST without a body needs no content type.
    let (status, body) = answer(shop.http.post(format!("{}/v1/reservation-ids", server.url))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// 401 without the right token on /v1, the token's request served, /healthz open.
async fn assert_tokens_required(shop: &Shop, server: &Server, good: &[&str]) {
    let path = format!("{}/v1/hotels/1/availability?start={}&end={}", server.url, night(0), night(1));
    let wrong =
        [None, Some("Bearer nope"), Some("Bearer "), Some("Basic YWxwaGE6"), Some(&*format!("Bearer {}x", good[0]))];
    for header in wrong {
        let mut request = shop.http.get(&path);
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let (status, body) = answer(request).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{header:?}");
    }
    let (status, body) = answer(shop.http.post(format!("{}/v1/reservations", server.url)).json(&stay(
        uuid::Uuid::now_v7(),
        1,
        night(0),
        night(2),
    )))
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    for token in good {
        let (status, body) = answer(shop.http.get(&path).bearer_auth(token)).await;
        assert_eq!(status, StatusCode::OK, "{token}: {body}");
        let (status, body) =
            answer(shop.http.post(format!("{}/v1/reservations", server.url)).bearer_auth(token).json(&stay(
                uuid::Uuid::now_v7(),
                1,
                night(0),
                night(2),
            )))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{token}: {body}");
    }
    let (status, body) = answer(shop.http.get(format!("{}/healthz", server.url))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_file_or_the_environment_are_required_on_v1() {
    let shop = Shop::new().await;
    shop.add_hotel(1, 100, night(0), 5).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "# the booking front end\nalpha-3f9c\n\nbeta-77d1\n").unwrap();
    let from_file = shop.serve(&["--auth-tokens", file.path().to_str().unwrap()], &[]).await;
    assert_tokens_required(&shop, &from_file, &["alpha-3f9c", "beta-77d1"]).await;
    let from_env = shop.serve(&[], &[("CLICKSTAY_API_TOKENS", "gamma-1, delta-2")]).await;
    assert_tokens_required(&shop, &from_env, &["gamma-1", "delta-2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_without_tokens_is_refused_with_the_reason() {
    let shop = Shop::new().await;
    let port = free_port().to_string();
    let listen = format!("0.0.0.0:{port}");
    let output = shop.command(&["--listen", &listen], &[]).stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "served on {listen} without tokens");
    assert!(stderr.contains("not a loopback address") && stderr.contains("--auth-tokens"), "{stderr}");
    // With a token it serves there.
    let mut child = shop.command(&["--listen", &listen], &[("CLICKSTAY_API_TOKENS", "t0k")]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while shop.http.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "did not serve with a token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The input rules, on the plain server and on the one answering from the view.
async fn bad_input_is_refused(shop: &Shop, server: &Server) {
    let search = |hotels: &str| {
        format!("{}/v1/availability/search?start={}&end={}&hotels={hotels}", server.url, night(0), night(2))
    };
    let (status, body) = answer(shop.http.get(search("3,3"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["hotels"].as_array().unwrap().len(), 1, "{body}");
    let (status, body) = answer(shop.http.get(search("4, 3,4,3"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let found: Vec<i64> = body["hotels"].as_array().unwrap().iter().map(|h| h["hotel_id"].as_i64().unwrap()).collect();
    assert_eq!(found, [3, 4]);
    for date in ["-001-01-01", "0000-01-01", "+2031-03-01"] {
        let path = format!("{}/v1/hotels/3/availability?start={date}&end={}", server.url, night(1));
        let (status, body) = answer(shop.http.get(&path)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{date}: {body}");
        let path = format!("{}/v1/availability/search?start={date}&end={}&hotels=3", server.url, night(1));
        let (status, body) = answer(shop.http.get(&path)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{date}: {body}");
        let mut request = stay(uuid::Uuid::now_v7(), 3, night(0), night(1));
        request["start_date"] = json!(date);
        let (status, body) = answer(shop.http.post(format!("{}/v1/reservations", server.url)).json(&request)).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")), "{date}: {body}");
    }
    // Hotel 5 sells from yesterday: yesterday is in the past, today is not.
    let today = Utc::now().date_naive();
    let yesterday = today - Days::new(1);
    let book = |from: NaiveDate| {
        let request = stay(uuid::Uuid::now_v7(), 5, from, from + Days::new(2));
        answer(shop.http.post(format!("{}/v1/reservations", server.url)).json(&request))
    };
    let (status, body) = book(yesterday).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("in_the_past")), "{body}");
    assert!(body["message"].as_str().unwrap().contains(&yesterday.to_string()), "{body}");
    let (status, body) = book(today).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn shop_for_input() -> Shop {
    let shop = Shop::new().await;
    shop.add_hotel(3, 10, night(0), 5).await;
    shop.add_hotel(4, 10, night(0), 5).await;
    shop.add_hotel(5, 10, Utc::now().date_naive() - Days::new(1), 5).await;
    shop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_hotels_years_outside_1_to_9999_and_past_stays() {
    let shop = shop_for_input().await;
    let server = shop.serve(&["--sql-only"], &[]).await;
    bad_input_is_refused(&shop, &server).await;
    shop.assert_check_passes();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_hotels_years_outside_1_to_9999_and_past_stays_through_the_view() {
    let shop = shop_for_input().await;
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/rooms.toml");
    let server = shop.serve(&["--dataflow", spec.to_str().unwrap(), "-w", "2"], &[]).await;
    bad_input_is_refused(&shop, &server).await;
    shop.assert_check_passes();
}

/// `GET /v1/hotels/{hotel_id}/availability` with `extra` query parameters.
async fn availability(shop: &Shop, server: &Server, hotel_id: i64, extra: &str) -> (StatusCode, Value) {
    let url = format!("{}/v1/hotels/{hotel_id}/availability?start={}&end={}{extra}", server.url, night(0), night(2));
    answer(shop.http.get(url)).await
}

/// With `--sql-only` a `min_lsn` is met at once (the database is always current): 200 with the
/// database's answer, no `lsn` (that comes from the view). A malformed one is still 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_only_meets_min_lsn_with_the_database_answer() {
    let shop = Shop::new().await;
    shop.add_hotel(3, 10, night(0), 5).await;
    // A spec in the working directory does not matter with --sql-only.
    std::fs::create_dir(shop.dir.path().join("dataflows")).unwrap();
    std::fs::write(shop.dir.path().join("dataflows/rooms.toml"), "not = a spec").unwrap();
    let server = shop.serve(&["--sql-only"], &[]).await;
    let (status, booked) = answer(shop.http.post(format!("{}/v1/reservations", server.url)).json(&stay(
        uuid::Uuid::now_v7(),
        3,
        night(0),
        night(2),
    )))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{booked}");
    let (status, plain) = availability(&shop, &server, 3, "").await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    let (status, body) = availability(&shop, &server, 3, "&min_lsn=FFFF/0").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, plain);
    assert_eq!(body["room_types"][0]["available"], 9, "{body}");
    assert!(body.get("lsn").is_none(), "answered by a view: {body}");
    let (status, body) = availability(&shop, &server, 3, "&min_lsn=nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("min_lsn:"), "{body}");
    // --sql-only and --dataflow contradict each other.
    let output =
        shop.command(&["--sql-only", "--dataflow", "dataflows/rooms.toml"], &[]).stderr(Stdio::piped()).output();
    let output = output.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--sql-only") && stderr.contains("--dataflow"), "{stderr}");
    shop.assert_check_passes();
}

/// Without flags, where `dataflows/rooms.toml` is present, the view serves: its answers carry
/// the `lsn` they reflect, and a `min_lsn` waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_serves_by_default_where_its_spec_is() {
    let shop = Shop::new().await;
    shop.add_hotel(3, 10, night(0), 5).await;
    let plain = shop.serve(&[], &[]).await;
    let (status, body) = availability(&shop, &plain, 3, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("lsn").is_none(), "a view served without a spec: {body}");
    drop(plain);

    std::fs::create_dir(shop.dir.path().join("dataflows")).unwrap();
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/rooms.toml");
    std::fs::copy(spec, shop.dir.path().join("dataflows/rooms.toml")).unwrap();
    let server = shop.serve(&[], &[]).await;
    // The view answers once its snapshots are loaded (before, a 503).
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = availability(&shop, &server, 3, "").await;
        if status == StatusCode::OK || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body["lsn"].is_string(), "not answered by the view: {body}");
    assert_eq!(body["room_types"][0]["available"], 10, "{body}");
    let (status, body) = availability(&shop, &server, 3, &format!("&min_lsn={}", body["lsn"].as_str().unwrap())).await;
    assert_eq!((status, body["lsn"].is_string()), (StatusCode::OK, true), "{body}");
    let (status, body) = availability(&shop, &server, 3, "&min_lsn=0/zz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("min_lsn:"), "{body}");
}
