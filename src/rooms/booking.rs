//! The reservation transaction and its companions (cancel, look up, availability), each a
//! function of one database client so that the HTTP API and the view's per-shard committer
//! (`view/committer.rs`) share exactly the same SQL.
//!
//! Concurrency control: a *conditional UPDATE guarded by the CHECK*. One statement takes one
//! room on every night of the stay only where a room is left, and inserts the reservation only
//! when it got every night; otherwise the transaction rolls back. Row locks taken by the UPDATE
//! serialise bookings of the same night, and READ COMMITTED re-checks the condition on the
//! newest row version after waiting, so no night can be oversold; the `no_overbooking` CHECK
//! on `room_type_inventory` refuses it anyway. The README explains the measurements behind this
//! choice.

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::ClientWrapper;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tracing::debug;
use uuid::Uuid;

use super::claims::{self, Claim};
use super::model::{Availability, Reservation, ReservationRequest, RoomTypeAvailability, Status};

/// Inserts the reservation and takes one room on every night of the stay where one is left.
///
/// Parameters: `$1` reservation_id, `$2` hotel_id, `$3` room_type_id, `$4` start_date,
/// `$5` end_date (exclusive), `$6` guest_id. Returns one row: the nights it could take, the
/// reservation's `created_at`, and the first night it could not take. The caller commits only
/// when every night was taken, and rolls back otherwise (which also removes the reservation).
///
/// The INSERT is unconditional on purpose: a `reservation_id` that exists, or is being
/// inserted by a concurrent transaction, always ends in a unique violation (after waiting for
/// that transaction), so a sold-out answer never hides a repeated click, and no look-up is
/// needed on the sold-out path. An unknown hotel or room type fails the foreign key. The
/// benchmark runs this very text through pgbench.
pub const RESERVE_SQL: &str = "\
WITH booked AS (
    INSERT INTO reservation (reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id, status)
    VALUES ($1, $2, $3, $4, $5, $6, 'confirmed')
    RETURNING created_at
), nights AS (
    UPDATE room_type_inventory
       SET total_reserved = total_reserved + 1,
           version = version + 1
     WHERE hotel_id = $2 AND room_type_id = $3
       AND date >= $4 AND date < $5
       AND total_reserved < floor(total_inventory * overbooking_ratio)
    RETURNING date
)
SELECT (SELECT count(*) FROM nights)::int AS nights_taken,
       (SELECT created_at FROM booked) AS created_at,
       (SELECT min(night)::date
          FROM generate_series($4::date, $5::date - 1, interval '1 day') AS night
         WHERE night::date NOT IN (SELECT date FROM nights)) AS full_night";

/// Why a booking failed, asked after the fact in one statement: does the reservation id exist
/// already (`$3`), and do the hotel and room type exist?
const DIAGNOSE_SQL: &str = "\
SELECT EXISTS (SELECT 1 FROM hotel WHERE hotel_id = $1) AS hotel_known,
       EXISTS (SELECT 1 FROM room_type WHERE hotel_id = $1 AND room_type_id = $2) AS room_type_known,
       r.reservation_id, r.hotel_id, r.room_type_id, r.start_date, r.end_date, r.guest_id, r.status,
       r.created_at, r.cancelled_at
  FROM (SELECT) AS one
  LEFT JOIN reservation r ON r.reservation_id = $3";

/// Marks a confirmed reservation cancelled and gives its nights back, in one statement.
const CANCEL_SQL: &str = "\
WITH cancelled AS (
    UPDATE reservation
       SET status = 'cancelled', cancelled_at = now()
     WHERE reservation_id = $1 AND status = 'confirmed'
    RETURNING hotel_id, room_type_id, start_date, end_date
), released AS (
    UPDATE room_type_inventory i
       SET total_reserved = i.total_reserved - 1,
           version = i.version + 1
      FROM cancelled c
     WHERE i.hotel_id = c.hotel_id AND i.room_type_id = c.room_type_id
       AND i.date >= c.start_date AND i.date < c.end_date
    RETURNING i.date
)
SELECT count(*)::int FROM released";

const FIND_SQL: &str = "\
SELECT reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id, status, created_at, cancelled_at
  FROM reservation WHERE reservation_id = $1";

const FIND_MANY_SQL: &str = "\
SELECT reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id, status, created_at, cancelled_at
  FROM reservation WHERE reservation_id = ANY($1)";

const AVAILABILITY_SQL: &str = "\
SELECT rt.room_type_id,
       count(i.date)::int AS nights,
       coalesce(min(floor(i.total_inventory * i.overbooking_ratio)::int - i.total_reserved), 0) AS available
  FROM room_type rt
  LEFT JOIN room_type_inventory i
         ON i.hotel_id = rt.hotel_id AND i.room_type_id = rt.room_type_id
        AND i.date >= $2 AND i.date < $3
 WHERE rt.hotel_id = $1
 GROUP BY rt.room_type_id
 ORDER BY rt.room_type_id";

