//! Scraping a command's `/metrics` and reading it with a real Prometheus text parser
//! (`prometheus-parse`): a scrape that does not parse fails the test.
//!
//! Include with `#[path = "common/prometheus.rs"] mod prometheus;`.
#![allow(dead_code)]

use prometheus_parse::{Sample, Scrape, Value};

/// `GET {base}/metrics`, parsed; `None` while the listener is not up.
pub async fn scrape(http: &reqwest::Client, base: &str) -> Option<Scrape> {
    let response = match http.get(format!("{base}/metrics")).send().await {
        Ok(response) => response,
        Err(error) => {
            eprintln!("scrape {base}: {error:?}");
            return None;
        }
    };
    assert!(response.status().is_success(), "/metrics answered {}", response.status());
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "content type {content_type}");
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|line| Ok(line.to_string()));
    Some(Scrape::parse(lines).unwrap_or_else(|error| panic!("/metrics does not parse: {error}\n{text}")))
}

/// The same, from a test without a runtime.
pub fn scrape_blocking(base: &str) -> Option<Scrape> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(scrape(&reqwest::Client::new(), base))
}

/// The samples named `name` whose labels include every `(label, value)` of `labels`.
pub fn samples<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(label, value)| s.labels.get(label) == Some(*value)))
        .collect()
}

/// A counter's or gauge's value (a histogram's count), summed over the matching samples;
/// `None` when there is none.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found = samples(scrape, name, labels);
    (!found.is_empty()).then(|| {
        found
            .iter()
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
                Value::Summary(_) => panic!("{name}: a summary, expected a histogram"),
            })
            .sum()
    })
}

/// Every value of the label `label` among the samples named `name`, sorted.
pub fn label_values(scrape: &Scrape, name: &str, label: &str) -> Vec<String> {
    let mut values: Vec<String> =
        samples(scrape, name, &[]).iter().filter_map(|s| s.labels.get(label).map(str::to_string)).collect();
    values.sort();
    values.dedup();
    values
}
