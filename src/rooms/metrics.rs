//! `rooms serve`'s metrics: bookings and trips by outcome (a middleware that reads the answer's
//! status), and a sampler that looks at every shard once a second (its pool, the view's lag
//! behind its WAL, the trips' prepared transactions and unfinished trips). Request latency by
//! route is `crate::telemetry::time_requests`; the view counts its questions itself. Names and
//! meanings are listed in the README ("Metrics").

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, gauge};

use super::shards::Shards;
use super::trips::{log, two_phase};
use super::view::RoomsView;

/// How often the sampler looks at the shards.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A shard that does not answer the sampler this fast is skipped for the round.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Set on a 409 `sold_out` answer the view gave without asking the database.
#[derive(Debug, Clone, Copy)]
pub struct SoldOutByView;

/// Describes the metrics (their `# HELP` lines).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        "clickstay_rooms_bookings_total",
        "POST /v1/reservations by outcome: confirmed, repeat, sold_out_view, sold_out_db, client_error (other 4xx), server_error (5xx)"
    );
    describe_counter!(
        "clickstay_rooms_trips_total",
        "POST /v1/trips by outcome: booked, repeat, refused (409), client_error (other 4xx), server_error (5xx)"
    );
    describe_counter!("clickstay_rooms_view_questions_total", "Questions that entered the availability view");
    describe_gauge!("clickstay_rooms_pool_in_use", "Database connections in use, by shard");
    describe_gauge!("clickstay_rooms_pool_waiting", "Requests waiting for a database connection, by shard");
    describe_gauge!("clickstay_rooms_shard_up", "1 when the shard answered the last sample, else 0");
    describe_gauge!("clickstay_rooms_view_lag_bytes", Unit::Bytes, "The shard's WAL position minus the view's");
    describe_gauge!("clickstay_rooms_view_lag_seconds", Unit::Seconds, "How long the view has been behind the shard");
    describe_gauge!("clickstay_rooms_prepared_in_doubt", "Prepared transactions of trips, by shard");
    describe_gauge!(
        "clickstay_rooms_prepared_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest prepared transaction of a trip, by shard (0 when none)"
    );
    describe_gauge!("clickstay_rooms_trips_unfinished", "Trips homed on the shard not in a final state");
    describe_gauge!(
        "clickstay_rooms_trips_unfinished_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest unfinished trip homed on the shard (0 when none)"
    );
}

/// Middleware: counts each booking and trip request by its outcome, read off the answer (so
/// that refusals before the handler, `busy` or a timeout, count too).
pub async fn count_outcomes(request: Request, next: Next) -> Response {
    let route = match (request.method(), request.extensions().get::<MatchedPath>().map(MatchedPath::as_str)) {
        (&Method::POST, Some("/v1/reservations")) => Some("clickstay_rooms_bookings_total"),
        (&Method::POST, Some("/v1/trips")) => Some("clickstay_rooms_trips_total"),
        _ => None,
    };
    let response = next.run(request).await;
    if let Some(name) = route {
        let by_view = response.extensions().get::<SoldOutByView>().is_some();
        counter!(name, "outcome" => outcome(name, response.status(), by_view)).increment(1);
    }
    response
}

fn outcome(name: &str, status: StatusCode, sold_out_by_view: bool) -> &'static str {
    let trips = name == "clickstay_rooms_trips_total";
    match status {
        StatusCode::CREATED if trips => "booked",
        StatusCode::CREATED => "confirmed",
        StatusCode::OK => "repeat",
        StatusCode::CONFLICT if trips => "refused",
        StatusCode::CONFLICT if sold_out_by_view => "sold_out_view",
        StatusCode::CONFLICT => "sold_out_db",
        status if status.is_client_error() => "client_error",
        _ => "server_error",
    }
}

/// Starts the sampler (on the current tokio runtime); it runs as long as the runtime.
pub fn spawn_sampler(shards: Shards, view: Option<RoomsView>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            let mut shards_sampled = tokio::task::JoinSet::new();
            for index in 0..shards.len() {
                let (shards, view) = (shards.clone(), view.clone());
                shards_sampled.spawn(async move { sample(&shards, view.as_ref(), index).await });
            }
            while shards_sampled.join_next().await.is_some() {}
        }
    });
}

/// One shard's sample.
async fn sample(shards: &Shards, view: Option<&RoomsView>, index: usize) {
    let shard = index.to_string();
    let status = shards.pools()[index].status();
    gauge!("clickstay_rooms_pool_in_use", "shard" => shard.clone())
        .set(status.size.saturating_sub(status.available) as f64);
    gauge!("clickstay_rooms_pool_waiting", "shard" => shard.clone()).set(status.waiting as f64);
    let trips = shards.run(index, |client| {
        Box::pin(async move {
            let prepared = two_phase::prepared_here(client).await?;
            let unfinished = log::unfinished(client, 0).await?;
            Ok::<_, anyhow::Error>((prepared, unfinished))
        })
    });
    let asked = async { tokio::try_join!(shards.wal_position(index), trips) };
    let Ok(Ok((current, (prepared, unfinished)))) = tokio::time::timeout(SAMPLE_TIMEOUT, asked).await else {
        gauge!("clickstay_rooms_shard_up", "shard" => shard).set(0.0);
        return;
    };
    gauge!("clickstay_rooms_shard_up", "shard" => shard.clone()).set(1.0);
    if let Some(view) = view {
        let (bytes, seconds) = view.lag(index, current);
        gauge!("clickstay_rooms_view_lag_bytes", "shard" => shard.clone()).set(bytes as f64);
        gauge!("clickstay_rooms_view_lag_seconds", "shard" => shard.clone()).set(seconds);
    }
    let oldest_prepared = prepared.iter().map(|p| p.age_seconds).fold(0.0, f64::max);
    gauge!("clickstay_rooms_prepared_in_doubt", "shard" => shard.clone()).set(prepared.len() as f64);
    gauge!("clickstay_rooms_prepared_oldest_age_seconds", "shard" => shard.clone()).set(oldest_prepared);
    let now = chrono::Utc::now();
    let oldest_trip =
        unfinished.iter().map(|t| (now - t.updated_at).num_milliseconds() as f64 / 1000.0).fold(0.0, f64::max);
    gauge!("clickstay_rooms_trips_unfinished", "shard" => shard.clone()).set(unfinished.len() as f64);
    gauge!("clickstay_rooms_trips_unfinished_oldest_age_seconds", "shard" => shard).set(oldest_trip);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_status() {
        let bookings = "clickstay_rooms_bookings_total";
        assert_eq!(outcome(bookings, StatusCode::CREATED, false), "confirmed");
        assert_eq!(outcome(bookings, StatusCode::OK, false), "repeat");
        assert_eq!(outcome(bookings, StatusCode::CONFLICT, true), "sold_out_view");
        assert_eq!(outcome(bookings, StatusCode::CONFLICT, false), "sold_out_db");
        assert_eq!(outcome(bookings, StatusCode::UNPROCESSABLE_ENTITY, false), "client_error");
        assert_eq!(outcome(bookings, StatusCode::SERVICE_UNAVAILABLE, false), "server_error");
        assert_eq!(outcome("clickstay_rooms_trips_total", StatusCode::CREATED, false), "booked");
        assert_eq!(outcome("clickstay_rooms_trips_total", StatusCode::CONFLICT, false), "refused");
    }
}
