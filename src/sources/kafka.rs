//! A Kafka topic: each message value is one record, positioned by its offset; and the Kafka
//! plumbing every clickstay client shares (client settings, the topic's partitions).
//!
//! Partition `p` is read by worker `p % workers`, assigned directly (no consumer group, no
//! offsets committed to Kafka): where to start comes from the job's own checkpoint in
//! Postgres. A round takes what the partitions have ready, up to a bound, after waiting a
//! few milliseconds at most, so an idle topic never stalls the rounds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::bindings as rdsys;
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{Batch, Line, LineBatch, Lines, Share, Source};
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

/// At most this many messages in a round, so that rounds (and checkpoints) keep coming.
const MAX_MESSAGES_PER_ROUND: usize = 65_536;

/// How long a round waits for the first message.
const ROUND_WAIT: Duration = Duration::from_millis(20);

/// Messages taken from librdkafka in one call.
const MESSAGES_PER_CALL: usize = 4096;

/// What [`KafkaSource::open`] needs.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    pub kafka: KafkaConfig,
    /// Longer message values are cut to this many bytes (their full length is kept).
    pub max_record_bytes: usize,
}

/// One worker's partitions of the topic.
pub struct KafkaSource {
    /// Declared before the consumer: the queue must be released first.
    queue: ConsumerQueue,
    /// Owns the client the queue belongs to; only read through the queue.
    _consumer: BaseConsumer,
    partitions: u32,
    max_record_bytes: usize,
    read: u64,
    /// Room for the messages of one `rd_kafka_consume_batch_queue` call.
    taken: Vec<*mut rdsys::rd_kafka_message_t>,
}

/// The consumer's message queue, read in batches (`rd_kafka_consume_batch_queue`). rdkafka's
/// `poll` returns one message per call, and the clock reads and locking around each call were
/// about a tenth of the job's time; a batch call pays them once per few thousand messages.
struct ConsumerQueue(*mut rdsys::rd_kafka_queue_t);

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: the queue came from rd_kafka_queue_get_consumer and is released once, here,
        // before the consumer that owns it (field order of `KafkaSource`).
        unsafe { rdsys::rd_kafka_queue_destroy(self.0) }
    }
}

impl Source for KafkaSource {
    type Options = KafkaOptions;
    type Records = Lines;
    /// A Kafka offset.
    type Position = u64;

    /// Assigns this reader's partitions, each from `resume[p]` (or the beginning).
    fn open(options: &KafkaOptions, share: Share, resume: &BTreeMap<u32, u64>) -> Result<Self> {
        let kafka = &options.kafka;
        let mut config = client_config(kafka);
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
            .set("queued.min.messages", "20000")
            // The prefetched messages of this consumer (one per worker), outside the job's
            // `--max-buffered-bytes`: librdkafka's default is 64 MiB.
            .set("queued.max.messages.kbytes", "8192");
        let consumer: BaseConsumer = config.create().context("cannot create the Kafka consumer")?;
        let mut assignment = TopicPartitionList::new();
        for partition in (0..kafka.partitions as u32).filter(|p| share.owns(*p)) {
            let offset = resume.get(&partition).map_or(Offset::Beginning, |o| Offset::Offset(*o as i64));
            assignment.add_partition_offset(&kafka.topic, partition as i32, offset)?;
        }
        consumer.assign(&assignment).context("cannot assign the topic's partitions")?;
        tracing::info!(worker = share.index, topic = %kafka.topic, partitions = assignment.count(), "reading");
        // SAFETY: the client pointer is valid while `consumer` lives; the queue is released
        // before it (see `ConsumerQueue`).
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        anyhow::ensure!(!queue.is_null(), "the Kafka consumer has no message queue");
        Ok(KafkaSource {
            queue: ConsumerQueue(queue),
            _consumer: consumer,
            partitions: kafka.partitions as u32,
            max_record_bytes: options.max_record_bytes,
            read: 0,
            taken: vec![std::ptr::null_mut(); MESSAGES_PER_CALL],
        })
    }

    fn partitions(&self) -> Vec<u32> {
        (0..self.partitions).collect()
    }

    fn read_round(&mut self) -> Result<Option<Vec<LineBatch>>> {
        let mut batches: BTreeMap<u32, LineBatch> = BTreeMap::new();
        let deadline = Instant::now() + ROUND_WAIT;
        let max_record_bytes = self.max_record_bytes;
        let mut add = |partition, offset, payload: &[u8]| {
            let batch = batches.entry(partition).or_insert_with(|| Batch {
                partition,
                sequence: offset,
                records: Lines::default(),
            });
            let lines = &mut batch.records;
            let start = lines.text.len();
            // A message is one record, newlines and all; an over-long one is kept cut.
            lines.text.extend_from_slice(&payload[..payload.len().min(max_record_bytes)]);
            lines.lines.push(Line { start, end: lines.text.len(), full_len: payload.len() });
            lines.positions.push(offset);
        };
        let mut taken = 0;
        while taken < MAX_MESSAGES_PER_ROUND {
            let mut count = self.consume_batch(Duration::ZERO, MAX_MESSAGES_PER_ROUND - taken, &mut add);
            if count == 0 && taken == 0 {
                // Nothing ready: wait for one message (a batch call would wait for a full batch).
                let wait = deadline.saturating_duration_since(Instant::now());
                count = self.consume_batch(wait, 1, &mut add);
            }
            if count == 0 {
                break;
            }
            taken += count;
        }
        self.read += taken as u64;
        Ok(Some(batches.into_values().collect()))
    }

    fn progress(&self) -> (u64, u64) {
        (self.read, 0)
    }
}

impl KafkaSource {
    /// Takes up to `limit` messages, waiting up to `wait` for as many, and hands each
    /// (partition, offset, payload) to `take`; how many came (errors included, which are logged).
    fn consume_batch(&mut self, wait: Duration, limit: usize, mut take: impl FnMut(u32, u64, &[u8])) -> usize {
        let size = limit.min(self.taken.len());
        let timeout_ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `taken` has room for `size` message pointers, which librdkafka fills.
        let count =
            unsafe { rdsys::rd_kafka_consume_batch_queue(self.queue.0, timeout_ms, self.taken.as_mut_ptr(), size) };
        let count = usize::try_from(count).unwrap_or(0); // -1: an error librdkafka also logs
        for &pointer in &self.taken[..count] {
            // SAFETY: librdkafka returned `count` valid messages; each is read, then destroyed once.
            let message = unsafe { &*pointer };
            if message.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let payload = if message.payload.is_null() {
                    &[][..]
                } else {
                    // SAFETY: payload points to `len` bytes owned by the message.
                    unsafe { std::slice::from_raw_parts(message.payload as *const u8, message.len) }
                };
                take(message.partition as u32, message.offset as u64, payload);
            } else {
                // librdkafka reconnects by itself; the round goes on with what it has.
                // SAFETY: errstr is a NUL-terminated string owned by the message.
                let error = unsafe { std::ffi::CStr::from_ptr(rdsys::rd_kafka_message_errstr(message)) };
                tracing::warn!("Kafka: {}", error.to_string_lossy());
            }
            // SAFETY: destroyed once; `message` is not used after this.
            unsafe { rdsys::rd_kafka_message_destroy(pointer) };
        }
        count
    }
}
