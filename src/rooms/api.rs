//! The HTTP API (JSON): routes, request checking and the mapping of outcomes to status codes.
//! Handlers only route to the hotel's shard and translate; the SQL lives in [`super::booking`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde_json::{Value, json};
use tracing::{error, warn};
use uuid::Uuid;

use super::booking::{self, Outcome};
use super::claims::{self, Claim, ClaimBatch};
use super::guard::{self, Access, Bounds, Limits};
use super::id_lookup::{self, IdLookup, Located};
use super::metrics::{self, SoldOutByView};
use super::model::{
    BadRequest, MAX_AVAILABILITY_NIGHTS, MAX_STAY_NIGHTS, RequestError, Reservation, ReservationRequest, check_range,
    parse_date, parse_reservation_id,
};
use super::shards::{ShardError, Shards, redact_text};
use super::trips::{
    self,
    coordinator::{TripSettings, Trips},
};
use super::view::answers::Ask;
use super::view::committer::Committer;
use super::view::rows::day_of;
use super::view::{RoomsView, ViewError};
use crate::dashboard::{self, Page};
use crate::sources::postgres_cdc::{Lsn, format_lsn, parse_lsn};
use crate::telemetry;

/// The hotel side's dashboard, served at `/` (same origin as the API it reads).
const DASHBOARD: Page = Page { html: include_str!("dashboard.html"), script: include_str!("dashboard.js") };

/// Largest request body accepted; a reservation is about 250 bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Most hotels one search may list.
pub const MAX_SEARCH_HOTELS: usize = 100;

/// What every handler shares: the shard pools, one batched id look-up per shard, and the
/// availability view with the shards' committers when the API runs with one.
#[derive(Clone)]
struct AppState {
    shards: Shards,
    id_lookups: Vec<IdLookup>,
    claims: Vec<ClaimBatch>,
    view: Option<(RoomsView, Committer)>,
}

/// The routes of the reservation API over `shards`, answering availability and refusing
/// sold-out bookings from `view` when given (spawns the id look-up tasks, so call it inside a
/// tokio runtime). Every request passes [`guard::limit`] (deadline, concurrency cap), then
/// [`guard::guard`] (origin, content type, token).
///
/// The trip routes ([`trips::routes`]) share the claim tasks; recovery of trips
/// ([`trips::recovery::spawn`]) starts here too.
pub fn router(
    shards: Shards,
    view: Option<RoomsView>,
    limits: Limits,
    access: Access,
    trip_settings: TripSettings,
) -> Router {
    let id_lookups = id_lookup::spawn_all(&shards);
    let claims = claims::spawn_all(&shards);
    let trips = Trips::new(shards.clone(), claims.clone(), trip_settings);
    trips::recovery::spawn(trips.clone());
    let telemetry = crate::telemetry::install();
    metrics::describe();
    metrics::spawn_sampler(shards.clone(), view.clone());
    let view = view.map(|view| (view, Committer::new(shards.clone())));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/reservation-ids", post(new_reservation_id))
        .route("/v1/reservations", post(create_reservation))
        .route("/v1/reservations/{reservation_id}", get(get_reservation).delete(cancel_reservation))
        .route("/v1/hotels/{hotel_id}/availability", get(availability))
        .route("/v1/availability/search", get(search))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState { shards, id_lookups, claims, view })
        .merge(trips::routes::router(trips))
        .merge(telemetry::routes(telemetry))
        .merge(dashboard::routes(DASHBOARD))
        .layer(middleware::from_fn_with_state(Arc::new(access), guard::guard))
        .layer(middleware::from_fn_with_state(Bounds::from(limits), guard::limit))
        .layer(middleware::from_fn(metrics::count_outcomes))
        .layer(middleware::from_fn(telemetry::time_requests))
}

/// An error answer: a status code and `{"error": code, "message": ..., ...details}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, body: json!({ "error": code, "message": message.into() }) }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn with(mut self, key: &str, value: Value) -> Self {
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

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Bad(bad) => bad.into(),
            RequestError::InThePast { first_night, today } => {
                ApiError::new(StatusCode::BAD_REQUEST, "in_the_past", error.to_string())
                    .with("first_night", json!(first_night))
                    .with("today", json!(today))
            }
        }
    }
}

