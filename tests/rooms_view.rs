//! The availability view (`dataflows/rooms.toml`) against real PostgreSQL, two shards: its
//! answers equal the same questions asked in SQL once it has caught up, whoever changed the
//! tables; it refuses what it knows to be sold out without the database; and a killed view
//! rebuilds itself from a fresh snapshot and slot, losing and doubling nothing.

#[path = "common/hotels.rs"]
mod hotels;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/prometheus.rs"]
mod prometheus;
#[path = "common/scripts.rs"]
mod scripts;
#[path = "common/shop.rs"]
mod shop;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate};
use clickstay::rooms::model::ReservationRequest;
use clickstay::rooms::shards::Shards;
use clickstay::rooms::spec::RoomsSpec;
use clickstay::rooms::trips::coordinator::{TripSettings, Trips};
use clickstay::rooms::trips::{recovery, two_phase};
use clickstay::rooms::view::RoomsView;
use clickstay::rooms::{audit, booking, claims, server};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const CITIES: [&str; 3] = ["Seoul", "Lyon", "Oslo"];
const DAYS: u64 = 12;

fn night(offset: u64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2031, 5, 1).unwrap() + Days::new(offset)
}

fn spec_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/rooms.toml")
}

/// The test server: every test here holds it to read, the one that restarts it to write.
static SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Two fresh, migrated shards with `hotels` hotels (ids 1..=hotels) of 1 to 3 room types.
struct Shop {
    urls: Vec<String>,
    shards: Shards,
    dbs: Vec<tokio_postgres::Client>,
    http: reqwest::Client,
}

impl Shop {
    async fn new(hotels: i64) -> Self {
        let shop::TwoShards { urls, shards, dbs } = shop::two_shards("rooms_view", 16).await;
        let shop = Shop { urls, shards, dbs, http: reqwest::Client::new() };
        for hotel_id in 1..=hotels {
            shop.add_hotel(hotel_id, 1 + (hotel_id % 3) as i32).await;
        }
        shop
    }

    fn db(&self, hotel_id: i64) -> &tokio_postgres::Client {
        &self.dbs[self.shards.index_of(hotel_id)]
    }

    /// The database name of `shard`.
    fn db_name(&self, shard: usize) -> &str {
        self.urls[shard].rsplit('/').next().unwrap()
    }

    /// Hotel `hotel_id` in a city, with `room_types` room types of 2 to 4 rooms, for [`DAYS`] nights.
    async fn add_hotel(&self, hotel_id: i64, room_types: i32) {
        let city = CITIES[hotel_id as usize % CITIES.len()];
        let ratio = if hotel_id % 4 == 0 { "1.50" } else { "1.00" };
        let rooms: Vec<i32> = (1..=room_types).map(|room_type_id| 2 + (room_type_id + hotel_id as i32) % 3).collect();
        hotels::add_hotel(self.db(hotel_id), hotel_id, city, ratio, &rooms, night(0), DAYS as i32).await;
    }

