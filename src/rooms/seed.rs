//! `clickstay rooms seed`: a realistic inventory, loaded with COPY, one transaction per shard.
//!
//! The plan is deterministic for a given `--seed`: hotel sizes vary around the mean, hotel `h`
//! has `2 + h % 4` room types (see [`room_type_count`]), every fifth hotel overbooks by 10%,
//! and every night of `--days` gets one inventory row per room type. Existing occupancy
//! (`--occupancy`) is simulated with real, confirmed reservation rows, and each night's
//! `total_reserved` is their count, so the audit invariants hold from the start.

use std::pin::pin;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{Days, NaiveDate, Utc};
use numeric::Ratio;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tracing::info;
use uuid::Uuid;

use super::shards::Shards;
use crate::progress::{self, ProgressBar};

/// What to load.
#[derive(Debug, Clone)]
pub struct SeedSpec {
    pub hotels: u32,
    /// Rooms in all, spread over every hotel and room type.
    pub rooms: u64,
    /// Nights of inventory, starting at `start`.
    pub days: u32,
    pub start: NaiveDate,
    /// Share of sellable room-nights already booked (0 to 0.95).
    pub occupancy: f64,
    /// Random seed: the same seed gives the same data.
    pub seed: u64,
}

/// One hotel of the plan: its overbooking ratio in hundredths (100 = 1.00) and the rooms of
/// each room type (room type ids are 1, 2, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct HotelPlan {
    pub hotel_id: i64,
    pub ratio_hundredths: u16,
    pub rooms_per_type: Vec<i32>,
}

impl HotelPlan {
    /// Rooms that may be sold per night for a room type: floor(rooms x ratio).
    pub fn allowed(&self, rooms: i32) -> i32 {
        (rooms as i64 * self.ratio_hundredths as i64 / 100) as i32
    }
}

/// How many room types hotel `hotel_id` has in seeded data (2 to 5). The benchmark uses this
/// to pick existing room types without asking the database.
pub fn room_type_count(hotel_id: i64) -> i32 {
    2 + (hotel_id % 4) as i32
}

/// The cities seeded hotels are in (hotel `h` in `CITIES[h % CITIES.len()]`), for searches by city.
pub const CITIES: [&str; 20] = [
    "Seoul", "Busan", "Tokyo", "Osaka", "Paris", "Lyon", "Berlin", "Munich", "London", "Leeds", "Madrid", "Lisbon",
    "Rome", "Milan", "Vienna", "Prague", "Oslo", "Zurich", "Boston", "Austin",
];

/// The city of seeded hotel `hotel_id`.
pub fn city_of(hotel_id: i64) -> &'static str {
    CITIES[hotel_id.rem_euclid(CITIES.len() as i64) as usize]
}

const ROOM_TYPE_NAMES: [&str; 5] = ["Standard", "Superior", "Deluxe", "Family", "Suite"];

/// Hotel ids run from 1 to `hotels`; sizes vary from half to one and a half times the mean.
pub fn plan(spec: &SeedSpec) -> Vec<HotelPlan> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let weights: Vec<f64> = (0..spec.hotels).map(|_| rng.random_range(0.5..1.5)).collect();
    let hotel_rooms = apportion(spec.rooms, &weights);
    (1..=spec.hotels as i64)
        .zip(hotel_rooms)
        .map(|(hotel_id, rooms)| {
            let weights: Vec<f64> = (0..room_type_count(hotel_id)).map(|_| rng.random_range(0.2..1.0)).collect();
            HotelPlan {
                hotel_id,
                ratio_hundredths: if hotel_id % 5 == 0 { 110 } else { 100 },
                rooms_per_type: apportion(rooms, &weights).into_iter().map(|r| r as i32).collect(),
            }
        })
        .collect()
}

/// Splits `total` in proportion to `weights`, exactly (largest remainders get the leftovers).
fn apportion(total: u64, weights: &[f64]) -> Vec<u64> {
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut parts: Vec<u64> = exact.iter().map(|x| x.floor() as u64).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| (exact[*b] - exact[*b].floor()).total_cmp(&(exact[*a] - exact[*a].floor())));
    let short = total.saturating_sub(parts.iter().sum());
    for index in order.into_iter().cycle().take(short as usize) {
        parts[index] += 1;
    }
    parts
}

/// A simulated reservation: room type, first night (as an offset from the start) and nights.
struct Stay {
    room_type_id: i32,
    first: u32,
    nights: u32,
}