/// Per room type of the hotels of a city (`$1`) or of a list (`$4`): nights with inventory in
/// `$2..$3` and the least rooms sellable over them.
const SEARCH_SQL: &str = "\
SELECT rt.hotel_id,
       rt.room_type_id,
       count(i.date)::int AS nights,
       coalesce(min(floor(i.total_inventory * i.overbooking_ratio)::int - i.total_reserved), 0) AS available
  FROM hotel h
  JOIN room_type rt ON rt.hotel_id = h.hotel_id
  LEFT JOIN room_type_inventory i
         ON i.hotel_id = rt.hotel_id AND i.room_type_id = rt.room_type_id
        AND i.date >= $2 AND i.date < $3
 WHERE h.city = $1 OR h.hotel_id = ANY($4)
 GROUP BY rt.hotel_id, rt.room_type_id
 ORDER BY rt.hotel_id, rt.room_type_id";

/// How often a transaction that PostgreSQL aborted for a deadlock or serialisation failure is
/// tried again before the error goes to the caller.
const MAX_ATTEMPTS: usize = 5;

/// What became of a booking request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every night was taken; the new reservation.
    Confirmed(Reservation),
    /// The same `reservation_id` with the same content was booked before (a double click).
    Repeated(Reservation),
    /// The `reservation_id` already names a different reservation.
    IdReused(Reservation),
    /// No room left on `night` (the first full night of the stay); nothing was taken.
    SoldOut {
        night: NaiveDate,
    },
    UnknownHotel,
    UnknownRoomType,
    /// The id is claimed for other content (only when the claim was taken in the booking's
    /// transaction): nothing was booked.
    Claimed(ReservationRequest),
}

/// Books `request` on the shard `client` is connected to (the hotel's shard). With
/// `claim_here` (the id's home shard is this shard) the id's claim is taken in the same
/// transaction, so that the booking costs no second commit.
pub async fn reserve(client: &ClientWrapper, request: &ReservationRequest, claim_here: bool) -> Result<Outcome> {
    let booked = book_legs(client, std::slice::from_ref(request), &[claim_here], &LegsEnd::Commit).await?;
    Ok(match booked {
        LegsBooked::Booked(created) => Outcome::Confirmed(confirmed(request, created[0])),
        LegsBooked::Refused { outcome, .. } => outcome,
    })
}

/// How a transaction of several legs on one shard ends once every leg got its nights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegsEnd {
    /// COMMIT: a single booking, or a trip whose legs all live on this shard.
    Commit,
    /// `PREPARE TRANSACTION gid`: phase one of a two-phase commit; the coordinator later sends
    /// `COMMIT PREPARED` or `ROLLBACK PREPARED` (see `trips::two_phase`).
    Prepare(String),
}

/// What [`book_legs`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegsBooked {
    /// Every leg got every night; each reservation's `created_at`, in the order of the legs.
    Booked(Vec<DateTime<Utc>>),
    /// Nothing was booked: the first leg refused (its index in the legs given) and why
    /// (`SoldOut`, `IdReused`, `Repeated`, `Claimed`, `UnknownHotel`, `UnknownRoomType`).
    Refused { leg: usize, outcome: Outcome },
}

/// Books every leg of `legs` (all of this shard) in one transaction, which ends as `end` says
/// when every leg got every night, and rolls back otherwise. BEGIN, the claims taken here and
/// the legs go out together (pipelined; each statement is sent when first polled, and `join!`
/// and `join_all` poll in order); trip callers sort the legs by hotel, room type and date so
/// that two trips lock the same nights in the same order. A transaction PostgreSQL aborted for
/// a deadlock or serialisation failure is tried again, up to [`MAX_ATTEMPTS`] times.
///
/// `claim_here[i]`: leg `i`'s id has its home shard here, so its claim is taken inside this
/// transaction; an id claimed for another stay refuses the leg (`Claimed`).
pub async fn book_legs(
    client: &ClientWrapper,
    legs: &[ReservationRequest],
    claim_here: &[bool],
    end: &LegsEnd,
) -> Result<LegsBooked> {
    for attempt in 1..=MAX_ATTEMPTS {
        match try_book_legs(client, legs, claim_here, end).await {
            Ok(Some(booked)) => return Ok(booked),
            // A constraint failed but the diagnosis found no reason: a race with another
            // transaction; book again.
            Ok(None) => debug!(attempt, "could not tell why the booking failed; retrying"),
            Err(error) if is_transient(&error) && attempt < MAX_ATTEMPTS => {
                debug!(attempt, %error, "transient failure; retrying")
            }
            Err(error) => return Err(error).context("booking transaction failed"),
        }
    }
    let what = legs.iter().map(|leg| leg.reservation_id.to_string()).collect::<Vec<_>>().join(", ");
    anyhow::bail!("booking {what} failed {MAX_ATTEMPTS} times without a reason")
}

