//! `clickstay produce`: click events onto the Kafka topic, in the wire format of
//! [`crate::clicks::event`] (`wire_event`, `wire_key`).
//!
//! The events are either generated (the generator and options of `clickstay gen`, so a topic
//! can be compared with a file made from the same command line) or read from a CSV or JSON
//! Lines file. Malformed lines, generated or read, are sent as they are and without a key, so
//! that the streaming job's rejected output can be tested.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use crate::clicks::event::{self, CSV_HEADER, Format};
use crate::clicks::generate::{Generated, Generator, GeneratorOptions};
use crate::config::{KafkaConfig, WorkersConfig};
use crate::progress::{self, ProgressBar};
use crate::sources::kafka;

/// Simulated events per second of generated events when `--rate` is 0 (gen's default).
const UNPACED_EVENT_RATE: f64 = 10_000.0;

/// Options of `clickstay produce`.
#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// The config with the `[kafka]` section (brokers, topic, partitions);
    /// `CLICKSTAY_KAFKA_BROKERS` overrides the brokers.
    #[arg(long, default_value = "workers.toml")]
    pub config: PathBuf,
    /// How many generated events to send (malformed ones count).
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    pub events: Option<u64>,
    /// Send the lines of this file instead of generated events: CSV (with its header) or JSON
    /// Lines. Valid lines are sent in the wire format, malformed ones as they are.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Format of `--input`; by default from its extension (`.csv`, `.jsonl`).
    #[arg(long, value_enum, requires = "input")]
    pub format: Option<Format>,
    /// Messages per second; 0 sends as fast as possible. Generated events are also this far
    /// apart in event time (10,000 events per simulated second when 0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_send_rate)]
    pub rate: f64,
    #[command(flatten)]
    pub generator: GeneratorOptions,
}

fn parse_send_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        _ => crate::clicks::generate::parse_rate(text).map_err(|e| format!("{e} (or 0 for as fast as possible)")),
    }
}

pub fn run(args: &ProduceArgs) -> Result<()> {
    let config = WorkersConfig::load(&args.config)?;
    let kafka = config.kafka()?;
    kafka::ensure_topic(kafka)?;
    // On a terminal: the events sent and their rate (of a known total when generated).
    let bar = match args.events {
        Some(events) => progress::bar(events, "{bar:40} {pos}/{len} events sent, {rate}, eta {eta} {msg}"),
        None => progress::counter("{spinner} {pos} events sent, {rate} {msg}"),
    };
    let mut sender = Sender::new(kafka, args.rate, bar)?;
    let mut value = Vec::with_capacity(256);
    let mut key = Vec::with_capacity(24);
    let mut send_valid = |sender: &mut Sender, event: &event::ClickEvent| {
        value.clear();
        key.clear();
        event::wire_event(event, &mut value);
        event::wire_key(event, &mut key);
        sender.send(Some(&key), &value)
    };
    if let Some(path) = &args.input {
        let format = match args.format.or_else(|| Format::from_path(path)) {
            Some(format) => format,
            None => {
                bail!("cannot tell the format of {} from its name; pass --format csv or --format jsonl", path.display())
            }
        };
        event::check_header(path, format)?;
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::new();
        let mut first = true;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).with_context(|| format!("cannot read {}", path.display()))? == 0 {
                break;
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if std::mem::take(&mut first) && format == Format::Csv && text == CSV_HEADER.as_bytes() {
                continue;
            }
            match event::parse(format, text, text.len()) {
                Ok(event) => send_valid(&mut sender, &event)?,
                Err(_) => sender.send(None, text)?,
            }
        }
    } else {
        let events = args.events.context("--events or --input is required")?;
        let event_rate = if args.rate > 0.0 { args.rate } else { UNPACED_EVENT_RATE };
        let mut generator = Generator::new(&args.generator, events, event_rate, Format::Jsonl)?;
        while let Some(item) = generator.next_item() {
            match item {
                Generated::Valid { event, .. } => send_valid(&mut sender, &event)?,
                Generated::Malformed(line) => sender.send(None, line)?,
            }
        }
    }
    let (sent, seconds) = sender.finish()?;
    println!(
        "produce: sent {sent} messages to {} on {} in {seconds:.2} s ({:.0} messages/s)",
        kafka.topic,
        kafka.brokers,
        sent as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// Counts the delivery reports librdkafka hands back; the first failure is kept for the error.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().expect("poisoned").get_or_insert_with(|| error.to_string());
            }
        }
    }
}

