//! Questions as they enter the dataflow ([`Ask`]), what the joins find for them ([`Hit`],
//! gathered into [`Found`]), and the answers computed from that: plain functions, no
//! dataflow, so they are tested directly.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::rows::{Day, Stay, date_of, day_of};
use crate::rooms::model::{Availability, ReservationRequest, RoomTypeAvailability};
use crate::sources::postgres_cdc::Lsn;

/// A question as a dataflow record: which hotels (listed, or all of a city), which nights,
/// which reservation id, and which shards' positions the answer must carry (added when it is
/// gathered, from the positions that went in at or before its time).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ask {
    pub hotels: Vec<i64>,
    pub city: Option<String>,
    pub start: Day,
    pub end: Day,
    pub reservation: Option<u128>,
    pub shards: Vec<u32>,
}

/// One thing the view found for a question (a join result).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Hit {
    Hotel { hotel_id: i64 },
    RoomType { hotel_id: i64, room_type_id: i32 },
    Night { hotel_id: i64, room_type_id: i32, night: Day, free: i32 },
    Reservation(Stay),
}

/// Everything the view found for one question, at one logical time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub hotels: BTreeSet<i64>,
    pub room_types: BTreeSet<(i64, i32)>,
    /// Rooms free per (hotel, room type), per night.
    pub nights: BTreeMap<(i64, i32), BTreeMap<Day, i32>>,
    pub reservation: Option<Stay>,
    /// The commit position of each shard that the answer reflects.
    pub positions: BTreeMap<u32, Lsn>,
    /// Set when the view broke its own invariant (a row present twice, or retracted more
    /// than inserted): a change was lost or applied twice, and the answer cannot be trusted.
    pub inconsistent: Option<String>,
}

impl Found {
    /// Adds a hit with its consolidated multiplicity: every row is in the view once or not at
    /// all, and a night has one row per room type.
    pub fn add(&mut self, hit: Hit, multiplicity: isize) {
        if multiplicity != 1 {
            self.inconsistent.get_or_insert(format!("{hit:?} is in the view {multiplicity} times"));
            return;
        }
        match hit {
            Hit::Hotel { hotel_id } => {
                self.hotels.insert(hotel_id);
            }
            Hit::RoomType { hotel_id, room_type_id } => {
                self.room_types.insert((hotel_id, room_type_id));
            }
            Hit::Night { hotel_id, room_type_id, night, free } => {
                if let Some(other) = self.nights.entry((hotel_id, room_type_id)).or_default().insert(night, free) {
                    self.inconsistent.get_or_insert(format!(
                        "hotel {hotel_id} room type {room_type_id} has two rows for night {}: {other} and {free} free",
                        date_of(night)
                    ));
                }
            }
            Hit::Reservation(stay) => {
                if self.reservation.replace(stay).is_some() {
                    self.inconsistent.get_or_insert("a reservation id has two rows".into());
                }
            }
        }
    }

    /// Rooms of `room_type_id` free on every night of `start..end` (0 when a night has no
    /// inventory row), as the SQL path computes it.
    fn available(&self, hotel_id: i64, room_type_id: i32, start: Day, end: Day) -> i32 {
        let Some(nights) = self.nights.get(&(hotel_id, room_type_id)) else {
            return 0;
        };
        let mut least = i32::MAX;
        for night in start..end {
            match nights.get(&night) {
                Some(free) => least = least.min(*free),
                None => return 0,
            }
        }
        least.max(0)
    }

    /// The availability of `hotel_id` (`None`: no such hotel), every room type listed.
    pub fn availability(&self, hotel_id: i64, start: NaiveDate, end: NaiveDate) -> Option<Availability> {
        if !self.hotels.contains(&hotel_id) {
            return None;
        }
        let (first, last) = (day_of(start), day_of(end));
        let room_types = self
            .room_types
            .range((hotel_id, i32::MIN)..=(hotel_id, i32::MAX))
            .map(|&(_, room_type_id)| RoomTypeAvailability {
                room_type_id,
                available: self.available(hotel_id, room_type_id, first, last),
            })
            .collect();
        Some(Availability { hotel_id, start, end, room_types })
    }