    /// The WAL insert position of every shard now: a view that has reached it has seen every
    /// commit so far.
    async fn positions(&self) -> Vec<String> {
        let mut positions = Vec::new();
        for db in &self.dbs {
            positions.push(db.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0));
        }
        positions
    }

    async fn get(&self, url: &str) -> (StatusCode, Value) {
        let response = self.http.get(url).send().await.expect("GET failed");
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn book(&self, api: &str, hotel_id: i64, room_type_id: i32, from: u64, to: u64) -> (StatusCode, Value) {
        let request = json!({
            "reservation_id": uuid::Uuid::now_v7(), "hotel_id": hotel_id, "room_type_id": room_type_id,
            "start_date": night(from).to_string(), "end_date": night(to).to_string(), "guest_id": 7,
        });
        let response = self.http.post(format!("{api}/v1/reservations")).json(&request).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// Asserts that every availability answer of the view at `api` (once it reflects every
    /// commit so far) equals the SQL computation, for every hotel and several stays, and that
    /// searches by city and by list equal SQL too.
    async fn assert_view_equals_sql(&self, api: &str, hotels: i64) {
        let positions = self.positions().await;
        let stays = [(0, DAYS), (0, 1), (3, 7), (DAYS - 2, DAYS + 2)];
        for hotel_id in 1..=hotels + 1 {
            let shard = self.shards.index_of(hotel_id);
            for (from, to) in stays {
                let url = format!(
                    "{api}/v1/hotels/{hotel_id}/availability?start={}&end={}&min_lsn={}",
                    night(from),
                    night(to),
                    positions[shard]
                );
                let (status, mut body) = self.get(&url).await;
                let client = self.shards.connect(shard).await.unwrap();
                let expected = booking::availability(&client, hotel_id, night(from), night(to)).await.unwrap();
                match expected {
                    None => assert_eq!(status, StatusCode::NOT_FOUND, "hotel {hotel_id}: {body}"),
                    Some(expected) => {
                        assert_eq!(status, StatusCode::OK, "{body}");
                        let lsn = body.as_object_mut().unwrap().remove("lsn").unwrap();
                        assert!(lsn_at_least(lsn.as_str().unwrap(), &positions[shard]), "{lsn} < {}", positions[shard]);
                        assert_eq!(body, json!(expected), "hotel {hotel_id}, nights {from}..{to}");
                    }
                }
            }
        }
        // Searches are served without min_lsn: the availability answers above have shown that
        // the view is past `positions`, and nothing changes meanwhile.
        for (from, to) in [(0, 2), (4, 9)] {
            for rooms in [1, 2, 4] {
                let mut questions: Vec<(String, Option<&str>, Vec<i64>)> =
                    CITIES.iter().map(|city| (format!("city={city}"), Some(*city), Vec::new())).collect();
                questions.push(("hotels=1,2,3,5,8,999".into(), None, vec![1, 2, 3, 5, 8, 999]));
                for (filter, city, list) in questions {
                    let url = format!(
                        "{api}/v1/availability/search?start={}&end={}&rooms={rooms}&{filter}",
                        night(from),
                        night(to)
                    );
                    let (status, body) = self.get(&url).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    let mut expected = Vec::new();
                    for index in 0..self.shards.len() {
                        let client = self.shards.connect(index).await.unwrap();
                        expected.extend(
                            booking::search(&client, city, &list, night(from), night(to), rooms).await.unwrap(),
                        );
                    }
                    expected.sort_by_key(|a| a.hotel_id);
                    assert_eq!(body["hotels"], json!(expected), "{filter}, rooms {rooms}, nights {from}..{to}");
                }
            }
        }
    }

    async fn assert_invariants(&self) {
        for (index, db) in self.dbs.iter().enumerate() {
            let violations = audit::audit(db).await.unwrap();
            assert!(violations.is_empty(), "shard {index}: {violations:?}");
        }
    }
}

/// The shards' server restarted under the running view: each shard's stream breaks, its part
/// of the view is rebuilt from a new slot and snapshot on the restarted server, and the view
/// answers what SQL answers again, after changes made before, during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_server_under_the_view_is_followed_again() {
    let _server = SERVER.write().await;
    let hotels = 6;
    let mut shop = Shop::new(hotels).await;
    let (api, view) = serve_with_view(&shop, RoomsSpec::load(&spec_path()).unwrap()).await;
    let (mut rng, mut booked) = (Lcg(11), Vec::new());
    for _ in 0..40 {
        random_change(&shop, &api, &mut rng, hotels, &mut booked).await;
    }
    shop.assert_view_equals_sql(&api, hotels).await;
    let before = pg::wal_senders(shop.db_name(0)).await;

    pg::restart_server();
    for (db, url) in shop.dbs.iter_mut().zip(&shop.urls) {
        *db = pg::connect(url).await;
    }
    // Changes right after the restart, while the view rebuilds.
    for hotel_id in 1..=hotels {
        shop.db(hotel_id)
            .execute("UPDATE hotel SET name = name || ' (restarted)' WHERE hotel_id = $1", &[&hotel_id])
            .await
            .unwrap();
    }
    // Both shards' streams broke with the server; the view serves them again once rebuilt.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, health) = shop.get(&format!("{api}/healthz")).await;
        let serving = (0..2).all(|shard| health["shards"][shard]["view"]["state"] == "serving");
        let after = pg::wal_senders(shop.db_name(0)).await;
        if serving && !after.is_empty() && after != before {
            break;
        }
        assert!(Instant::now() < deadline, "the view did not follow the restarted server: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..40 {
        random_change(&shop, &api, &mut rng, hotels, &mut booked).await;
    }
    shop.assert_view_equals_sql(&api, hotels).await;
    shop.assert_invariants().await;
    view.stop();
}

