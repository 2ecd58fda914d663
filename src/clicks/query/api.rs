//! The query API of the running click job: JSON over HTTP, each request's questions entered
//! into the dataflow together (see [`super::QueryHub`]).
//!
//! - `GET /v1/ads/{ad_id}/aggregated_count?from=MS&to=MS[&FIELD=VALUE]`
//! - `GET /v1/ads/popular_ads?count=N&window=M[&FIELD=VALUE][&as_of=MS]`
//! - `POST /v1/ads/query`: a JSON array of `{"query": "aggregated_count" | "popular_ads", ...the
//!   same parameters...}`, answered at one `as_of`
//! - `GET /v1/ads/popular_ads/stream?count=N&window=M[&FIELD=VALUE]`: server-sent events, the
//!   answer and then each changed answer

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{Value, json};

use super::{Ask, QueryHub, Refused};
use crate::clicks::spec::Field;
use crate::duration::format_duration_ms;

/// How long a request waits for the dataflow's answer before 503 `timeout`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a stream asks again (it sends only answers that changed).
const STREAM_EVERY: Duration = Duration::from_millis(500);
/// The most ads a popular question may ask for.
const MAX_COUNT: u64 = 1000;

/// The query routes (served by `run --listen`, see `clicks::stream`).
pub fn router(hub: QueryHub) -> Router {
    Router::new()
        .route("/v1/ads/{ad_id}/aggregated_count", get(aggregated_count))
        .route("/v1/ads/popular_ads", get(popular_ads))
        .route("/v1/ads/popular_ads/stream", get(popular_ads_stream))
        .route("/v1/ads/query", post(query))
        .with_state(hub)
}

/// A 4xx or 5xx with a JSON body `{"error", "message"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad(message: String) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.code, "message": self.message }))).into_response()
    }
}

type Params = HashMap<String, String>;

async fn aggregated_count(
    State(hub): State<QueryHub>,
    Path(ad_id): Path<String>,
    Query(mut params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    params.insert("ad_id".into(), ad_id);
    let ask = count_ask(&hub, &params)?;
    Ok(Json(one(&hub, ask).await?))
}

async fn popular_ads(State(hub): State<QueryHub>, Query(params): Query<Params>) -> Result<Json<Value>, ApiError> {
    let ask = popular_ask(&hub, &params, true)?;
    Ok(Json(one(&hub, ask).await?))
}

/// `POST /v1/ads/query`: several questions answered at one `as_of`.
async fn query(
    State(hub): State<QueryHub>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|rejection| ApiError::bad(rejection.body_text()))?;
    let Value::Array(items) = body else {
        return Err(ApiError::bad("the body must be a JSON array of queries".into()));
    };
    let mut asks = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let ask = item_ask(&hub, item).map_err(|error| ApiError::bad(format!("query {index}: {}", error.message)))?;
        asks.push(ask);
    }
    let answers = ask(&hub, asks).await?;
    Ok(Json(Value::Array(answers)))
}

/// One element of a `POST /v1/ads/query` body.
fn item_ask(hub: &QueryHub, item: &Value) -> Result<Ask, ApiError> {
    let Value::Object(fields) = item else { return Err(ApiError::bad("a query must be a JSON object".into())) };
    let mut params = Params::new();
    for (key, value) in fields {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(ApiError::bad(format!("{key}: `{other}` is neither a string nor a number"))),
        };
        params.insert(key.clone(), text);
    }
    match params.remove("query").as_deref() {
        Some("aggregated_count") => count_ask(hub, &params),
        Some("popular_ads") => popular_ask(hub, &params, true),
        Some(other) => Err(ApiError::bad(format!("query: `{other}` is neither aggregated_count nor popular_ads"))),
        None => Err(ApiError::bad("query: missing (aggregated_count or popular_ads)".into())),
    }
}

/// `GET /v1/ads/popular_ads/stream`: the answer now, then every answer that differs from the
/// last one sent (a pane completed, or a late click corrected one).
async fn popular_ads_stream(
    State(hub): State<QueryHub>,
    Query(params): Query<Params>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let ask = popular_ask(&hub, &params, false)?;
    let stream = futures_util::stream::unfold((hub, ask, None::<Value>), |(hub, ask, last)| async move {
        loop {
            match self::ask(&hub, vec![ask.clone()]).await {
                Ok(mut answers) => {
                    let answer = answers.remove(0);
                    if last.as_ref() != Some(&answer) {
                        let event = Event::default().event("popular_ads").data(answer.to_string());
                        return Some((Ok(event), (hub, ask, Some(answer))));
                    }
                }
                Err(error) if error.status == StatusCode::SERVICE_UNAVAILABLE && error.code == "job_stopped" => {
                    return None;
                }
                Err(_) => {}
            }
            tokio::time::sleep(STREAM_EVERY).await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn one(hub: &QueryHub, ask: Ask) -> Result<Value, ApiError> {
    let mut answers = self::ask(hub, vec![ask]).await?;
    Ok(answers.remove(0))
}

/// Asks the job; each answer as JSON, or the first refusal as a 400.
async fn ask(hub: &QueryHub, asks: Vec<Ask>) -> Result<Vec<Value>, ApiError> {
    let answered = tokio::time::timeout(ANSWER_TIMEOUT, hub.ask(asks)).await.map_err(|_| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "timeout",
        message: format!("the job did not answer within {ANSWER_TIMEOUT:?}"),
    })?;
    let answers = answered.ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "job_stopped",
        message: "the job has stopped".into(),
    })?;
    answers
        .into_iter()
        .map(|answer| match answer {
            Ok(answer) => Ok(serde_json::to_value(&answer).expect("answers serialize")),
            Err(Refused::BeyondRetention { retention_ms, as_of }) => Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "beyond_retention",
                message: format!(
                    "the range starts more than the retention ({}) before the watermark {as_of}",
                    format_duration_ms(retention_ms)
                ),
            }),
        })
        .collect()
}

