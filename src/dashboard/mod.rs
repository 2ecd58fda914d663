//! The live dashboards' shared part: a job's page at `/` and every script and style it needs
//! under `/assets/...`, all compiled into the binary (no build step, no CDN, no internet).
//!
//! A job hands [`routes`] its [`Page`] (its HTML and its script, kept next to the job); the
//! shared assets are the same for every job: the chart library (uPlot, vendored from the npm
//! registry, see `CONTEXT.md`), `dashboard.js` (a parser of Prometheus text, polling, chart and
//! table helpers) and `dashboard.css`. The pages only read: they `GET` the job's `/metrics` and
//! its query API from the same origin, once a second.

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One job's page: its HTML (served at `/`) and its script (served at `/assets/page.js`).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub html: &'static str,
    pub script: &'static str,
}

/// The shared assets: (file name under `/assets/`, content type, content).
const ASSETS: &[(&str, &str, &str)] = &[
    ("uPlot.iife.min.js", JS, include_str!("assets/uPlot.iife.min.js")),
    ("uPlot.min.css", CSS, include_str!("assets/uPlot.min.css")),
    ("uPlot.LICENSE", TEXT, include_str!("assets/uPlot.LICENSE")),
    ("dashboard.js", JS, include_str!("assets/dashboard.js")),
    ("dashboard.css", CSS, include_str!("assets/dashboard.css")),
];

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// `GET /` (the page) and `GET /assets/{name}` (its script and the shared assets).
pub fn routes(page: Page) -> Router {
    Router::new().route("/", get(move || async move { asset(HTML, page.html) })).route(
        "/assets/{name}",
        get(move |Path(name): Path<String>| async move {
            if name == "page.js" {
                return asset(JS, page.script);
            }
            match ASSETS.iter().find(|(file, _, _)| *file == name) {
                Some((_, content_type, content)) => asset(content_type, content),
                None => (StatusCode::NOT_FOUND, format!("no asset named `{name}`")).into_response(),
            }
        }),
    )
}

fn asset(content_type: &'static str, content: &'static str) -> Response {
    // The assets change only with the binary: no caching, so an upgraded job serves its own.
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], content).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_chart_library_keeps_its_licence_header() {
        let (_, _, script) = ASSETS.iter().find(|(name, _, _)| *name == "uPlot.iife.min.js").unwrap();
        assert!(script.starts_with("/*! uPlot v1.6.32 | MIT License"), "{}", &script[..80]);
        let (_, _, licence) = ASSETS.iter().find(|(name, _, _)| *name == "uPlot.LICENSE").unwrap();
        assert!(licence.contains("Permission is hereby granted"));
    }
}