/// Books random stays of 1 to 7 nights into `reserved` (one counter per night per room type)
/// until `occupancy` of the sellable room-nights are taken, never beyond what is allowed.
fn simulate_occupancy(hotel: &HotelPlan, spec: &SeedSpec, reserved: &mut [Vec<i32>]) -> Vec<Stay> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ (hotel.hotel_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut stays = Vec::new();
    for (index, &rooms) in hotel.rooms_per_type.iter().enumerate() {
        let allowed = hotel.allowed(rooms);
        let target = (spec.occupancy * allowed as f64 * spec.days as f64) as u64;
        let (mut booked, mut misses) = (0u64, 0u64);
        while booked < target && misses < 4 * target + 100 {
            let first = rng.random_range(0..spec.days);
            let nights = rng.random_range(1..=7u32).min(spec.days - first);
            let span = &mut reserved[index][first as usize..(first + nights) as usize];
            if span.iter().all(|r| *r < allowed) {
                span.iter_mut().for_each(|r| *r += 1);
                booked += nights as u64;
                stays.push(Stay { room_type_id: index as i32 + 1, first, nights });
            } else {
                misses += 1;
            }
        }
    }
    stays
}

/// Row counts written by [`seed`].
#[derive(Debug, Default, Clone, Copy)]
pub struct SeedReport {
    pub hotels: u64,
    pub room_types: u64,
    pub inventory_rows: u64,
    pub reservations: u64,
}

/// Loads the plan into every shard (hotel `h` into shard `h % shards`), concurrently. Refuses
/// shards that already hold hotels unless `replace`, which empties them first.
pub async fn seed(shards: &Shards, spec: &SeedSpec, replace: bool) -> Result<SeedReport> {
    if spec.days == 0 || spec.hotels == 0 {
        bail!("--hotels and --days must be at least 1");
    }
    if !(0.0..=0.95).contains(&spec.occupancy) {
        bail!("--occupancy must be between 0 and 0.95, got {}", spec.occupancy);
    }
    let started = Instant::now();
    let plan = plan(spec);
    // On a terminal, a bar per shard: its hotels copied so far, and what it is doing.
    let bars = progress::multi();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..shards.len() {
        let hotels: Vec<HotelPlan> = plan.iter().filter(|h| shards.index_of(h.hotel_id) == index).cloned().collect();
        let bar = bars.add(progress::bar(hotels.len() as u64, "shard {prefix} {bar:30} {pos}/{len} hotels, {msg}"));
        bar.set_prefix(index.to_string());
        let (shards, spec) = (shards.clone(), spec.clone());
        tasks.spawn(async move {
            let mut client = shards.connect(index).await?;
            let report = seed_shard(&mut client, &hotels, &spec, replace, &bar).await;
            bar.finish();
            report.with_context(|| format!("seeding shard {index}"))
        });
    }
    let mut total = SeedReport::default();
    while let Some(result) = tasks.join_next().await {
        let report = result.context("seeding task panicked")??;
        total.hotels += report.hotels;
        total.room_types += report.room_types;
        total.inventory_rows += report.inventory_rows;
        total.reservations += report.reservations;
    }
    info!(?total, seconds = started.elapsed().as_secs_f64(), "seeded");
    Ok(total)
}

/// Seeds one shard in one transaction: the hotels, their room types, every night's inventory
/// and the reservations that fill it, then fresh statistics.
async fn seed_shard(
    client: &mut tokio_postgres::Client,
    hotels: &[HotelPlan],
    spec: &SeedSpec,
    replace: bool,
    bar: &ProgressBar,
) -> Result<SeedReport> {
    let tx = client.transaction().await?;
    bar.set_message(if replace { "emptying the shard" } else { "checking the shard is empty" });
    empty_shard(&tx, replace).await?;
    bar.set_message("copying hotels and room types");
    let hotel_rows = copy_hotels(&tx, hotels).await?;
    let room_type_rows = copy_room_types(&tx, hotels).await?;
    let dates: Vec<NaiveDate> = (0..spec.days as u64).map(|d| spec.start + Days::new(d)).collect();
    let (inventory_rows, stays) = copy_inventory(&tx, hotels, spec, &dates, bar).await?;
    let reservation_rows = copy_reservations(&tx, &stays, spec, &dates, bar).await?;
    bar.set_message(format!("{inventory_rows} inventory rows, {reservation_rows} reservations; committing"));
    tx.commit().await.context("cannot commit the seeded data")?;
    bar.set_message(format!("{inventory_rows} inventory rows, {reservation_rows} reservations; analyzing"));
    tx_analyze(client).await?;
    bar.set_message(format!("{inventory_rows} inventory rows, {reservation_rows} reservations; done"));
    Ok(SeedReport { hotels: hotel_rows, room_types: room_type_rows, inventory_rows, reservations: reservation_rows })
}

