//! The Kafka broker for integration tests.
//!
//! The broker is the one named by `CLICKSTAY_KAFKA_BROKERS` (bootstrap servers, set by the test
//! script). When it is unset, `scripts/broker.sh start /tmp/clickstay-test-broker` is run once
//! per test binary (idempotent, so all binaries share one broker), and plain `cargo test` works
//! on a developer machine; that broker is left running (`scripts/broker.sh stop
//! /tmp/clickstay-test-broker` stops it). Every test uses its own topic ([`fresh_topic`]), so
//! tests run in parallel and can be re-run without cleaning up. [`bare_consume`] reads a topic
//! as fast as the broker delivers it (tests, and the ceiling of `benches/stream.rs`).
//!
//! Include it with `#[path = "common/broker.rs"] mod broker;` next to `#[path =
//! "common/scripts.rs"] mod scripts;` (from a benchmark: `../tests/common/...`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clickstay::config::KafkaConfig;
use clickstay::sources::kafka::{client_config, partition_count};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

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
            super::scripts::run_script("broker.sh", &["start", TEST_BROKER_DIR], Stdio::piped())
                .unwrap_or_else(|error| panic!("{error:#}"))
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

/// Reads the topic of `kafka` from offset 0 of every partition without a consumer group
/// (assign, no commits) until `expected` messages have arrived, and returns how many arrived
/// and the seconds from the assignment to the last one: the ceiling any consumer of this broker
/// can reach. Counts messages instead of comparing with high watermarks, which some brokers
/// (tansu) report too low. Fails when `timeout` passes first.
pub fn bare_consume(kafka: &KafkaConfig, expected: u64, timeout: Duration) -> Result<(u64, f64)> {
    let topic = kafka.topic.as_str();
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", "clickstay-bare-consume")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()
        .context("cannot create a Kafka consumer")?;
    let partitions = partition_count(consumer.client(), topic)?
        .with_context(|| format!("Kafka topic `{topic}` does not exist on {}", kafka.brokers))?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Offset(0))?;
    }
    consumer.assign(&assignment).with_context(|| format!("cannot assign the partitions of `{topic}`"))?;
    let started = Instant::now();
    let mut count = 0;
    while count < expected {
        if started.elapsed() > timeout {
            bail!("bare consume of `{topic}`: {count} of {expected} messages after {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => count += 1,
            Some(Err(error)) => tracing::warn!(topic, "bare consume: {error}"),
            None => {}
        }
    }
    Ok((count, started.elapsed().as_secs_f64()))
}

/// Deletes `topic` (if it exists) and creates it again, empty, with `partitions` partitions (as
/// an operator recreating a topic would); returns once the metadata shows the new topic.
pub fn recreate_topic(topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let kafka = kafka_config(topic, partitions);
    let admin: AdminClient<DefaultClientContext> = client_config(&kafka).create().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in runtime.block_on(admin.delete_topics(&[topic], &options)).unwrap() {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((_, code)) => panic!("cannot delete topic {topic}: {code}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while partition_count(admin.inner(), topic).unwrap().is_some() {
        assert!(Instant::now() < deadline, "topic {topic} still there after deleting it");
        std::thread::sleep(Duration::from_millis(50));
    }
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for result in runtime.block_on(admin.create_topics([&new_topic], &options)).unwrap() {
        result.unwrap_or_else(|(_, code)| panic!("cannot create topic {topic}: {code}"));
    }
    while partition_count(admin.inner(), topic).unwrap() != Some(partitions) {
        assert!(Instant::now() < deadline, "topic {topic} not recreated with {partitions} partitions");
        std::thread::sleep(Duration::from_millis(50));
    }
}