impl Deliveries {
    /// An error if any message failed so far.
    fn check(&self) -> Result<()> {
        let failed = self.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = self.first_error.lock().expect("poisoned").clone().unwrap_or_default();
            bail!("{failed} messages could not be delivered; the first error: {first}");
        }
        Ok(())
    }
}

/// An idempotent producer that paces its sends and waits for every delivery.
struct Sender {
    producer: BaseProducer<Deliveries>,
    topic: String,
    /// Seconds between messages; 0 for no pacing.
    interval: f64,
    started: Instant,
    sent: u64,
    /// The events sent, on a terminal.
    progress: ProgressBar,
}

/// How long `finish` waits for the last deliveries: librdkafka's default `message.timeout.ms`
/// (300 s) and some slack, so every message is either delivered or reported failed by then.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(330);

impl Sender {
    fn new(kafka: &KafkaConfig, rate: f64, progress: ProgressBar) -> Result<Self> {
        let producer = producer_config(kafka)
            .create_with_context(Deliveries::default())
            .context("cannot create a Kafka producer")?;
        let interval = if rate > 0.0 { 1.0 / rate } else { 0.0 };
        Ok(Sender { producer, topic: kafka.topic.clone(), interval, started: Instant::now(), sent: 0, progress })
    }

    fn send(&mut self, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        if self.interval > 0.0 {
            let due = self.started + Duration::from_secs_f64(self.sent as f64 * self.interval);
            // Serve delivery reports while waiting (poll returns early when it served one).
            while let Some(wait) = due.checked_duration_since(Instant::now()).filter(|w| !w.is_zero()) {
                self.producer.poll(wait);
            }
        }
        loop {
            let mut record = BaseRecord::to(&self.topic).payload(value);
            if let Some(key) = key {
                record = record.key(key);
            }
            match self.producer.send(record) {
                Ok(()) => break,
                // librdkafka's queue is full: let it deliver, then try again.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.producer.poll(Duration::from_millis(5))
                }
                Err((error, _)) => return Err(error).context(format!("cannot send to Kafka topic `{}`", self.topic)),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(4096) {
            self.producer.poll(Duration::ZERO);
            self.producer.context().check()?;
            self.progress.set_position(self.sent);
        } else if self.interval > 0.0 {
            // Paced sends are few: show each.
            self.progress.set_position(self.sent);
        }
        Ok(())
    }

    /// Waits for every delivery; returns the messages sent and the seconds from the first send
    /// to the last delivery.
    fn finish(self) -> Result<(u64, f64)> {
        self.progress.set_position(self.sent);
        let deliveries = self.producer.context();
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        // Flushed a moment at a time, so that the deliveries still awaited are shown.
        while let Err(error) = self.producer.flush(Duration::from_millis(100)) {
            if !matches!(error, KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) || Instant::now() > deadline {
                return Err(error).with_context(|| {
                    format!("not every message to `{}` was delivered within {FLUSH_TIMEOUT:?}", self.topic)
                });
            }
            let delivered = deliveries.delivered.load(Ordering::Relaxed);
            self.progress.set_message(format!("({delivered} delivered, waiting for the rest)"));
        }
        self.progress.finish_and_clear();
        deliveries.check()?;
        let delivered = deliveries.delivered.load(Ordering::Relaxed);
        if delivered != self.sent {
            bail!("sent {} messages but only {delivered} were reported delivered", self.sent);
        }
        Ok((self.sent, self.started.elapsed().as_secs_f64()))
    }
}

/// The settings of a producer of click events: idempotent (a retried batch is not written
/// twice), keyed partitioning compatible with the Java client, and large batches for throughput.
pub fn producer_config(kafka: &KafkaConfig) -> rdkafka::ClientConfig {
    let mut config = kafka::client_config(kafka);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_settings_are_idempotent_and_java_compatible() {
        let kafka = KafkaConfig { brokers: "127.0.0.1:1".into(), topic: "t".into(), partitions: 3 };
        let config = producer_config(&kafka);
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:1"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
    }
}
