//! What the trip API speaks: a trip request as it arrives (checked here, before any database
//! work) and a trip as it is stored and answered.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rooms::model::{BadRequest, RequestError, ReservationRequest};

/// Fewest and most legs of one trip.
pub const MIN_LEGS: usize = 2;
pub const MAX_LEGS: usize = 10;

/// How a trip spanning several shards is booked (a trip on one shard is one transaction
/// whatever its mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Mode {
    /// Two-phase commit: every leg or none, atomically.
    #[default]
    #[serde(rename = "2pc")]
    TwoPhase,
    /// One booking per leg with compensations: every leg or none in the end, not atomically.
    #[serde(rename = "saga")]
    Saga,
}

impl Mode {
    /// The value stored in `trip.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::TwoPhase => "2pc",
            Mode::Saga => "saga",
        }
    }

    pub fn from_db(value: &str) -> Self {
        if value == "saga" { Mode::Saga } else { Mode::TwoPhase }
    }
}

/// `POST /v1/trips` exactly as the JSON arrives; [`TripRequest::parse`] checks it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrip {
    trip_id: String,
    guest_id: i64,
    #[serde(default)]
    mode: Mode,
    legs: Vec<RawLeg>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeg {
    reservation_id: String,
    hotel_id: i64,
    room_type_id: i32,
    start_date: String,
    end_date: String,
}

/// A checked trip: 2 to 10 legs, each a checked booking of the trip's guest, with distinct
/// reservation ids, and no two legs of one hotel and room type sharing a night.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TripRequest {
    pub trip_id: Uuid,
    pub guest_id: i64,
    pub mode: Mode,
    pub legs: Vec<ReservationRequest>,
}