impl From<ViewError> for ApiError {
    fn from(error: ViewError) -> Self {
        let (status, code) = match error {
            ViewError::Behind { .. } => (StatusCode::SERVICE_UNAVAILABLE, "view_behind"),
            ViewError::Failed(_) => (StatusCode::SERVICE_UNAVAILABLE, "view_unavailable"),
            ViewError::Inconsistent(_) => (StatusCode::INTERNAL_SERVER_ERROR, "view_inconsistent"),
            ViewError::Rebuilding { .. } => (StatusCode::SERVICE_UNAVAILABLE, "view_rebuilding"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(cause: anyhow::Error) -> Self {
        error!("{}", redact_text(&crate::pg_error::report(&cause).to_string()));
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

/// A shard in trouble answers 503 naming its index (never its URL); the reason goes to the log.
/// The error code a shard's trouble answers.
fn shard_error_code(error: &ShardError) -> Value {
    json!(match error {
        ShardError::Busy { .. } => "busy",
        ShardError::Unavailable { .. } => "shard_unavailable",
        ShardError::Other { .. } => "internal",
    })
}

impl From<ShardError> for ApiError {
    fn from(error: ShardError) -> Self {
        let shard = error.shard();
        match error {
            ShardError::Busy { waited, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("every connection to hotel shard {shard} stayed busy for {waited:?}; try again"),
            )
            .with("shard", json!(shard)),
            ShardError::Unavailable { reason, .. } => {
                warn!(shard, %reason, "answering shard_unavailable");
                shard_unavailable(shard)
            }
            ShardError::Other { cause, .. } => ApiError::from(cause.context(format!("hotel shard {shard}"))),
        }
    }
}

fn shard_unavailable(shard: usize) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shard_unavailable",
        format!("hotel shard {shard} is unavailable or did not answer in time; try again later"),
    )
    .with("shard", json!(shard))
}

type ApiResult = Result<Response, ApiError>;

/// Liveness and reachability of every shard, asked concurrently and each within the shard's
/// timeouts: `{"status": "ok" | "degraded", "shards": [{"shard": i, "status": "up" | "down"},
/// ...]}`, with the view's position and lag per shard under `--dataflow`. 503 when a shard is
/// down. Never a URL or a credential.
async fn healthz(State(AppState { shards, view, .. }): State<AppState>) -> ApiResult {
    let mut asked = tokio::task::JoinSet::new();
    for index in 0..shards.len() {
        let shards = shards.clone();
        asked.spawn(async move {
            let position = shards.wal_position(index).await;
            (index, position)
        });
    }
    let mut reports = vec![json!(null); shards.len()];
    let mut all_up = true;
    while let Some(Ok((index, position))) = asked.join_next().await {
        let mut report = json!({ "shard": index, "status": if position.is_ok() { "up" } else { "down" } });
        if let Err(error) = &position {
            all_up = false;
            warn!(shard = index, %error, "health check: shard down");
            report["error"] = shard_error_code(error);
        }
        if let Some((view, _)) = &view {
            report["view"] = view_report(view, index, position.ok());
        }
        reports[index] = report;
    }
    let status = if all_up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({ "status": if all_up { "ok" } else { "degraded" }, "shards": reports });
    Ok((status, Json(body)).into_response())
}

/// The view's state of shard `index`: applied position, and its lag behind the shard's
/// current WAL position (`current`, when the shard answered) in bytes and seconds.
fn view_report(view: &RoomsView, index: usize, current: Option<Lsn>) -> Value {
    let applied = view.applied()[index];
    let state = match (view.serves(index as u32), applied.lsn > 0) {
        (true, _) => "serving",
        (false, false) => "loading",
        (false, true) => "rebuilding",
    };
    let mut report = json!({ "lsn": format_lsn(applied.lsn), "state": state });
    if let Some(current) = current {
        let (lag_bytes, lag_seconds) = view.lag(index, current);
        report["lag_bytes"] = json!(lag_bytes);
        report["lag_seconds"] = json!(lag_seconds);
    }
    report
}

/// `POST /v1/reservation-ids[?hotel_id=H]`: a fresh idempotency key. UUIDv7 (time-ordered)
/// keeps inserts at the right edge of the primary-key index. With `hotel_id`, the id is homed
/// on that hotel's shard, so that booking it there costs no second commit for its claim.
async fn new_reservation_id(
    State(AppState { shards, .. }): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let id = match query.get("hotel_id") {
        None => Uuid::now_v7(),
        Some(text) => {
            let hotel_id: i64 = text
                .parse()
                .ok()
                .filter(|id| *id >= 0)
                .ok_or_else(|| BadRequest(format!("hotel_id: `{text}` is not a hotel id")))?;
            claims::new_id_homed_on(shards.index_of(hotel_id), shards.len())
        }
    };
    Ok(Json(json!({ "reservation_id": id })).into_response())
}

async fn create_reservation(
    State(AppState { shards, id_lookups, claims, view }): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let request = ReservationRequest::parse(&body_of(body)?)?;
    let home = shards.index_of(request.hotel_id);
    // A booking the view already knows to be sold out is refused without touching the database.
    if let Some((view, _)) = &view {
        let ask = Ask {
            hotels: vec![request.hotel_id],
            city: None,
            start: day_of(request.start_date),
            end: day_of(request.end_date),
            reservation: Some(request.reservation_id.as_u128()),
            shards: vec![home as u32],
        };
        match view.ask(ask, &BTreeMap::new()).await {
            Ok(found) => {
                if let Some(night) = found.sold_out_night(&request) {
                    let lsn = found.positions.get(&(home as u32)).copied().unwrap_or(0);
                    let refused = sold_out(&request, night)
                        .with("answered_by", json!("view"))
                        .with("lsn", json!(format_lsn(lsn)));
                    let mut response = refused.into_response();
                    response.extensions_mut().insert(SoldOutByView);
                    return Ok(response);
                }
            }
            // The view is only a shortcut: without it, the database decides.
            Err(error) => {
                tracing::debug!(%error, "view unavailable for a booking; asking the database")
            }
        }
    }
    // The id's first use wins on its home shard, whichever shard its hotel is on.
    // When the id's home shard is the hotel's, the booking's transaction takes the claim.
    let home_of_id = claims::home_shard(request.reservation_id, shards.len());
    let claim_here = home_of_id == home;
    let timeout = shards.limits().map(|limits| limits.transaction_timeout);
    if !claim_here && let Claim::Taken(claimed) = claims[home_of_id].ask(request.clone(), timeout).await? {
        return Err(id_claimed(&shards, &id_lookups, claimed).await?);
    }
    let (outcome, lsn) = match &view {
        Some((_, committer)) => {
            let (outcome, lsn) = committer.commit(&request, claim_here).await?;
            (outcome, Some(lsn))
        }
        None => {
            let booked = request.clone();
            let reserved = shards
                .run(home, move |client| Box::pin(async move { booking::reserve(client, &booked, claim_here).await }));
            (reserved.await?, None)
        }
    };
    let with_lsn = |mut body: Value| {
        if let Some(lsn) = lsn {
            body["lsn"] = json!(format_lsn(lsn));
        }
        Json(body)
    };
    match outcome {
        Outcome::UnknownHotel | Outcome::UnknownRoomType => release_unbookable(&shards, &request).await?,
        _ => {}
    }
    match outcome {
        Outcome::Confirmed(reservation) => Ok((StatusCode::CREATED, with_lsn(json!(reservation))).into_response()),
        Outcome::Repeated(reservation) => Ok((StatusCode::OK, with_lsn(json!(reservation))).into_response()),
        Outcome::IdReused(existing) => Err(id_reused(existing)),
        Outcome::Claimed(claimed) => Err(id_claimed(&shards, &id_lookups, claimed).await?),
        Outcome::SoldOut { night } => {
            let error = sold_out(&request, night);
            Err(match lsn {
                Some(lsn) => error.with("lsn", json!(format_lsn(lsn))),
                None => error,
            })
        }
        Outcome::UnknownHotel => Err(unknown_hotel(request.hotel_id)),
        Outcome::UnknownRoomType => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_room_type",
            format!("hotel {} has no room type {}", request.hotel_id, request.room_type_id),
        )),
    }
}

/// A request's body, or the 413/400 for one too large or cut off.
pub(crate) fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let code =
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "bad_request" };
        ApiError::new(rejection.status(), code, rejection.body_text())
    })
}