/// A quiet database whose WAL moved past its last commit (a CHECKPOINT, which is not decoded):
/// a question with that position as `min_lsn` is answered, without a commit to carry the view
/// there: the server's keepalives do (else a 503 after `queries.max_wait`). Ten in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_database_answers_a_position_no_commit_follows() {
    let _server = SERVER.read().await;
    let shop = Shop::new(2).await;
    let (api, view) = serve_with_view(&shop, RoomsSpec::load(&spec_path()).unwrap()).await;
    for round in 0..10 {
        shop.db(1).batch_execute("CHECKPOINT").await.unwrap();
        let position = &shop.positions().await[shop.shards.index_of(1)];
        let url = format!("{api}/v1/hotels/1/availability?start={}&end={}&min_lsn={position}", night(0), night(1));
        let (status, body) = shop.get(&url).await;
        assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        assert!(lsn_at_least(body["lsn"].as_str().unwrap(), position), "round {round}: {body} before {position}");
    }
    view.stop();
}

fn lsn_at_least(lsn: &str, floor: &str) -> bool {
    let parse = clickstay::sources::postgres_cdc::parse_lsn;
    parse(lsn).unwrap() >= parse(floor).unwrap()
}

/// An API with the view, in this process.
async fn serve_with_view(shop: &Shop, spec: RoomsSpec) -> (String, RoomsView) {
    let view = RoomsView::start(spec, &shop.urls, 2).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve_on(listener, shop.shards.clone(), Some(view.clone()), std::future::pending()));
    (url, view)
}

