//! The trip coordinator's log: the `trip` and `trip_leg` rows on the trip's home shard
//! (migration `0004_trips.sql`). Every function takes the home shard's client.

use anyhow::{Context, Result};
use deadpool_postgres::ClientWrapper;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::model::{Decision, Mode, StoredTrip, TripRequest, TripStatus};
use crate::rooms::model::ReservationRequest;

const COLUMNS: &str = "trip_id, guest_id, mode, legs, participants, status, decision, failure, created_at, updated_at";

/// What writing a new trip found.
pub enum Begun {
    /// The trip is new: its row (status `pending`) is committed at `created_at`.
    New { created_at: chrono::DateTime<chrono::Utc> },
    /// The trip_id names a trip already (a repeat, or a reuse of the id).
    Exists(Box<StoredTrip>),
}

/// Writes the trip's row and one `trip_leg` row per leg, unless the id is taken: then the
/// stored trip. `ON CONFLICT DO NOTHING` waits for a concurrent first use to commit, so two
/// requests of one trip_id never both begin it.
pub async fn begin(client: &ClientWrapper, trip: &TripRequest, participants: &[usize]) -> Result<Begun> {
    let participants: Vec<i32> = participants.iter().map(|shard| *shard as i32).collect();
    let ids: Vec<Uuid> = trip.legs.iter().map(|leg| leg.reservation_id).collect();
    let hotels: Vec<i64> = trip.legs.iter().map(|leg| leg.hotel_id).collect();
    let inserted = client
        .query_opt(
            "WITH new AS (
                 INSERT INTO trip (trip_id, guest_id, mode, legs, participants)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (trip_id) DO NOTHING
                 RETURNING trip_id, created_at
             ), legs AS (
                 INSERT INTO trip_leg (trip_id, leg, reservation_id, hotel_id)
                 SELECT new.trip_id, leg.n::int - 1, leg.id, leg.hotel
                   FROM new, unnest($6::uuid[], $7::bigint[]) WITH ORDINALITY AS leg(id, hotel, n)
             )
             SELECT created_at FROM new",
            &[&trip.trip_id, &trip.guest_id, &trip.mode.as_str(), &trip.legs_json(), &participants, &ids, &hotels],
        )
        .await
        .with_context(|| format!("cannot log trip {}", trip.trip_id))?;
    if let Some(row) = inserted {
        return Ok(Begun::New { created_at: row.get(0) });
    }
    match find(client, trip.trip_id).await? {
        Some(stored) => Ok(Begun::Exists(Box::new(stored))),
        None => anyhow::bail!("trip {} was neither logged nor found", trip.trip_id),
    }
}

/// The stored trip with this id.
pub async fn find(client: &ClientWrapper, trip_id: Uuid) -> Result<Option<StoredTrip>> {
    let row = client
        .query_opt(&format!("SELECT {COLUMNS} FROM trip WHERE trip_id = $1"), &[&trip_id])
        .await
        .with_context(|| format!("cannot read trip {trip_id}"))?;
    row.map(|row| from_row(&row)).transpose()
}

/// Writes the two-phase decision unless one is there; returns the decision that stands (the
/// one recovery wrote first, if it did).
pub async fn decide(client: &ClientWrapper, trip_id: Uuid, decision: Decision) -> Result<Decision> {
    let row = client
        .query_one(
            "WITH decided AS (
                 UPDATE trip SET decision = $2, updated_at = now()
                  WHERE trip_id = $1 AND decision IS NULL
                 RETURNING decision
             )
             SELECT coalesce((SELECT decision FROM decided), (SELECT decision FROM trip WHERE trip_id = $1))",
            &[&trip_id, &decision.as_str()],
        )
        .await
        .with_context(|| format!("cannot log the decision of trip {trip_id}"))?;
    Decision::from_db(row.get::<_, Option<&str>>(0))
        .with_context(|| format!("trip {trip_id} has no decision after deciding"))
}

