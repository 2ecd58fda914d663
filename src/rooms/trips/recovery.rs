//! Recovery: finishes what a dead coordinator left, at `rooms serve` start-up, every
//! `--recovery-interval` after, and on `clickstay rooms recover`.
//!
//! - A **trip** unfinished for longer than the prepare timeout: a two-phase trip without a
//!   decision is decided `abort` (presumed abort; the log's conditional write makes a live but
//!   slow coordinator lose cleanly), with one it takes its outcome; a one-shard trip is
//!   confirmed if its transaction committed (its legs' reservations exist), else failed; a saga
//!   is confirmed if every leg is booked, else compensated (every leg of its own cancelled, last
//!   first); a cancellation is finished.
//! - A **prepared transaction** of a trip: committed if the log says commit, rolled back if it
//!   says abort, and when it has no decision and is older than the prepare timeout, decided
//!   `abort` and rolled back. So no prepared transaction keeps rows locked after a crash.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::coordinator::{Refusal, Trips};
use super::log;
use super::model::{Decision, LegAnswer, Mode, StoredTrip, TripStatus};
use super::two_phase::{self, Prepared};
use crate::rooms::model::Status;
use crate::rooms::shards::ShardError;

/// What one recovery pass did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub committed: usize,
    pub rolled_back: usize,
    pub trips_finished: usize,
    /// Shards that did not answer (tried again next pass).
    pub shards_unanswered: usize,
}

/// One pass over every shard: unfinished trips older than `older_than`, then every trip's
/// prepared transaction: decided ones once older than `decided_after` (0 at start-up, where no
/// coordinator of this process is alive; else a little, so as not to race a live coordinator's
/// own phase two), undecided ones once older than `older_than`.
pub async fn recover(trips: &Trips, older_than: Duration, decided_after: Duration) -> Report {
    let shards = trips.shards().clone();
    let mut report = Report::default();
    let older_ms = older_than.as_millis() as i64;
    for home in 0..shards.len() {
        let unfinished = shards.run(home, move |c| Box::pin(async move { log::unfinished(c, older_ms).await })).await;
        match unfinished {
            Ok(found) => {
                for trip in found {
                    match finish_trip(trips, &trip).await {
                        Ok(true) => report.trips_finished += 1,
                        Ok(false) => {}
                        Err(error) => warn!(trip_id = %trip.trip_id, %error, "recovery: trip not finished yet"),
                    }
                }
            }
            Err(error) => {
                report.shards_unanswered += 1;
                warn!(shard = home, %error, "recovery: cannot list unfinished trips");
            }
        }
    }
    for shard in 0..shards.len() {
        let prepared = shards.run(shard, |c| Box::pin(async move { two_phase::prepared_here(c).await })).await;
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                report.shards_unanswered += 1;
                warn!(shard, %error, "recovery: cannot list prepared transactions");
                continue;
            }
        };
        for transaction in prepared {
            match finish_prepared(trips, shard, &transaction, older_than, decided_after).await {
                Ok(Some(Decision::Commit)) => report.committed += 1,
                Ok(Some(Decision::Abort)) => report.rolled_back += 1,
                Ok(None) => {}
                Err(error) => warn!(gid = transaction.gid, %error, "recovery: prepared transaction not finished yet"),
            }
        }
    }
    if report != Report::default() {
        info!(?report, "recovery pass");
    }
    report
}

/// Runs [`recover`] now and then every `settings.recovery_interval`, for as long as the
/// process lives.
pub fn spawn(trips: Trips) {
    tokio::spawn(async move {
        let settings = trips.settings();
        let mut decided_after = Duration::ZERO;
        loop {
            recover(&trips, settings.prepare_timeout, decided_after).await;
            decided_after = settings.recovery_interval;
            tokio::time::sleep(settings.recovery_interval).await;
        }
    });
}

/// Phase two of one prepared transaction, if its decision is known or it is overdue; the
/// decision carried out.
async fn finish_prepared(
    trips: &Trips,
    shard: usize,
    transaction: &Prepared,
    older_than: Duration,
    decided_after: Duration,
) -> Result<Option<Decision>, ShardError> {
    let shards = trips.shards();
    let trip_id = transaction.trip_id;
    let overdue = transaction.age_seconds >= older_than.as_secs_f64();
    let decision = match trips.find(trip_id).await? {
        Some(StoredTrip { decision: Some(_), .. }) if transaction.age_seconds < decided_after.as_secs_f64() => {
            return Ok(None);
        }
        Some(StoredTrip { decision: Some(decision), .. }) => decision,
        _ if !overdue => return Ok(None),
        Some(_) => trips.decide(trip_id, Decision::Abort).await?,
        // No log row at all: nothing can ever decide it; presumed abort.
        None => Decision::Abort,
    };
    let gid = transaction.gid.clone();
    shards.run(shard, move |c| Box::pin(async move { two_phase::finish(c, &gid, decision).await })).await?;
    info!(gid = transaction.gid, decision = decision.as_str(), "recovery: prepared transaction finished");
    // The trip's outcome is known now: say so at once rather than after the prepare timeout.
    let (status, failure) = match decision {
        Decision::Commit => (TripStatus::Confirmed, None),
        Decision::Abort => (TripStatus::Failed, Some(serde_json::to_value(Refusal::Interrupted).expect("serialises"))),
    };
    trips.set_status(trip_id, &[TripStatus::Pending], status, failure).await?;
    Ok(Some(decision))
}

