//! The reservation API against real PostgreSQL (two shards, two databases on the test server):
//! concurrency, idempotency, cancellation and bad requests, each checked against the database
//! invariants (see `clickstay::rooms::audit`).
//!
//! Every test runs twice: against the plain API (every request to the database) and through
//! the availability view (`dataflows/rooms.toml`), where availability comes from the dataflow
//! and bookings it knows to be sold out never reach the database.

#[path = "common/hotels.rs"]
mod hotels;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;

use chrono::NaiveDate;
use clickstay::rooms::shards::Shards;
use clickstay::rooms::spec::RoomsSpec;
use clickstay::rooms::view::RoomsView;
use clickstay::rooms::{audit, migrate, server};
use hotels::night;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A running API on two fresh shards, with direct clients to both databases.
struct Api {
    url: String,
    http: reqwest::Client,
    shards: Shards,
    dbs: Vec<tokio_postgres::Client>,
    through_view: bool,
    view: Option<RoomsView>,
}

impl Drop for Api {
    /// Stops the view's workers and CDC readers, so finished tests leave nothing polling.
    fn drop(&mut self) {
        if let Some(view) = &self.view {
            view.stop();
        }
    }
}

async fn start_api(through_view: bool) -> Api {
    let urls = vec![pg::fresh_database("rooms_api").await, pg::fresh_database("rooms_api").await];
    let shards = Shards::new(&urls, 32).unwrap();
    migrate::migrate_all(&shards).await.unwrap();
    let view = through_view.then(|| {
        let spec = RoomsSpec::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/rooms.toml"));
        RoomsView::start(spec.unwrap(), &urls, 2).unwrap()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve_on(listener, shards.clone(), view.clone(), std::future::pending()));
    let mut dbs = Vec::new();
    for url in &urls {
        dbs.push(pg::connect(url).await);
    }
    Api { url, http: reqwest::Client::new(), shards, dbs, through_view, view }
}

/// Every test, once per path.
macro_rules! on_both_paths {
    ($($test:ident),* $(,)?) => {
        mod through_sql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(super::start_api(false).await).await
            })*
        }
        mod through_the_view {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(super::start_api(true).await).await
            })*
        }
    };
}

on_both_paths!(
    five_hundred_clients_race_for_the_last_ten_rooms,
    overbooking_ratio_is_honoured_and_enforced_by_the_database,
    the_same_reservation_id_fifty_times_creates_one_reservation,
    a_cancelled_reservation_frees_its_nights_and_cancelling_twice_is_harmless,
    concurrent_cancels_give_the_nights_back_once,
    bad_requests_get_their_status_and_a_message_and_change_nothing,
    availability_matches_an_oracle_after_random_bookings,
    two_hundred_ids_each_booked_for_hotels_on_two_shards_win_once,
    ids_minted_for_a_hotel_are_claimed_on_its_shard,
);

impl Api {
    /// The database of the shard that owns `hotel_id`.
    fn db(&self, hotel_id: i64) -> &tokio_postgres::Client {
        &self.dbs[self.shards.index_of(hotel_id)]
    }

    /// A hotel with `rooms` rooms in each of room types 1..=rooms.len(), for `days` nights
    /// from `night(0)`, nothing reserved.
    async fn add_hotel(&self, hotel_id: i64, ratio: &str, rooms: &[i32], days: i32) {
        hotels::add_hotel(self.db(hotel_id), hotel_id, "", ratio, rooms, night(0), days).await;
    }

    async fn new_id(&self) -> String {
        let (status, body) = self.send(self.http.post(format!("{}/v1/reservation-ids", self.url))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["reservation_id"].as_str().unwrap().to_string()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("HTTP request failed");
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, body)
    }

