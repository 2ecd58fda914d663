//! The values the reservation API speaks: requests as they arrive (checked here, before any
//! database work) and reservations as they are stored and answered.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest stay one reservation may cover.
pub const MAX_STAY_NIGHTS: i64 = 30;

/// The longest range the availability endpoint answers for.
pub const MAX_AVAILABILITY_NIGHTS: i64 = 366;

/// A request that cannot be served as sent; the message names the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Why a booking request is refused before any database work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Bad(#[from] BadRequest),
    /// The stay's first night is before `today` (UTC): that night can no longer be sold.
    #[error("start_date: the first night {first_night} is in the past (today is {today}, UTC)")]
    InThePast { first_night: NaiveDate, today: NaiveDate },
}

/// `POST /v1/reservations` exactly as the JSON arrives; [`ReservationRequest::parse`] checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReservationRequest {
    reservation_id: String,
    hotel_id: i64,
    room_type_id: i32,
    start_date: String,
    end_date: String,
    guest_id: i64,
}

/// A checked booking request: the stay is 1 to [`MAX_STAY_NIGHTS`] nights, end exclusive.
/// A stored [`Reservation`] carries the request it was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRequest {
    pub reservation_id: Uuid,
    pub hotel_id: i64,
    pub room_type_id: i32,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub guest_id: i64,
}

impl ReservationRequest {
    /// `$1..$6` of a statement that stores a request: id, hotel, room type, start, end, guest.
    pub fn sql_params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 6] {
        [&self.reservation_id, &self.hotel_id, &self.room_type_id, &self.start_date, &self.end_date, &self.guest_id]
    }

    /// The request from a row with the columns of [`Self::sql_params`], named as in the tables.
    pub fn from_row(row: &tokio_postgres::Row) -> Self {
        Self {
            reservation_id: row.get("reservation_id"),
            hotel_id: row.get("hotel_id"),
            room_type_id: row.get("room_type_id"),
            start_date: row.get("start_date"),
            end_date: row.get("end_date"),
            guest_id: row.get("guest_id"),
        }
    }

    /// Parses and checks a JSON body; a stay starting before today (UTC) is refused.
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let request = Self::parse_undated(body)?;
        request.check_not_past(Utc::now().date_naive())?;
        Ok(request)
    }

    /// Refuses a stay whose first night is before `today`.
    pub fn check_not_past(&self, today: NaiveDate) -> Result<(), RequestError> {
        if self.start_date < today {
            return Err(RequestError::InThePast { first_night: self.start_date, today });
        }
        Ok(())
    }

    /// Parses and checks a JSON body, whatever the date today.
    pub fn parse_undated(body: &[u8]) -> Result<Self, BadRequest> {
        let raw: RawReservationRequest =
            serde_json::from_slice(body).map_err(|e| BadRequest(format!("invalid reservation JSON: {e}")))?;
        Self::from_fields(
            &raw.reservation_id,
            raw.hotel_id,
            raw.room_type_id,
            (&raw.start_date, &raw.end_date),
            raw.guest_id,
        )
    }

    /// A checked request from its fields as they arrive (the id and the dates as text): a
    /// single booking's, or a trip's leg with the trip's guest.
    pub fn from_fields(
        reservation_id: &str,
        hotel_id: i64,
        room_type_id: i32,
        (start_date, end_date): (&str, &str),
        guest_id: i64,
    ) -> Result<Self, BadRequest> {
        let request = Self {
            reservation_id: parse_reservation_id(reservation_id)?,
            hotel_id,
            room_type_id,
            start_date: parse_date("start_date", start_date)?,
            end_date: parse_date("end_date", end_date)?,
            guest_id,
        };
        request.check()?;
        Ok(request)
    }

    /// The rules a well-formed request must follow (types are already right).
    pub fn check(&self) -> Result<(), BadRequest> {
        if self.hotel_id < 0 {
            return Err(BadRequest(format!("hotel_id: must not be negative, got {}", self.hotel_id)));
        }
        if self.room_type_id < 0 {
            return Err(BadRequest(format!("room_type_id: must not be negative, got {}", self.room_type_id)));
        }
        check_range("start_date", "end_date", self.start_date, self.end_date, MAX_STAY_NIGHTS)
    }

    /// Number of nights of the stay.
    pub fn nights(&self) -> i32 {
        (self.end_date - self.start_date).num_days() as i32
    }

    /// True when `reservation` books exactly this stay for this guest (a repeated click).
    pub fn matches(&self, reservation: &Reservation) -> bool {
        *self == reservation.request
    }
}

/// Whether a reservation still holds its nights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Confirmed,
    Cancelled,
}

impl Status {
    /// The value stored in `reservation.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Confirmed => "confirmed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Reads `reservation.status` (the column's CHECK allows only these two).
    pub fn from_db(value: &str) -> Self {
        if value == "cancelled" { Status::Cancelled } else { Status::Confirmed }
    }
}

/// A stored reservation, as the API answers it (the request's fields, flattened, then these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    #[serde(flatten)]
    pub request: ReservationRequest,
    pub status: Status,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

/// Rooms still sellable for every night of a range, per room type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    pub hotel_id: i64,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub room_types: Vec<RoomTypeAvailability>,
}

