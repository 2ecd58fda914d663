//! `clickstay produce` against a real broker (tansu, see `common/broker.rs`): every event
//! arrives once, in the wire format, keyed and partitioned like the Java client does, and
//! malformed input arrives untouched.

#[path = "common/broker.rs"]
mod broker;
#[path = "common/scripts.rs"]
mod scripts;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use clickstay::clicks::event::parse_json;
use clickstay::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_clickstay");

fn produce(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("produce").arg("--config").arg(config).args(args).output().expect("run clickstay produce")
}

fn produce_ok(config: &Path, args: &[&str]) -> String {
    let output = produce(config, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "produce failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// One message read back.
#[derive(Debug)]
struct Received {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

/// Reads `expected` messages of the topic from offset 0 of every partition, in offset order per
/// partition; fails if they do not all arrive within a minute.
fn read_all(kafka: &KafkaConfig, expected: usize) -> Vec<Received> {
    let consumer: BaseConsumer = clickstay::sources::kafka::client_config(kafka)
        .set("group.id", "clickstay-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.partitions {
        assignment.add_partition_offset(&kafka.topic, partition, Offset::Offset(0)).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = Vec::with_capacity(expected);
    while received.len() < expected {
        assert!(Instant::now() < deadline, "only {} of {expected} messages arrived", received.len());
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consumer error");
            received.push(Received {
                partition: message.partition(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    // Nothing more than expected arrives.
    let extra = consumer.poll(Duration::from_millis(500));
    assert!(extra.is_none(), "a message beyond the {expected} expected: {:?}", extra.map(|m| m.map(|m| m.offset())));
    received
}

/// The partition the Java client's default partitioner picks for `key` (murmur2, positive, mod n).
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().unwrap());
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, &b) in rest.iter().enumerate() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions as u32) as i32
}

#[test]
fn java_partitioner_reference_values() {
    // Values of org.apache.kafka.common.utils.Utils.murmur2 from Kafka's own tests.
    assert_eq!(java_partition(b"21", i32::MAX), (-973932308i32 as u32 & 0x7fff_ffff) as i32 % i32::MAX);
    assert_eq!(java_partition(b"foobar", i32::MAX), (-790332482i32 as u32 & 0x7fff_ffff) as i32 % i32::MAX);
    assert_eq!(
        java_partition(b"a-little-bit-long-string", i32::MAX),
        (-985981536i32 as u32 & 0x7fff_ffff) as i32 % i32::MAX
    );
}

#[test]
fn generated_events_arrive_once_in_the_wire_format_keyed_and_partitioned_by_ad() {
    const EVENTS: u64 = 20_000;
    let dir = TempDir::new().unwrap();
    let kafka = broker::kafka_config(&broker::fresh_topic("produce-gen"), 4);
    let config = broker::workers_toml(dir.path(), &kafka);
    let options = ["--seed", "5", "--ads", "300", "--malformed-fraction", "0.01"];
    let summary = produce_ok(&config, &[&["--events", &EVENTS.to_string()][..], &options].concat());
    assert!(summary.contains(&format!("sent {EVENTS} messages")), "{summary}");

    let (count, seconds) = broker::bare_consume(&kafka, EVENTS, Duration::from_secs(60)).unwrap();
    assert_eq!(count, EVENTS);
    assert!(seconds > 0.0);

    let received = read_all(&kafka, EVENTS as usize);
    // The same events as `gen` writes with the same options, malformed lines included.
    let file = dir.path().join("events.jsonl");
    let generated = Command::new(BIN)
        .args(["gen", "--events", &EVENTS.to_string(), "--out"])
        .arg(&file)
        .args(options)
        .output()
        .unwrap();
    assert!(generated.status.success());
    let mut expected: Vec<Vec<u8>> = std::fs::read(&file).unwrap().split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    expected.pop();
    let mut values: Vec<Vec<u8>> = received.iter().map(|m| m.value.clone()).collect();
    expected.sort();
    values.sort();
    assert!(values == expected, "the topic does not hold the events `gen` writes");

    let mut partition_of_ad: HashMap<u64, i32> = HashMap::new();
    let mut malformed = 0;
    for message in &received {
        match parse_json(&message.value, message.value.len()) {
            Ok(event) => {
                let key = message.key.as_deref().expect("valid events have a key");
                assert_eq!(key, event.ad_id.to_string().as_bytes());
                assert_eq!(message.partition, java_partition(key, kafka.partitions), "ad {}", event.ad_id);
                let first = *partition_of_ad.entry(event.ad_id).or_insert(message.partition);
                assert_eq!(first, message.partition, "ad {} is in two partitions", event.ad_id);
            }
            Err(_) => {
                assert_eq!(message.key, None, "malformed lines have no key");
                malformed += 1;
            }
        }
    }
    assert!((100..=300).contains(&malformed), "{malformed} malformed of {EVENTS}");
    let used: BTreeMap<i32, usize> = partition_of_ad.values().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(*p).or_default() += 1;
        m
    });
    assert_eq!(used.len(), 4, "300 ads use every partition: {used:?}");
}

#[test]
fn file_input_sends_valid_lines_in_the_wire_format_and_malformed_lines_raw() {
    let dir = TempDir::new().unwrap();
    let kafka = broker::kafka_config(&broker::fresh_topic("produce-file"), 2);
    let config = broker::workers_toml(dir.path(), &kafka);
    let jsonl = dir.path().join("events.jsonl");
    let malformed_json = [
        r#"{"ad_id":7,"click_ts":1767225600000,"user_id":1,"ip":"10.0.0.1","country":"US""#,
        r#"{"ad_id":"7","click_ts":1767225600000,"user_id":1,"ip":"10.0.0.1","country":"US"}"#,
        r#"{"ad_id":7,"click_ts":1767225600000,"user_id":1,"ip":"10.0.0.1","country":"XX"}"#,
        "not json at all",
        "",
    ];
    let valid_json = r#"{"user_id":1, "ad_id":7,"click_ts":1767225600000,"ip":"10.0.0.1","country":"US","extra":true}"#;
    let text = format!("{valid_json}\n{}\n", malformed_json.join("\n"));
    std::fs::write(&jsonl, text).unwrap();
    produce_ok(&config, &["--input", jsonl.to_str().unwrap()]);

    let csv = dir.path().join("events.csv");
    std::fs::write(
        &csv,
        "ad_id,click_ts,user_id,ip,country\r\n8,1767225600001,2,10.0.0.2,DE\r\n8,-5,2,10.0.0.2,DE\r\n",
    )
    .unwrap();
    produce_ok(&config, &["--input", csv.to_str().unwrap()]);

    let received = read_all(&kafka, 1 + malformed_json.len() + 2);
    let keyed: Vec<(&[u8], &[u8])> =
        received.iter().filter_map(|m| Some((m.key.as_deref()?, m.value.as_slice()))).collect();
    let mut keyed = keyed;
    keyed.sort();
    assert_eq!(
        keyed,
        [
            (&b"7"[..], &br#"{"ad_id":7,"click_ts":1767225600000,"user_id":1,"ip":"10.0.0.1","country":"US"}"#[..]),
            (&b"8"[..], &br#"{"ad_id":8,"click_ts":1767225600001,"user_id":2,"ip":"10.0.0.2","country":"DE"}"#[..]),
        ]
    );
    let mut raw: Vec<&[u8]> = received.iter().filter(|m| m.key.is_none()).map(|m| m.value.as_slice()).collect();
    raw.sort();
    let mut expected: Vec<&[u8]> = malformed_json.iter().map(|s| s.as_bytes()).collect();
    expected.push(b"8,-5,2,10.0.0.2,DE");
    expected.sort();
    assert_eq!(raw, expected);
}

#[test]
fn an_existing_topic_with_another_partition_count_is_an_error_naming_both() {
    let dir = TempDir::new().unwrap();
    let topic = broker::fresh_topic("produce-partitions");
    clickstay::sources::kafka::ensure_topic(&broker::kafka_config(&topic, 3)).unwrap();
    let config = broker::workers_toml(dir.path(), &broker::kafka_config(&topic, 5));
    let output = produce(&config, &["--events", "10"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&topic) && stderr.contains("has 3 partitions") && stderr.contains("partitions = 5"),
        "{stderr}"
    );
}

/// Throughput of `produce` and of a bare consumer on this broker; prints the figures.
/// `cargo test --release --test kafka_produce -- --ignored --nocapture throughput`
#[test]
#[ignore = "a measurement, not a check: run it by hand"]
fn throughput() {
    const EVENTS: u64 = 2_000_000;
    let dir = TempDir::new().unwrap();
    let kafka = broker::kafka_config(&broker::fresh_topic("throughput"), 8);
    let config = broker::workers_toml(dir.path(), &kafka);
    println!("{}", produce_ok(&config, &["--events", &EVENTS.to_string()]).trim());
    let (count, seconds) = broker::bare_consume(&kafka, EVENTS, Duration::from_secs(120)).unwrap();
    println!("bare consume: {count} messages in {seconds:.2} s ({:.0} messages/s)", count as f64 / seconds);
}

/// The job's reader (`KafkaSource`) over many rounds, handing every round's batches back for
/// reuse as the job does: each message arrives once, in offset order, with its own text (a
/// reused buffer must start empty).
#[test]
fn the_job_reader_reuses_its_buffers_and_delivers_every_message_once() {
    use clickstay::sources::kafka::{KafkaOptions, KafkaSource};
    use clickstay::sources::{Share, Source};
    const EVENTS: u64 = 300_000;
    let dir = TempDir::new().unwrap();
    let kafka = broker::kafka_config(&broker::fresh_topic("reader-rounds"), 2);
    let config = broker::workers_toml(dir.path(), &kafka);
    produce_ok(&config, &["--events", &EVENTS.to_string(), "--seed", "9"]);
    // What a plain consumer reads, by (partition, offset): offsets count from 0 per partition.
    let mut expected: HashMap<(u32, u64), Vec<u8>> = HashMap::new();
    let mut counted: BTreeMap<u32, u64> = BTreeMap::new();
    for message in read_all(&kafka, EVENTS as usize) {
        let offset = counted.entry(message.partition as u32).or_insert(0);
        expected.insert((message.partition as u32, *offset), message.value);
        *offset += 1;
    }

    let options = KafkaOptions { kafka: kafka.clone(), max_record_bytes: 1 << 16 };
    let mut source = KafkaSource::open(&options, Share::new(0, 1), &BTreeMap::new()).unwrap();
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let (mut read, mut rounds) = (0u64, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while read < EVENTS {
        assert!(Instant::now() < deadline, "only {read} of {EVENTS} messages in {rounds} rounds");
        let batches = source.read_round().unwrap().expect("a topic never ends");
        for batch in &batches {
            let records = &batch.records;
            assert_eq!(records.lines.len(), records.positions.len());
            for (line, offset) in records.lines.iter().zip(&records.positions) {
                let at = next.entry(batch.partition).or_insert(0);
                assert_eq!(*offset, *at, "partition {}: offsets out of order", batch.partition);
                *at += 1;
                assert_eq!(batch.text_of(line), &expected[&(batch.partition, *offset)][..]);
                read += 1;
            }
        }
        rounds += 1;
        source.recycle(batches);
    }
    assert_eq!(read, EVENTS);
    assert!(rounds > 4, "all {EVENTS} messages came in {rounds} rounds: the reuse was not exercised");
}
