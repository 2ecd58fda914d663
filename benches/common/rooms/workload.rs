//! What the benchmark books: the same random stays for the HTTP clients and for pgbench.
//!
//! A stay is a hotel, one of its room types (seeded hotels have `2 + h % 4`, see
//! [`clickstay::rooms::seed::room_type_count`]), a first night and 1 to `max_nights` nights inside
//! the seeded range. Under hot-hotel skew, `hot_percent` of each shard's requests go to that
//! shard's first hotel; the rest are uniform over the shard's hotels.

use chrono::{Days, NaiveDate};
use rand::RngExt;

use clickstay::rooms::seed::room_type_count;

/// The request mix of one benchmark run.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    /// Hotels are 1..=hotels.
    pub hotels: i64,
    pub shards: usize,
    /// First night of inventory and number of nights seeded.
    pub first_night: NaiveDate,
    pub days: u32,
    pub max_nights: u32,
    /// Share of requests (in percent) that go to the hot hotel of their shard; 0 is uniform.
    pub hot_percent: u32,
    /// Reservation ids homed on their hotel's shard, as `POST /v1/reservation-ids?hotel_id=`
    /// mints them (the claim rides in the booking's transaction); else any UUIDv7 (the claim
    /// is a round trip to the id's home shard for all but 1 in `shards`).
    pub homed_ids: bool,
}

/// One booking to attempt.
#[derive(Debug, Clone, Copy)]
pub struct Stay {
    pub hotel_id: i64,
    pub room_type_id: i32,
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl Workload {
    /// Uniform stays over `hotels` hotels on `shards` shards, ids homed on their hotel's shard.
    pub fn uniform(hotels: i64, shards: usize, first_night: NaiveDate, days: u32, max_nights: u32) -> Self {
        Workload { name: "uniform", hotels, shards, first_night, days, max_nights, hot_percent: 0, homed_ids: true }
    }

    /// A fresh reservation id for a booking at `hotel_id` (see [`Workload::homed_ids`]).
    pub fn reservation_id(&self, hotel_id: i64) -> uuid::Uuid {
        match self.homed_ids {
            true => {
                clickstay::rooms::claims::new_id_homed_on(hotel_id.rem_euclid(self.shards as i64) as usize, self.shards)
            }
            false => uuid::Uuid::now_v7(),
        }
    }

    /// The lowest hotel id on `shard` (its hot hotel).
    pub fn first_hotel(&self, shard: usize) -> i64 {
        if shard == 0 { self.shards as i64 } else { shard as i64 }
    }

    /// How many hotels `shard` holds.
    pub fn hotels_on(&self, shard: usize) -> i64 {
        let first = self.first_hotel(shard);
        if first > self.hotels { 0 } else { (self.hotels - first) / self.shards as i64 + 1 }
    }

    /// A random stay, drawn exactly as the pgbench script draws it.
    pub fn pick(&self, rng: &mut impl rand::Rng) -> Stay {
        let shard = loop {
            let shard = rng.random_range(0..self.shards);
            if self.hotels_on(shard) > 0 {
                break shard;
            }
        };
        let hotel_id = if rng.random_range(1..=100) <= self.hot_percent {
            self.first_hotel(shard)
        } else {
            self.first_hotel(shard) + self.shards as i64 * rng.random_range(0..self.hotels_on(shard))
        };
        let nights = rng.random_range(1..=self.max_nights);
        let offset = rng.random_range(0..=self.days - self.max_nights);
        let start = self.first_night + Days::new(offset as u64);
        Stay {
            hotel_id,
            room_type_id: rng.random_range(1..=room_type_count(hotel_id)),
            start,
            end: start + Days::new(nights as u64),
        }
    }
}