/// One room type's sellable rooms: the minimum over the nights of
/// `floor(total_inventory * overbooking_ratio) - total_reserved` (0 for a night without inventory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomTypeAvailability {
    pub room_type_id: i32,
    pub available: i32,
}

/// Parses a reservation id (a UUID, as issued by `POST /v1/reservation-ids`).
pub fn parse_reservation_id(text: &str) -> Result<Uuid, BadRequest> {
    Uuid::parse_str(text).map_err(|_| BadRequest(format!("reservation_id: `{text}` is not a UUID")))
}

/// Parses a `YYYY-MM-DD` date of years 1 to 9999; `field` names it in the error.
pub fn parse_date(field: &str, text: &str) -> Result<NaiveDate, BadRequest> {
    let bytes = text.as_bytes();
    let well_shaped = bytes.len() == 10
        && bytes
            .iter()
            .enumerate()
            .all(|(index, byte)| if index == 4 || index == 7 { *byte == b'-' } else { byte.is_ascii_digit() });
    match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(date) if well_shaped && (1..=9999).contains(&date.year()) => Ok(date),
        Ok(_) if well_shaped => Err(BadRequest(format!("{field}: `{text}` is outside the years 1 to 9999"))),
        _ => Err(BadRequest(format!("{field}: `{text}` is not a date in YYYY-MM-DD form"))),
    }
}

/// Checks that `end` is after `start` and at most `max_nights` later.
pub fn check_range(
    start_field: &str,
    end_field: &str,
    start: NaiveDate,
    end: NaiveDate,
    max_nights: i64,
) -> Result<(), BadRequest> {
    let nights = (end - start).num_days();
    if nights < 1 {
        return Err(BadRequest(format!("{end_field}: must be after {start_field} ({end} is not after {start})")));
    }
    if nights > max_nights {
        return Err(BadRequest(format!(
            "{end_field}: the range covers {nights} nights, more than the {max_nights} allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(start: &str, end: &str) -> String {
        format!(
            r#"{{"reservation_id":"0190a0b2-7c1e-7000-8000-000000000001","hotel_id":3,"room_type_id":1,
               "start_date":"{start}","end_date":"{end}","guest_id":42}}"#
        )
    }

    #[test]
    fn accepts_a_good_request() {
        let request = ReservationRequest::parse_undated(body("2030-01-01", "2030-01-04").as_bytes()).unwrap();
        assert_eq!(request.nights(), 3);
        assert_eq!(request.hotel_id, 3);
    }

    #[test]
    fn rejects_each_malformed_case_with_the_field_named() {
        let cases = [
            (body("2030-02-30", "2030-03-01"), "start_date"),
            (body("2030-1-01", "2030-01-04"), "start_date"),
            (body("2030-01-04", "2030-01-04"), "end_date"),
            (body("2030-01-01", "2030-02-01"), "31 nights"),
            (body("2030-01-01", "2030-01-31"), ""),
            (body("-001-01-01", "2030-01-04"), "start_date"),
            (body("0000-01-01", "0000-01-04"), "years 1 to 9999"),
            (body("9999-12-31", "+10000-01-01"), "end_date"),
            (r#"{"reservation_id":"x","hotel_id":1,"room_type_id":1,"start_date":"2030-01-01","end_date":"2030-01-02","guest_id":1}"#.into(), "reservation_id"),
            (r#"{"reservation_id":"0190a0b2-7c1e-7000-8000-000000000001","hotel_id":"1","room_type_id":1,"start_date":"2030-01-01","end_date":"2030-01-02","guest_id":1}"#.into(), "invalid type"),
            (r#"{"hotel_id":1}"#.into(), "missing field"),
        ];
        for (text, needle) in cases {
            match ReservationRequest::parse_undated(text.as_bytes()) {
                Ok(_) if needle.is_empty() => {} // 30 nights is the longest allowed stay
                Ok(request) => panic!("accepted {request:?}"),
                Err(BadRequest(message)) => assert!(message.contains(needle), "{message} lacks {needle}"),
            }
        }
    }

    #[test]
    fn a_stay_starting_before_today_is_in_the_past() {
        let request = ReservationRequest::parse_undated(body("2030-01-01", "2030-01-04").as_bytes()).unwrap();
        let day = |d| NaiveDate::from_ymd_opt(2030, 1, d).unwrap();
        assert_eq!(request.check_not_past(day(1)), Ok(()));
        assert_eq!(request.check_not_past(day(2)), Err(RequestError::InThePast { first_night: day(1), today: day(2) }));
        assert!(matches!(
            ReservationRequest::parse(body("2000-01-01", "2000-01-02").as_bytes()),
            Err(RequestError::InThePast { .. })
        ));
    }

    #[test]
    fn dates_keep_to_years_1_to_9999() {
        assert!(parse_date("start", "0001-01-01").is_ok());
        assert!(parse_date("start", "9999-12-31").is_ok());
        for bad in ["0000-01-01", "-001-01-01", "+001-01-01", "2030-01-0x", "10000-01-01"] {
            assert!(parse_date("start", bad).is_err(), "{bad}");
        }
    }
}