fn sold_out(request: &ReservationRequest, night: chrono::NaiveDate) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "sold_out",
        format!(
            "room type {} of hotel {} has no room left on the night of {night}",
            request.room_type_id, request.hotel_id
        ),
    )
    .with("night", json!(night))
}

async fn get_reservation(
    State(AppState { shards, id_lookups, .. }): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_reservation_id(&id)?;
    match locate(&shards, &id_lookups, id).await? {
        Some((_, reservation)) => Ok(Json(reservation).into_response()),
        None => Err(unknown_reservation(id)),
    }
}

/// Cancels on the shard that holds the reservation; answers it as it now stands.
async fn cancel_reservation(
    State(AppState { shards, id_lookups, .. }): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_reservation_id(&id)?;
    let Some((shard, _)) = locate(&shards, &id_lookups, id).await? else {
        return Err(unknown_reservation(id));
    };
    match shards.run(shard, move |client| Box::pin(async move { booking::cancel(client, id).await })).await? {
        Some(reservation) => {
            set_claim_state(&shards, id, "cancelled");
            Ok(Json(reservation).into_response())
        }
        None => Err(unknown_reservation(id)),
    }
}

async fn availability(
    State(AppState { shards, view, .. }): State<AppState>,
    Path(hotel_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let hotel_id: i64 = hotel_id
        .parse()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| BadRequest(format!("hotel_id: `{hotel_id}` is not a hotel id (a non-negative integer)")))?;
    let (start, end) = stay_of(&query, MAX_AVAILABILITY_NIGHTS)?;
    let shard = shards.index_of(hotel_id);
    let min_lsn: BTreeMap<u32, Lsn> = match query.get("min_lsn") {
        Some(text) => {
            let lsn = parse_lsn(text)
                .map_err(|_| BadRequest(format!("min_lsn: `{text}` is not an LSN such as 0/16B3748")))?;
            BTreeMap::from([(shard as u32, lsn)])
        }
        None => BTreeMap::new(),
    };
    let Some((view, _)) = &view else {
        // Without a view every answer comes from the database, always current: any `min_lsn`
        // is met already.
        return availability_from_database(&shards, hotel_id, start, end).await;
    };
    let ask = Ask {
        hotels: vec![hotel_id],
        city: None,
        start: day_of(start),
        end: day_of(end),
        reservation: None,
        shards: vec![shard as u32],
    };
    let found = match view.ask(ask, &min_lsn).await {
        Ok(found) => found,
        // While the shard's part of the view is rebuilt, the database answers (always current).
        Err(ViewError::Rebuilding { .. }) => return availability_from_database(&shards, hotel_id, start, end).await,
        Err(error) => return Err(error.into()),
    };
    let lsn = found.positions.get(&(shard as u32)).copied().unwrap_or(0);
    match found.availability(hotel_id, start, end) {
        Some(availability) => {
            let mut body = json!(availability);
            body["lsn"] = json!(format_lsn(lsn));
            Ok(Json(body).into_response())
        }
        None => Err(unknown_hotel(hotel_id).with("lsn", json!(format_lsn(lsn)))),
    }
}