impl TripRequest {
    /// Parses and checks a JSON body; a leg starting before today (UTC) is refused.
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let trip = Self::parse_undated(body)?;
        let today = Utc::now().date_naive();
        for leg in &trip.legs {
            leg.check_not_past(today)?;
        }
        Ok(trip)
    }

    /// Parses and checks a JSON body, whatever the date today.
    pub fn parse_undated(body: &[u8]) -> Result<Self, BadRequest> {
        let raw: RawTrip = serde_json::from_slice(body).map_err(|e| BadRequest(format!("invalid trip JSON: {e}")))?;
        let trip_id = parse_trip_id(&raw.trip_id)?;
        if !(MIN_LEGS..=MAX_LEGS).contains(&raw.legs.len()) {
            return Err(bad(format!("legs: a trip has {MIN_LEGS} to {MAX_LEGS} legs, got {}", raw.legs.len())));
        }
        let legs = raw
            .legs
            .iter()
            .enumerate()
            .map(|(index, leg)| {
                ReservationRequest::from_fields(
                    &leg.reservation_id,
                    leg.hotel_id,
                    leg.room_type_id,
                    (&leg.start_date, &leg.end_date),
                    raw.guest_id,
                )
                .map_err(|BadRequest(message)| bad(format!("legs[{index}].{message}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let trip = Self { trip_id, guest_id: raw.guest_id, mode: raw.mode, legs };
        trip.check()?;
        Ok(trip)
    }

    /// The rules between legs.
    fn check(&self) -> Result<(), BadRequest> {
        for (index, leg) in self.legs.iter().enumerate() {
            if leg.reservation_id == self.trip_id {
                return Err(bad(format!("legs[{index}].reservation_id: the same id as trip_id; take a fresh one")));
            }
            for (earlier, other) in self.legs[..index].iter().enumerate() {
                if other.reservation_id == leg.reservation_id {
                    return Err(bad(format!(
                        "legs[{index}].reservation_id: the same id as legs[{earlier}]; each leg takes its own"
                    )));
                }
                let same_room = other.hotel_id == leg.hotel_id && other.room_type_id == leg.room_type_id;
                if same_room && other.start_date < leg.end_date && leg.start_date < other.end_date {
                    return Err(bad(format!(
                        "legs[{index}]: overlaps legs[{earlier}] in the same hotel and room type; book one stay instead"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The legs as stored in `trip.legs` (the trip's content, compared on a repeat).
    pub fn legs_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.legs).expect("legs serialise")
    }

    /// True when `stored` is this very trip (a repeat, not a reuse of its id).
    pub fn same_content(&self, stored: &StoredTrip) -> bool {
        self.guest_id == stored.guest_id && self.mode == stored.mode && self.legs == stored.legs
    }
}

/// Parses a trip id (a UUID, as issued by `POST /v1/reservation-ids`).
pub fn parse_trip_id(text: &str) -> Result<Uuid, BadRequest> {
    Uuid::parse_str(text).map_err(|_| BadRequest(format!("trip_id: `{text}` is not a UUID")))
}

fn bad(message: String) -> BadRequest {
    BadRequest(message)
}

/// Where a trip stands (`trip.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TripStatus {
    /// Its legs are being booked, prepared or decided.
    Pending,
    Confirmed,
    /// Nothing of it is booked (refused, rolled back, or compensated).
    Failed,
    /// A saga cancelling the legs it booked.
    Compensating,
    Cancelling,
    Cancelled,
}

impl TripStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TripStatus::Pending => "pending",
            TripStatus::Confirmed => "confirmed",
            TripStatus::Failed => "failed",
            TripStatus::Compensating => "compensating",
            TripStatus::Cancelling => "cancelling",
            TripStatus::Cancelled => "cancelled",
        }
    }

    pub fn from_db(value: &str) -> Self {
        match value {
            "confirmed" => TripStatus::Confirmed,
            "failed" => TripStatus::Failed,
            "compensating" => TripStatus::Compensating,
            "cancelling" => TripStatus::Cancelling,
            "cancelled" => TripStatus::Cancelled,
            _ => TripStatus::Pending,
        }
    }

    /// Nothing more will happen to it without a new request.
    pub fn is_final(self) -> bool {
        matches!(self, TripStatus::Confirmed | TripStatus::Failed | TripStatus::Cancelled)
    }
}

/// The two-phase decision (`trip.decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Abort,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Commit => "commit",
            Decision::Abort => "abort",
        }
    }

    pub fn from_db(value: Option<&str>) -> Option<Self> {
        match value {
            Some("commit") => Some(Decision::Commit),
            Some("abort") => Some(Decision::Abort),
            _ => None,
        }
    }
}

/// A trip's row of the coordinator log (`trip` on its home shard).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTrip {
    pub trip_id: Uuid,
    pub guest_id: i64,
    pub mode: Mode,
    pub legs: Vec<ReservationRequest>,
    /// The shards its legs live on, ascending.
    pub participants: Vec<usize>,
    pub status: TripStatus,
    pub decision: Option<Decision>,
    /// The error answered when it failed.
    pub failure: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A leg as a trip answers it: the reservation when it exists, else the leg as asked with its
/// saga state.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum LegAnswer {
    Booked(crate::rooms::model::Reservation),
    NotBooked {
        #[serde(flatten)]
        request: ReservationRequest,
        status: &'static str,
    },
}

/// A trip as `GET /v1/trips/{id}` and a successful `POST` answer it.
#[derive(Debug, Clone, Serialize)]
pub struct TripAnswer {
    pub trip_id: Uuid,
    pub guest_id: i64,
    pub mode: Mode,
    pub status: TripStatus,
    pub legs: Vec<LegAnswer>,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(legs: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({ "trip_id": Uuid::now_v7(), "guest_id": 7, "legs": legs })).unwrap()
    }

    fn leg(hotel: i64, start: &str, end: &str) -> serde_json::Value {
        json!({ "reservation_id": Uuid::now_v7(), "hotel_id": hotel, "room_type_id": 1,
                "start_date": start, "end_date": end })
    }

    #[test]
    fn a_trip_parses_with_2pc_by_default() {
        let trip = TripRequest::parse_undated(&body(json!([
            leg(1, "2031-01-01", "2031-01-04"),
            leg(2, "2031-01-04", "2031-01-06")
        ])))
        .unwrap();
        assert_eq!((trip.mode, trip.legs.len(), trip.legs[1].guest_id), (Mode::TwoPhase, 2, 7));
    }

    #[test]
    fn malformed_trips_name_the_problem() {
        let refused = |legs: serde_json::Value| TripRequest::parse_undated(&body(legs)).unwrap_err().0;
        assert!(refused(json!([leg(1, "2031-01-01", "2031-01-02")])).contains("2 to 10 legs"));
        assert!(
            refused(json!((0..11).map(|_| leg(1, "2031-01-01", "2031-01-02")).collect::<Vec<_>>())).contains("got 11")
        );
        let overlap = refused(json!([leg(1, "2031-01-01", "2031-01-04"), leg(1, "2031-01-03", "2031-01-05")]));
        assert!(overlap.contains("legs[1]: overlaps legs[0]"), "{overlap}");
        assert!(
            refused(json!([leg(1, "2031-01-01", "2031-01-04"), leg(2, "2031-01-05", "2031-01-04")]))
                .starts_with("legs[1].")
        );
        let same = leg(1, "2031-01-01", "2031-01-02");
        let mut again = leg(2, "2031-01-05", "2031-01-06");
        again["reservation_id"] = same["reservation_id"].clone();
        assert!(refused(json!([same, again])).contains("the same id as legs[0]"));
        // Adjacent stays in one hotel, or overlapping stays in two room types, are fine.
        let mut other_type = leg(1, "2031-01-02", "2031-01-03");
        other_type["room_type_id"] = json!(2);
        TripRequest::parse_undated(&body(json!([leg(1, "2031-01-01", "2031-01-03"), other_type]))).unwrap();
        TripRequest::parse_undated(&body(json!([
            leg(1, "2031-01-01", "2031-01-03"),
            leg(1, "2031-01-03", "2031-01-04")
        ])))
        .unwrap();
        let unknown = TripRequest::parse_undated(br#"{"trip_id":"x","guest_id":1,"legs":[],"extra":1}"#).unwrap_err().0;
        assert!(unknown.contains("unknown field"), "{unknown}");
        let mode = TripRequest::parse_undated(br#"{"trip_id":"x","guest_id":1,"legs":[],"mode":"3pc"}"#).unwrap_err().0;
        assert!(mode.contains("3pc"), "{mode}");
    }
}
