//! The view's records: the rows of the four tables, reduced to what availability needs, and
//! built the same way from snapshot rows and from decoded changes.

use anyhow::{Context, Result, anyhow, bail};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::sources::postgres_cdc::{Change, Tuple};

/// A night, counted in days since 1970-01-01 (small, ordered, cheap to exchange).
pub type Day = i32;

/// The day number of `date`.
pub fn day_of(date: NaiveDate) -> Day {
    (date - NaiveDate::default()).num_days() as Day
}

/// The date of day number `day`.
pub fn date_of(day: Day) -> NaiveDate {
    NaiveDate::default() + chrono::Duration::days(day as i64)
}

/// The stay a reservation books (what makes two requests with one id the same booking).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stay {
    pub hotel_id: i64,
    pub room_type_id: i32,
    pub start: Day,
    pub end: Day,
    pub guest_id: i64,
}

/// One row of a table the view reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ViewRow {
    Hotel {
        hotel_id: i64,
        city: String,
    },
    RoomType {
        hotel_id: i64,
        room_type_id: i32,
    },
    /// A `room_type_inventory` row: `free = floor(total_inventory * overbooking_ratio) - total_reserved`.
    Night {
        hotel_id: i64,
        night: Day,
        room_type_id: i32,
        free: i32,
    },
    /// A reservation, whatever its status (its id can never be reused for another stay).
    Reservation {
        id: u128,
        stay: Stay,
    },
}

/// The view's record for a row of `table`.
pub fn from_tuple(table: &str, tuple: &Tuple) -> Result<ViewRow> {
    let text = |column: &str| tuple.get(column).ok_or_else(|| anyhow!("{table}.{column} is missing or NULL"));
    let int = |column: &str| -> Result<i64> {
        text(column)?.parse().with_context(|| format!("{table}.{column} is not an integer"))
    };
    let date = |column: &str| -> Result<Day> {
        let value = text(column)?;
        let date = NaiveDate::parse_from_str(value, "%Y-%m-%d")
            .with_context(|| format!("{table}.{column}: `{value}` is not a date"))?;
        Ok(day_of(date))
    };
    Ok(match table {
        "hotel" => ViewRow::Hotel { hotel_id: int("hotel_id")?, city: tuple.get("city").unwrap_or("").to_string() },
        "room_type" => ViewRow::RoomType { hotel_id: int("hotel_id")?, room_type_id: int("room_type_id")? as i32 },
        "room_type_inventory" => {
            let sellable = int("total_inventory")? * hundredths(text("overbooking_ratio")?)? / 100;
            ViewRow::Night {
                hotel_id: int("hotel_id")?,
                night: date("date")?,
                room_type_id: int("room_type_id")? as i32,
                free: (sellable - int("total_reserved")?) as i32,
            }
        }
        "reservation" => {
            let id = text("reservation_id")?;
            let id = uuid::Uuid::parse_str(id).with_context(|| format!("reservation.reservation_id: `{id}`"))?;
            ViewRow::Reservation {
                id: id.as_u128(),
                stay: Stay {
                    hotel_id: int("hotel_id")?,
                    room_type_id: int("room_type_id")? as i32,
                    start: date("start_date")?,
                    end: date("end_date")?,
                    guest_id: int("guest_id")?,
                },
            }
        }
        other => bail!("the view does not read table {other}"),
    })
}

/// The view's updates for one decoded change: the old row out, the new row in.
pub fn updates_of(change: &Change) -> Result<Vec<(ViewRow, isize)>> {
    let mut updates = Vec::with_capacity(2);
    if let Some(before) = &change.before {
        updates.push((from_tuple(&change.table, before)?, -1));
    }
    if let Some(after) = &change.after {
        updates.push((from_tuple(&change.table, after)?, 1));
    }
    Ok(updates)
}

/// A `numeric(4,2)` such as `1.10` in hundredths (110), exactly.
fn hundredths(text: &str) -> Result<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let fraction = format!("{fraction:0<2}");
    if fraction.len() > 2 || !fraction.chars().all(|c| c.is_ascii_digit()) {
        bail!("overbooking_ratio `{text}` has more than two decimals");
    }
    let whole: i64 = whole.parse().with_context(|| format!("overbooking_ratio `{text}`"))?;
    Ok(whole * 100 + fraction.parse::<i64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(columns: &[(&str, &str)]) -> Tuple {
        Tuple { columns: columns.iter().map(|(n, v)| (n.to_string(), Some(v.to_string()))).collect() }
    }

    #[test]
    fn a_night_counts_what_is_left_to_sell() {
        let row = tuple(&[
            ("hotel_id", "5"),
            ("room_type_id", "2"),
            ("date", "2031-03-01"),
            ("total_inventory", "15"),
            ("total_reserved", "4"),
            ("overbooking_ratio", "1.10"),
            ("version", "9"),
        ]);
        let night = day_of(NaiveDate::from_ymd_opt(2031, 3, 1).unwrap());
        // floor(15 * 1.1) = 16 sellable, 4 taken.
        assert_eq!(
            from_tuple("room_type_inventory", &row).unwrap(),
            ViewRow::Night { hotel_id: 5, night, room_type_id: 2, free: 12 }
        );
        assert_eq!(date_of(night), NaiveDate::from_ymd_opt(2031, 3, 1).unwrap());
    }

    #[test]
    fn ratios_are_exact_and_bad_rows_are_named() {
        assert_eq!(hundredths("1.00").unwrap(), 100);
        assert_eq!(hundredths("1.5").unwrap(), 150);
        assert_eq!(hundredths("2").unwrap(), 200);
        assert!(hundredths("1.005").is_err());
        let message = from_tuple("room_type", &tuple(&[("hotel_id", "x"), ("room_type_id", "1")])).unwrap_err();
        assert!(format!("{message:#}").contains("room_type.hotel_id"), "{message:#}");
    }
}