/// One attempt of [`book_legs`]; `None` when a constraint failed for no reason the diagnosis
/// can see.
async fn try_book_legs(
    client: &ClientWrapper,
    legs: &[ReservationRequest],
    claim_here: &[bool],
    end: &LegsEnd,
) -> Result<Option<LegsBooked>, tokio_postgres::Error> {
    let statement = client.prepare_cached(RESERVE_SQL).await?;
    // Prepared before the pipeline: a statement prepared on the way would let later ones
    // overtake it.
    let claimed_here: Vec<usize> = (0..legs.len()).filter(|index| claim_here.get(*index) == Some(&true)).collect();
    let claim_statement = if claimed_here.is_empty() { None } else { Some(claims::claim_statement(client).await?) };
    let parameters: Vec<_> = legs.iter().map(|leg| leg.sql_params()).collect();
    let claimed = futures_util::future::join_all(claimed_here.iter().map(|index| async {
        claims::claimed_with(client, claim_statement.as_ref().expect("prepared above"), &legs[*index]).await
    }));
    let booked = futures_util::future::join_all(parameters.iter().map(|p| client.query_one(&statement, p)));
    let (begun, claimed, results) = tokio::join!(client.batch_execute("BEGIN"), claimed, booked);
    if let Err(error) = begun {
        return Err(rolled_back(client, error).await);
    }
    for (index, claim) in claimed_here.iter().zip(claimed) {
        match claim {
            Err(error) => return Err(rolled_back(client, error).await),
            Ok(claimed) => {
                if let Claim::Taken(other) = Claim::of(&legs[*index], &claimed) {
                    client.batch_execute("ROLLBACK").await?;
                    return Ok(Some(LegsBooked::Refused { leg: *index, outcome: Outcome::Claimed(other) }));
                }
            }
        }
    }
    let mut created = Vec::with_capacity(legs.len());
    for (index, (leg, result)) in legs.iter().zip(results).enumerate() {
        let refused = |outcome| LegsBooked::Refused { leg: index, outcome };
        match result {
            Ok(row) if row.get::<_, i32>("nights_taken") == leg.nights() => created.push(row.get("created_at")),
            // Some night was full: roll back the reservations and the nights already taken.
            Ok(row) => {
                client.batch_execute("ROLLBACK").await?;
                let full = row.get::<_, Option<NaiveDate>>("full_night");
                return Ok(full.map(|night| refused(Outcome::SoldOut { night })));
            }
            // The id exists (a repeat, or a reuse), or the hotel or room type does not, or (which
            // the guarded UPDATE never lets happen) the CHECK refused a night: the diagnosis tells.
            Err(error)
                if [SqlState::UNIQUE_VIOLATION, SqlState::FOREIGN_KEY_VIOLATION, SqlState::CHECK_VIOLATION]
                    .iter()
                    .any(|code| error.code() == Some(code)) =>
            {
                // ROLLBACK goes out first, the diagnosis right behind it: one round trip.
                let (rolled_back, diagnosis) = tokio::join!(client.batch_execute("ROLLBACK"), diagnose(client, leg));
                rolled_back?;
                return Ok(diagnosis?.map(refused));
            }
            Err(error) => return Err(rolled_back(client, error).await),
        }
    }
    let ending = match end {
        LegsEnd::Commit => "COMMIT".to_string(),
        LegsEnd::Prepare(gid) => format!("PREPARE TRANSACTION '{}'", gid.replace('\'', "''")),
    };
    client.batch_execute(&ending).await?;
    Ok(Some(LegsBooked::Booked(created)))
}

/// `error` after rolling back; the rollback's own error instead if it failed (the connection
/// may then still be inside the transaction, and the caller must not reuse it).
async fn rolled_back(client: &ClientWrapper, error: tokio_postgres::Error) -> tokio_postgres::Error {
    match client.batch_execute("ROLLBACK").await {
        Ok(()) => error,
        Err(rollback) => rollback,
    }
}

/// After a failed attempt: is it a repeated id, a reused id, or an unknown hotel or room
/// type? `None` when it is none of these (a race: try again).
async fn diagnose(
    client: &ClientWrapper,
    request: &ReservationRequest,
) -> Result<Option<Outcome>, tokio_postgres::Error> {
    let statement = client.prepare_cached(DIAGNOSE_SQL).await?;
    let row =
        client.query_one(&statement, &[&request.hotel_id, &request.room_type_id, &request.reservation_id]).await?;
    if row.get::<_, Option<Uuid>>("reservation_id").is_some() {
        let existing = reservation_from_row(&row);
        return Ok(Some(if request.matches(&existing) {
            Outcome::Repeated(existing)
        } else {
            Outcome::IdReused(existing)
        }));
    }
    Ok(if !row.get::<_, bool>("hotel_known") {
        Some(Outcome::UnknownHotel)
    } else if !row.get::<_, bool>("room_type_known") {
        Some(Outcome::UnknownRoomType)
    } else {
        None
    })
}