/// Refuses a shard that already holds hotels unless `replace`, which empties it.
async fn empty_shard(tx: &tokio_postgres::Transaction<'_>, replace: bool) -> Result<()> {
    let occupied: bool = tx.query_one("SELECT EXISTS (SELECT 1 FROM hotel)", &[]).await?.get(0);
    if occupied && !replace {
        bail!("the shard already holds hotels; pass --replace to empty it first");
    }
    if occupied {
        tx.batch_execute("TRUNCATE reservation, room_type_inventory, room_type, hotel").await?;
    }
    Ok(())
}

/// One `hotel` row per hotel; returns the rows written.
async fn copy_hotels(tx: &tokio_postgres::Transaction<'_>, hotels: &[HotelPlan]) -> Result<u64> {
    let mut rows = 0;
    let mut writer = pin!(
        copy_writer(
            tx,
            "hotel (hotel_id, name, city, overbooking_ratio)",
            &[Type::INT8, Type::TEXT, Type::TEXT, Type::NUMERIC]
        )
        .await?
    );
    for hotel in hotels {
        let name = format!("Hotel {}", hotel.hotel_id);
        writer
            .as_mut()
            .write(&[&hotel.hotel_id, &name, &city_of(hotel.hotel_id), &Ratio(hotel.ratio_hundredths)])
            .await?;
        rows += 1;
    }
    writer.finish().await?;
    Ok(rows)
}

/// The `room_type` rows of every hotel; returns the rows written.
async fn copy_room_types(tx: &tokio_postgres::Transaction<'_>, hotels: &[HotelPlan]) -> Result<u64> {
    let mut rows = 0;
    let mut writer = pin!(
        copy_writer(
            tx,
            "room_type (hotel_id, room_type_id, name, overbooking_ratio)",
            &[Type::INT8, Type::INT4, Type::TEXT, Type::NUMERIC]
        )
        .await?
    );
    for hotel in hotels {
        for room_type_id in 1..=hotel.rooms_per_type.len() as i32 {
            let name = ROOM_TYPE_NAMES[(room_type_id as usize - 1) % ROOM_TYPE_NAMES.len()];
            writer.as_mut().write(&[&hotel.hotel_id, &room_type_id, &name, &Ratio(hotel.ratio_hundredths)]).await?;
            rows += 1;
        }
    }
    writer.finish().await?;
    Ok(rows)
}

/// One `room_type_inventory` row per room type and night of `dates`, with the simulated
/// occupancy reserved; returns the rows written and the stays to record, by hotel.
async fn copy_inventory(
    tx: &tokio_postgres::Transaction<'_>,
    hotels: &[HotelPlan],
    spec: &SeedSpec,
    dates: &[NaiveDate],
    bar: &ProgressBar,
) -> Result<(u64, Vec<(i64, Stay)>)> {
    let mut rows = 0;
    let mut reservations = Vec::new();
    let mut writer =
        pin!(copy_writer(
        tx,
        "room_type_inventory (hotel_id, room_type_id, date, total_inventory, total_reserved, overbooking_ratio)",
        &[Type::INT8, Type::INT4, Type::DATE, Type::INT4, Type::INT4, Type::NUMERIC],
    )
    .await?);
    for hotel in hotels {
        let mut reserved = vec![vec![0i32; spec.days as usize]; hotel.rooms_per_type.len()];
        let stays = simulate_occupancy(hotel, spec, &mut reserved);
        let ratio = Ratio(hotel.ratio_hundredths);
        for (index, rooms) in hotel.rooms_per_type.iter().enumerate() {
            let room_type_id = index as i32 + 1;
            for (date, reserved) in dates.iter().zip(&reserved[index]) {
                writer.as_mut().write(&[&hotel.hotel_id, &room_type_id, date, rooms, reserved, &ratio]).await?;
                rows += 1;
            }
        }
        reservations.extend(stays.into_iter().map(|stay| (hotel.hotel_id, stay)));
        bar.inc(1);
        bar.set_message(format!("{rows} inventory rows"));
    }
    bar.set_message(format!("{rows} inventory rows, the server finishing the COPY"));
    writer.finish().await?;
    Ok((rows, reservations))
}

