//! The trip coordinator, part of `rooms serve`: books a trip's legs all or nothing, by
//! two-phase commit or as a saga, and cancels trips.
//!
//! Every trip begins with its row in the coordinator log on its home shard ([`super::log`]),
//! committed before any leg is booked, then claims its legs' reservation ids
//! ([`crate::rooms::claims`]) and books:
//! - **one shard**: every leg in one transaction (no prepared transaction);
//! - **two-phase commit**: shard after shard in ascending order, each shard's legs in one
//!   transaction ended by `PREPARE TRANSACTION`; then the decision, committed to the log; then
//!   `COMMIT PREPARED` / `ROLLBACK PREPARED` everywhere. Preparing in shard order means two
//!   trips never wait on each other's prepared rows in a cycle (no deadlock across shards that
//!   no server can see);
//! - **saga**: leg after leg, each its own booking transaction, its state logged after each
//!   step; a refused leg makes the saga cancel the legs it booked, in reverse order.
//!
//! Whatever is left when the coordinator dies is finished by [`super::recovery`].

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use uuid::Uuid;

use super::log::{self, Begun};
use super::model::{Decision, LegAnswer, Mode, StoredTrip, TripAnswer, TripRequest, TripStatus};
use super::two_phase::{self, gid};
use crate::rooms::booking::{self, LegsBooked, LegsEnd, Outcome};
use crate::rooms::claims::{self, Claim, ClaimBatch};
use crate::rooms::model::ReservationRequest;
use crate::rooms::shards::{ShardError, Shards};

/// The coordinator's and recovery's timing (`rooms serve` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TripSettings {
    /// A prepared transaction (or an unfinished saga or single-shard trip) this old without a
    /// decision is taken to have lost its coordinator: recovery rolls it back (compensates).
    pub prepare_timeout: Duration,
    /// How often recovery looks for what a dead coordinator left.
    pub recovery_interval: Duration,
}

impl Default for TripSettings {
    fn default() -> Self {
        Self { prepare_timeout: Duration::from_secs(30), recovery_interval: Duration::from_secs(5) }
    }
}

/// Why a trip was not booked; nothing of it stays booked. Stored in `trip.failure` and
/// answered again to a repeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    SoldOut {
        leg: usize,
        night: NaiveDate,
    },
    UnknownHotel {
        leg: usize,
        hotel_id: i64,
    },
    UnknownRoomType {
        leg: usize,
        hotel_id: i64,
        room_type_id: i32,
    },
    /// The leg's reservation id already names another stay.
    IdReused {
        leg: usize,
        reservation_id: Uuid,
    },
    /// A participant did not answer in time, or is down.
    Unavailable {
        shard: usize,
    },
    /// The shard's server has `max_prepared_transactions = 0`.
    TwoPhaseUnavailable {
        shard: usize,
    },
    /// Recovery decided first (the coordinator took longer than the prepare timeout), or
    /// finished the trip after its coordinator stopped.
    Interrupted,
}

/// What became of `POST /v1/trips`.
#[derive(Debug)]
pub enum Booked {
    Confirmed(TripAnswer),
    /// The same trip again, with the same content: how it stands.
    Repeated(TripAnswer),
    /// Refused now; `status` is `failed`, or `compensating` while a saga's leg on a shard
    /// that does not answer waits to be cancelled (recovery finishes it).
    Refused {
        refusal: Refusal,
        status: TripStatus,
    },
    /// The same trip again, which had failed: its failure.
    Replayed(Refusal),
    /// The trip_id names a trip of other content.
    Reused(Box<StoredTrip>),
    /// The same trip again while it is still being booked or compensated.
    InProgress(Box<StoredTrip>),
    /// A participant failed where its outcome cannot be known (the commit of a one-shard
    /// trip): the trip stays `pending` until recovery looks.
    InDoubt {
        shard: usize,
    },
}

/// What became of `DELETE /v1/trips/{id}`.
#[derive(Debug)]
pub enum Cancelled {
    Done(TripAnswer),
    Unknown,
    InProgress(Box<StoredTrip>),
}