fn confirmed(request: &ReservationRequest, created_at: DateTime<Utc>) -> Reservation {
    Reservation { request: request.clone(), status: Status::Confirmed, created_at, cancelled_at: None }
}

/// Cancels a reservation and gives its nights back. Idempotent: cancelling a cancelled
/// reservation changes nothing. Returns the reservation as it now stands, `None` if this shard
/// does not know the id.
pub async fn cancel(client: &ClientWrapper, reservation_id: Uuid) -> Result<Option<Reservation>> {
    for attempt in 1..=MAX_ATTEMPTS {
        match client.query_one(CANCEL_SQL, &[&reservation_id]).await {
            Ok(_) => break,
            Err(error) if is_transient(&error) && attempt < MAX_ATTEMPTS => {
                debug!(attempt, %error, "transient failure while cancelling; retrying")
            }
            Err(error) => return Err(error).context("cancel transaction failed"),
        }
    }
    Ok(find(client, reservation_id).await?)
}

/// The reservation with this id on this shard.
pub async fn find(client: &ClientWrapper, reservation_id: Uuid) -> Result<Option<Reservation>, tokio_postgres::Error> {
    let statement = client.prepare_cached(FIND_SQL).await?;
    Ok(client.query_opt(&statement, &[&reservation_id]).await?.map(|row| reservation_from_row(&row)))
}

/// The reservations with these ids on this shard (one query for many ids).
pub async fn find_many(
    client: &ClientWrapper,
    reservation_ids: &[Uuid],
) -> Result<Vec<Reservation>, tokio_postgres::Error> {
    let statement = client.prepare_cached(FIND_MANY_SQL).await?;
    Ok(client.query(&statement, &[&reservation_ids]).await?.iter().map(reservation_from_row).collect())
}

fn reservation_from_row(row: &Row) -> Reservation {
    Reservation {
        request: ReservationRequest::from_row(row),
        status: Status::from_db(row.get("status")),
        created_at: row.get("created_at"),
        cancelled_at: row.get("cancelled_at"),
    }
}

/// Rooms sellable for every night of `start..end`, per room type; `None` for an unknown hotel.
pub async fn availability(
    client: &ClientWrapper,
    hotel_id: i64,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<Option<Availability>> {
    let nights = (end - start).num_days() as i32;
    let rows = client.query(AVAILABILITY_SQL, &[&hotel_id, &start, &end]).await.context("availability query failed")?;
    if rows.is_empty() {
        let known: bool =
            client.query_one("SELECT EXISTS (SELECT 1 FROM hotel WHERE hotel_id = $1)", &[&hotel_id]).await?.get(0);
        if !known {
            return Ok(None);
        }
    }
    let room_types = rows.iter().map(|row| room_type_availability(row, nights)).collect();
    Ok(Some(Availability { hotel_id, start, end, room_types }))
}

/// A room type's availability from a row of [`AVAILABILITY_SQL`] or [`SEARCH_SQL`] over a
/// range of `nights` nights: a night without an inventory row has nothing to sell.
fn room_type_availability(row: &Row, nights: i32) -> RoomTypeAvailability {
    let complete = row.get::<_, i32>("nights") == nights;
    let available = if complete { row.get::<_, i32>("available").max(0) } else { 0 };
    RoomTypeAvailability { room_type_id: row.get("room_type_id"), available }
}

/// The hotels of this shard in `city` or in `hotels` with at least `rooms` rooms of one type
/// sellable on every night of `start..end`, each listing only those room types.
pub async fn search(
    client: &ClientWrapper,
    city: Option<&str>,
    hotels: &[i64],
    start: NaiveDate,
    end: NaiveDate,
    rooms: i32,
) -> Result<Vec<Availability>> {
    let nights = (end - start).num_days() as i32;
    let rows = client.query(SEARCH_SQL, &[&city, &start, &end, &hotels]).await.context("search query failed")?;
    let mut found: Vec<Availability> = Vec::new();
    for row in &rows {
        let hotel_id: i64 = row.get("hotel_id");
        let room_type = room_type_availability(row, nights);
        if room_type.available < rooms {
            continue;
        }
        match found.last_mut() {
            Some(last) if last.hotel_id == hotel_id => last.room_types.push(room_type),
            _ => found.push(Availability { hotel_id, start, end, room_types: vec![room_type] }),
        }
    }
    Ok(found)
}

/// Deadlocks and serialisation failures: PostgreSQL aborted the transaction, trying again may
/// succeed.
fn is_transient(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
    )
}