/// One confirmed `reservation` row per stay, with a random guest; returns the rows written.
async fn copy_reservations(
    tx: &tokio_postgres::Transaction<'_>,
    reservations: &[(i64, Stay)],
    spec: &SeedSpec,
    dates: &[NaiveDate],
    bar: &ProgressBar,
) -> Result<u64> {
    let mut rows = 0;
    let mut writer = pin!(
        copy_writer(
            tx,
            "reservation (reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id, status)",
            &[Type::UUID, Type::INT8, Type::INT4, Type::DATE, Type::DATE, Type::INT8, Type::TEXT],
        )
        .await?
    );
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed.wrapping_add(1));
    let now = Utc::now();
    for (hotel_id, stay) in reservations {
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, now.timestamp() as u64, rng.random()));
        let start = dates[stay.first as usize];
        let end = start + Days::new(stay.nights as u64);
        let guest_id: i64 = rng.random_range(1..10_000_000);
        writer.as_mut().write(&[&id, hotel_id, &stay.room_type_id, &start, &end, &guest_id, &"confirmed"]).await?;
        rows += 1;
        if rows % 10_000 == 0 || rows == reservations.len() as u64 {
            bar.set_message(format!("{rows} of {} reservations", reservations.len()));
        }
    }
    writer.finish().await?;
    Ok(rows)
}

/// Fresh statistics, so that the planner picks index scans on the new data right away.
async fn tx_analyze(client: &tokio_postgres::Client) -> Result<()> {
    client.batch_execute("ANALYZE hotel, room_type, room_type_inventory, reservation").await?;
    Ok(())
}

async fn copy_writer(
    tx: &tokio_postgres::Transaction<'_>,
    table_and_columns: &'static str,
    types: &[Type],
) -> Result<BinaryCopyInWriter> {
    let sink = tx
        .copy_in(&format!("COPY {table_and_columns} FROM STDIN (FORMAT binary)"))
        .await
        .with_context(|| format!("cannot start COPY into {table_and_columns}"))?;
    Ok(BinaryCopyInWriter::new(sink, types))
}

/// Binary encoding of PostgreSQL `numeric` for the overbooking ratio (tokio-postgres has no
/// `numeric` type of its own).
mod numeric {
    use std::error::Error;

    use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

    /// A ratio in hundredths: `Ratio(110)` is 1.10. At most 99.99.
    #[derive(Debug, Clone, Copy)]
    pub struct Ratio(pub u16);

    impl ToSql for Ratio {
        fn to_sql(
            &self,
            _: &Type,
            out: &mut tokio_postgres::types::private::BytesMut,
        ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
            // numeric: ndigits, weight, sign, dscale, then base-10000 digits.
            let (whole, hundredths) = (self.0 / 100, self.0 % 100);
            let digits: &[u16] = if hundredths == 0 { &[whole] } else { &[whole, hundredths * 100] };
            for word in [digits.len() as u16, 0, 0, 2].iter().chain(digits) {
                out.extend_from_slice(&word.to_be_bytes());
            }
            Ok(IsNull::No)
        }

        fn accepts(ty: &Type) -> bool {
            *ty == Type::NUMERIC
        }

        to_sql_checked!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_is_exact_and_proportional() {
        let parts = apportion(1000, &[1.0, 1.0, 2.0]);
        assert_eq!(parts.iter().sum::<u64>(), 1000);
        assert_eq!(parts[2], 500);
    }

    #[test]
    fn plan_spreads_all_rooms_over_the_hotels() {
        let spec = SeedSpec {
            hotels: 50,
            rooms: 10_000,
            days: 3,
            start: NaiveDate::from_ymd_opt(2030, 1, 1).unwrap(),
            occupancy: 0.0,
            seed: 7,
        };
        let plan = plan(&spec);
        assert_eq!(plan.len(), 50);
        let rooms: i64 = plan.iter().flat_map(|h| &h.rooms_per_type).map(|r| *r as i64).sum();
        assert_eq!(rooms, 10_000);
        assert!(plan.iter().all(|h| h.rooms_per_type.len() as i32 == room_type_count(h.hotel_id)));
        assert_eq!(plan[9].ratio_hundredths, 110);
    }
}
