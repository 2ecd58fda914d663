//! Prometheus metrics of a long-running command: the process-wide recorder (the `metrics`
//! crate's facade with `metrics-exporter-prometheus` behind it), `GET /metrics`, the HTTP
//! middleware that times every request by route.
//!
//! Jobs record with the `metrics` macros (`counter!`, `gauge!`, `histogram!`) under names that
//! start with `clickstay_`, in base units (seconds, bytes), counters ending in `_total`. Until
//! [`install`] is called (by `run` and `rooms serve`) the macros record nothing and cost next
//! to nothing, so batch commands and tests that never scrape pay nothing.

use std::sync::OnceLock;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets of durations, in seconds: 0.5 ms to 30 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("the buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "another metrics recorder is installed: /metrics will show nothing");
            }
            describe_http();
            handle
        })
        .clone()
}

/// `GET /metrics`: every metric in Prometheus's text format (version 0.0.4).
pub fn routes(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                // Histograms are kept in buckets that drain on upkeep; do it on each scrape.
                handle.run_upkeep();
                ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
            }
        }),
    )
}

fn describe_http() {
    metrics::describe_histogram!(
        "clickstay_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP requests by route (the path pattern), method and status: time from the request to its answer's headers"
    );
}

/// Middleware (`axum::middleware::from_fn`): times each request under its route's pattern
/// (`/v1/hotels/{hotel_id}/availability`, never the concrete path: no label per hotel or ad),
/// `unmatched` for paths no route serves.
pub async fn time_requests(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |path| path.as_str()).to_owned();
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("clickstay_http_request_duration_seconds", "route" => route, "method" => method, "status" => status)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_as_prometheus_text() {
        let handle = install();
        metrics::counter!("clickstay_test_things_total", "kind" => "a").increment(3);
        metrics::histogram!("clickstay_test_wait_seconds").record(0.002);
        let text = handle.render();
        assert!(text.contains("clickstay_test_things_total{kind=\"a\"} 3"), "{text}");
        assert!(text.contains("clickstay_test_wait_seconds_bucket{le=\"0.0025\"} 1"), "{text}");
    }
}
