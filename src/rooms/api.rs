//! The HTTP API (JSON): routes, request checking and the mapping of outcomes to status codes.
//! Handlers only route to the hotel's shard and translate; the SQL lives in [`super::booking`].

use std::collections::HashMap;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tracing::error;
use uuid::Uuid;

use super::booking::{self, Outcome};
use super::id_lookup::IdLookup;
use super::model::{
    BadRequest, MAX_AVAILABILITY_NIGHTS, Reservation, ReservationRequest, check_range, parse_date, parse_reservation_id,
};
use super::shards::Shards;

/// Largest request body accepted; a reservation is about 250 bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler shares: the shard pools and one batched id look-up per shard.
#[derive(Clone)]
struct AppState {
    shards: Shards,
    id_lookups: Vec<IdLookup>,
}

/// The routes of the reservation API over `shards` (spawns the id look-up tasks, so call it
/// inside a tokio runtime).
pub fn router(shards: Shards) -> Router {
    let id_lookups = shards.pools().iter().cloned().map(IdLookup::spawn).collect();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/reservation-ids", post(new_reservation_id))
        .route("/v1/reservations", post(create_reservation))
        .route("/v1/reservations/{reservation_id}", get(get_reservation).delete(cancel_reservation))
        .route("/v1/hotels/{hotel_id}/availability", get(availability))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState { shards, id_lookups })
}

/// An error answer: a status code and `{"error": code, "message": ..., ...details}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, body: json!({ "error": code, "message": message.into() }) }
    }

    fn with(mut self, key: &str, value: Value) -> Self {
        self.body[key] = value;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<BadRequest> for ApiError {
    fn from(BadRequest(message): BadRequest) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(cause: anyhow::Error) -> Self {
        error!("{cause:#}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

type ApiResult = Result<Response, ApiError>;

/// Liveness and reachability of every shard.
async fn healthz(State(AppState { shards, .. }): State<AppState>) -> ApiResult {
    for index in 0..shards.len() {
        let client = shards
            .connect(index)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e:#}")))?;
        client.simple_query("SELECT 1").await.map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("shard {index}: {e}"))
        })?;
    }
    Ok(Json(json!({ "status": "ok", "shards": shards.len() })).into_response())
}

/// A fresh idempotency key. UUIDv7 (time-ordered) keeps inserts at the right edge of the
/// primary-key index.
async fn new_reservation_id() -> Json<Value> {
    Json(json!({ "reservation_id": Uuid::now_v7() }))
}

async fn create_reservation(
    State(AppState { shards, id_lookups }): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body.map_err(|rejection| {
        let code =
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "bad_request" };
        ApiError::new(rejection.status(), code, rejection.body_text())
    })?;
    let request = ReservationRequest::parse(&body)?;
    let home = shards.index_of(request.hotel_id);
    // The id may have been used for a hotel on another shard: that is a different content.
    if let Some((_, existing)) = find_on_shards(&id_lookups, request.reservation_id, Some(home)).await? {
        return Err(id_reused(existing));
    }
    let client = shards.connect(home).await?;
    let outcome = booking::reserve(&client, &request).await?;
    drop(client);
    match outcome {
        Outcome::Confirmed(reservation) => Ok((StatusCode::CREATED, Json(reservation)).into_response()),
        Outcome::Repeated(reservation) => Ok((StatusCode::OK, Json(reservation)).into_response()),
        Outcome::IdReused(existing) => Err(id_reused(existing)),
        Outcome::SoldOut { night } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "sold_out",
            format!(
                "room type {} of hotel {} has no room left on the night of {night}",
                request.room_type_id, request.hotel_id
            ),
        )
        .with("night", json!(night))),
        Outcome::UnknownHotel => Err(unknown_hotel(request.hotel_id)),
        Outcome::UnknownRoomType => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_room_type",
            format!("hotel {} has no room type {}", request.hotel_id, request.room_type_id),
        )),
    }
}

async fn get_reservation(State(AppState { id_lookups, .. }): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_reservation_id(&id)?;
    match find_on_shards(&id_lookups, id, None).await? {
        Some((_, reservation)) => Ok(Json(reservation).into_response()),
        None => Err(unknown_reservation(id)),
    }
}

/// Cancels on the shard that holds the reservation; answers it as it now stands.
async fn cancel_reservation(
    State(AppState { shards, id_lookups }): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_reservation_id(&id)?;
    let Some((shard, _)) = find_on_shards(&id_lookups, id, None).await? else {
        return Err(unknown_reservation(id));
    };
    let client = shards.connect(shard).await?;
    match booking::cancel(&client, id).await? {
        Some(reservation) => Ok(Json(reservation).into_response()),
        None => Err(unknown_reservation(id)),
    }
}

async fn availability(
    State(AppState { shards, .. }): State<AppState>,
    Path(hotel_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let hotel_id: i64 = hotel_id
        .parse()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| BadRequest(format!("hotel_id: `{hotel_id}` is not a hotel id (a non-negative integer)")))?;
    let date = |field: &str| match query.get(field) {
        Some(text) => parse_date(field, text),
        None => Err(BadRequest(format!("{field}: missing query parameter (YYYY-MM-DD)"))),
    };
    let (start, end) = (date("start")?, date("end")?);
    check_range("start", "end", start, end, MAX_AVAILABILITY_NIGHTS)?;
    let client = shards.connect(shards.index_of(hotel_id)).await?;
    match booking::availability(&client, hotel_id, start, end).await? {
        Some(availability) => Ok(Json(availability).into_response()),
        None => Err(unknown_hotel(hotel_id)),
    }
}

/// Looks `id` up on every shard except `skip`; the shard index and reservation if found.
async fn find_on_shards(
    id_lookups: &[IdLookup],
    id: Uuid,
    skip: Option<usize>,
) -> Result<Option<(usize, Reservation)>, ApiError> {
    for (index, lookup) in id_lookups.iter().enumerate().filter(|(index, _)| Some(*index) != skip) {
        if let Some(reservation) = lookup.find(id).await.with_context(|| format!("shard {index}"))? {
            return Ok(Some((index, reservation)));
        }
    }
    Ok(None)
}

fn id_reused(existing: Reservation) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "reservation_id_reused",
        format!("reservation_id {} was already used for a different reservation", existing.request.reservation_id),
    )
    .with("existing", json!(existing))
}

fn unknown_hotel(hotel_id: i64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_hotel", format!("no hotel {hotel_id}"))
}

fn unknown_reservation(id: Uuid) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_reservation", format!("no reservation {id}"))
}