    async fn post_raw(&self, body: String) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(format!("{}/v1/reservations", self.url))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    async fn book(&self, request: &Value) -> (StatusCode, Value) {
        self.post_raw(request.to_string()).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.url))).await
    }

    async fn cancel(&self, id: &str) -> (StatusCode, Value) {
        self.send(self.http.delete(format!("{}/v1/reservations/{id}", self.url))).await
    }

    /// `available` of `room_type_id` over `from..to` as the API reports it. Through the view,
    /// the answer is asked to reflect every commit so far (read-your-writes with `min_lsn`).
    async fn available(&self, hotel_id: i64, room_type_id: i64, from: u64, to: u64) -> i64 {
        let mut path = format!("/v1/hotels/{hotel_id}/availability?start={}&end={}", night(from), night(to));
        if self.through_view {
            let lsn: String =
                self.db(hotel_id).query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
            path.push_str(&format!("&min_lsn={lsn}"));
        }
        let (status, body) = self.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["room_types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rt| rt["room_type_id"] == room_type_id)
            .unwrap()["available"]
            .as_i64()
            .unwrap()
    }

    /// Asserts both invariants on both shards.
    async fn assert_invariants(&self) {
        for (index, db) in self.dbs.iter().enumerate() {
            let violations = audit::audit(db).await.unwrap();
            assert!(violations.is_empty(), "shard {index} breaks the invariants: {violations:?}");
        }
    }

    async fn total_reserved(&self, hotel_id: i64, room_type_id: i32, offset: u64) -> i32 {
        self.db(hotel_id)
            .query_one(
                "SELECT total_reserved FROM room_type_inventory WHERE hotel_id = $1 AND room_type_id = $2 AND date = $3",
                &[&hotel_id, &room_type_id, &night(offset)],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn confirmed_count(&self, hotel_id: i64) -> i64 {
        self.db(hotel_id)
            .query_one("SELECT count(*) FROM reservation WHERE hotel_id = $1 AND status = 'confirmed'", &[&hotel_id])
            .await
            .unwrap()
            .get(0)
    }

    /// Everything the API could change, on every shard, as one comparable value.
    async fn snapshot(&self) -> Vec<String> {
        let mut state = Vec::new();
        for db in &self.dbs {
            for query in [
                "SELECT coalesce(string_agg(concat_ws(',', hotel_id, room_type_id, date, total_reserved, version), ';' ORDER BY 1), '') FROM room_type_inventory",
                "SELECT coalesce(string_agg(concat_ws(',', reservation_id, status, start_date, end_date), ';' ORDER BY 1), '') FROM reservation",
            ] {
                state.push(db.query_one(query, &[]).await.unwrap().get(0));
            }
        }
        state
    }
}

fn stay(id: &str, hotel_id: i64, room_type_id: i32, from: u64, to: u64, guest_id: i64) -> Value {
    json!({
        "reservation_id": id, "hotel_id": hotel_id, "room_type_id": room_type_id,
        "start_date": night(from).to_string(), "end_date": night(to).to_string(), "guest_id": guest_id,
    })
}

async fn five_hundred_clients_race_for_the_last_ten_rooms(api: Api) {
    api.add_hotel(1, "1.00", &[12], 10).await;
    // Two rooms are already taken by real reservations over every night: 10 are left.
    for guest in 0..2 {
        let (status, body) = api.book(&stay(&api.new_id().await, 1, 1, 0, 10, guest)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(api.available(1, 1, 0, 10).await, 10);

    // Every stay covers night 3, so exactly 10 of them fit, whichever they are.
    let mut clients = JoinSet::new();
    for client in 0..500u64 {
        let request = stay(&uuid::Uuid::new_v4().to_string(), 1, 1, client % 4, 4 + client % 3, 100 + client as i64);
        let (http, url) = (api.http.clone(), api.url.clone());
        clients.spawn(async move {
            let response = http.post(format!("{url}/v1/reservations")).json(&request).send().await.unwrap();
            (request, response.status(), response.json::<Value>().await.unwrap())
        });
    }
    let (mut confirmed, mut sold_out) = (0, Vec::new());
    while let Some(result) = clients.join_next().await {
        let (request, status, body) = result.unwrap();
        match status {
            StatusCode::CREATED => confirmed += 1,
            StatusCode::CONFLICT => {
                assert_eq!(body["error"], "sold_out", "{body}");
                let full: NaiveDate = body["night"].as_str().unwrap().parse().unwrap();
                let (start, end): (NaiveDate, NaiveDate) = (
                    request["start_date"].as_str().unwrap().parse().unwrap(),
                    request["end_date"].as_str().unwrap().parse().unwrap(),
                );
                assert!(start <= full && full < end, "{full} is not a night of {request}");
                sold_out.push(full);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(confirmed, 10);
    assert_eq!(sold_out.len(), 490);
    // Each night named as full is full.
    for full in sold_out {
        let offset = (full - night(0)).num_days() as u64;
        assert_eq!(api.total_reserved(1, 1, offset).await, 12, "night {full} was reported full");
    }
    assert_eq!(api.total_reserved(1, 1, 3).await, 12);
    assert_eq!(api.confirmed_count(1).await, 12);
    assert_eq!(api.available(1, 1, 3, 4).await, 0);
    api.assert_invariants().await;
}

async fn overbooking_ratio_is_honoured_and_enforced_by_the_database(api: Api) {
    api.add_hotel(2, "1.10", &[10], 5).await; // floor(10 x 1.10) = 11 rooms may be sold
    let mut statuses = Vec::new();
    for guest in 0..13 {
        statuses.push(api.book(&stay(&api.new_id().await, 2, 1, 1, 3, guest)).await.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 11);
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 2);
    assert_eq!(api.available(2, 1, 0, 5).await, 0);
    assert_eq!(api.available(2, 1, 3, 5).await, 11);

    // The database refuses overbooking whatever the application does: a direct UPDATE past
    // the allowed count, and a ratio cut that would leave nights overbooked.
    let db = api.db(2);
    let error = db
        .execute("UPDATE room_type_inventory SET total_reserved = 12 WHERE hotel_id = 2 AND date = $1", &[&night(0)])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION), "{error}");
    let error = db.execute("UPDATE hotel SET overbooking_ratio = 1.00 WHERE hotel_id = 2", &[]).await.unwrap_err();
    assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION), "{error}");
    api.assert_invariants().await;
}

async fn the_same_reservation_id_fifty_times_creates_one_reservation(api: Api) {
    // Room type 1 has plenty of rooms; room type 2 has exactly one, so the repeats also meet
    // a sold-out night and must still be recognised as repeats.
    api.add_hotel(3, "1.00", &[50, 1], 5).await;
    for room_type_id in [1, 2] {
        let request = stay(&api.new_id().await, 3, room_type_id, 1, 4, 77);
        let mut clients = JoinSet::new();
        for _ in 0..50 {
            let (http, url, request) = (api.http.clone(), api.url.clone(), request.clone());
            clients.spawn(async move {
                let response = http.post(format!("{url}/v1/reservations")).json(&request).send().await.unwrap();
                (response.status(), response.json::<Value>().await.unwrap())
            });
        }
        let mut answers = Vec::new();
        while let Some(result) = clients.join_next().await {
            answers.push(result.unwrap());
        }
        let created: Vec<_> = answers.iter().filter(|(s, _)| *s == StatusCode::CREATED).collect();
        assert_eq!(created.len(), 1, "room type {room_type_id}: {answers:?}");
        // Through the view, each answer also carries the WAL position after it.
        let without_lsn = |body: &Value| {
            let mut body = body.clone();
            assert_eq!(body.as_object_mut().unwrap().remove("lsn").is_some(), api.through_view, "{body}");
            body
        };
        let reservation = without_lsn(&created[0].1);
        for (status, body) in &answers {
            assert!(*status == StatusCode::CREATED || *status == StatusCode::OK, "{status}: {body}");
            assert_eq!(without_lsn(body), reservation, "every answer is the one reservation");
        }
        let count: i64 = api
            .db(3)
            .query_one(
                "SELECT count(*) FROM reservation WHERE reservation_id = $1::text::uuid",
                &[&request["reservation_id"].as_str().unwrap()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(count, 1);
        for offset in 1..4 {
            assert_eq!(api.total_reserved(3, room_type_id, offset).await, 1);
        }
    }
    assert_eq!(api.confirmed_count(3).await, 2);
    api.assert_invariants().await;
}

async fn a_cancelled_reservation_frees_its_nights_and_cancelling_twice_is_harmless(api: Api) {
    api.add_hotel(4, "1.00", &[1], 5).await;
    let first = api.new_id().await;
    let (status, booked) = api.book(&stay(&first, 4, 1, 0, 3, 1)).await;
    assert_eq!(status, StatusCode::CREATED, "{booked}");
    let second = stay(&api.new_id().await, 4, 1, 2, 4, 2);
    let (status, body) = api.book(&second).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("sold_out")), "{body}");
    assert_eq!(body["night"], night(2).to_string());

    for _ in 0..2 {
        let (status, cancelled) = api.cancel(&first).await;
        assert_eq!(status, StatusCode::OK, "{cancelled}");
        assert_eq!(cancelled["status"], "cancelled");
        assert_eq!(cancelled["created_at"], booked["created_at"]);
        for offset in 0..3 {
            assert_eq!(api.total_reserved(4, 1, offset).await, 0, "night {offset} after cancelling");
        }
        api.assert_invariants().await;
    }
    let (status, fetched) = api.get(&format!("/v1/reservations/{first}")).await;
    assert_eq!((status, fetched["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    assert_eq!(api.available(4, 1, 0, 5).await, 1);

    // The freed night sells again.
    let (status, body) = api.book(&second).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api.get(&format!("/v1/reservations/{}", second["reservation_id"].as_str().unwrap())).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("confirmed")));
    assert_eq!(api.total_reserved(4, 1, 2).await, 1);
    api.assert_invariants().await;

    let (status, body) = api.cancel(&uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

async fn concurrent_cancels_give_the_nights_back_once(api: Api) {
    let (status, health) = api.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (StatusCode::OK, Some("ok")));
    api.add_hotel(9, "1.00", &[3], 5).await;
    let mut ids = Vec::new();
    for guest in 0..3 {
        let id = api.new_id().await;
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
        assert_eq!(api.book(&stay(&id, 9, 1, 0, 4, guest)).await.0, StatusCode::CREATED);
        ids.push(id);
    }
    // Twenty concurrent DELETEs of the same reservation: one cancellation, one room back.
    let mut clients = JoinSet::new();
    for _ in 0..20 {
        let (http, url, id) = (api.http.clone(), api.url.clone(), ids[0].clone());
        clients.spawn(async move { http.delete(format!("{url}/v1/reservations/{id}")).send().await.unwrap().status() });
    }
    while let Some(status) = clients.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    for offset in 0..4 {
        assert_eq!(api.total_reserved(9, 1, offset).await, 2, "night {offset}");
    }
    assert_eq!(api.available(9, 1, 0, 4).await, 1);
    api.assert_invariants().await;
}

async fn bad_requests_get_their_status_and_a_message_and_change_nothing(api: Api) {
    api.add_hotel(5, "1.00", &[5], 5).await; // shard 1
    api.add_hotel(6, "1.00", &[5], 5).await; // shard 0
    let used = api.new_id().await;
    let (status, _) = api.book(&stay(&used, 5, 1, 0, 2, 9)).await;
    assert_eq!(status, StatusCode::CREATED);
    let before = api.snapshot().await;

    let fresh = api.new_id().await;
    let with = |key: &str, value: Value| {
        let mut request = stay(&fresh, 5, 1, 0, 2, 9);
        request[key] = value;
        request.to_string()
    };
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("bad date", with("start_date", json!("2031-02-30")), StatusCode::BAD_REQUEST, "start_date"),
        ("date not YYYY-MM-DD", with("end_date", json!("03/04/2031")), StatusCode::BAD_REQUEST, "end_date"),
        ("end not after start", with("end_date", json!(night(0).to_string())), StatusCode::BAD_REQUEST, "end_date"),
        ("stay over 30 nights", with("end_date", json!(night(31).to_string())), StatusCode::BAD_REQUEST, "31 nights"),
        ("hotel_id of the wrong type", with("hotel_id", json!("5")), StatusCode::BAD_REQUEST, "invalid type"),
        ("guest_id of the wrong type", with("guest_id", json!(1.5)), StatusCode::BAD_REQUEST, "invalid type"),
        ("unknown field", with("rooms", json!(2)), StatusCode::BAD_REQUEST, "unknown field"),
        ("missing field", json!({"reservation_id": fresh}).to_string(), StatusCode::BAD_REQUEST, "missing field"),
        ("not JSON", "{hotel".to_string(), StatusCode::BAD_REQUEST, "invalid reservation JSON"),
        ("reservation_id not a UUID", with("reservation_id", json!("abc")), StatusCode::BAD_REQUEST, "reservation_id"),
        ("unknown hotel", with("hotel_id", json!(999)), StatusCode::NOT_FOUND, "hotel 999"),
        ("unknown room type", with("room_type_id", json!(7)), StatusCode::NOT_FOUND, "room type 7"),
        // Just over the 16 KiB limit: small enough to sit in the socket buffer whole, so the
        // server can answer before the client has finished writing.
        ("body too large", format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000)), StatusCode::PAYLOAD_TOO_LARGE, ""),
        (
            "same id, other dates",
            stay(&used, 5, 1, 1, 3, 9).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "already used",
        ),
        (
            "same id, hotel on the other shard",
            stay(&used, 6, 1, 0, 2, 9).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "already used",
        ),
    ];
    for (case, body, expected, needle) in cases {
        let (status, answer) = api.post_raw(body).await;
        assert_eq!(status, expected, "{case}: {answer}");
        let message = answer["message"].as_str().unwrap_or_else(|| panic!("{case}: no message in {answer}"));
        assert!(message.contains(needle), "{case}: `{message}` does not mention `{needle}`");
        assert!(answer["error"].is_string(), "{case}: {answer}");
    }
    let gets: Vec<(String, StatusCode)> = vec![
        ("/v1/reservations/not-a-uuid".into(), StatusCode::BAD_REQUEST),
        (format!("/v1/reservations/{fresh}"), StatusCode::NOT_FOUND),
        (format!("/v1/hotels/5/availability?start={}&end={}", night(2), night(1)), StatusCode::BAD_REQUEST),
        (format!("/v1/hotels/5/availability?start={}", night(2)), StatusCode::BAD_REQUEST),
        ("/v1/hotels/5/availability?start=2031-13-01&end=2031-13-02".into(), StatusCode::BAD_REQUEST),
        (format!("/v1/hotels/x/availability?start={}&end={}", night(0), night(1)), StatusCode::BAD_REQUEST),
        (format!("/v1/hotels/999/availability?start={}&end={}", night(0), night(1)), StatusCode::NOT_FOUND),
    ];
    for (path, expected) in gets {
        let (status, answer) = api.get(&path).await;
        assert_eq!(status, expected, "{path}: {answer}");
        assert!(answer["message"].is_string(), "{path}: {answer}");
    }
    let (status, answer) = api.cancel("not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(api.snapshot().await, before, "a bad request changed the database");
    api.assert_invariants().await;
}

async fn availability_matches_an_oracle_after_random_bookings(api: Api) {
    let rooms = [3, 2, 4];
    api.add_hotel(8, "1.00", &rooms, 10).await;
    // Oracle: rooms left per room type and night, updated by every confirmed booking.
    let mut left: Vec<Vec<i64>> = rooms.iter().map(|r| vec![*r as i64; 10]).collect();
    let mut seed = 12345u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for guest in 0..60 {
        let room_type = next(3) as usize;
        let from = next(9);
        let to = (from + 1 + next(3)).min(10);
        let (status, body) = api.book(&stay(&api.new_id().await, 8, room_type as i32 + 1, from, to, guest)).await;
        let fits = (from..to).all(|n| left[room_type][n as usize] > 0);
        if fits {
            assert_eq!(status, StatusCode::CREATED, "{body}");
            (from..to).for_each(|n| left[room_type][n as usize] -= 1);
        } else {
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            let full = (body["night"].as_str().unwrap().parse::<NaiveDate>().unwrap() - night(0)).num_days();
            assert_eq!(left[room_type][full as usize], 0, "{body}");
        }
    }
    for (from, to) in [(0, 10), (2, 5), (7, 8)] {
        for (room_type, nights) in left.iter().enumerate() {
            let expected = nights[from as usize..to as usize].iter().min().copied().unwrap();
            assert_eq!(api.available(8, room_type as i64 + 1, from, to).await, expected, "{from}..{to}");
        }
    }
    // Nights without inventory have nothing to sell.
    assert_eq!(api.available(8, 1, 8, 12).await, 0);
    api.assert_invariants().await;
}

/// Each of 200 ids is booked at the same moment for a hotel on shard 0 and one on shard 1 (two
/// contents): exactly one booking per id wins (201), the other is refused as a reuse (422), and
/// every winner can be read and cancelled through the API.
async fn two_hundred_ids_each_booked_for_hotels_on_two_shards_win_once(api: Api) {
    let (even, odd) = (10, 11); // shards 0 and 1
    assert_ne!(api.shards.index_of(even), api.shards.index_of(odd));
    api.add_hotel(even, "1.00", &[500], 5).await;
    api.add_hotel(odd, "1.00", &[500], 5).await;
    let mut clients = JoinSet::new();
    for _ in 0..200 {
        let id = api.new_id().await;
        for hotel_id in [even, odd] {
            let (http, url, request) = (api.http.clone(), api.url.clone(), stay(&id, hotel_id, 1, 1, 3, 5));
            let id = id.clone();
            clients.spawn(async move {
                let response = http.post(format!("{url}/v1/reservations")).json(&request).send().await.unwrap();
                (id, hotel_id, response.status(), response.json::<Value>().await.unwrap())
            });
        }
    }
    let mut by_id: std::collections::BTreeMap<String, Vec<(i64, StatusCode, Value)>> = Default::default();
    while let Some(result) = clients.join_next().await {
        let (id, hotel_id, status, body) = result.unwrap();
        by_id.entry(id).or_default().push((hotel_id, status, body));
    }
    assert_eq!(by_id.len(), 200);
    for (id, answers) in &by_id {
        let mut statuses: Vec<StatusCode> = answers.iter().map(|(_, status, _)| *status).collect();
        statuses.sort();
        assert_eq!(statuses, [StatusCode::CREATED, StatusCode::UNPROCESSABLE_ENTITY], "{id}: {answers:?}");
        let (winner, _, _) = answers.iter().find(|(_, status, _)| *status == StatusCode::CREATED).unwrap();
        let (status, body) = api.get(&format!("/v1/reservations/{id}")).await;
        assert_eq!((status, body["hotel_id"].as_i64()), (StatusCode::OK, Some(*winner)), "{body}");
        let (status, body) = api.cancel(id).await;
        assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{body}");
    }
    let confirmed = api.confirmed_count(even).await + api.confirmed_count(odd).await;
    assert_eq!(confirmed, 0, "every winner was cancelled");
    let reservations: i64 = {
        let mut total = 0;
        for db in &api.dbs {
            total += db.query_one("SELECT count(*) FROM reservation", &[]).await.unwrap().get::<_, i64>(0);
        }
        total
    };
    assert_eq!(reservations, 200, "one reservation per id, on one shard");
    api.assert_invariants().await;
}

/// `POST /v1/reservation-ids?hotel_id=H` mints ids homed on H's shard: booked there, each id's
/// claim is on that shard (taken in the booking's transaction), reusing one for a hotel on the
/// other shard is 422, and a malformed hotel id is 400.
async fn ids_minted_for_a_hotel_are_claimed_on_its_shard(api: Api) {
    api.add_hotel(5, "1.00", &[50], 5).await; // shard 1
    api.add_hotel(6, "1.00", &[50], 5).await; // shard 0
    for hotel in [5i64, 6] {
        for _ in 0..10 {
            let path = format!("{}/v1/reservation-ids?hotel_id={hotel}", api.url);
            let (status, body) = api.send(api.http.post(path)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let id = body["reservation_id"].as_str().unwrap().to_string();
            let (status, body) = api.book(&stay(&id, hotel, 1, 0, 2, 3)).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let uuid: uuid::Uuid = id.parse().unwrap();
            let claims: i64 = api
                .db(hotel)
                .query_one("SELECT count(*) FROM reservation_claim WHERE reservation_id = $1", &[&uuid])
                .await
                .unwrap()
                .get(0);
            assert_eq!(claims, 1, "the claim of {id} is not on hotel {hotel}'s shard");
            let other = if hotel == 5 { 6 } else { 5 };
            let (status, body) = api.book(&stay(&id, other, 1, 0, 2, 3)).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("reservation_id_reused"))
            );
        }
    }
    for bad in ["x", "-1", ""] {
        let (status, body) = api.send(api.http.post(format!("{}/v1/reservation-ids?hotel_id={bad}", api.url))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["message"].as_str().unwrap().contains("hotel_id"), "{body}");
    }
    api.assert_invariants().await;
}
