//! `migrate` and `seed` against real PostgreSQL with two shards: the schema is applied once,
//! the seeded data has the planned shape, sits on the right shard, and its simulated occupancy
//! is made of real reservations that the counters agree with.

#[path = "common/pg.rs"]
mod pg;
#[path = "common/scripts.rs"]
mod scripts;

use chrono::NaiveDate;
use clickstay::rooms::seed::{self, SeedSpec, room_type_count};
use clickstay::rooms::shards::Shards;
use clickstay::rooms::{audit, migrate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_seed_loads_a_consistent_inventory() {
    let urls = vec![pg::fresh_database("rooms_seed").await, pg::fresh_database("rooms_seed").await];
    let shards = Shards::new(&urls, 2).unwrap();
    migrate::migrate_all(&shards).await.unwrap();
    migrate::migrate_all(&shards).await.unwrap();
    let dbs = [pg::connect(&urls[0]).await, pg::connect(&urls[1]).await];
    for db in &dbs {
        let versions: i64 = db.query_one("SELECT count(*) FROM schema_migration", &[]).await.unwrap().get(0);
        assert_eq!(versions, migrate::MIGRATIONS.len() as i64);
    }

    let spec = SeedSpec {
        hotels: 40,
        rooms: 4_000,
        days: 20,
        start: NaiveDate::from_ymd_opt(2031, 1, 1).unwrap(),
        occupancy: 0.6,
        seed: 3,
    };
    let report = seed::seed(&shards, &spec, false).await.unwrap();
    let room_types: u64 = (1..=40).map(|h| room_type_count(h) as u64).sum();
    assert_eq!((report.hotels, report.room_types), (40, room_types));
    assert_eq!(report.inventory_rows, room_types * 20);
    assert!(report.reservations > 0);

    let mut rooms = 0i64;
    let mut reservations = 0i64;
    let mut busiest = 0.0f64;
    for (index, db) in dbs.iter().enumerate() {
        let misplaced: i64 = db
            .query_one("SELECT count(*) FROM hotel WHERE hotel_id % 2 <> $1", &[&(index as i64)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(misplaced, 0, "shard {index} holds hotels of the other shard");
        rooms += db
            .query_one("SELECT sum(total_inventory)::bigint FROM room_type_inventory WHERE date = $1", &[&spec.start])
            .await
            .unwrap()
            .get::<_, i64>(0);
        reservations += db
            .query_one("SELECT count(*) FROM reservation WHERE status = 'confirmed'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        let occupancy: f64 = db
            .query_one(
                "SELECT (sum(total_reserved)::float8 / sum(floor(total_inventory * overbooking_ratio)))
                   FROM room_type_inventory",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        busiest = busiest.max(occupancy);
        let overbooking: i64 = db
            .query_one("SELECT count(*) FROM room_type_inventory WHERE overbooking_ratio = 1.10", &[])
            .await
            .unwrap()
            .get(0);
        assert!(overbooking > 0, "shard {index}: every fifth hotel overbooks");
        let violations = audit::audit(db).await.unwrap();
        assert!(violations.is_empty(), "shard {index}: {violations:?}");
    }
    assert_eq!(rooms, 4_000);
    assert_eq!(reservations as u64, report.reservations);
    assert!((0.5..=0.7).contains(&busiest), "occupancy {busiest} is far from the 0.6 asked for");

    // A second seed refuses to mix with the data; --replace starts over.
    assert!(seed::seed(&shards, &spec, false).await.is_err());
    let again = seed::seed(&shards, &spec, true).await.unwrap();
    assert_eq!(again.inventory_rows, report.inventory_rows);
    assert_eq!(again.reservations, report.reservations, "the same seed loads the same data");
}

/// `clickstay rooms seed` with stderr in a pipe: its progress bars are not drawn there, so
/// stderr holds no escape code and no carriage return (a log stays clean).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_in_a_pipe_draws_no_progress() {
    let urls = [pg::fresh_database("rooms_seed").await, pg::fresh_database("rooms_seed").await];
    let dir = tempfile::tempdir().unwrap();
    let clickstay = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_clickstay"))
            .args(["rooms"])
            .args(args)
            .env("CLICKSTAY_HOTEL_SHARDS", urls.join(","))
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    assert!(clickstay(&["migrate"]).status.success());
    let output = clickstay(&["seed", "--hotels", "30", "--rooms", "3000", "--days", "30", "--start", "2031-01-01"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("seeded 30 hotels"), "{stdout}");
    assert!(!stderr.contains('\x1b') && !stderr.contains('\r'), "progress drawn in a pipe: {stderr:?}");
    assert!(stderr.contains("seeded"), "the log is still there: {stderr:?}");
}
