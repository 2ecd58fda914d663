//! Kafka plumbing shared by `clickstay produce` and the streaming job: client settings, the
//! topic and the wire format.
//!
//! # Wire format
//!
//! One click event per message. The value is the event as one JSON object, exactly the JSON
//! Lines form (`{"ad_id":7,"click_ts":1767225600000,"user_id":42,"ip":"203.0.113.7","country":"US"}`,
//! no newline) that [`crate::clicks::event::parse_json`] reads; the key is the `ad_id` in
//! decimal ASCII. Producers partition with librdkafka's `murmur2_random`, the partitioner of the
//! Java client, so every message of one ad lands in one partition whichever client wrote it.
//! Malformed input is sent as is, without a key, so that the job's rejected output sees it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::clicks::event::ClickEvent;
use crate::config::KafkaConfig;

/// How long [`ensure_topic`] keeps trying to reach a broker that is not up yet.
const REACH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings every clickstay client shares: where the brokers are.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers).set("client.id", "clickstay");
    config
}

/// The settings of a producer of click events: idempotent (a retried batch is not written
/// twice), keyed partitioning compatible with the Java client, and large batches for throughput.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "10")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    config
}

/// Appends the message value of `event` to `out` (see the module documentation).
pub fn wire_event(event: &ClickEvent, out: &mut Vec<u8>) {
    crate::clicks::generate::write_json(event, out);
}

/// Appends the message key of `event` to `out`: its `ad_id` in decimal ASCII.
pub fn wire_key(event: &ClickEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(event.ad_id).as_bytes());
}

/// The number of partitions of `topic`, or `None` when the broker does not know the topic.
/// Asks for the metadata of all topics: asking for one topic by name may create it on brokers
/// that create topics on first use.
pub fn partition_count<C: ClientContext>(client: &Client<C>, topic: &str) -> Result<Option<i32>> {
    let metadata = client.fetch_metadata(None, METADATA_TIMEOUT).context("cannot fetch metadata from the brokers")?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    Ok(found.filter(|t| t.error().is_none() && !t.partitions().is_empty()).map(|t| t.partitions().len() as i32))
}

/// Creates the topic of `kafka` with `kafka.partitions` partitions if it is missing, and checks
/// that an existing one has that many: the job maps partitions to workers and the archive and
/// offsets are per partition, so a different count is a configuration error, not something to
/// work around. Waits (with backoff, up to a minute) for brokers that are still starting.
pub fn ensure_topic(kafka: &KafkaConfig) -> Result<()> {
    let topic = kafka.topic.as_str();
    let admin: AdminClient<DefaultClientContext> =
        client_config(kafka).create().context("cannot create a Kafka admin client")?;
    // rdkafka's admin futures are completed by librdkafka's own thread; any executor will do.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deadline = Instant::now() + REACH_TIMEOUT;
    let mut backoff = Duration::from_millis(100);
    let mut created = false;
    loop {
        match partition_count(admin.inner(), topic) {
            Ok(Some(count)) if count == kafka.partitions => {
                tracing::info!(topic, partitions = count, created, "topic is ready");
                return Ok(());
            }
            Ok(Some(count)) => bail!(
                "Kafka topic `{topic}` has {count} partitions but [kafka] partitions is {}; \
                 use another topic or set partitions = {count}",
                kafka.partitions
            ),
            Ok(None) if !created => {
                let new_topic = NewTopic::new(topic, kafka.partitions, TopicReplication::Fixed(1));
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
                let results = runtime
                    .block_on(admin.create_topics([&new_topic], &options))
                    .with_context(|| format!("cannot create Kafka topic `{topic}`"))?;
                for result in results {
                    match result {
                        Ok(_) => tracing::info!(topic, partitions = kafka.partitions, "created topic"),
                        // Someone else created it meanwhile: the check above decides.
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => bail!("cannot create Kafka topic `{topic}`: {code}"),
                    }
                }
                created = true;
                continue;
            }
            // Created, but the metadata does not show it yet.
            Ok(None) => tracing::debug!(topic, "waiting for the new topic to appear in the metadata"),
            Err(error) => tracing::warn!(brokers = %kafka.brokers, "brokers not reachable yet: {error:#}"),
        }
        if Instant::now() >= deadline {
            bail!("Kafka topic `{topic}` not ready on {} after {REACH_TIMEOUT:?}", kafka.brokers);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clicks::event::{Country, parse_json};

    #[test]
    fn wire_value_is_json_that_parse_json_reads_back() {
        let event = ClickEvent {
            ad_id: 18_446_744_073_709_551_615,
            click_ts: 1_767_225_600_123,
            user_id: 42,
            ip: u32::from(std::net::Ipv4Addr::new(203, 0, 113, 7)),
            country: Country::parse(b"US").unwrap(),
        };
        let mut value = Vec::new();
        wire_event(&event, &mut value);
        assert_eq!(
            std::str::from_utf8(&value).unwrap(),
            r#"{"ad_id":18446744073709551615,"click_ts":1767225600123,"user_id":42,"ip":"203.0.113.7","country":"US"}"#
        );
        assert_eq!(parse_json(&value, value.len()), Ok(event));
        let mut key = Vec::new();
        wire_key(&event, &mut key);
        assert_eq!(key, b"18446744073709551615");
    }

    #[test]
    fn generated_events_round_trip_through_the_wire_format() {
        use crate::clicks::generate::{EventFormat, Generated, Generator, GeneratorOptions};
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            options: GeneratorOptions,
        }
        let options = Cli::parse_from(["test", "--late-fraction", "0.1"]).options;
        let mut generator = Generator::new(&options, 10_000, 1000.0, EventFormat::Jsonl).unwrap();
        let mut value = Vec::new();
        while let Some(Generated::Valid { event, .. }) = generator.next_item() {
            value.clear();
            wire_event(&event, &mut value);
            assert_eq!(parse_json(&value, value.len()), Ok(event), "{}", String::from_utf8_lossy(&value));
        }
    }

    #[test]
    fn producer_settings_are_idempotent_and_java_compatible() {
        let kafka = KafkaConfig { brokers: "127.0.0.1:1".into(), topic: "t".into(), partitions: 3 };
        let config = producer_config(&kafka);
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:1"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
    }
}
