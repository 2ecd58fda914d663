//! A Kafka topic of click events (JSON values, one event per message; see `crate::kafka`).
//!
//! Partition `p` is read by worker `p % workers`, assigned directly (no consumer group, no
//! offsets committed to Kafka): where to start comes from the job's own checkpoint in
//! Postgres. A round takes what the partitions have ready, up to a bound, after waiting a
//! few milliseconds at most, so an idle topic never stalls the rounds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{Batch, Line, Source};
use crate::clicks::event::{Format, MAX_LINE_BYTES};
use crate::config::KafkaConfig;

/// At most this many messages in a round, so that rounds (and checkpoints) keep coming.
const MAX_MESSAGES_PER_ROUND: usize = 65_536;

/// How long a round waits for the first message.
const ROUND_WAIT: Duration = Duration::from_millis(20);

/// One worker's partitions of the topic.
pub struct KafkaSource {
    consumer: BaseConsumer,
    partitions: u32,
    read: u64,
}

impl KafkaSource {
    /// Assigns this worker's partitions, each from `start[p]` (or the beginning).
    pub fn open(kafka: &KafkaConfig, worker: usize, workers: usize, start: &BTreeMap<u32, u64>) -> Result<Self> {
        let mut config = crate::kafka::client_config(kafka);
        config
            .set("group.id", "clickstay")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            // librdkafka stops fetching a partition for `fetch.queue.backoff.ms` (1 s by
            // default) once its local queue holds `queued.min.messages`. The job drains that
            // many in a fraction of a second and then sat idle for the rest of the pause
            // (its workers were busy a quarter of the time): fetch again soon, keep less queued.
            .set("fetch.queue.backoff.ms", "10")
            .set("queued.min.messages", "20000");
        let consumer: BaseConsumer = config.create().context("cannot create the Kafka consumer")?;
        let mut assignment = TopicPartitionList::new();
        for partition in (0..kafka.partitions as u32).filter(|p| *p as usize % workers == worker) {
            let offset = start.get(&partition).map_or(Offset::Beginning, |o| Offset::Offset(*o as i64));
            assignment.add_partition_offset(&kafka.topic, partition as i32, offset)?;
        }
        consumer.assign(&assignment).context("cannot assign the topic's partitions")?;
        tracing::info!(worker, topic = %kafka.topic, partitions = assignment.count(), "reading");
        Ok(KafkaSource { consumer, partitions: kafka.partitions as u32, read: 0 })
    }
}

impl Source for KafkaSource {
    fn partitions(&self) -> Vec<u32> {
        (0..self.partitions).collect()
    }

    fn format(&self) -> Format {
        Format::Jsonl
    }

    fn read_round(&mut self) -> Result<Option<Vec<Batch>>> {
        let mut batches: BTreeMap<u32, Batch> = BTreeMap::new();
        let deadline = Instant::now() + ROUND_WAIT;
        let mut taken = 0;
        while taken < MAX_MESSAGES_PER_ROUND {
            // Wait for the first message; after that take only what is already there.
            let wait = if taken == 0 { deadline.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
            let Some(message) = self.consumer.poll(wait) else { break };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    // librdkafka reconnects by itself; the round goes on with what it has.
                    tracing::warn!("Kafka: {error}");
                    break;
                }
            };
            let payload = message.payload().unwrap_or_default();
            let partition = message.partition() as u32;
            let batch = batches.entry(partition).or_insert_with(|| Batch {
                partition,
                sequence: message.offset() as u64,
                ..Default::default()
            });
            let start = batch.text.len();
            // A message is one record, newlines and all; an over-long one is kept cut.
            batch.text.extend_from_slice(&payload[..payload.len().min(MAX_LINE_BYTES)]);
            batch.lines.push(Line { start, end: batch.text.len(), full_len: payload.len() });
            batch.positions.push(message.offset() as u64);
            taken += 1;
        }
        self.read += taken as u64;
        Ok(Some(batches.into_values().collect()))
    }

    fn progress(&self) -> (u64, u64) {
        (self.read, 0)
    }
}
