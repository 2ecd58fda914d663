//! `POST /v1/trips`, `GET /v1/trips/{id}`, `DELETE /v1/trips/{id}`: request checking and the
//! mapping of what the coordinator did to status codes. The work is in [`super::coordinator`].

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::coordinator::{Booked, Cancelled, Refusal, Trips};
use super::model::{StoredTrip, TripRequest, parse_trip_id};
use crate::rooms::api::{ApiError, body_of};

type ApiResult = Result<Response, ApiError>;

/// The trip routes over `trips` (merged into the reservation API's router).
pub fn router(trips: Trips) -> Router {
    Router::new()
        .route("/v1/trips", post(create_trip))
        .route("/v1/trips/{trip_id}", get(get_trip).delete(cancel_trip))
        .with_state(trips)
}

async fn create_trip(State(trips): State<Trips>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let trip = TripRequest::parse(&body_of(body)?)?;
    // On its own task: a client that gives up (or the request deadline) never stops a trip
    // half way; recovery would finish it, but later.
    let booked = tokio::spawn(async move { trips.book(trip).await })
        .await
        .map_err(|error| anyhow::anyhow!("the trip's task failed: {error}"))??;
    match booked {
        Booked::Confirmed(answer) => Ok((StatusCode::CREATED, Json(answer)).into_response()),
        Booked::Repeated(answer) => Ok(Json(answer).into_response()),
        Booked::Refused { refusal, status } => Err(refused(&refusal).with("trip_status", json!(status))),
        Booked::Replayed(refusal) => Err(replayed(&refusal)),
        Booked::Reused(stored) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "trip_id_reused",
            format!("trip_id {} was already used for a different trip", stored.trip_id),
        )
        .with("existing", stored_json(&stored))),
        Booked::InProgress(stored) => Err(in_progress(&stored)),
        Booked::InDoubt { shard } => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shard_unavailable",
            format!("hotel shard {shard} failed during the trip; its outcome is settled by recovery, ask GET later"),
        )
        .with("shard", json!(shard))
        .with("trip_status", json!("pending"))),
    }
}

async fn get_trip(State(trips): State<Trips>, Path(id): Path<String>) -> ApiResult {
    let trip_id = parse_trip_id(&id)?;
    match trips.find(trip_id).await? {
        Some(stored) => Ok(Json(trips.answer(stored).await?).into_response()),
        None => Err(unknown_trip(&id)),
    }
}

async fn cancel_trip(State(trips): State<Trips>, Path(id): Path<String>) -> ApiResult {
    let trip_id = parse_trip_id(&id)?;
    let cancelled = tokio::spawn(async move { trips.cancel(trip_id).await })
        .await
        .map_err(|error| anyhow::anyhow!("the cancellation's task failed: {error}"))??;
    match cancelled {
        Cancelled::Done(answer) => Ok(Json(answer).into_response()),
        Cancelled::Unknown => Err(unknown_trip(&id)),
        Cancelled::InProgress(stored) => Err(in_progress(&stored)),
    }
}

fn unknown_trip(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_trip", format!("no trip {id}"))
}

fn in_progress(stored: &StoredTrip) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "trip_in_progress",
        format!("trip {} is {} now; ask again once it is over", stored.trip_id, stored.status.as_str()),
    )
    .with("trip_status", json!(stored.status))
}

fn stored_json(stored: &StoredTrip) -> serde_json::Value {
    json!({ "trip_id": stored.trip_id, "guest_id": stored.guest_id, "mode": stored.mode, "legs": stored.legs })
}

/// The answer to a trip refused now: nothing of it is booked.
fn refused(refusal: &Refusal) -> ApiError {
    let error = match refusal {
        Refusal::SoldOut { leg, night } => ApiError::new(
            StatusCode::CONFLICT,
            "sold_out",
            format!("leg {leg} has no room left on the night of {night}; nothing of the trip is booked"),
        )
        .with("leg", json!(leg))
        .with("night", json!(night)),
        Refusal::UnknownHotel { leg, hotel_id } => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_hotel", format!("leg {leg}: no hotel {hotel_id}"))
                .with("leg", json!(leg))
        }
        Refusal::UnknownRoomType { leg, hotel_id, room_type_id } => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_room_type",
            format!("leg {leg}: hotel {hotel_id} has no room type {room_type_id}"),
        )
        .with("leg", json!(leg)),
        Refusal::IdReused { leg, reservation_id } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reservation_id_reused",
            format!("leg {leg}: reservation_id {reservation_id} was already used for a different stay"),
        )
        .with("leg", json!(leg)),
        Refusal::Unavailable { shard } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shard_unavailable",
            format!("hotel shard {shard} is unavailable or did not answer in time; nothing of the trip is booked"),
        )
        .with("shard", json!(shard)),
        Refusal::TwoPhaseUnavailable { shard } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "two_phase_unavailable",
            format!(
                "hotel shard {shard} cannot prepare transactions (max_prepared_transactions = 0); \
                 nothing of the trip is booked; mode \"saga\" works without it"
            ),
        )
        .with("shard", json!(shard)),
        Refusal::Interrupted => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "trip_timeout",
            "the trip took longer than the prepare timeout and was rolled back; nothing of it is booked",
        ),
    };
    error.with("trip_status", json!("failed"))
}

/// The answer to a repeat of a failed trip: its refusal again, except that a failure of the
/// moment (503) becomes 409 `trip_failed`: the trip is over, a new one takes a new trip_id.
fn replayed(refusal: &Refusal) -> ApiError {
    let original = refused(refusal);
    if original.status() != StatusCode::SERVICE_UNAVAILABLE {
        return original;
    }
    ApiError::new(
        StatusCode::CONFLICT,
        "trip_failed",
        "this trip failed earlier and nothing of it is booked; book again with a new trip_id",
    )
    .with("cause", json!(refusal))
    .with("trip_status", json!("failed"))
}
