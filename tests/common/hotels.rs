//! Test hotels written straight into a shard's database, as an operator with `psql` would.
//!
//! Include it with `#[path = "common/hotels.rs"] mod hotels;`.
#![allow(dead_code)]

use chrono::{Days, NaiveDate};

/// Night `offset` of the test inventory, from a fixed first night, so that the tests do not
/// depend on today.
pub fn night(offset: u64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2031, 3, 1).unwrap() + Days::new(offset)
}

/// Hotel `hotel_id` in `city` with overbooking `ratio` (e.g. "1.10"), and room types
/// `1..=rooms.len()` of `rooms[i]` rooms each, on sale for `days` nights from `first_night`,
/// nothing reserved.
pub async fn add_hotel(
    db: &tokio_postgres::Client,
    hotel_id: i64,
    city: &str,
    ratio: &str,
    rooms: &[i32],
    first_night: NaiveDate,
    days: i32,
) {
    db.execute(
        "INSERT INTO hotel (hotel_id, name, city, overbooking_ratio) VALUES ($1, 'Test hotel', $2, $3::text::numeric)",
        &[&hotel_id, &city, &ratio],
    )
    .await
    .unwrap();
    for (index, rooms) in rooms.iter().enumerate() {
        let room_type_id = index as i32 + 1;
        add_room_type(db, hotel_id, room_type_id).await;
        db.execute(
            "INSERT INTO room_type_inventory
                 (hotel_id, room_type_id, date, total_inventory, total_reserved, overbooking_ratio)
             SELECT $1, $2, night::date, $3, 0, h.overbooking_ratio
               FROM generate_series($4::date, $4::date + $5::int - 1, interval '1 day') AS night, hotel h
              WHERE h.hotel_id = $1",
            &[&hotel_id, &room_type_id, rooms, &first_night, &days],
        )
        .await
        .unwrap();
    }
}

/// Room type `room_type_id` of `hotel_id`, with the hotel's overbooking ratio and no inventory.
pub async fn add_room_type(db: &tokio_postgres::Client, hotel_id: i64, room_type_id: i32) {
    db.execute(
        "INSERT INTO room_type (hotel_id, room_type_id, name, overbooking_ratio)
         SELECT hotel_id, $2, 'Room', overbooking_ratio FROM hotel WHERE hotel_id = $1",
        &[&hotel_id, &room_type_id],
    )
    .await
    .unwrap();
}