/// A deterministic pseudo-random sequence.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// One random change: a booking or a cancellation through the API, or a direct SQL update of
/// inventory, hotels or room types, as an operator with `psql` would make it.
async fn random_change(shop: &Shop, api: &str, rng: &mut Lcg, hotels: i64, booked: &mut Vec<String>) {
    let hotel_id = 1 + rng.below(hotels as u64) as i64;
    let db = shop.db(hotel_id);
    match rng.below(10) {
        0..=4 => {
            let from = rng.below(DAYS);
            let (status, body) =
                shop.book(api, hotel_id, 1 + rng.below(3) as i32, from, (from + 1 + rng.below(3)).min(DAYS)).await;
            assert!([StatusCode::CREATED, StatusCode::CONFLICT, StatusCode::NOT_FOUND].contains(&status), "{body}");
            if status == StatusCode::CREATED {
                booked.push(body["reservation_id"].as_str().unwrap().to_string());
            }
        }
        5 if !booked.is_empty() => {
            let id = booked.swap_remove(rng.below(booked.len() as u64) as usize);
            let status = shop.http.delete(format!("{api}/v1/reservations/{id}")).send().await.unwrap().status();
            assert_eq!(status, StatusCode::OK);
        }
        6 => {
            // More (or fewer) rooms on some nights; the CHECK refuses what would overbook.
            let _ = db
                .execute(
                    "UPDATE room_type_inventory SET total_inventory = greatest(0, total_inventory + $2), version = version + 1
                      WHERE hotel_id = $1 AND date BETWEEN $3 AND $3 + 2",
                    &[&hotel_id, &(rng.below(5) as i32 - 2), &night(rng.below(DAYS))],
                )
                .await;
        }
        7 => {
            // A night withdrawn from sale (only if nobody holds it).
            let _ = db
                .execute(
                    "DELETE FROM room_type_inventory WHERE hotel_id = $1 AND date = $2 AND total_reserved = 0",
                    &[&hotel_id, &night(rng.below(DAYS))],
                )
                .await;
        }
        8 => {
            let city = CITIES[rng.below(CITIES.len() as u64) as usize];
            db.execute("UPDATE hotel SET city = $2 WHERE hotel_id = $1", &[&hotel_id, &city]).await.unwrap();
        }
        _ => {
            // A new room type, or a ratio change (refused if it would overbook a night).
            let known: i64 =
                db.query_one("SELECT count(*) FROM room_type WHERE hotel_id = $1", &[&hotel_id]).await.unwrap().get(0);
            if known < 4 {
                hotels::add_room_type(db, hotel_id, known as i32 + 1).await;
            } else {
                let _ = db.execute("UPDATE hotel SET overbooking_ratio = 1.20 WHERE hotel_id = $1", &[&hotel_id]).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_any_mix_of_changes_the_view_answers_what_sql_answers() {
    let _server = SERVER.read().await;
    let hotels = 12;
    let shop = Shop::new(hotels).await;
    let (api, view) = serve_with_view(&shop, RoomsSpec::load(&spec_path()).unwrap()).await;
    shop.assert_view_equals_sql(&api, hotels).await;
    let mut rng = Lcg(42);
    let mut booked = Vec::new();
    for round in 0..4 {
        for _ in 0..60 {
            random_change(&shop, &api, &mut rng, hotels, &mut booked).await;
        }
        // A bulk change in one transaction, as an import would make it.
        shop.db(round + 1)
            .batch_execute(
                "UPDATE room_type_inventory SET total_inventory = total_inventory + 1, version = version + 1",
            )
            .await
            .unwrap();
        shop.assert_view_equals_sql(&api, hotels).await;
    }
    shop.assert_invariants().await;
    view.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_view_refuses_what_it_knows_is_sold_out_and_the_database_has_the_last_word() {
    let _server = SERVER.read().await;
    let shop = Shop::new(2).await;
    let (api, view) = serve_with_view(&shop, RoomsSpec::load(&spec_path()).unwrap()).await;
    let hotel_id = 1; // room type 1 has 2 + (1 + 1) % 3 = 4 rooms
    let (status, _) = shop.get(&format!("{api}/v1/hotels/1/availability?start={}&end={}", night(0), night(1))).await;
    assert_eq!(status, StatusCode::OK);

    // Sold out behind the view's back: the stale view lets the booking through to the
    // database, whose answer is 409; nothing is oversold. The shard's WAL sender is frozen
    // meanwhile, which keeps the view stale.
    let senders = pg::wal_senders(shop.db_name(shop.shards.index_of(hotel_id))).await;
    assert_eq!(senders.len(), 1, "the shard's WAL sender: {senders:?}");
    pg::signal_all(&senders, libc::SIGSTOP);
    let db = shop.db(hotel_id);
    db.execute(
        "UPDATE room_type_inventory SET total_reserved = total_inventory WHERE hotel_id = 1 AND room_type_id = 1",
        &[],
    )
    .await
    .unwrap();
    let (status, body) = shop.book(&api, hotel_id, 1, 2, 4).await;
    pg::signal_all(&senders, libc::SIGCONT);
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["night"], night(2).to_string(), "{body}");
    assert_ne!(body["answered_by"], "view", "the stale view cannot know: {body}");
    shop.assert_invariants_except_reservations(hotel_id).await;

    // Once the view has caught up, it answers the 409 itself: proven by holding the rows
    // locked, which would make a booking that reached the database wait.
    let position = &shop.positions().await[shop.shards.index_of(hotel_id)];
    let url = format!("{api}/v1/hotels/1/availability?start={}&end={}&min_lsn={position}", night(0), night(DAYS));
    let (status, body) = shop.get(&url).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_types"][0]["available"], 0, "{body}");
    let mut locker = pg::connect(&shop.urls[shop.shards.index_of(hotel_id)]).await;
    let lock = locker.transaction().await.unwrap();
    lock.execute("SELECT 1 FROM room_type_inventory WHERE hotel_id = 1 FOR UPDATE", &[]).await.unwrap();
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(2), shop.book(&api, hotel_id, 1, 5, 6))
        .await
        .expect("the booking waited for the database: the view did not refuse it");
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!((body["answered_by"].as_str(), body["night"].as_str()), (Some("view"), Some(&*night(5).to_string())));
    assert!(started.elapsed() < Duration::from_secs(2));
    // Room type 2 is not sold out: that booking must wait for the lock, i.e. reach the database.
    let waited = tokio::time::timeout(Duration::from_millis(500), shop.book(&api, hotel_id, 2, 5, 6)).await;
    assert!(waited.is_err(), "a booking the view cannot refuse goes to the database");
    lock.rollback().await.unwrap();

    // A min_lsn the database has not reached yet: bounded wait, then 503.
    let url = format!("{api}/v1/hotels/1/availability?start={}&end={}&min_lsn=FFFF/0", night(0), night(1));
    let (status, body) = shop.get(&url).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("view_behind")), "{body}");
    let (status, body) =
        shop.get(&format!("{api}/v1/hotels/1/availability?start={}&end={}&min_lsn=nope", night(0), night(1))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    view.stop();
}

impl Shop {
    /// No night of `hotel_id` oversold (direct SQL above bypassed the reservations, so only the
    /// CHECK's half of the invariants applies).
    async fn assert_invariants_except_reservations(&self, hotel_id: i64) {
        let oversold: i64 = self
            .db(hotel_id)
            .query_one(
                "SELECT count(*) FROM room_type_inventory WHERE total_reserved > floor(total_inventory * overbooking_ratio)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(oversold, 0);
    }
}

/// `clickstay rooms serve --dataflow` as a child process on a free port.
struct ViewProcess {
    child: Child,
    url: String,
}

impl ViewProcess {
    async fn start(shop: &Shop) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_clickstay"))
            .args(["rooms", "serve", "--dataflow"])
            .arg(spec_path())
            .args(["--listen", &format!("127.0.0.1:{port}"), "-w", "2"])
            .env("CLICKSTAY_HOTEL_SHARDS", shop.urls.join(","))
            .env("RUST_LOG", "warn")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while shop.http.get(format!("{url}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "the view did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ViewProcess { child, url }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for ViewProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The view's slots on a shard: name, WAL retained behind the insert position, and how far
/// behind its confirmed position is.
async fn slots(db: &tokio_postgres::Client) -> Vec<(String, i64, i64)> {
    db.query(
        "SELECT slot_name::text,
                pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn)::bigint,
                pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint
           FROM pg_replication_slots
          WHERE database = current_database()",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect()
}

// Longer than most: one scenario (kill, changes while down and while starting, restart, slot
// size) that reads top to bottom as a user would run it; split, its steps would lose the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_view_rebuilds_from_snapshot_and_slot_and_its_slot_stays_small() {
    let _server = SERVER.read().await;
    let hotels = 10;
    let shop = Shop::new(hotels).await;
    let mut process = ViewProcess::start(&shop).await;
    let mut rng = Lcg(7);
    let mut booked = Vec::new();
    for _ in 0..80 {
        random_change(&shop, &process.url, &mut rng, hotels, &mut booked).await;
    }
    shop.assert_view_equals_sql(&process.url, hotels).await;

    // While it runs, each shard has one temporary slot, and the slot follows the WAL: after
    // more traffic and a checkpoint, neither its confirmed position nor the WAL it retains
    // grows with the work done.
    for _ in 0..300 {
        random_change(&shop, &process.url, &mut rng, hotels, &mut booked).await;
    }
    shop.assert_view_equals_sql(&process.url, hotels).await;
    for db in &shop.dbs {
        db.batch_execute("CHECKPOINT").await.unwrap();
    }
    let mut bounded = false;
    for _ in 0..100 {
        let mut all = Vec::new();
        for db in &shop.dbs {
            all.extend(slots(db).await);
        }
        assert_eq!(all.len(), 2, "one slot per shard: {all:?}");
        // Other tests write WAL on the same server, so "small" is relative: a few MB.
        if all.iter().all(|(_, retained, behind)| *retained < 16 << 20 && *behind < 4 << 20) {
            bounded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bounded, "the slots do not follow the WAL");
    // The view tells the server how far it has applied: each slot's confirmed position passes
    // the WAL written so far (the CHECKPOINT included, which no commit follows), within seconds.
    let mut targets = Vec::new();
    for db in &shop.dbs {
        let row = db.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap();
        targets.push(row.get::<_, String>(0));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for (db, target) in shop.dbs.iter().zip(&targets) {
        loop {
            let row = db
                .query_one(
                    "SELECT bool_and(confirmed_flush_lsn >= $1::text::pg_lsn), min(confirmed_flush_lsn)::text
                       FROM pg_replication_slots WHERE database = current_database()",
                    &[target],
                )
                .await
                .unwrap();
            if row.get::<_, Option<bool>>(0) == Some(true) {
                break;
            }
            let confirmed: Option<String> = row.get(1);
            assert!(Instant::now() < deadline, "the slot's confirmed position stays at {confirmed:?}, before {target}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Kill -9: the temporary slots go with the sessions, so nothing holds WAL while it is down.
    process.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = 0;
        for db in &shop.dbs {
            left += slots(db).await.len();
        }
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "slots left behind by the killed view");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Changes while it is down (direct SQL: the view must learn them from the snapshot).
    for hotel_id in 1..=3 {
        shop.db(hotel_id)
            .execute(
                "UPDATE room_type_inventory SET total_inventory = total_inventory + 2 WHERE hotel_id = $1",
                &[&hotel_id],
            )
            .await
            .unwrap();
    }
    // And changes while it starts again: transactions that commit between the slot's creation
    // and the snapshot are in both, and must be applied once.
    let writers: Vec<_> = shop
        .urls
        .iter()
        .map(|url| {
            let url = url.clone();
            tokio::spawn(async move {
                let db = pg::connect(&url).await;
                let started = Instant::now();
                let mut step = 0;
                while started.elapsed() < Duration::from_millis(1500) {
                    step += 1;
                    db.execute(
                        "UPDATE room_type_inventory SET total_inventory = total_inventory + 1, version = version + 1
                          WHERE date = $1",
                        &[&night(step as u64 % DAYS)],
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let process = ViewProcess::start(&shop).await;
    for writer in writers {
        writer.await.unwrap();
    }
    shop.assert_view_equals_sql(&process.url, hotels).await;
    for _ in 0..80 {
        random_change(&shop, &process.url, &mut rng, hotels, &mut booked).await;
    }
    shop.assert_view_equals_sql(&process.url, hotels).await;
    shop.assert_invariants().await;
}

/// A random trip of two legs (two random hotels, often on both shards) through the API: booked,
/// refused, or booked and then cancelled.
async fn random_trip(shop: &Shop, api: &str, rng: &mut Lcg, hotels: i64) {
    let mode = if rng.below(2) == 0 { "2pc" } else { "saga" };
    let legs: Vec<Value> = (0..2)
        .map(|_| {
            let from = rng.below(DAYS - 2);
            json!({ "reservation_id": uuid::Uuid::now_v7(), "hotel_id": 1 + rng.below(hotels as u64) as i64,
                    "room_type_id": 1, "start_date": night(from), "end_date": night(from + 1 + rng.below(2)) })
        })
        .collect();
    if legs[0]["hotel_id"] == legs[1]["hotel_id"] {
        return; // the legs may overlap: a 400, not a change
    }
    let trip = json!({ "trip_id": uuid::Uuid::now_v7(), "guest_id": 7, "mode": mode, "legs": legs });
    let response = shop.http.post(format!("{api}/v1/trips")).json(&trip).send().await.unwrap();
    let status = response.status();
    assert!(
        [StatusCode::CREATED, StatusCode::CONFLICT].contains(&status),
        "{status}: {}",
        response.text().await.unwrap()
    );
    if status == StatusCode::CREATED && rng.below(4) == 0 {
        let url = format!("{api}/v1/trips/{}", trip["trip_id"].as_str().unwrap());
        assert_eq!(shop.http.delete(url).send().await.unwrap().status(), StatusCode::OK);
    }
}

/// What a coordinator that crashed in phase two leaves on `shard`: `leg` booked in a
/// transaction prepared under a trip's global id, not committed.
async fn prepare_leg(shop: &Shop, trip_id: uuid::Uuid, leg: &ReservationRequest) {
    let shard = shop.shards.index_of(leg.hotel_id);
    let db = &shop.dbs[shard];
    db.batch_execute("BEGIN").await.unwrap();
    let row = db.query_one(booking::RESERVE_SQL, &leg.sql_params()).await.unwrap();
    assert_eq!(row.get::<_, i32>("nights_taken"), leg.nights());
    db.batch_execute(&format!("PREPARE TRANSACTION '{}'", two_phase::gid(trip_id, shard))).await.unwrap();
}

/// Trips under the view: it reflects a trip only once committed. A prepared transaction is not
/// visible (a coordinator crashed before phase two: one trip decided commit, one undecided);
/// once recovery commits the one and rolls back the other, the view answers what SQL answers,
/// after a mix of two-phase trips, sagas (whose compensations retract their legs), refusals and
/// cancellations.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trips_show_in_the_view_only_once_committed() {
    let _server = SERVER.read().await;
    let hotels = 8;
    let shop = Shop::new(hotels).await;
    let (api, view) = serve_with_view(&shop, RoomsSpec::load(&spec_path()).unwrap()).await;
    let mut rng = Lcg(7);
    for _ in 0..60 {
        random_trip(&shop, &api, &mut rng, hotels).await;
    }
    shop.assert_view_equals_sql(&api, hotels).await;

    let leg = |reservation: u128, hotel_id: i64| ReservationRequest {
        reservation_id: uuid::Uuid::from_u128(reservation),
        hotel_id,
        room_type_id: 1,
        start_date: night(DAYS - 1),
        end_date: night(DAYS),
        guest_id: 7,
    };
    let (decided, undecided) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let home = &shop.dbs[claims::home_shard(decided, 2)];
    home.execute(
        "INSERT INTO trip (trip_id, guest_id, mode, legs, participants, decision) VALUES ($1, 7, '2pc', '[]', '{0,1}', 'commit')",
        &[&decided],
    )
    .await
    .unwrap();
    prepare_leg(&shop, decided, &leg(1, 2)).await;
    prepare_leg(&shop, undecided, &leg(2, 3)).await;
    // Prepared, not committed: neither SQL nor the view sees them.
    shop.assert_view_equals_sql(&api, hotels).await;
    let free = |body: &Value| body["room_types"][0]["available"].as_i64().unwrap();
    let url = |hotel_id: i64| {
        format!("{api}/v1/hotels/{hotel_id}/availability?start={}&end={}", night(DAYS - 1), night(DAYS))
    };
    let before = [free(&shop.get(&url(2)).await.1), free(&shop.get(&url(3)).await.1)];

    let trips = Trips::new(shop.shards.clone(), claims::spawn_all(&shop.shards), TripSettings::default());
    let report = recovery::recover(&trips, Duration::ZERO, Duration::ZERO).await;
    assert_eq!((report.committed, report.rolled_back), (1, 1), "{report:?}");
    shop.assert_view_equals_sql(&api, hotels).await;
    let after = [free(&shop.get(&url(2)).await.1), free(&shop.get(&url(3)).await.1)];
    assert_eq!(after, [before[0] - 1, before[1]], "the committed leg shows, the rolled-back one does not");
    shop.assert_invariants().await;
    view.stop();
}

/// `rooms serve`'s `/metrics`, parsed with a real Prometheus parser: bookings by outcome equal
/// what this test did (the view's refusals apart from the database's), every booking request
/// is timed under its route, each shard has its pool and view-lag gauges, the lag grows while
/// a shard's changes are held back, and no trip is in doubt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_bookings_by_outcome_and_show_the_views_lag() {
    let _server = SERVER.read().await;
    let shop = Shop::new(2).await;
    let server = ViewProcess::start(&shop).await;
    let api = server.url.as_str();
    let shard = shop.shards.index_of(1);
    let caught_up = || async {
        let position = &shop.positions().await[shard];
        let url = format!("{api}/v1/hotels/1/availability?start={}&end={}&min_lsn={position}", night(0), night(1));
        assert_eq!(shop.get(&url).await.0, StatusCode::OK);
    };
    caught_up().await;

    // Room type 1 of hotel 1 has 4 rooms: 4 confirmed, then sold out, then (the view caught
    // up) sold out again, said by the view.
    let mut sold_out_by = Vec::new();
    for _ in 0..4 {
        assert_eq!(shop.book(api, 1, 1, 0, 1).await.0, StatusCode::CREATED);
    }
    for _ in 0..2 {
        let (status, body) = shop.book(api, 1, 1, 0, 1).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        sold_out_by.push(body["answered_by"].as_str() == Some("view"));
        caught_up().await;
    }
    assert_eq!(sold_out_by.last(), Some(&true), "the caught-up view refuses the stay itself");
    // A repeat, two client errors.
    let request = json!({
        "reservation_id": uuid::Uuid::now_v7(), "hotel_id": 2, "room_type_id": 1,
        "start_date": night(0).to_string(), "end_date": night(1).to_string(), "guest_id": 7,
    });
    for expected in [StatusCode::CREATED, StatusCode::OK] {
        let response = shop.http.post(format!("{api}/v1/reservations")).json(&request).send().await.unwrap();
        assert_eq!(response.status(), expected);
    }
    let malformed = shop.http.post(format!("{api}/v1/reservations")).header("content-type", "application/json");
    let malformed = malformed.body("{").send().await.unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(shop.book(api, 999, 1, 0, 1).await.0, StatusCode::NOT_FOUND);

    let scrape = scrape_until(&shop, api, "both shards sampled", |s| {
        prometheus::label_values(s, "clickstay_rooms_view_lag_bytes", "shard") == ["0", "1"]
    })
    .await;
    let bookings =
        |outcome: &str| prometheus::value(&scrape, "clickstay_rooms_bookings_total", &[("outcome", outcome)]);
    let by_view = sold_out_by.iter().filter(|by_view| **by_view).count() as f64;
    assert_eq!(bookings("confirmed"), Some(5.0));
    assert_eq!(bookings("repeat"), Some(1.0));
    assert_eq!(bookings("sold_out_view"), Some(by_view));
    assert_eq!(bookings("sold_out_db").unwrap_or(0.0), 2.0 - by_view);
    assert_eq!(bookings("client_error"), Some(2.0));
    assert_eq!(bookings("server_error"), None);
    let timed = [("route", "/v1/reservations"), ("method", "POST")];
    assert_eq!(prometheus::value(&scrape, "clickstay_http_request_duration_seconds", &timed), Some(10.0));
    assert!(prometheus::value(&scrape, "clickstay_rooms_view_questions_total", &[]).unwrap() >= 6.0);
    for gauge in ["clickstay_rooms_pool_in_use", "clickstay_rooms_pool_waiting", "clickstay_rooms_shard_up"] {
        assert_eq!(prometheus::label_values(&scrape, gauge, "shard"), ["0", "1"], "{gauge}");
    }
    assert_eq!(prometheus::value(&scrape, "clickstay_rooms_shard_up", &[]), Some(2.0));
    assert_eq!(prometheus::value(&scrape, "clickstay_rooms_prepared_in_doubt", &[]), Some(0.0));
    assert_eq!(prometheus::value(&scrape, "clickstay_rooms_trips_unfinished", &[]), Some(0.0));

    // Hold the shard's changes back: its lag in bytes and seconds grows.
    let senders = pg::wal_senders(shop.db_name(shard)).await;
    pg::signal_all(&senders, libc::SIGSTOP);
    shop.db(1)
        .execute("UPDATE room_type_inventory SET total_inventory = total_inventory + 1 WHERE hotel_id = 1", &[])
        .await
        .unwrap();
    let label = shard.to_string();
    let behind = scrape_until(&shop, api, "the held-back shard's lag", |s| {
        let lag = |name| prometheus::value(s, name, &[("shard", &label)]).unwrap_or(0.0);
        lag("clickstay_rooms_view_lag_bytes") > 0.0 && lag("clickstay_rooms_view_lag_seconds") >= 1.0
    })
    .await;
    pg::signal_all(&senders, libc::SIGCONT);
    assert!(prometheus::value(&behind, "clickstay_rooms_view_lag_seconds", &[("shard", &label)]).unwrap() < 60.0);
}

/// Scrapes `api` until `done` holds (at most 20 s); the last scrape.
async fn scrape_until(
    shop: &Shop,
    api: &str,
    what: &str,
    done: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(scrape) = prometheus::scrape(&shop.http, api).await
            && done(&scrape)
        {
            return scrape;
        }
        assert!(Instant::now() < deadline, "{what}: not seen in 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
