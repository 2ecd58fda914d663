//! The Kafka broker for integration tests.
//!
//! The broker is the one named by `CLICKSTAY_KAFKA_BROKERS` (bootstrap servers, set by the test
//! script). When it is unset, `scripts/broker.sh start /tmp/clickstay-test-broker` is run once
//! per test binary (idempotent, so all binaries share one broker), and plain `cargo test` works
//! on a developer machine; that broker is left running (`scripts/broker.sh stop
//! /tmp/clickstay-test-broker` stops it). Every test uses its own topic ([`fresh_topic`]), so
//! tests run in parallel and can be re-run without cleaning up.
//!
//! Include it with `#[path = "common/broker.rs"] mod broker;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use clickstay::config::KafkaConfig;

/// The broker's own directory when this helper starts one.
const TEST_BROKER_DIR: &str = "/tmp/clickstay-test-broker";

/// The bootstrap servers of the test broker, starting one if `CLICKSTAY_KAFKA_BROKERS` is unset.
pub fn brokers() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| {
            if let Ok(brokers) = std::env::var("CLICKSTAY_KAFKA_BROKERS") {
                return brokers.trim().to_string();
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker.sh");
            let output =
                Command::new(script).args(["start", TEST_BROKER_DIR]).output().expect("cannot run scripts/broker.sh");
            assert!(
                output.status.success(),
                "scripts/broker.sh start failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).expect("bootstrap servers are not UTF-8").trim().to_string()
        })
        .clone()
}

/// A topic name no other test (of this or an earlier run) uses.
pub fn fresh_topic(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000_000;
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The `[kafka]` section for `topic` on the test broker.
pub fn kafka_config(topic: &str, partitions: i32) -> KafkaConfig {
    KafkaConfig { brokers: brokers(), topic: topic.to_string(), partitions }
}

/// Writes `dir/workers.toml` with the `[kafka]` section of `kafka` and returns its path.
pub fn workers_toml(dir: &Path, kafka: &KafkaConfig) -> PathBuf {
    let path = dir.join("workers.toml");
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\ntopic = \"{}\"\npartitions = {}\n",
        kafka.brokers, kafka.topic, kafka.partitions
    );
    std::fs::write(&path, text).unwrap();
    path
}
