//! The two invariants of the reservation data, checked from scratch against the database:
//! no night is sold beyond `floor(total_inventory * overbooking_ratio)`, and every night's
//! `total_reserved` equals the number of confirmed reservations covering it. Used by the
//! tests, the benchmark and `clickstay rooms check`.

use anyhow::{Context, Result};
use chrono::NaiveDate;
use serde::Serialize;

/// Every inventory night whose counters disagree with the reservations or with its capacity,
/// recounted from `reservation` (the oracle) rather than trusted from the counters.
const AUDIT_SQL: &str = "\
WITH covered AS (
    SELECT r.hotel_id, r.room_type_id, night::date AS date, count(*)::int AS confirmed
      FROM reservation r,
           generate_series(r.start_date, r.end_date - 1, interval '1 day') AS night
     WHERE r.status = 'confirmed'
     GROUP BY 1, 2, 3
)
SELECT coalesce(i.hotel_id, c.hotel_id) AS hotel_id,
       coalesce(i.room_type_id, c.room_type_id) AS room_type_id,
       coalesce(i.date, c.date) AS date,
       i.total_reserved,
       floor(i.total_inventory * i.overbooking_ratio)::int AS allowed,
       coalesce(c.confirmed, 0) AS confirmed
  FROM room_type_inventory i
  FULL JOIN covered c
    ON c.hotel_id = i.hotel_id AND c.room_type_id = i.room_type_id AND c.date = i.date
 WHERE i.hotel_id IS NULL
    OR i.total_reserved <> coalesce(c.confirmed, 0)
    OR i.total_reserved > floor(i.total_inventory * i.overbooking_ratio)
 ORDER BY 1, 2, 3
 LIMIT 100";

/// One night that breaks an invariant (`total_reserved` is `None` for a reservation on a night
/// without an inventory row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub hotel_id: i64,
    pub room_type_id: i32,
    pub date: NaiveDate,
    pub total_reserved: Option<i32>,
    pub allowed: Option<i32>,
    pub confirmed: i32,
}

/// Up to 100 violations on the database `client` is connected to; empty when all is well.
pub async fn audit(client: &tokio_postgres::Client) -> Result<Vec<Violation>> {
    let rows = client.query(AUDIT_SQL, &[]).await.context("audit query failed")?;
    Ok(rows
        .iter()
        .map(|row| Violation {
            hotel_id: row.get("hotel_id"),
            room_type_id: row.get("room_type_id"),
            date: row.get("date"),
            total_reserved: row.get("total_reserved"),
            allowed: row.get("allowed"),
            confirmed: row.get("confirmed"),
        })
        .collect())
}
