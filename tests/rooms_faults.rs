//! The reservation API under faults, through the real `clickstay rooms serve` process on real
//! PostgreSQL (two shards, two databases of the test server): a client that gives up in the
//! middle of a booking, the server killed in the middle of bookings, a hung shard, a shard that
//! is down, and no secret in any answer or log line. Every test ends with `clickstay rooms check`.

#[path = "common/hotels.rs"]
mod hotels;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;

use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hotels::night;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// What the URL and key-value connection strings carry; it must never be printed.
const SECRET_URL: &str = "hunter2-url-secret";
const SECRET_KV: &str = "hunter2-kv-secret";

/// A `clickstay rooms serve` process on two fresh shards: shard 0 named by a URL with
/// `?password=`, shard 1 by a key-value string with `password=` (the test server trusts
/// local connections, so the passwords are carried but never checked).
struct Server {
    url: String,
    http: reqwest::Client,
    child: Child,
    shard_env: String,
    dir: tempfile::TempDir,
    /// Database names and direct clients, in shard order.
    names: Vec<String>,
    dbs: Vec<tokio_postgres::Client>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shard URLs as the server gets them: `[URL form, key-value form]` of two fresh databases.
async fn shard_strings() -> (Vec<String>, Vec<String>) {
    let urls = [pg::fresh_database("rooms_faults").await, pg::fresh_database("rooms_faults").await];
    let names: Vec<String> = urls.iter().map(|url| url.rsplit('/').next().unwrap().to_string()).collect();
    let config = tokio_postgres::Config::from_str(&pg::base_url()).unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("test server is not on TCP: {other:?}"),
    };
    let (port, user) = (config.get_ports()[0], config.get_user().unwrap_or("postgres"));
    let with_password = if urls[0].contains('?') { "&" } else { "?" };
    let shard0 = format!("{}{with_password}password={SECRET_URL}", urls[0]);
    let shard1 = format!("host={host} port={port} user={user} dbname={} password={SECRET_KV}", names[1]);
    (vec![shard0, shard1], names)
}

impl Server {
    /// Migrates two fresh shards and starts the server with `flags`.
    async fn start(flags: &[&str]) -> Server {
        let (shards, names) = shard_strings().await;
        let dir = tempfile::tempdir().unwrap();
        let shard_env = shards.join(",");
        let migrated = clickstay(&dir, &shard_env, &["rooms", "migrate"]).output().unwrap();
        assert!(migrated.status.success(), "migrate: {}", String::from_utf8_lossy(&migrated.stderr));
        let mut dbs = Vec::new();
        for name in &names {
            dbs.push(pg::connect(&pg::url_of(name)).await);
        }
        let mut server = Server {
            url: String::new(),
            http: reqwest::Client::new(),
            child: Command::new("true").spawn().unwrap(),
            shard_env,
            dir,
            names,
            dbs,
        };
        server.spawn(flags).await;
        server
    }