/// The coordinator: the shards, the reservation-id claim tasks, the timing, and the test hook.
#[derive(Clone)]
pub struct Trips {
    shards: Shards,
    claims: Vec<ClaimBatch>,
    settings: TripSettings,
    pause: Option<(String, Option<PathBuf>)>,
}

/// Test hook: with `CLICKSTAY_TRIP_PAUSE=STEP` the coordinator stops for good at that step (so
/// that a test can kill the process there), touching `CLICKSTAY_TRIP_PAUSE_FILE` when set.
/// Steps: `prepared_one`, `prepared_all`, `decided`, `committed_one` (two-phase commit);
/// `saga_booked_one`, `saga_booked_all`, `saga_compensating` (saga).
const PAUSE_ENV: &str = "CLICKSTAY_TRIP_PAUSE";
const PAUSE_FILE_ENV: &str = "CLICKSTAY_TRIP_PAUSE_FILE";

impl Trips {
    pub fn new(shards: Shards, claims: Vec<ClaimBatch>, settings: TripSettings) -> Self {
        let pause =
            std::env::var(PAUSE_ENV).ok().map(|step| (step, std::env::var_os(PAUSE_FILE_ENV).map(PathBuf::from)));
        Self { shards, claims, settings, pause }
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    pub fn settings(&self) -> TripSettings {
        self.settings
    }

    /// Books `trip`: every leg, or none.
    pub async fn book(&self, trip: TripRequest) -> Result<Booked, ShardError> {
        let participants = participants(&self.shards, &trip.legs);
        let home = self.home(trip.trip_id);
        let logged = {
            let (trip, participants) = (trip.clone(), participants.clone());
            self.shards.run(home, move |c| Box::pin(async move { log::begin(c, &trip, &participants).await })).await?
        };
        let created_at = match logged {
            Begun::New { created_at } => created_at,
            Begun::Exists(stored) => return self.repeated(&trip, *stored).await,
        };
        if let Some(refusal) = self.claim_legs(&trip).await {
            return self.refused(&trip, refusal).await;
        }
        match (participants.as_slice(), trip.mode) {
            ([shard], _) => self.book_on_one_shard(&trip, created_at, *shard).await,
            (_, Mode::TwoPhase) => self.two_phase_commit(&trip, created_at, &participants).await,
            (_, Mode::Saga) => self.saga(&trip, created_at).await,
        }
    }

    /// A trip_id that is logged already: the trip as it stands, or why not.
    async fn repeated(&self, trip: &TripRequest, stored: StoredTrip) -> Result<Booked, ShardError> {
        if !trip.same_content(&stored) {
            return Ok(Booked::Reused(Box::new(stored)));
        }
        Ok(match stored.status {
            TripStatus::Confirmed | TripStatus::Cancelled => Booked::Repeated(self.answer(stored).await?),
            TripStatus::Failed => Booked::Replayed(refusal_of(&stored)),
            TripStatus::Pending | TripStatus::Compensating | TripStatus::Cancelling => {
                Booked::InProgress(Box::new(stored))
            }
        })
    }

    /// Claims the reservation id of every leg whose id's home shard is not its hotel's (as a
    /// single booking does); the first leg whose id is claimed for another stay, or whose home
    /// shard does not answer.
    async fn claim_legs(&self, trip: &TripRequest) -> Option<Refusal> {
        let timeout = self.shards.limits().map(|limits| limits.transaction_timeout);
        let elsewhere: Vec<usize> = (0..trip.legs.len()).filter(|leg| !self.claim_here(&trip.legs[*leg])).collect();
        let asked = elsewhere.iter().map(|leg| {
            let home = claims::home_shard(trip.legs[*leg].reservation_id, self.shards.len());
            self.claims[home].ask(trip.legs[*leg].clone(), timeout)
        });
        let claimed = futures_util::future::join_all(asked).await;
        elsewhere.into_iter().zip(claimed).find_map(|(leg, claim)| match claim {
            Ok(Claim::Ours) => None,
            Ok(Claim::Taken(_)) => Some(Refusal::IdReused { leg, reservation_id: trip.legs[leg].reservation_id }),
            Err(error) => Some(Refusal::Unavailable { shard: error.shard() }),
        })
    }

    /// The leg's id has its home shard on the leg's hotel's shard: its claim is taken in the
    /// leg's own transaction (ids from `POST /v1/reservation-ids?hotel_id=` are).
    fn claim_here(&self, leg: &ReservationRequest) -> bool {
        claims::home_shard(leg.reservation_id, self.shards.len()) == self.shards.index_of(leg.hotel_id)
    }

    /// Every leg on one shard: one plain transaction.
    async fn book_on_one_shard(
        &self,
        trip: &TripRequest,
        created_at: DateTime<Utc>,
        shard: usize,
    ) -> Result<Booked, ShardError> {
        let (order, legs, here) = self.legs_on(&trip.legs, shard);
        let booked = self
            .shards
            .run(shard, move |c| Box::pin(async move { booking::book_legs(c, &legs, &here, &LegsEnd::Commit).await }))
            .await;
        match booked {
            Ok(LegsBooked::Booked(_)) => self.confirmed(trip, created_at, TripStatus::Pending).await,
            Ok(LegsBooked::Refused { leg, outcome }) => {
                self.refused(trip, refusal(&trip.legs, order[leg], outcome)).await
            }
            // Cut off mid-transaction, or at COMMIT: recovery will tell from the reservations.
            Err(error) => {
                warn!(trip_id = %trip.trip_id, shard, %error, "one-shard trip left in doubt");
                Ok(Booked::InDoubt { shard })
            }
        }
    }

    /// Two-phase commit over `participants` (ascending shard order).
    async fn two_phase_commit(
        &self,
        trip: &TripRequest,
        created_at: DateTime<Utc>,
        participants: &[usize],
    ) -> Result<Booked, ShardError> {
        let mut prepared = Vec::new();
        let mut refused = None;
        for (step, &shard) in participants.iter().enumerate() {
            let (order, legs, here) = self.legs_on(&trip.legs, shard);
            let end = LegsEnd::Prepare(gid(trip.trip_id, shard));
            let voted = self
                .shards
                .run(shard, move |c| Box::pin(async move { booking::book_legs(c, &legs, &here, &end).await }))
                .await;
            match voted {
                Ok(LegsBooked::Booked(_)) => prepared.push(shard),
                Ok(LegsBooked::Refused { leg, outcome }) => refused = Some(refusal(&trip.legs, order[leg], outcome)),
                Err(error) => {
                    // It may have prepared before the answer was lost: roll it back too.
                    prepared.push(shard);
                    refused = Some(participant_refusal(&error));
                }
            }
            if refused.is_some() {
                break;
            }
            if step == 0 && participants.len() > 1 {
                self.pause_at("prepared_one").await;
            }
        }
        let wanted = if refused.is_none() {
            self.pause_at("prepared_all").await;
            Decision::Commit
        } else {
            Decision::Abort
        };
        let trip_id = trip.trip_id;
        // Unanswered, the trip stays undecided: recovery rolls it back after the prepare timeout.
        let decision = self.decide(trip_id, wanted).await?;
        if decision == Decision::Commit {
            self.pause_at("decided").await;
        }
        for (step, shard) in prepared.iter().enumerate() {
            let gid = gid(trip_id, *shard);
            let finished = self
                .shards
                .run(*shard, move |c| Box::pin(async move { two_phase::finish(c, &gid, decision).await }))
                .await;
            if let Err(error) = finished {
                // The decision is logged: recovery finishes this shard once it answers.
                warn!(%trip_id, shard, %error, decision = decision.as_str(), "phase two left to recovery");
            }
            if step == 0 && decision == Decision::Commit && prepared.len() > 1 {
                self.pause_at("committed_one").await;
            }
        }
        match decision {
            Decision::Commit => self.confirmed(trip, created_at, TripStatus::Pending).await,
            Decision::Abort => self.failed(trip, refused.unwrap_or(Refusal::Interrupted)).await,
        }
    }

    /// The saga: leg after leg, compensated in reverse order when one is refused.
    async fn saga(&self, trip: &TripRequest, created_at: DateTime<Utc>) -> Result<Booked, ShardError> {
        let mut refused = None;
        let mut to_undo = Vec::new();
        for (index, leg) in trip.legs.iter().enumerate() {
            let shard = self.shards.index_of(leg.hotel_id);
            let (request, here) = (leg.clone(), self.claim_here(leg));
            let booked = self
                .shards
                .run(shard, move |c| Box::pin(async move { booking::reserve(c, &request, here).await }))
                .await;
            let state = match booked {
                Ok(Outcome::Confirmed(_)) => {
                    to_undo.push(index);
                    "booked"
                }
                Ok(outcome) => {
                    refused = Some(refusal(&trip.legs, index, outcome));
                    "failed"
                }
                Err(error) => {
                    // It may have been booked before the answer was lost: compensate it too.
                    to_undo.push(index);
                    refused = Some(participant_refusal(&error));
                    "pending"
                }
            };
            if state != "pending" {
                self.log_leg(trip.trip_id, index, state).await?;
            }
            if refused.is_some() {
                break;
            }
            if index == 0 {
                self.pause_at("saga_booked_one").await;
            }
        }
        let Some(refusal) = refused else {
            self.pause_at("saga_booked_all").await;
            return self.confirmed(trip, created_at, TripStatus::Pending).await;
        };
        let failure = serde_json::to_value(&refusal).expect("refusals serialise");
        self.set_status(trip.trip_id, &[TripStatus::Pending], TripStatus::Compensating, Some(failure)).await?;
        self.pause_at("saga_compensating").await;
        let mut status = TripStatus::Compensating;
        if self.cancel_legs(trip.trip_id, &trip.legs, &to_undo, "compensated").await {
            self.set_status(trip.trip_id, &[TripStatus::Compensating], TripStatus::Failed, None).await?;
            status = TripStatus::Failed;
        }
        Ok(Booked::Refused { refusal, status })
    }

    /// Cancels the legs `which` of a trip, last first, logging each as `state`; true when every
    /// one was cancelled. A leg whose shard does not answer is passed over (the others are
    /// cancelled all the same) and left, with the trip's status, for recovery or a repeated
    /// DELETE.
    pub(super) async fn cancel_legs(
        &self,
        trip_id: Uuid,
        legs: &[ReservationRequest],
        which: &[usize],
        state: &'static str,
    ) -> bool {
        let mut every = true;
        for &index in which.iter().rev() {
            let leg = legs[index].clone();
            let shard = self.shards.index_of(leg.hotel_id);
            let cancelled = self.shards.run(shard, move |c| Box::pin(async move { cancel_leg(c, &leg).await })).await;
            if let Err(error) = cancelled {
                warn!(%trip_id, leg = index, shard, %error, "cannot cancel a leg yet; left for recovery");
                every = false;
                continue;
            }
            every &= self.log_leg(trip_id, index, state).await.is_ok();
        }
        every
    }

    /// `DELETE /v1/trips/{id}`: cancels every leg; idempotent.
    pub async fn cancel(&self, trip_id: Uuid) -> Result<Cancelled, ShardError> {
        let Some(stored) = self.find(trip_id).await? else { return Ok(Cancelled::Unknown) };
        match stored.status {
            TripStatus::Confirmed | TripStatus::Cancelling => {}
            TripStatus::Failed | TripStatus::Cancelled => return Ok(Cancelled::Done(self.answer(stored).await?)),
            TripStatus::Pending | TripStatus::Compensating => return Ok(Cancelled::InProgress(Box::new(stored))),
        }
        self.set_status(trip_id, &[TripStatus::Confirmed], TripStatus::Cancelling, None).await?;
        let every: Vec<usize> = (0..stored.legs.len()).collect();
        if !self.cancel_legs(trip_id, &stored.legs, &every, "cancelled").await {
            return Err(ShardError::Unavailable {
                shard: self.home(trip_id),
                reason: "a leg could not be cancelled yet".into(),
            });
        }
        self.set_status(trip_id, &[TripStatus::Cancelling], TripStatus::Cancelled, None).await?;
        Ok(Cancelled::Done(self.answer(StoredTrip { status: TripStatus::Cancelled, ..stored }).await?))
    }

    /// The trip's row from its home shard.
    pub async fn find(&self, trip_id: Uuid) -> Result<Option<StoredTrip>, ShardError> {
        self.shards.run(self.home(trip_id), move |c| Box::pin(async move { log::find(c, trip_id).await })).await
    }

    /// Writes the two-phase `decision` unless the trip has one; the one that stands.
    pub(super) async fn decide(&self, trip_id: Uuid, decision: Decision) -> Result<Decision, ShardError> {
        self.shards
            .run(self.home(trip_id), move |c| Box::pin(async move { log::decide(c, trip_id, decision).await }))
            .await
    }

    /// The trip's home shard, which holds its log.
    fn home(&self, trip_id: Uuid) -> usize {
        claims::home_shard(trip_id, self.shards.len())
    }

    /// The trip as answered: each leg's reservation from its shard.
    pub async fn answer(&self, stored: StoredTrip) -> Result<TripAnswer, ShardError> {
        let asked = participants(&self.shards, &stored.legs).into_iter().map(|shard| {
            let ids: Vec<Uuid> = stored
                .legs
                .iter()
                .filter(|leg| self.shards.index_of(leg.hotel_id) == shard)
                .map(|leg| leg.reservation_id)
                .collect();
            self.shards.run(shard, move |c| Box::pin(async move { Ok(booking::find_many(c, &ids).await?) }))
        });
        let mut found = std::collections::HashMap::new();
        for reservations in futures_util::future::join_all(asked).await {
            found.extend(reservations?.into_iter().map(|r| (r.request.reservation_id, r)));
        }
        let legs = stored
            .legs
            .iter()
            .map(|leg| match found.remove(&leg.reservation_id) {
                Some(reservation) => LegAnswer::Booked(reservation),
                None => LegAnswer::NotBooked { request: leg.clone(), status: "not_booked" },
            })
            .collect();
        Ok(TripAnswer {
            trip_id: stored.trip_id,
            guest_id: stored.guest_id,
            mode: stored.mode,
            status: stored.status,
            legs,
            created_at: stored.created_at,
        })
    }

    async fn confirmed(
        &self,
        trip: &TripRequest,
        created_at: DateTime<Utc>,
        from: TripStatus,
    ) -> Result<Booked, ShardError> {
        let stored = StoredTrip {
            trip_id: trip.trip_id,
            guest_id: trip.guest_id,
            mode: trip.mode,
            legs: trip.legs.clone(),
            participants: participants(&self.shards, &trip.legs),
            status: TripStatus::Confirmed,
            decision: None,
            failure: None,
            created_at,
            updated_at: created_at,
        };
        // The status and the legs' reservations, asked at once.
        let from = [from];
        let (logged, answer) =
            tokio::join!(self.set_status(trip.trip_id, &from, TripStatus::Confirmed, None), self.answer(stored));
        logged?;
        debug!(trip_id = %trip.trip_id, legs = trip.legs.len(), mode = trip.mode.as_str(), "trip confirmed");
        Ok(Booked::Confirmed(answer?))
    }

    /// Fails a trip refused before any leg was prepared: a two-phase trip's log says `abort`
    /// (nothing can decide it otherwise later), then [`Self::failed`].
    async fn refused(&self, trip: &TripRequest, refusal: Refusal) -> Result<Booked, ShardError> {
        if trip.mode == Mode::TwoPhase {
            let decision = self.decide(trip.trip_id, Decision::Abort).await?;
            debug_assert_eq!(decision, Decision::Abort);
        }
        self.failed(trip, refusal).await
    }

    /// Marks a trip failed of which nothing was booked (or everything rolled back).
    async fn failed(&self, trip: &TripRequest, refusal: Refusal) -> Result<Booked, ShardError> {
        let failure = serde_json::to_value(&refusal).expect("refusals serialise");
        self.set_status(trip.trip_id, &[TripStatus::Pending], TripStatus::Failed, Some(failure)).await?;
        Ok(Booked::Refused { refusal, status: TripStatus::Failed })
    }

    pub(super) async fn set_status(
        &self,
        trip_id: Uuid,
        from: &[TripStatus],
        to: TripStatus,
        failure: Option<serde_json::Value>,
    ) -> Result<bool, ShardError> {
        let from = from.to_vec();
        self.shards
            .run(self.home(trip_id), move |c| {
                Box::pin(async move { log::set_status(c, trip_id, &from, to, failure.as_ref()).await })
            })
            .await
    }

    async fn log_leg(&self, trip_id: Uuid, leg: usize, state: &'static str) -> Result<(), ShardError> {
        self.shards
            .run(self.home(trip_id), move |c| Box::pin(async move { log::set_leg(c, trip_id, leg, state).await }))
            .await
    }

    /// The legs of `shard` in locking order (hotel, room type, first night), with their
    /// indexes in the trip and whether each one's claim is taken here.
    fn legs_on(&self, legs: &[ReservationRequest], shard: usize) -> (Vec<usize>, Vec<ReservationRequest>, Vec<bool>) {
        let mut here: Vec<(usize, &ReservationRequest)> =
            legs.iter().enumerate().filter(|(_, leg)| self.shards.index_of(leg.hotel_id) == shard).collect();
        here.sort_by_key(|(_, leg)| (leg.hotel_id, leg.room_type_id, leg.start_date));
        let claims = here.iter().map(|(_, leg)| self.claim_here(leg)).collect();
        let (order, legs) = here.into_iter().map(|(index, leg)| (index, leg.clone())).unzip();
        (order, legs, claims)
    }

    /// The test hook (see [`PAUSE_ENV`]): never returns at the chosen step.
    async fn pause_at(&self, step: &str) {
        let Some((chosen, file)) = &self.pause else { return };
        if chosen != step {
            return;
        }
        warn!(step, "{PAUSE_ENV}: the trip coordinator stops here");
        if let Some(file) = file {
            let _ = std::fs::write(file, step);
        }
        std::future::pending::<()>().await;
    }
}

/// Cancels the reservation of `leg` if it is this leg's (same content): a leg refused because
/// its id names someone else's stay must not cancel that stay.
async fn cancel_leg(client: &deadpool_postgres::ClientWrapper, leg: &ReservationRequest) -> anyhow::Result<()> {
    match booking::find(client, leg.reservation_id).await? {
        Some(reservation) if leg.matches(&reservation) => {
            booking::cancel(client, leg.reservation_id).await?;
        }
        _ => {}
    }
    Ok(())
}

/// The shards of a trip's legs, ascending.
pub fn participants(shards: &Shards, legs: &[ReservationRequest]) -> Vec<usize> {
    let mut participants: Vec<usize> = legs.iter().map(|leg| shards.index_of(leg.hotel_id)).collect();
    participants.sort_unstable();
    participants.dedup();
    participants
}

/// The refusal of leg `leg` from what booking it came to.
fn refusal(legs: &[ReservationRequest], leg: usize, outcome: Outcome) -> Refusal {
    let request = &legs[leg];
    match outcome {
        Outcome::SoldOut { night } => Refusal::SoldOut { leg, night },
        Outcome::UnknownHotel => Refusal::UnknownHotel { leg, hotel_id: request.hotel_id },
        Outcome::UnknownRoomType => {
            Refusal::UnknownRoomType { leg, hotel_id: request.hotel_id, room_type_id: request.room_type_id }
        }
        // The id was used before for a booking of its own (even one of this very content).
        Outcome::Confirmed(_) | Outcome::Repeated(_) | Outcome::IdReused(_) | Outcome::Claimed(_) => {
            Refusal::IdReused { leg, reservation_id: request.reservation_id }
        }
    }
}

/// A participant that failed to vote: down, too slow, or unable to prepare at all.
fn participant_refusal(error: &ShardError) -> Refusal {
    let shard = error.shard();
    let no_two_phase = matches!(error, ShardError::Other { cause, .. } if cause.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code())
            .is_some_and(|code| *code == tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
    }));
    if no_two_phase { Refusal::TwoPhaseUnavailable { shard } } else { Refusal::Unavailable { shard } }
}

/// The refusal stored with a failed trip.
pub fn refusal_of(stored: &StoredTrip) -> Refusal {
    stored.failure.clone().and_then(|failure| serde_json::from_value(failure).ok()).unwrap_or(Refusal::Interrupted)
}