/// Sets the trip's status (and the failure answered, when it failed); `from` names the
/// statuses it may change from, so that a late coordinator never overwrites recovery.
pub async fn set_status(
    client: &ClientWrapper,
    trip_id: Uuid,
    from: &[TripStatus],
    status: TripStatus,
    failure: Option<&Value>,
) -> Result<bool> {
    let from: Vec<&str> = from.iter().map(|status| status.as_str()).collect();
    let changed = unsynced(
        client,
        client.execute(
            "UPDATE trip SET status = $3, failure = coalesce($4, failure), updated_at = now()
              WHERE trip_id = $1 AND status = ANY($2)",
            &[&trip_id, &from, &status.as_str(), &failure],
        ),
    )
    .await
    .with_context(|| format!("cannot set trip {trip_id} {}", status.as_str()))?;
    Ok(changed == 1)
}

/// Records a saga step: leg `leg` is now in `state` (`booked`, `failed`, `compensated`,
/// `cancelled`); also marks the trip as moving (its `updated_at`), which keeps recovery off a
/// trip whose coordinator is alive.
pub async fn set_leg(client: &ClientWrapper, trip_id: Uuid, leg: usize, state: &str) -> Result<()> {
    unsynced(
        client,
        client.execute(
            "WITH leg AS (UPDATE trip_leg SET state = $3, updated_at = now() WHERE trip_id = $1 AND leg = $2)
             UPDATE trip SET updated_at = now() WHERE trip_id = $1",
            &[&trip_id, &(leg as i32), &state],
        ),
    )
    .await
    .with_context(|| format!("cannot log leg {leg} of trip {trip_id} {state}"))?;
    Ok(())
}

/// Runs `statement` in a transaction committed without waiting for the disk
/// (`synchronous_commit = off`; BEGIN, the statement and COMMIT pipelined: one round trip).
///
/// For the log writes that recovery can rebuild from the shards themselves: a trip's status
/// (from the decision, or from its legs' reservations) and a saga leg's state (from its
/// reservation). A database crash may lose the last of them, never their order, and recovery
/// then finds the trip unfinished and finishes it. The writes that recovery cannot rebuild (the
/// trip's row before any leg, the two-phase decision) wait for the disk as usual.
async fn unsynced<T>(
    client: &ClientWrapper,
    statement: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    let (begun, done, committed) = tokio::join!(
        client.batch_execute("BEGIN; SET LOCAL synchronous_commit = off"),
        statement,
        client.batch_execute("COMMIT")
    );
    begun?;
    let done = done?;
    committed?;
    Ok(done)
}

/// Trips not finished (`pending`, `compensating`, `cancelling`) whose last step is older than
/// `older_than_ms` (0: all of them).
pub async fn unfinished(client: &ClientWrapper, older_than_ms: i64) -> Result<Vec<StoredTrip>> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM trip
                  WHERE status IN ('pending', 'compensating', 'cancelling')
                    AND updated_at <= now() - make_interval(secs => $1::float8 / 1000)
                  ORDER BY updated_at"
            ),
            &[&(older_than_ms as f64)],
        )
        .await
        .context("cannot list unfinished trips")?;
    rows.iter().map(from_row).collect()
}

/// Saga legs not in a final state (`pending`) of unfinished trips, with their age in seconds.
pub async fn unfinished_legs(client: &ClientWrapper) -> Result<Vec<(Uuid, i32, Uuid, String, f64)>> {
    let rows = client
        .query(
            "SELECT l.trip_id, l.leg, l.reservation_id, t.status,
                    extract(epoch FROM now() - l.updated_at)::float8
               FROM trip_leg l JOIN trip t USING (trip_id)
              WHERE t.status IN ('pending', 'compensating', 'cancelling')
                AND t.mode = 'saga' AND l.state IN ('pending', 'booked')
              ORDER BY l.updated_at",
            &[],
        )
        .await
        .context("cannot list unfinished saga legs")?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))).collect())
}

fn from_row(row: &Row) -> Result<StoredTrip> {
    let trip_id: Uuid = row.get("trip_id");
    let legs: Vec<ReservationRequest> = serde_json::from_value(row.get("legs"))
        .with_context(|| format!("trip {trip_id}: its stored legs do not parse"))?;
    Ok(StoredTrip {
        trip_id,
        guest_id: row.get("guest_id"),
        mode: Mode::from_db(row.get("mode")),
        legs,
        participants: row.get::<_, Vec<i32>>("participants").into_iter().map(|shard| shard as usize).collect(),
        status: TripStatus::from_db(row.get("status")),
        decision: Decision::from_db(row.get("decision")),
        failure: row.get("failure"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}