/// Drives one unfinished trip to its end; true when it got there.
async fn finish_trip(trips: &Trips, trip: &StoredTrip) -> Result<bool, ShardError> {
    let trip_id = trip.trip_id;
    let interrupted = Some(serde_json::to_value(Refusal::Interrupted).expect("refusals serialise"));
    let every: Vec<usize> = (0..trip.legs.len()).collect();
    match trip.status {
        TripStatus::Pending if trip.mode == Mode::TwoPhase && trip.participants.len() > 1 => {
            let decision = trips.decide(trip_id, Decision::Abort).await?;
            let (status, failure) = match decision {
                Decision::Commit => (TripStatus::Confirmed, None),
                Decision::Abort => (TripStatus::Failed, interrupted),
            };
            trips.set_status(trip_id, &[TripStatus::Pending], status, failure).await
        }
        TripStatus::Pending => {
            if all_booked(trips, trip).await? {
                return trips.set_status(trip_id, &[TripStatus::Pending], TripStatus::Confirmed, None).await;
            }
            // A one-shard trip's transaction rolled back; a saga is compensated.
            trips.set_status(trip_id, &[TripStatus::Pending], TripStatus::Compensating, interrupted).await?;
            compensate(trips, trip, &every).await
        }
        TripStatus::Compensating => compensate(trips, trip, &every).await,
        TripStatus::Cancelling => Ok(trips.cancel_legs(trip_id, &trip.legs, &every, "cancelled").await
            && trips.set_status(trip_id, &[TripStatus::Cancelling], TripStatus::Cancelled, None).await?),
        TripStatus::Confirmed | TripStatus::Failed | TripStatus::Cancelled => Ok(false),
    }
}

async fn compensate(trips: &Trips, trip: &StoredTrip, which: &[usize]) -> Result<bool, ShardError> {
    Ok(trips.cancel_legs(trip.trip_id, &trip.legs, which, "compensated").await
        && trips.set_status(trip.trip_id, &[TripStatus::Compensating], TripStatus::Failed, None).await?)
}

/// Every leg of the trip has its confirmed reservation (of the leg's content).
async fn all_booked(trips: &Trips, trip: &StoredTrip) -> Result<bool, ShardError> {
    let answer = trips.answer(trip.clone()).await?;
    Ok(trip.legs.iter().zip(&answer.legs).all(|(leg, answered)| {
        matches!(answered, LegAnswer::Booked(reservation) if leg.matches(reservation) && reservation.status == Status::Confirmed)
    }))
}

/// What `clickstay rooms in-doubt` prints: every trip's prepared transaction, every unfinished
/// trip, and every unfinished saga leg, with their ages; one JSON object per line.
pub async fn in_doubt(trips: &Trips) -> Result<Vec<Value>> {
    let shards = trips.shards();
    let mut lines = Vec::new();
    for shard in 0..shards.len() {
        let prepared = shards.run(shard, |c| Box::pin(async move { two_phase::prepared_here(c).await })).await?;
        for transaction in prepared {
            let decision = trips.find(transaction.trip_id).await?.and_then(|trip| trip.decision);
            lines.push(json!({
                "kind": "prepared_transaction", "shard": shard, "gid": transaction.gid,
                "trip_id": transaction.trip_id, "age_seconds": round(transaction.age_seconds),
                "decision": decision.map(Decision::as_str),
            }));
        }
    }
    for home in 0..shards.len() {
        let unfinished = shards.run(home, |c| Box::pin(async move { log::unfinished(c, 0).await })).await?;
        for trip in unfinished {
            let age = (chrono::Utc::now() - trip.updated_at).num_milliseconds() as f64 / 1000.0;
            lines.push(json!({
                "kind": "trip", "home_shard": home, "trip_id": trip.trip_id, "mode": trip.mode.as_str(),
                "status": trip.status.as_str(), "decision": trip.decision.map(Decision::as_str),
                "participants": trip.participants, "age_seconds": round(age),
            }));
        }
        let legs = shards.run(home, |c| Box::pin(async move { log::unfinished_legs(c).await })).await?;
        for (trip_id, leg, reservation_id, status, age) in legs {
            lines.push(json!({
                "kind": "saga_step", "home_shard": home, "trip_id": trip_id, "leg": leg,
                "reservation_id": reservation_id, "trip_status": status, "age_seconds": round(age),
            }));
        }
    }
    Ok(lines)
}

fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}