/// Parameters every question may carry besides its own: at most one filter.
fn filter(hub: &QueryHub, params: &Params, own: &[&str]) -> Result<Option<(Field, u64)>, ApiError> {
    let mut filter = None;
    for (name, value) in params.iter().filter(|(name, _)| !own.contains(&name.as_str())) {
        let field = Field::parse(name)
            .filter(|field| hub.catalog.count_for(Some(*field)).is_some())
            .ok_or_else(|| ApiError::bad(format!("{name}: the spec has no count grouped by ad_id and {name}")))?;
        if filter.is_some() {
            return Err(ApiError::bad(format!("{name}: only one filter per question")));
        }
        let encoded = match field {
            Field::AdId | Field::UserId => {
                value.parse::<i64>().map(toml::Value::Integer).unwrap_or(toml::Value::String(value.clone()))
            }
            Field::Country | Field::Ip => toml::Value::String(value.clone()),
        };
        let code = crate::clicks::event::encode_field_value(field, &encoded)
            .map_err(|e| ApiError::bad(format!("{name}: {e}")))?;
        filter = Some((field, code));
    }
    if hub.catalog.count_for(filter.map(|(field, _)| field)).is_none() {
        return Err(ApiError::bad(
            "the spec has no count grouped by ad_id alone to answer unfiltered questions".into(),
        ));
    }
    Ok(filter)
}

fn number(params: &Params, name: &str) -> Result<u64, ApiError> {
    let text = params.get(name).ok_or_else(|| ApiError::bad(format!("{name}: missing")))?;
    text.parse().map_err(|_| ApiError::bad(format!("{name}: `{text}` is not a non-negative integer")))
}

fn count_ask(hub: &QueryHub, params: &Params) -> Result<Ask, ApiError> {
    let ad_id = params.get("ad_id").map(String::as_str).unwrap_or_default();
    let ad_id: u64 = ad_id.parse().map_err(|_| ApiError::bad(format!("ad_id: `{ad_id}` is not an ad id")))?;
    let on_boundary = |name: &str| -> Result<u64, ApiError> {
        let ms = number(params, name)?;
        if !ms.is_multiple_of(hub.pane_ms) {
            return Err(ApiError::bad(format!(
                "{name}: {ms} is not on a pane boundary (panes are {} long)",
                format_duration_ms(hub.pane_ms)
            )));
        }
        Ok(ms)
    };
    let (from, to) = (on_boundary("from")?, on_boundary("to")?);
    if to <= from {
        return Err(ApiError::bad(format!("to: {to} must be after from ({from})")));
    }
    let filter = filter(hub, params, &["ad_id", "from", "to"])?;
    Ok(Ask::Count { ad_id, from, to, filter })
}

fn popular_ask(hub: &QueryHub, params: &Params, with_as_of: bool) -> Result<Ask, ApiError> {
    let n = number(params, "count")?;
    if !(1..=MAX_COUNT).contains(&n) {
        return Err(ApiError::bad(format!("count: {n} is not in 1..{MAX_COUNT}")));
    }
    let minutes = number(params, "window")?;
    let max_minutes = hub.retention_ms / 60_000;
    if !(1..=max_minutes).contains(&minutes) {
        return Err(ApiError::bad(format!(
            "window: {minutes} is not in 1..{max_minutes} minutes (the retention is {})",
            format_duration_ms(hub.retention_ms)
        )));
    }
    let window_ms = minutes * 60_000;
    if !window_ms.is_multiple_of(hub.pane_ms) {
        return Err(ApiError::bad(format!(
            "window: {minutes} minutes is not a whole number of panes ({})",
            format_duration_ms(hub.pane_ms)
        )));
    }
    let as_of = if with_as_of && params.contains_key("as_of") { Some(number(params, "as_of")?) } else { None };
    let own: &[&str] = if with_as_of { &["count", "window", "as_of"] } else { &["count", "window"] };
    let filter = filter(hub, params, own)?;
    Ok(Ask::Popular { n: n as u32, window_ms, filter, as_of })
}