    /// (Re)starts the server process on a free port and waits until it answers.
    async fn spawn(&mut self, flags: &[&str]) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
        let mut args = vec!["rooms", "serve", "--listen", &listen];
        args.extend_from_slice(flags);
        self.child = clickstay(&self.dir, &self.shard_env, &args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.url = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.http.get(format!("{}/healthz", self.url)).send().await.is_err() {
            assert!(Instant::now() < deadline, "the server did not start: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn db(&self, hotel_id: i64) -> &tokio_postgres::Client {
        &self.dbs[(hotel_id % 2) as usize]
    }

    async fn add_hotel(&self, hotel_id: i64, rooms: &[i32], days: i32) {
        hotels::add_hotel(self.db(hotel_id), hotel_id, "Lyon", "1.00", rooms, night(0), days).await;
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("HTTP request failed");
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_no_secret(&text);
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, body)
    }

    async fn book(&self, id: &str, hotel_id: i64, from: u64, to: u64) -> (StatusCode, Value) {
        self.send(self.http.post(format!("{}/v1/reservations", self.url)).json(&stay(id, hotel_id, from, to))).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.url))).await
    }

    async fn cancel(&self, id: &str) -> (StatusCode, Value) {
        self.send(self.http.delete(format!("{}/v1/reservations/{id}", self.url))).await
    }

    /// Connections of the API (by `application_name`) that sit inside a transaction.
    async fn idle_in_transaction(&self) -> i64 {
        self.dbs[0]
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = 'clickstay-rooms-api' AND datname = ANY($1)
                    AND state LIKE 'idle in transaction%'",
                &[&self.names],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Connections of the API to the test databases, whatever their state.
    async fn api_connections(&self) -> i64 {
        self.dbs[0]
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'clickstay-rooms-api' AND datname = ANY($1)",
                &[&self.names],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn total_reserved(&self, hotel_id: i64, offset: u64) -> i32 {
        self.db(hotel_id)
            .query_one(
                "SELECT total_reserved FROM room_type_inventory WHERE hotel_id = $1 AND room_type_id = 1 AND date = $2",
                &[&hotel_id, &night(offset)],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `clickstay rooms check` passes, and neither the answers nor the log hold a secret.
    fn assert_check_passes(&self) {
        let checked = clickstay(&self.dir, &self.shard_env, &["rooms", "check"]).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
        assert!(checked.status.success(), "rooms check failed:\n{stdout}\n{stderr}");
        assert_no_secret(&self.log());
    }
}

/// `clickstay ARGS` in `dir` (away from the repository's `workers.toml`) on `shards`.
fn clickstay(dir: &tempfile::TempDir, shards: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clickstay"));
    command.args(args).current_dir(dir.path()).env("CLICKSTAY_HOTEL_SHARDS", shards).env_remove("RUST_BACKTRACE");
    command
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(SECRET_URL) && !text.contains(SECRET_KV), "a password was printed: {text}");
}

fn stay(id: &str, hotel_id: i64, from: u64, to: u64) -> Value {
    json!({
        "reservation_id": id, "hotel_id": hotel_id, "room_type_id": 1,
        "start_date": night(from), "end_date": night(to), "guest_id": 7,
    })
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// An id whose claim lives on shard `home` of two (`claims::home_shard`).
fn new_id_homed_on(home: usize) -> String {
    clickstay::rooms::claims::new_id_homed_on(home, 2).to_string()
}

/// Waits until `condition` holds (at most `within`).
async fn eventually<F: std::future::Future<Output = bool>>(within: Duration, mut condition: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Defect 1 of issue 11: with one connection, a booking waits on a night locked elsewhere and
/// its client gives up. The booking still ends (committed once the lock is gone), nothing is
/// left open, and the cancellation made before stays cancelled after a sold-out booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_gives_up_leaves_no_open_transaction() {
    // PostgreSQL's own guard (idle_in_transaction_session_timeout) far away: the API must not
    // need it.
    let flags = ["--pool-size", "1", "--lock-timeout", "10s", "--transaction-timeout", "15s"];
    let server = Server::start(&[&flags[..], &["--idle-in-transaction-timeout", "1h"]].concat()).await;
    server.add_hotel(2, &[1], 10).await;
    let cancelled = new_id();
    assert_eq!(server.book(&cancelled, 2, 0, 2).await.0, StatusCode::CREATED);
    assert_eq!(server.cancel(&cancelled).await.0, StatusCode::OK);

    let mut locker = pg::connect(&pg::url_of(&server.names[0])).await;
    let lock = locker.transaction().await.unwrap();
    lock.execute("SELECT 1 FROM room_type_inventory WHERE hotel_id = 2 AND date = $1 FOR UPDATE", &[&night(1)])
        .await
        .unwrap();
    let abandoned = new_id();
    let impatient = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
    let gave_up = impatient.post(format!("{}/v1/reservations", server.url)).json(&stay(&abandoned, 2, 0, 3)).send();
    assert!(gave_up.await.is_err(), "the booking should have waited on the lock");
    lock.commit().await.unwrap();

    // The booking ran on: confirmed with every night counted (or absent, nothing counted).
    assert!(eventually(Duration::from_secs(5), || async { server.idle_in_transaction().await == 0 }).await);
    let (status, body) = server.get(&format!("/v1/reservations/{abandoned}")).await;
    let counted = if status == StatusCode::OK { 1 } else { 0 };
    assert!(status == StatusCode::OK || status == StatusCode::NOT_FOUND, "{status} {body}");
    if status == StatusCode::OK {
        assert_eq!(body["status"], "confirmed", "{body}");
    }
    for offset in 0..3 {
        assert_eq!(server.total_reserved(2, offset).await, counted, "night {offset}");
    }
    // A sold-out booking on the same (only) connection undoes nothing.
    let (status, body) = server.book(&new_id(), 2, 0, 3).await;
    assert_eq!(status, if counted == 1 { StatusCode::CONFLICT } else { StatusCode::CREATED }, "{body}");
    let (status, body) = server.get(&format!("/v1/reservations/{cancelled}")).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{body}");
    assert_eq!(server.idle_in_transaction().await, 0);
    server.assert_check_passes();
}

/// The server killed (SIGKILL) in the middle of bookings: PostgreSQL rolls back what it had
/// open; every reservation left is confirmed with its nights counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_server_leaves_no_open_transaction() {
    let mut server = Server::start(&["--pool-size", "4"]).await;
    for hotel in [2, 3] {
        server.add_hotel(hotel, &[50], 30).await;
    }
    let mut bookings = JoinSet::new();
    for n in 0..200u64 {
        let (http, url) = (server.http.clone(), server.url.clone());
        bookings.spawn(async move {
            let body = stay(&new_id(), 2 + (n % 2) as i64, n % 20, n % 20 + 3);
            let _ = http.post(format!("{url}/v1/reservations")).json(&body).send().await;
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    bookings.shutdown().await;
    assert!(
        eventually(Duration::from_secs(10), || async { server.api_connections().await == 0 }).await,
        "the killed server's connections stay open"
    );
    assert_eq!(server.idle_in_transaction().await, 0);
    server.assert_check_passes();
    // A new server serves on.
    server.spawn(&[]).await;
    assert_eq!(server.book(&new_id(), 2, 25, 27).await.0, StatusCode::CREATED);
    server.assert_check_passes();
}

/// A shard hung by a table lock: bookings on the other shard go on (their reservation-id check
/// does not wait for the hung shard past its timeout), and the hung shard's answer 503 in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_shard_answers_503_and_the_other_shard_serves_on() {
    let flags = ["--lock-timeout", "3s", "--statement-timeout", "4s", "--id-lookup-timeout", "300ms"];
    let server = Server::start(&flags).await;
    server.add_hotel(2, &[20], 10).await; // shard 0
    server.add_hotel(3, &[20], 10).await; // shard 1
    let mut locker = pg::connect(&pg::url_of(&server.names[1])).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE reservation").await.unwrap();

    for offset in 0..5 {
        let started = Instant::now();
        let id = new_id();
        let (status, body) = server.book(&id, 2, offset, offset + 2).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
        assert_eq!(server.get(&format!("/v1/reservations/{id}")).await.0, StatusCode::OK);
    }
    let started = Instant::now();
    let (status, body) = server.book(&new_id(), 3, 0, 2).await;
    assert_eq!(
        (status, body["error"].as_str(), body["shard"].as_u64()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("shard_unavailable"), Some(1)),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    // A search that waits on the hung shard's inventory past its lock timeout: 503, not 500.
    lock.batch_execute("LOCK TABLE room_type_inventory").await.unwrap();
    let started = Instant::now();
    let (status, body) =
        server.get(&format!("/v1/availability/search?hotels=2,3&start={}&end={}", night(0), night(2))).await;
    assert_eq!(
        (status, body["error"].as_str(), body["shard"].as_u64()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("shard_unavailable"), Some(1)),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    lock.rollback().await.unwrap();

    assert_eq!(server.book(&new_id(), 3, 0, 2).await.0, StatusCode::CREATED);
    assert_eq!(server.idle_in_transaction().await, 0);
    server.assert_check_passes();
}

/// A shard whose database refuses connections: its hotels answer 503 `shard_unavailable`
/// naming shard 1 (never 500, never its URL), the other shard serves, `/healthz` reports each
/// shard, and once the database is back everything works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_down_shard_answers_503_and_comes_back() {
    let server = Server::start(&["--connect-timeout", "1s"]).await;
    server.add_hotel(2, &[20], 10).await; // shard 0
    server.add_hotel(3, &[20], 10).await; // shard 1
    let booked = new_id();
    assert_eq!(server.book(&booked, 3, 0, 2).await.0, StatusCode::CREATED);
    let (status, health) = server.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (StatusCode::OK, Some("ok")), "{health}");

    let admin = pg::connect(&pg::base_url()).await;
    let down = &server.names[1];
    admin.batch_execute(&format!("ALTER DATABASE {down} ALLOW_CONNECTIONS false")).await.unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[down],
        )
        .await
        .unwrap();

    let unavailable = |(status, body): (StatusCode, Value)| {
        assert_eq!(
            (status, body["error"].as_str(), body["shard"].as_u64()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("shard_unavailable"), Some(1)),
            "{body}"
        );
        assert!(!body.to_string().contains(down.as_str()), "{body}");
    };
    for _ in 0..3 {
        let started = Instant::now();
        unavailable(server.book(&new_id(), 3, 2, 4).await);
        unavailable(server.get(&format!("/v1/hotels/3/availability?start={}&end={}", night(0), night(2))).await);
        unavailable(server.get(&format!("/v1/reservations/{booked}")).await);
        unavailable(server.cancel(&booked).await);
        assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
        // A booking on the other shard goes on, unless its id's claim lives on the down shard.
        assert_eq!(server.book(&new_id_homed_on(0), 2, 0, 2).await.0, StatusCode::CREATED);
        unavailable(server.book(&new_id_homed_on(1), 2, 0, 2).await);
    }
    let (status, health) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(
        (health["shards"][0]["status"].as_str(), health["shards"][1]["status"].as_str()),
        (Some("up"), Some("down")),
        "{health}"
    );
    assert!(!health.to_string().contains(down.as_str()) && !health.to_string().contains("127.0.0.1"), "{health}");

    admin.batch_execute(&format!("ALTER DATABASE {down} ALLOW_CONNECTIONS true")).await.unwrap();
    let (status, body) = server.cancel(&booked).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{body}");
    assert_eq!(server.book(&new_id(), 3, 2, 4).await.0, StatusCode::CREATED);
    assert_eq!(server.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(server.idle_in_transaction().await, 0);
    server.assert_check_passes();
}

/// With `--dataflow`, a shard's change stream broken (its CDC connections terminated): the
/// server stays up, that shard's questions are answered meanwhile (from the database), its part
/// of the view is rebuilt from a new slot and snapshot, and the view then answers it again,
/// equal to SQL; the other shard is served by the view throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_change_stream_is_rebuilt_and_the_server_stays_up() {
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/rooms.toml");
    let mut server = Server::start(&["--dataflow", spec.to_str().unwrap()]).await;
    server.add_hotel(2, &[20], 10).await; // shard 0
    server.add_hotel(3, &[20], 10).await; // shard 1
    let (status, body) = server.book(&new_id(), 3, 0, 2).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(server.available_in_view(3, body["lsn"].as_str().unwrap()).await, 19);

    let admin = pg::connect(&pg::base_url()).await;
    for _ in 0..2 {
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE datname = $1 AND pid <> pg_backend_pid() AND query ILIKE '%slot%'",
                &[&server.names[1]],
            )
            .await
            .unwrap()
            .get(0);
        assert!(killed > 0, "no CDC connection found to terminate");
        // The reader notices at its next read (later on a loaded machine).
        let broke = eventually(Duration::from_secs(10), || async {
            server.get("/healthz").await.1["shards"][1]["view"]["state"] != "serving"
        });
        assert!(broke.await, "shard 1 never left serving: {}", server.get("/healthz").await.1);
        // Meanwhile: bookings and availability of both shards go on.
        for hotel in [2, 3] {
            let (status, body) = server.book(&new_id(), hotel, 0, 2).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let path = format!("/v1/hotels/{hotel}/availability?start={}&end={}", night(0), night(2));
            let (status, body) = server.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let path = format!("/v1/availability/search?hotels=2,3&start={}&end={}", night(0), night(2));
        let (status, body) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "a search while shard 1 is rebuilt: {body}");
        let hotels: Vec<i64> =
            body["hotels"].as_array().unwrap().iter().map(|h| h["hotel_id"].as_i64().unwrap()).collect();
        assert_eq!(hotels, [2, 3], "{body}");
        assert!(server.child.try_wait().unwrap().is_none(), "the server exited: {}", server.log());
        let rebuilt = eventually(Duration::from_secs(20), || async {
            server.get("/healthz").await.1["shards"][1]["view"]["state"] == "serving"
        });
        assert!(rebuilt.await, "shard 1 was not rebuilt: {}", server.get("/healthz").await.1);
    }
    // Served by the view again, equal to SQL (every row once: the old ones were retracted).
    let (status, body) = server.book(&new_id(), 3, 0, 2).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let in_sql = 20 - server.total_reserved(3, 0).await;
    assert_eq!(in_sql, 16);
    assert_eq!(server.available_in_view(3, body["lsn"].as_str().unwrap()).await, in_sql as i64);
    let (_, body) = server.book(&new_id(), 2, 0, 2).await;
    assert_eq!(server.available_in_view(2, body["lsn"].as_str().unwrap()).await, 17);
    assert_eq!(server.idle_in_transaction().await, 0);
    server.assert_check_passes();
}

/// With `--dataflow`, a shard's change stream hung (its CDC backend stopped with SIGSTOP, as a
/// frozen host or network would leave it): the read times out, the shard's part of the view is
/// rebuilt on a new connection, and the view answers again, equal to SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_change_stream_is_rebuilt() {
    let spec = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/rooms.toml"))
        .unwrap()
        .replace("read_timeout = \"10s\"", "read_timeout = \"2s\"");
    assert!(spec.contains("read_timeout = \"2s\""), "the spec has no read_timeout of 10s to shorten");
    let spec_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(spec_file.path(), spec).unwrap();
    let mut server = Server::start(&["--dataflow", spec_file.path().to_str().unwrap()]).await;
    server.add_hotel(3, &[20], 10).await; // shard 1
    let (status, body) = server.book(&new_id(), 3, 0, 2).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(server.available_in_view(3, body["lsn"].as_str().unwrap()).await, 19);

    // The shard's WAL sender (it holds no lock while it streams).
    let pids = pg::wal_senders(&server.names[1]).await;
    assert_eq!(pids.len(), 1, "the shard's WAL sender: {pids:?}");
    pg::signal_all(&pids, libc::SIGSTOP);
    let hung = eventually(Duration::from_secs(15), || async {
        server.get("/healthz").await.1["shards"][1]["view"]["state"] != "serving"
    });
    let noticed = hung.await;
    let rebuilt = eventually(Duration::from_secs(20), || async {
        server.get("/healthz").await.1["shards"][1]["view"]["state"] == "serving"
    })
    .await;
    pg::signal_all(&pids, libc::SIGCONT);
    assert!(noticed, "the hung stream was not noticed: {}", server.get("/healthz").await.1);
    assert!(rebuilt, "shard 1 was not rebuilt: {}", server.get("/healthz").await.1);
    assert!(server.child.try_wait().unwrap().is_none(), "the server exited: {}", server.log());

    let (status, body) = server.book(&new_id(), 3, 0, 2).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(server.available_in_view(3, body["lsn"].as_str().unwrap()).await, 18);
    server.assert_check_passes();
}

impl Server {
    /// Rooms of type 1 left on nights 0..2 of `hotel_id`, from the view at or after `lsn`.
    async fn available_in_view(&self, hotel_id: i64, lsn: &str) -> i64 {
        let path = format!("/v1/hotels/{hotel_id}/availability?start={}&end={}&min_lsn={lsn}", night(0), night(2));
        let (status, body) = self.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["lsn"].is_string(), "not answered by the view: {body}\nserver log:\n{}", self.log());
        body["room_types"][0]["available"].as_i64().unwrap()
    }
}

/// A malformed shard string and a malformed config file are refused with a message that names
/// the shard, or the file, line and key, but prints no password.
#[test]
fn bad_shard_strings_and_config_files_print_no_password() {
    let dir = tempfile::tempdir().unwrap();
    for shards in [
        format!("postgres://u:{SECRET_URL}@127.0.0.1:notaport/db?password={SECRET_URL}"),
        format!("host=127.0.0.1 port=notaport password={SECRET_KV}"),
    ] {
        let output = clickstay(&dir, &shards, &["rooms", "check"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("shard 0"), "{stderr}");
        assert_no_secret(&stderr);
    }
    let config = dir.path().join("workers.toml");
    std::fs::write(&config, format!("[postgres]\nshards = [\"host=h password={SECRET_KV}\" 5]\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_clickstay"))
        .args(["rooms", "check", "--config", config.to_str().unwrap()])
        .env_remove("CLICKSTAY_HOTEL_SHARDS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("workers.toml") && stderr.contains("line 2"), "{stderr}");
    assert!(stderr.contains("postgres.shards"), "{stderr}");
    assert_no_secret(&stderr);
}