    /// The hotels with at least `rooms` rooms of one type free for the whole stay, each with
    /// only those room types.
    pub fn search(&self, start: NaiveDate, end: NaiveDate, rooms: i32) -> Vec<Availability> {
        self.hotels
            .iter()
            .filter_map(|&hotel_id| {
                let mut availability = self.availability(hotel_id, start, end)?;
                availability.room_types.retain(|room_type| room_type.available >= rooms);
                (!availability.room_types.is_empty()).then_some(availability)
            })
            .collect()
    }

    /// Whether the view alone can refuse `request`: the first night of the stay it knows to be
    /// sold out, if any. The view refuses only from rows it holds: a reservation id it already
    /// knows may be a repeated click of the booking that took the last room, and a night or
    /// room type it has no row for may have been added since (a hotel being set up); the
    /// database decides those.
    pub fn sold_out_night(&self, request: &ReservationRequest) -> Option<NaiveDate> {
        if self.reservation.is_some() || !self.room_types.contains(&(request.hotel_id, request.room_type_id)) {
            return None;
        }
        let nights = self.nights.get(&(request.hotel_id, request.room_type_id))?;
        for night in day_of(request.start_date)..day_of(request.end_date) {
            match nights.get(&night) {
                None => return None,
                Some(free) if *free <= 0 => return Some(date_of(night)),
                Some(_) => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn date(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2031, 3, day).unwrap()
    }

    fn found() -> Found {
        let mut found = Found::default();
        found.add(Hit::Hotel { hotel_id: 1 }, 1);
        found.add(Hit::RoomType { hotel_id: 1, room_type_id: 1 }, 1);
        found.add(Hit::RoomType { hotel_id: 1, room_type_id: 2 }, 1);
        for (day, free) in [(1, 3), (2, 0), (3, 5)] {
            found.add(Hit::Night { hotel_id: 1, room_type_id: 1, night: day_of(date(day)), free }, 1);
        }
        found.add(Hit::Night { hotel_id: 1, room_type_id: 2, night: day_of(date(1)), free: 7 }, 1);
        assert_eq!(found.inconsistent, None);
        found
    }

    fn request(room_type_id: i32, from: u32, to: u32) -> ReservationRequest {
        ReservationRequest {
            reservation_id: Uuid::now_v7(),
            hotel_id: 1,
            room_type_id,
            start_date: date(from),
            end_date: date(to),
            guest_id: 9,
        }
    }

    #[test]
    fn availability_is_the_least_free_over_the_nights_and_zero_without_inventory() {
        let found = found();
        let rooms = |from, to| found.availability(1, date(from), date(to)).unwrap().room_types;
        assert_eq!(rooms(1, 2)[0].available, 3);
        assert_eq!(rooms(1, 3)[0].available, 0);
        assert_eq!(rooms(3, 4)[0].available, 5);
        assert_eq!(rooms(1, 2)[1].available, 7);
        assert_eq!(rooms(1, 3)[1].available, 0, "no row for the 2nd night");
        assert!(found.availability(2, date(1), date(2)).is_none());
        assert_eq!(found.search(date(1), date(2), 4).len(), 1);
        assert_eq!(found.search(date(1), date(2), 8).len(), 0);
    }

    #[test]
    fn the_view_refuses_only_what_it_knows_to_be_sold_out() {
        let mut found = found();
        assert_eq!(found.sold_out_night(&request(1, 1, 4)), Some(date(2)));
        assert_eq!(found.sold_out_night(&request(1, 3, 4)), None);
        assert_eq!(found.sold_out_night(&request(2, 1, 3)), None, "a night without a row: the database decides");
        assert_eq!(found.sold_out_night(&request(3, 1, 2)), None, "unknown room type: the database decides");
        found.add(Hit::Reservation(Stay { hotel_id: 1, room_type_id: 1, start: 0, end: 1, guest_id: 9 }), 1);
        assert_eq!(found.sold_out_night(&request(1, 1, 4)), None, "a known id may be a repeat");
    }

    #[test]
    fn a_row_twice_or_a_night_with_two_rows_is_reported_not_answered() {
        let mut doubled = found();
        doubled.add(Hit::Hotel { hotel_id: 2 }, 2);
        assert!(doubled.inconsistent.unwrap().contains("2 times"));
        let mut two_rows = found();
        two_rows.add(Hit::Night { hotel_id: 1, room_type_id: 1, night: day_of(date(1)), free: 4 }, 1);
        assert!(two_rows.inconsistent.unwrap().contains("two rows"));
    }
}
