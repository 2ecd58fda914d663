//! Trips across shards through the real `clickstay rooms serve` process on real PostgreSQL
//! (two shards, two databases of the test server): all or nothing in both modes, idempotent
//! repeats, the process killed (SIGKILL) at every step of a two-phase commit and of a saga and
//! recovered by its successor, 100 trips racing for the last rooms, and a shard stopped during
//! trips. Every test ends with no prepared transaction left and `clickstay rooms check`.

#[path = "common/hotels.rs"]
mod hotels;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;
#[path = "common/shop.rs"]
mod shop;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hotels::night;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Hotels of the tests: 2 lives on shard 0, 3 on shard 1 (hotel `h` on shard `h % 2`).
const SEOUL: i64 = 2;
const BUSAN: i64 = 3;

/// A `clickstay rooms serve` process over two fresh shards, with a short prepare timeout and
/// recovery interval so that recovery shows within a test.
struct Trips {
    shop: shop::TwoShards,
    names: Vec<String>,
    dir: tempfile::TempDir,
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Trips {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Trips {
    async fn start(rooms: i32) -> Trips {
        let shop = shop::two_shards("rooms_trips", 4).await;
        let names = shop.urls.iter().map(|url| url.rsplit('/').next().unwrap().to_string()).collect();
        for hotel_id in [SEOUL, BUSAN] {
            let db = &shop.dbs[shop.shards.index_of(hotel_id)];
            hotels::add_hotel(db, hotel_id, "Seoul", "1.00", &[rooms, rooms], night(0), 60).await;
        }
        let mut trips = Trips {
            shop,
            names,
            dir: tempfile::tempdir().unwrap(),
            child: Command::new("true").spawn().unwrap(),
            url: String::new(),
            http: reqwest::Client::new(),
        };
        trips.spawn(&[], None).await;
        trips
    }

    /// (Re)starts the server; with `pause`, its coordinator stops for good at that step.
    async fn spawn(&mut self, flags: &[&str], pause: Option<&str>) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
        let mut args =
            vec!["rooms", "serve", "--listen", &listen, "--prepare-timeout", "1s", "--recovery-interval", "200ms"];
        args.extend_from_slice(flags);
        let mut command = self.clickstay(&args);
        let _ = std::fs::remove_file(self.pause_file());
        if let Some(step) = pause {
            command.env("CLICKSTAY_TRIP_PAUSE", step).env("CLICKSTAY_TRIP_PAUSE_FILE", self.pause_file());
        }
        self.child = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.url = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.http.get(format!("{}/healthz", self.url)).send().await.is_err() {
            assert!(Instant::now() < deadline, "the server did not start: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn clickstay(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_clickstay"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("CLICKSTAY_HOTEL_SHARDS", self.shop.urls.join(","))
            .env_remove("RUST_BACKTRACE");
        command
    }

    fn pause_file(&self) -> std::path::PathBuf {
        self.dir.path().join("paused")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("HTTP request failed");
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
    }

    async fn post(&self, trip: &Value) -> (StatusCode, Value) {
        self.send(self.http.post(format!("{}/v1/trips", self.url)).json(trip)).await
    }

    async fn get(&self, trip: &Value) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}/v1/trips/{}", self.url, trip["trip_id"].as_str().unwrap()))).await
    }

    async fn delete(&self, trip: &Value) -> (StatusCode, Value) {
        self.send(self.http.delete(format!("{}/v1/trips/{}", self.url, trip["trip_id"].as_str().unwrap()))).await
    }

    /// The trip's legs that hold a confirmed reservation, by direct SQL on their shards.
    async fn confirmed_legs(&self, trip: &Value) -> usize {
        let mut confirmed = 0;
        for leg in trip["legs"].as_array().unwrap() {
            let db = &self.shop.dbs[self.shop.shards.index_of(leg["hotel_id"].as_i64().unwrap())];
            let id = Uuid::parse_str(leg["reservation_id"].as_str().unwrap()).unwrap();
            let row = db.query_opt("SELECT status FROM reservation WHERE reservation_id = $1", &[&id]).await.unwrap();
            confirmed += row.is_some_and(|row| row.get::<_, &str>(0) == "confirmed") as usize;
        }
        confirmed
    }

    /// Prepared transactions of the two shards' databases.
    async fn prepared(&self) -> i64 {
        self.shop.dbs[0]
            .query_one("SELECT count(*) FROM pg_prepared_xacts WHERE database = ANY($1)", &[&self.names])
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until the trip is over (confirmed, failed or cancelled) and no prepared
    /// transaction is left; its status.
    async fn settled(&self, trip: &Value) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.get(trip).await;
            let state = body["status"].as_str().unwrap_or_default().to_string();
            let over = status == StatusCode::OK && ["confirmed", "failed", "cancelled"].contains(&state.as_str());
            if over && self.prepared().await == 0 {
                return state;
            }
            assert!(Instant::now() < deadline, "trip not settled: {status} {body}\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `clickstay rooms check` passes (every night's counter equals its confirmed reservations).
    fn assert_check_passes(&self) {
        let checked = self.clickstay(&["rooms", "check"]).output().unwrap();
        assert!(
            checked.status.success(),
            "rooms check failed:\n{}\n{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }

    /// Sends `trip` to a server started with `CLICKSTAY_TRIP_PAUSE=step` and waits until its
    /// coordinator stopped there; the request, which never gets an answer.
    async fn paused_at(&self, step: &str, trip: &Value) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let (url, http, body) = (self.url.clone(), self.http.clone(), trip.clone());
        let sent = tokio::spawn(async move { http.post(format!("{url}/v1/trips")).json(&body).send().await });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.pause_file().exists() {
            assert!(Instant::now() < deadline, "{step}: the coordinator never got there: {}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    }

    /// Starts a successor of a killed server and waits for its recovery: the trip ends
    /// `expected` (`confirmed`: every leg booked; `failed`: none), nothing stays prepared, and the
    /// counters equal the reservations.
    async fn restart_and_expect(&mut self, trip: &Value, expected: &str, step: &str) {
        self.spawn(&[], None).await;
        assert_eq!(self.settled(trip).await, expected, "{step}: {}", self.log());
        let legs = if expected == "confirmed" { 2 } else { 0 };
        assert_eq!(self.confirmed_legs(trip).await, legs, "{step}");
        self.assert_check_passes();
    }

    fn in_doubt(&self) -> Vec<Value> {
        let listed = self.clickstay(&["rooms", "in-doubt"]).output().unwrap();
        assert!(listed.status.success(), "in-doubt: {}", String::from_utf8_lossy(&listed.stderr));
        String::from_utf8_lossy(&listed.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
}

/// A trip of fresh ids over `legs` (hotel, first night, end night), room type 1.
fn trip(mode: &str, legs: &[(i64, u64, u64)]) -> Value {
    let legs: Vec<Value> = legs
        .iter()
        .map(|(hotel_id, from, to)| {
            json!({ "reservation_id": Uuid::now_v7(), "hotel_id": hotel_id, "room_type_id": 1,
                    "start_date": night(*from), "end_date": night(*to) })
        })
        .collect();
    json!({ "trip_id": Uuid::now_v7(), "guest_id": 7, "mode": mode, "legs": legs })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trip_is_booked_whole_or_not_at_all_in_both_modes() {
    let trips = Trips::start(1).await;
    for (mode, offset) in [("2pc", 0), ("saga", 10)] {
        // Three nights in Seoul, then two in Busan: both booked.
        let seoul_busan = trip(mode, &[(SEOUL, offset, offset + 3), (BUSAN, offset + 3, offset + 5)]);
        let (status, body) = trips.post(&seoul_busan).await;
        assert_eq!((status, body["status"].as_str()), (StatusCode::CREATED, Some("confirmed")), "{mode}: {body}");
        assert_eq!(body["legs"].as_array().unwrap().len(), 2);
        assert!(body["legs"].as_array().unwrap().iter().all(|leg| leg["status"] == "confirmed"), "{body}");
        assert_eq!(trips.confirmed_legs(&seoul_busan).await, 2);
        // The same trip again: 200, the same trip; other content under its id: 422.
        let (status, again) = trips.post(&seoul_busan).await;
        assert_eq!((status, &again["legs"]), (StatusCode::OK, &body["legs"]), "{again}");
        let mut changed = seoul_busan.clone();
        changed["legs"][1]["end_date"] = json!(night(offset + 6));
        let (status, reused) = trips.post(&changed).await;
        assert_eq!((status, reused["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("trip_id_reused")));

        // The only room of Busan's night offset+3 is gone: a trip needing it books nothing.
        let late = trip(mode, &[(SEOUL, offset + 5, offset + 6), (BUSAN, offset + 3, offset + 4)]);
        let (status, body) = trips.post(&late).await;
        assert_eq!(
            (status, body["error"].as_str(), body["leg"].as_u64(), body["night"].as_str()),
            (StatusCode::CONFLICT, Some("sold_out"), Some(1), Some(night(offset + 3).to_string().as_str())),
            "{mode}: {body}"
        );
        assert_eq!(trips.confirmed_legs(&late).await, 0, "{mode}: a leg of a refused trip stayed booked");
        assert_eq!(trips.settled(&late).await, "failed");
        // A repeat of the refused trip answers its refusal again.
        let (status, body) = trips.post(&late).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("sold_out")), "{body}");
        // Seoul's night offset+5 is free again (the refused leg was rolled back or compensated).
        let (status, body) =
            trips.post(&trip(mode, &[(SEOUL, offset + 5, offset + 6), (BUSAN, offset + 6, offset + 7)])).await;
        assert_eq!(status, StatusCode::CREATED, "{mode}: {body}");

        // Cancelling gives every night back; cancelling again changes nothing.
        let (status, body) = trips.delete(&seoul_busan).await;
        assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{body}");
        assert!(body["legs"].as_array().unwrap().iter().all(|leg| leg["status"] == "cancelled"), "{body}");
        assert_eq!(trips.delete(&seoul_busan).await.0, StatusCode::OK);
        assert_eq!(trips.confirmed_legs(&seoul_busan).await, 0);
        let (status, body) =
            trips.post(&trip(mode, &[(SEOUL, offset, offset + 3), (BUSAN, offset + 3, offset + 5)])).await;
        assert_eq!(status, StatusCode::CREATED, "{mode}: the cancelled nights were not given back: {body}");
    }

    // Malformed trips: 400 naming the problem; an unknown hotel: 404 naming the leg.
    let mut overlapping = trip("2pc", &[(SEOUL, 30, 33), (SEOUL, 32, 34)]);
    let (status, body) = trips.post(&overlapping).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap().contains("overlaps"), "{body}");
    overlapping["legs"] = json!([overlapping["legs"][0]]);
    assert_eq!(trips.post(&overlapping).await.0, StatusCode::BAD_REQUEST);
    let (status, body) = trips.post(&trip("3pc", &[(SEOUL, 30, 31), (BUSAN, 31, 32)])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = trips.post(&trip("2pc", &[(SEOUL, 30, 31), (999, 31, 32)])).await;
    assert_eq!(
        (status, body["error"].as_str(), body["leg"].as_u64()),
        (StatusCode::NOT_FOUND, Some("unknown_hotel"), Some(1))
    );
    let (status, _) = trips.get(&json!({ "trip_id": Uuid::now_v7().to_string() })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The default mode is 2pc.
    let mut default_mode = trip("2pc", &[(SEOUL, 40, 41), (BUSAN, 40, 41)]);
    default_mode.as_object_mut().unwrap().remove("mode");
    let (status, body) = trips.post(&default_mode).await;
    assert_eq!((status, body["mode"].as_str()), (StatusCode::CREATED, Some("2pc")), "{body}");

    // A leg whose reservation id names another stay already (its claim on the id's home shard,
    // taken in the leg's own transaction or before it): 422 naming the leg, nothing booked.
    for home in [0, 1] {
        for (k, mode) in [(0, "2pc"), (1, "saga")] {
            let id = clickstay::rooms::claims::new_id_homed_on(home, 2);
            let n = 50 + 2 * home as u64 + k;
            let single = json!({ "reservation_id": id, "hotel_id": SEOUL, "room_type_id": 2,
                                 "start_date": night(n), "end_date": night(n + 1), "guest_id": 7 });
            let (status, body) =
                trips.send(trips.http.post(format!("{}/v1/reservations", trips.url)).json(&single)).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let mut reusing = trip(mode, &[(BUSAN, 47, 48), (SEOUL, 47, 48)]);
            reusing["legs"][1]["reservation_id"] = json!(id);
            let (status, body) = trips.post(&reusing).await;
            assert_eq!(
                (status, body["error"].as_str(), body["leg"].as_u64()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("reservation_id_reused"), Some(1)),
                "{mode}, id homed on {home}: {body}"
            );
            assert_eq!(trips.settled(&reusing).await, "failed");
            let (status, body) = trips.post(&trip(mode, &[(BUSAN, 47, 48), (SEOUL, 48, 49)])).await;
            assert_eq!(status, StatusCode::CREATED, "{mode}: Busan's night 47 was not given back: {body}");
            assert_eq!(trips.delete(&body).await.0, StatusCode::OK);
        }
    }

    assert_eq!(trips.prepared().await, 0);
    trips.assert_check_passes();
}

/// A trip whose legs all live on one shard takes one plain transaction: with the coordinator
/// told to stop after its first prepare, it still completes (it prepares nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_shard_trip_prepares_nothing() {
    let mut trips = Trips::start(2).await;
    trips.kill();
    trips.spawn(&[], Some("prepared_one")).await;
    let one_shard = trip("2pc", &[(SEOUL, 0, 2), (SEOUL + 2, 0, 2)]);
    // Hotel 4 is on shard 0 too but has no inventory: add it.
    hotels::add_hotel(&trips.shop.dbs[0], SEOUL + 2, "Seoul", "1.00", &[1], night(0), 10).await;
    let (status, body) = trips.post(&one_shard).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::CREATED, Some("confirmed")), "{body}");
    assert!(!std::path::Path::new(&trips.pause_file()).exists());
    assert_eq!(trips.prepared().await, 0);
    trips.assert_check_passes();
}

/// The server killed at each step of a two-shard two-phase commit; its successor's recovery
/// leaves every trip fully booked (once the decision is logged) or not at all (before), no
/// prepared transaction, and the counters equal to the reservations.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_at_any_step_of_two_phase_commit_is_recovered() {
    let mut trips = Trips::start(1).await;
    let steps = [
        ("prepared_one", "failed"),
        ("prepared_all", "failed"),
        ("decided", "confirmed"),
        ("committed_one", "confirmed"),
    ];
    for (index, (step, expected)) in steps.into_iter().enumerate() {
        let offset = 3 * index as u64;
        trips.kill();
        trips.spawn(&[], Some(step)).await;
        let killed = trip("2pc", &[(SEOUL, offset, offset + 2), (BUSAN, offset + 1, offset + 3)]);
        let sent = trips.paused_at(step, &killed).await;
        if step != "prepared_one" {
            assert!(trips.prepared().await >= 1, "{step}: nothing prepared");
        }
        trips.kill();
        assert!(sent.await.unwrap().is_err(), "{step}: the killed server answered");
        if step == "prepared_all" {
            let listed = trips.in_doubt();
            assert!(listed.iter().filter(|line| line["kind"] == "prepared_transaction").count() == 2, "{listed:?}");
            assert!(listed.iter().any(|line| line["kind"] == "trip" && line["status"] == "pending"), "{listed:?}");
        }
        trips.restart_and_expect(&killed, expected, step).await;
    }
    assert!(trips.in_doubt().is_empty());
}

/// The server killed at each step of a saga: after restart every saga is done, or fully
/// compensated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_at_any_step_of_a_saga_is_recovered() {
    let mut trips = Trips::start(1).await;
    let steps = [("saga_booked_one", "failed"), ("saga_booked_all", "confirmed"), ("saga_compensating", "failed")];
    for (index, (step, expected)) in steps.into_iter().enumerate() {
        let offset = 4 * index as u64;
        trips.kill();
        trips.spawn(&[], Some(step)).await;
        if step == "saga_compensating" {
            // Busan's night is taken, so that the second leg is refused and the saga compensates.
            let (status, _) = trips.post(&trip("2pc", &[(SEOUL, 50, 51), (BUSAN, offset + 1, offset + 2)])).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let killed = trip("saga", &[(SEOUL, offset, offset + 2), (BUSAN, offset + 1, offset + 3)]);
        let sent = trips.paused_at(step, &killed).await;
        assert!(trips.confirmed_legs(&killed).await >= 1, "{step}: the first leg is not booked");
        trips.kill();
        assert!(sent.await.unwrap().is_err());
        assert!(trips.in_doubt().iter().any(|line| line["kind"] == "saga_step"), "{step}");
        trips.restart_and_expect(&killed, expected, step).await;
    }
    assert!(trips.in_doubt().is_empty());
}

/// 100 trips of two legs (a hotel on each shard) race for the last 10 rooms, in each mode:
/// never overbooked, each trip whole or not at all once over, none stuck past its timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_trips_race_for_the_last_rooms() {
    let trips = Trips::start(10).await;
    for (mode, offset) in [("2pc", 0), ("saga", 10)] {
        let mut racing = JoinSet::new();
        for _ in 0..100 {
            let body = trip(mode, &[(SEOUL, offset, offset + 2), (BUSAN, offset + 1, offset + 3)]);
            let (url, http) = (trips.url.clone(), trips.http.clone());
            racing.spawn(async move {
                let response = http.post(format!("{url}/v1/trips")).json(&body).send().await.unwrap();
                (body, response.status())
            });
        }
        let started = Instant::now();
        let mut answered = std::collections::BTreeMap::new();
        let mut sent = Vec::new();
        while let Some(done) = racing.join_next().await {
            let (body, status) = done.unwrap();
            *answered.entry(status.as_u16()).or_insert(0) += 1;
            sent.push((body, status));
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{mode}: took {:?}", started.elapsed());
        assert!(answered.keys().all(|code| [201, 409, 503].contains(code)), "{mode}: {answered:?}");
        let mut whole = 0;
        for (body, status) in &sent {
            trips.settled(body).await;
            let legs = trips.confirmed_legs(body).await;
            match (legs, *status) {
                (2, StatusCode::CREATED | StatusCode::SERVICE_UNAVAILABLE) => whole += 1,
                (0, StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE) => {}
                (legs, status) => panic!("{mode}: a trip answered {status} ended with {legs} of its 2 legs"),
            }
        }
        assert!((1..=10).contains(&whole), "{mode}: {whole} whole trips for 10 rooms ({answered:?})");
        trips.assert_check_passes();
    }
    assert_eq!(trips.prepared().await, 0);
}

/// A shard stopped during trips: a two-phase trip fails with 503 and a saga is compensated;
/// nothing stays booked or locked once the shard is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_shard_fails_the_trip_and_leaves_nothing_locked() {
    let trips = Trips::start(1).await;
    let admin = pg::connect(&pg::base_url()).await;
    let down = &trips.names[1];
    admin.batch_execute(&format!("ALTER DATABASE {down} ALLOW_CONNECTIONS false")).await.unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = $1 AND application_name = 'clickstay-rooms-api'",
            &[down],
        )
        .await
        .unwrap();
    // Trip ids homed on shard 0, so that their log is reachable.
    let homed = |mut body: Value| {
        body["trip_id"] = json!(clickstay::rooms::claims::new_id_homed_on(0, 2));
        for leg in body["legs"].as_array_mut().unwrap() {
            leg["reservation_id"] = json!(clickstay::rooms::claims::new_id_homed_on(0, 2));
        }
        body
    };
    let two_phase = homed(trip("2pc", &[(SEOUL, 0, 2), (BUSAN, 1, 3)]));
    let (status, body) = trips.post(&two_phase).await;
    assert_eq!(
        (status, body["error"].as_str(), body["shard"].as_u64()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("shard_unavailable"), Some(1)),
        "{body}"
    );
    let saga = homed(trip("saga", &[(SEOUL, 0, 2), (BUSAN, 1, 3)]));
    let (status, body) = trips.post(&saga).await;
    // Its first leg is compensated at once; its second (on the stopped shard, perhaps booked)
    // once the shard is back.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        (body["error"].as_str(), body["trip_status"].as_str()),
        (Some("shard_unavailable"), Some("compensating")),
        "{body}"
    );
    // Seoul's only room was booked by the saga's first leg and given back: a new booking gets it.
    let (status, body) = trips.post(&homed(trip("saga", &[(SEOUL, 0, 1), (SEOUL, 1, 2)]))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    admin.batch_execute(&format!("ALTER DATABASE {down} ALLOW_CONNECTIONS true")).await.unwrap();
    for stopped in [&two_phase, &saga] {
        assert_eq!(trips.settled(stopped).await, "failed");
        assert_eq!(trips.confirmed_legs(stopped).await, 0);
    }
    // Busan's nights are free.
    let (status, body) = trips.post(&trip("2pc", &[(SEOUL, 5, 6), (BUSAN, 1, 3)])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    trips.assert_check_passes();
}