/// A hotel's availability from its shard's database.
async fn availability_from_database(
    shards: &Shards,
    hotel_id: i64,
    start: chrono::NaiveDate,
    end: chrono::NaiveDate,
) -> ApiResult {
    let answered = shards.run(shards.index_of(hotel_id), move |client| {
        Box::pin(async move { booking::availability(client, hotel_id, start, end).await })
    });
    match answered.await? {
        Some(availability) => Ok(Json(availability).into_response()),
        None => Err(unknown_hotel(hotel_id)),
    }
}

/// `GET /v1/availability/search?start&end[&rooms=N]` and either `city=...` or
/// `hotels=1,2,3`: the hotels with `rooms` rooms of one type free for the whole stay.
async fn search(
    State(AppState { shards, view, .. }): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let (start, end) = stay_of(&query, MAX_STAY_NIGHTS)?;
    let rooms: i32 = match query.get("rooms") {
        None => 1,
        Some(text) => text
            .parse()
            .ok()
            .filter(|rooms| *rooms >= 1)
            .ok_or_else(|| BadRequest(format!("rooms: `{text}` is not a number of rooms (1 or more)")))?,
    };
    let (city, hotels) = match (query.get("city"), query.get("hotels")) {
        (Some(city), None) if !city.is_empty() => (Some(city.clone()), Vec::new()),
        (None, Some(list)) => {
            let mut hotels = list
                .split(',')
                .map(|id| id.trim().parse::<i64>().ok().filter(|id| *id >= 0))
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| BadRequest(format!("hotels: `{list}` is not a comma-separated list of hotel ids")))?;
            // A hotel listed twice is answered once (the answer is sorted by hotel id anyway).
            hotels.sort_unstable();
            hotels.dedup();
            if hotels.len() > MAX_SEARCH_HOTELS {
                return Err(
                    BadRequest(format!("hotels: {} hotels listed, at most {MAX_SEARCH_HOTELS}", hotels.len())).into()
                );
            }
            (None, hotels)
        }
        _ => {
            return Err(BadRequest("give either city=NAME or hotels=ID,ID,... (not both)".into()).into());
        }
    };
    if query.contains_key("min_lsn") {
        return Err(BadRequest("min_lsn: only a single hotel's availability takes it".into()).into());
    }
    let mut body = json!({ "start": start, "end": end, "rooms": rooms });
    if let Some((view, _)) = &view {
        let ask = Ask {
            hotels: hotels.clone(),
            city: city.clone(),
            start: day_of(start),
            end: day_of(end),
            reservation: None,
            shards: (0..shards.len() as u32).collect(),
        };
        match view.ask(ask, &BTreeMap::new()).await {
            Ok(found) => {
                body["hotels"] = json!(found.search(start, end, rooms));
                body["lsns"] = json!(found.positions.values().map(|lsn| format_lsn(*lsn)).collect::<Vec<_>>());
                return Ok(Json(body).into_response());
            }
            // While a shard's part of the view is rebuilt, the databases answer (always current).
            Err(ViewError::Rebuilding { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let mut found = Vec::new();
    for index in 0..shards.len() {
        let (city, hotels) = (city.clone(), hotels.clone());
        let searched = shards.run(index, move |client| {
            Box::pin(async move { booking::search(client, city.as_deref(), &hotels, start, end, rooms).await })
        });
        found.extend(searched.await?);
    }
    found.sort_by_key(|availability| availability.hotel_id);
    body["hotels"] = json!(found);
    Ok(Json(body).into_response())
}

/// The `start` and `end` query parameters, checked (at most `max_nights` apart).
fn stay_of(
    query: &HashMap<String, String>,
    max_nights: i64,
) -> Result<(chrono::NaiveDate, chrono::NaiveDate), BadRequest> {
    let date = |field: &str| match query.get(field) {
        Some(text) => parse_date(field, text),
        None => Err(BadRequest(format!("{field}: missing query parameter (YYYY-MM-DD)"))),
    };
    let (start, end) = (date("start")?, date("end")?);
    check_range("start", "end", start, end, max_nights)?;
    Ok((start, end))
}

/// The 422 for an id claimed for other content: with the reservation made under it, or with
/// the content it was claimed for when that booking has not been made (it was sold out, or
/// crashed before committing).
async fn id_claimed(
    shards: &Shards,
    id_lookups: &[IdLookup],
    claimed: ReservationRequest,
) -> Result<ApiError, ApiError> {
    let shard = shards.index_of(claimed.hotel_id);
    Ok(match id_lookups[shard].ask(claimed.reservation_id, shards.id_lookup_timeout()).await? {
        Some(existing) => id_reused(existing),
        None => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reservation_id_reused",
            format!("reservation_id {} was already claimed for a different stay", claimed.reservation_id),
        )
        .with("claimed", json!(claimed)),
    })
}

/// Records what became of a claimed id (`cancelled`), in the background: the claim's content
/// already decides every later use of the id, its state only tells an operator.
fn set_claim_state(shards: &Shards, id: Uuid, state: &'static str) {
    let shards = shards.clone();
    tokio::spawn(async move {
        let home = claims::home_shard(id, shards.len());
        let result =
            shards.run(home, move |client| Box::pin(async move { claims::set_state(client, id, state).await }));
        if let Err(error) = result.await {
            warn!(%id, state, "cannot record the claim's state: {error}");
        }
    });
}

/// Gives back the claim of a request whose hotel or room type does not exist.
async fn release_unbookable(shards: &Shards, request: &ReservationRequest) -> Result<(), ApiError> {
    let home = claims::home_shard(request.reservation_id, shards.len());
    let request = request.clone();
    Ok(shards
        .run(home, move |client| Box::pin(async move { claims::release_unbookable(client, &request).await }))
        .await?)
}

/// The shard and reservation of `id`: the claim on the id's home shard names its hotel;
/// reservations made before claims existed are looked for on every shard.
async fn locate(shards: &Shards, id_lookups: &[IdLookup], id: Uuid) -> Result<Option<(usize, Reservation)>, ApiError> {
    let home = claims::home_shard(id, shards.len());
    let hotel = shards.run(home, move |client| Box::pin(async move { claims::hotel_of(client, id).await })).await?;
    let Some(hotel_id) = hotel else { return find_on_shards(id_lookups, id).await };
    let shard = shards.index_of(hotel_id);
    let found = id_lookups[shard].ask(id, shards.id_lookup_timeout()).await?;
    Ok(found.map(|reservation| (shard, reservation)))
}

/// The shard holding `id` and the reservation: looked up on every shard at once; 503 when it
/// is on no shard that answered but some shard did not.
async fn find_on_shards(id_lookups: &[IdLookup], id: Uuid) -> Result<Option<(usize, Reservation)>, ApiError> {
    let Located { found, unanswered } = id_lookup::locate(id_lookups, id, None, None).await;
    match (found, unanswered.into_iter().next()) {
        (Some(found), _) => Ok(Some(found)),
        (None, Some(error)) => Err(error.into()),
        (None, None) => Ok(None),
    }
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
