//! A Kafka topic: each message value is one record, positioned by its offset; and the Kafka
//! plumbing every clickstay client shares (client settings, the topic's partitions).
//!
//! Partition `p` is read by worker `p % workers`, assigned directly (no consumer group, no
//! offsets committed to Kafka): where to start comes from the job's own checkpoint in
//! Postgres. A round takes what the partitions have ready, up to a bound, after waiting a
//! few milliseconds at most, so an idle topic never stalls the rounds.
//!
//! Offsets never move silently: `auto.offset.reset` is `error`, and [`judge_offsets`] compares
//! a partition's earliest and latest offsets with what the job expects, at start
//! ([`check_offsets`], against the checkpoint) and after every fetch error of a partition.
//! Partitions the topic gains are found by reader 0 ([`watch_partitions`]) and read from
//! their beginning.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::bindings as rdsys;
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::{Batch, Line, LineBatch, Lines, Share, Source};
use crate::checkpoint::{GapKind, OffsetGap, Restore, RestoredPartition};
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

/// A consumer of assigned partitions: no group offsets, and no silent offset reset. An offset
/// the broker no longer has is an error (`auto.offset.reset = error`), which the job judges
/// ([`judge_offsets`]) instead of jumping to the earliest or latest offset unnoticed.
fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("group.id", "clickstay")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error");
    config
}

/// The number of partitions of `topic`, or `None` when the broker does not know the topic.
/// Asks for the metadata of all topics: asking for one topic by name may create it on brokers
/// that create topics on first use.
pub fn partition_count<C: ClientContext>(client: &Client<C>, topic: &str) -> Result<Option<i32>> {
    let metadata = client.fetch_metadata(None, METADATA_TIMEOUT).context("cannot fetch metadata from the brokers")?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    let count =
        found.filter(|t| t.error().is_none() && !t.partitions().is_empty()).map(|t| t.partitions().len() as i32);
    Ok(count.map(|count| count.min(visible_partitions_if_asked())))
}

/// Fault injection for the test of partitions added while a job runs (tansu cannot add
/// partitions to a topic): while the file `CLICKSTAY_VISIBLE_PARTITIONS_FILE` names exists, a
/// topic seems to have at most the number of partitions it holds. Read at every ask.
fn visible_partitions_if_asked() -> i32 {
    let Some(path) = std::env::var_os("CLICKSTAY_VISIBLE_PARTITIONS_FILE") else { return i32::MAX };
    std::fs::read_to_string(path).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(i32::MAX)
}

/// Creates the topic of `kafka` with `kafka.partitions` partitions if it is missing, and checks
/// that an existing one has at least that many. More is fine: topics grow, and the job reads
/// every partition it finds (see [`KafkaSource`]); fewer is a configuration error. Waits (with
/// backoff, up to a minute) for brokers that are still starting.
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
            Ok(Some(count)) if count >= kafka.partitions => {
                tracing::info!(topic, partitions = count, configured = kafka.partitions, created, "topic is ready");
                return Ok(());
            }
            Ok(Some(count)) => bail!(
                "Kafka topic `{topic}` has {count} partitions, fewer than [kafka] partitions = {}; \
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

/// The largest text buffer a reader keeps for its next rounds (see [`Source::recycle`]): a
/// round's worth of ordinary click messages (65,536 of ~130 bytes) fits several times over.
const MAX_SPARE_TEXT_BYTES: usize = 32 << 20;

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
    /// Owns the client the queue belongs to; messages are read through the queue.
    consumer: BaseConsumer,
    kafka: KafkaConfig,
    share: Share,
    /// The topic's partitions this reader knows of: `0..partitions`.
    partitions: u32,
    /// Reader 0: the partition count the metadata watcher last saw ([`watch_partitions`]).
    seen: Option<Arc<AtomicU32>>,
    /// The offset to read next in each partition this reader reads.
    next: BTreeMap<u32, u64>,
    /// (partition, error) of the error messages of the last calls, partition -1 for the client.
    fetch_errors: Vec<(i32, String)>,
    /// When each partition's offsets were last judged after a fetch error.
    checked: BTreeMap<u32, Instant>,
    max_record_bytes: usize,
    read: u64,
    /// Room for the messages of one `rd_kafka_consume_batch_queue` call.
    taken: Vec<*mut rdsys::rd_kafka_message_t>,
    /// Buffers of earlier rounds' batches, for the next ones ([`Source::recycle`]).
    spare: Vec<Lines>,
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
        let mut config = consumer_config(kafka);
        config
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
        // SAFETY: the client pointer is valid while `consumer` lives; the queue is released
        // before it (see `ConsumerQueue`).
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        anyhow::ensure!(!queue.is_null(), "the Kafka consumer has no message queue");
        // Every reader starts with the configured partitions and those it resumes; reader 0
        // watches the topic's metadata, and the job's driver adds what it finds beyond them on
        // every reader in the same round (see `Source::add_partitions`): its first round at
        // start, a few seconds after a topic grows while running.
        let count = resume.keys().map(|p| p + 1).fold(kafka.partitions as u32, u32::max);
        let seen = if share.index == 0 { Some(watch_partitions(kafka, count)?) } else { None };
        let mut source = KafkaSource {
            queue: ConsumerQueue(queue),
            consumer,
            kafka: kafka.clone(),
            share,
            partitions: 0,
            seen,
            next: BTreeMap::new(),
            fetch_errors: Vec::new(),
            checked: BTreeMap::new(),
            max_record_bytes: options.max_record_bytes,
            read: 0,
            taken: vec![std::ptr::null_mut(); MESSAGES_PER_CALL],
            spare: Vec::new(),
        };
        source.assign(0..count, resume)?;
        tracing::info!(worker = share.index, topic = %kafka.topic, partitions = count, "reading");
        Ok(source)
    }

    fn partitions(&self) -> Vec<u32> {
        (0..self.partitions).collect()
    }

    fn found_partitions(&self) -> Vec<u32> {
        let seen = self.seen.as_ref().map_or(0, |seen| seen.load(Ordering::Relaxed));
        (self.partitions..seen).collect()
    }

    /// New partitions are read from their beginning (offset 0 of a partition the topic just got).
    fn add_partitions(&mut self, partitions: &[u32]) -> Result<()> {
        let first = partitions.iter().copied().filter(|p| *p >= self.partitions);
        let (from, to) = (first.clone().min(), first.max());
        if let (Some(from), Some(to)) = (from, to) {
            self.assign(from..to + 1, &BTreeMap::new())?;
        }
        Ok(())
    }

    fn read_round(&mut self) -> Result<Option<Vec<LineBatch>>> {
        let mut batches: BTreeMap<u32, LineBatch> = BTreeMap::new();
        let deadline = Instant::now() + ROUND_WAIT;
        let max_record_bytes = self.max_record_bytes;
        let mut spare = std::mem::take(&mut self.spare);
        let mut add = |partition, offset, payload: &[u8]| {
            let batch = batches.entry(partition).or_insert_with(|| Batch {
                partition,
                sequence: offset,
                records: spare.pop().unwrap_or_default(),
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
        self.spare = spare;
        self.read += taken as u64;
        for (partition, batch) in &batches {
            if let Some(next) = batch.next_position() {
                self.next.insert(*partition, next);
            }
        }
        self.check_fetch_errors()?;
        Ok(Some(batches.into_values().collect()))
    }

    fn progress(&self) -> (u64, u64) {
        (self.read, 0)
    }

    /// Keeps as many batches' buffers as there are partitions to read, none that a round of
    /// very large messages grew beyond [`MAX_SPARE_TEXT_BYTES`] (those are freed, as before).
    fn recycle(&mut self, batches: Vec<LineBatch>) {
        let owned = (0..self.partitions).filter(|p| self.share.owns(*p)).count();
        for mut batch in batches {
            if self.spare.len() < owned && batch.records.text.capacity() <= MAX_SPARE_TEXT_BYTES {
                batch.records.clear();
                self.spare.push(batch.records);
            }
        }
    }

    /// From the end offsets librdkafka keeps from its last fetch responses (no request to the
    /// broker). A partition not fetched yet counts from its beginning. Never below 0: some
    /// brokers (tansu) report an end below the last offset they delivered.
    fn lag(&self) -> Vec<(u32, u64)> {
        let Ok(topic) = std::ffi::CString::new(self.kafka.topic.as_str()) else { return Vec::new() };
        let client = self.consumer.client().native_ptr();
        let mut lags = Vec::new();
        for partition in (0..self.partitions).filter(|p| self.share.owns(*p)) {
            let (mut low, mut high) = (-1i64, -1i64);
            // SAFETY: the client is alive while `self.consumer` is, the topic a C string; the
            // call only reads librdkafka's cached offsets into the two integers.
            let error = unsafe {
                rdsys::rd_kafka_get_watermark_offsets(client, topic.as_ptr(), partition as i32, &mut low, &mut high)
            };
            if error == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0 {
                let next = self.next.get(&partition).copied().unwrap_or(low.max(0) as u64);
                lags.push((partition, (high as u64).saturating_sub(next)));
            }
        }
        lags
    }
}

impl KafkaSource {
    /// Adds the partitions in `partitions` that this reader owns to its assignment, each from
    /// `resume[p]` or its beginning (offset 0 unless retention removed it), and learns of them
    /// all. Where a partition read from its beginning stands is known from its first record.
    fn assign(&mut self, partitions: std::ops::Range<u32>, resume: &BTreeMap<u32, u64>) -> Result<()> {
        let topic = self.kafka.topic.as_str();
        let mut assignment = TopicPartitionList::new();
        for partition in partitions.clone().filter(|p| self.share.owns(*p)) {
            let offset = match resume.get(&partition) {
                Some(offset) => {
                    self.next.insert(partition, *offset);
                    Offset::Offset(*offset as i64)
                }
                None => Offset::Beginning,
            };
            assignment.add_partition_offset(topic, partition as i32, offset)?;
        }
        if assignment.count() > 0 {
            self.consumer
                .incremental_assign(&assignment)
                .with_context(|| format!("cannot assign partitions {partitions:?} of Kafka topic `{topic}`"))?;
        }
        if self.partitions > 0 {
            tracing::info!(worker = self.share.index, topic, ?partitions, "reading new partitions from offset 0");
        }
        self.partitions = self.partitions.max(partitions.end);
        Ok(())
    }

    /// Judges the offsets of each partition that had a fetch error (at most once a second per
    /// partition, so a broker outage does not turn into a storm of requests): records gone
    /// from under the reader stop the job, as they would at start. The restart then sees them
    /// against the checkpoint and, with `--allow-offset-gap`, records them and reads on. Other
    /// errors are logged; librdkafka retries by itself.
    fn check_fetch_errors(&mut self) -> Result<()> {
        for (partition, error) in std::mem::take(&mut self.fetch_errors) {
            let topic = self.kafka.topic.as_str();
            tracing::warn!(topic, partition, "Kafka: {error}");
            let Some(&next) = u32::try_from(partition).ok().and_then(|p| self.next.get(&p)) else { continue };
            let partition = partition as u32;
            let now = Instant::now();
            if self.checked.get(&partition).is_some_and(|at| now - *at < Duration::from_secs(1)) {
                continue;
            }
            self.checked.insert(partition, now);
            let expected = Expected { read_from: next, committed_next: next };
            match watermarks(&self.kafka, &self.consumer, partition, expected) {
                Ok(found) => {
                    if let Some(gap) = judge_offsets(topic, partition, expected, found) {
                        bail!(
                            "{} (found after a fetch error: {error}); restart the job: with --allow-offset-gap \
                             the restart records the gap in source_gaps and reads on from offset {}",
                            describe(&gap, expected, found),
                            found.low
                        );
                    }
                }
                Err(check) => tracing::warn!(topic, partition, "cannot check the partition's offsets: {check:#}"),
            }
        }
        Ok(())
    }

    /// Takes up to `limit` messages, waiting up to `wait` for as many, and hands each
    /// (partition, offset, payload) to `take`; how many came (errors included, which are kept in
    /// `fetch_errors`).
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
                // Judged after the round's messages are in (`check_fetch_errors`).
                // SAFETY: errstr is a NUL-terminated string owned by the message.
                let error = unsafe { std::ffi::CStr::from_ptr(rdsys::rd_kafka_message_errstr(message)) };
                self.fetch_errors.push((message.partition, error.to_string_lossy().into_owned()));
            }
            // SAFETY: destroyed once; `message` is not used after this.
            unsafe { rdsys::rd_kafka_message_destroy(pointer) };
        }
        count
    }
}

/// How often reader 0 asks the brokers for the topic's partition count: off the rounds' path,
/// on a thread of its own, since a metadata request can take seconds on a struggling broker.
const PARTITION_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The topic's partition count now (never less than `count`), and a thread that keeps it up to
/// date in the returned cell until the cell is dropped.
fn watch_partitions(kafka: &KafkaConfig, count: u32) -> Result<Arc<AtomicU32>> {
    let client: BaseConsumer = client_config(kafka).create().context("cannot create a Kafka metadata client")?;
    let topic = kafka.topic.clone();
    let now = partition_count(client.client(), &topic)?.unwrap_or(0).max(0) as u32;
    let seen = Arc::new(AtomicU32::new(now.max(count)));
    let cell = Arc::downgrade(&seen);
    std::thread::Builder::new()
        .name("kafka-partitions".into())
        .spawn(move || {
            loop {
                std::thread::sleep(PARTITION_CHECK_EVERY);
                let Some(seen) = cell.upgrade() else { return };
                match partition_count(client.client(), &topic) {
                    Ok(Some(count)) => {
                        seen.fetch_max(count.max(0) as u32, Ordering::Relaxed);
                    }
                    Ok(None) => tracing::debug!(topic, "the topic is missing from the metadata"),
                    Err(error) => tracing::debug!(topic, "cannot watch the topic's partitions: {error:#}"),
                }
            }
        })
        .context("cannot start the partition watcher")?;
    Ok(seen)
}

/// What the job expects of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The offset the job reads next (at start: the checkpoint's restart offset).
    pub read_from: u64,
    /// Every offset below this one has been consumed (at start: committed) by the job.
    pub committed_next: u64,
}

/// A partition's earliest offset (`low`) and the offset after its last record (`high`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: u64,
    pub high: u64,
}

/// The one judge of a partition's offsets against what the job expects, at start and after
/// fetch errors. `None` when the job can read on as it expects; otherwise the offsets it will
/// never read as expected:
/// - **shrunk**: the latest offset is below what the job consumed, `[high, committed_next)`
///   is gone and the offsets below `committed_next` will be reused by new records (a recreated
///   topic, a broker that lost data). Judged first: it is the worse of the two.
/// - **gap**: the earliest offset is above where the job must read, `[read_from, low)` is
///   gone (retention, a broker that lost data).
pub fn judge_offsets(topic: &str, partition: u32, expected: Expected, found: Watermarks) -> Option<OffsetGap> {
    let gap =
        |kind, from_offset, to_offset| OffsetGap { topic: topic.to_string(), partition, kind, from_offset, to_offset };
    if found.high < expected.committed_next {
        Some(gap(GapKind::Shrunk, found.high, expected.committed_next))
    } else if found.low > expected.read_from {
        Some(gap(GapKind::Gap, expected.read_from, found.low))
    } else {
        None
    }
}

/// The error text of a judged gap: topic, partition, and the offsets expected, earliest, latest.
fn describe(gap: &OffsetGap, expected: Expected, found: Watermarks) -> String {
    let what = match gap.kind {
        GapKind::Gap => "records the job has not read are gone",
        GapKind::Shrunk => "records the job consumed are gone and their offsets will be reused",
    };
    format!(
        "Kafka topic `{}` partition {}: expected offset {} (consumed up to {}), but the earliest offset is {} and the \
         latest {}: {what} (offsets {}..{}, {})",
        gap.topic,
        gap.partition,
        expected.read_from,
        expected.committed_next,
        found.low,
        found.high,
        gap.from_offset,
        gap.to_offset,
        gap.kind.as_str()
    )
}

/// Where a partition stands after its gap is accepted: read on from the earliest offset. After
/// a gap, records below the committed offset are still the ones already output (a re-read);
/// after a shrink they are new records on reused offsets, so the committed offset moves back
/// with the restart and they count as new, in the partition's next incarnation (their rows and
/// archive files are told apart from the old ones by it).
fn carry_on(restored: RestoredPartition, kind: GapKind, low: u64) -> RestoredPartition {
    let (committed_next, incarnation) = match kind {
        GapKind::Gap => (restored.committed_next.max(low), restored.incarnation),
        GapKind::Shrunk => (low, restored.incarnation + 1),
    };
    RestoredPartition { committed_next, restart_offset: low, restart_max_ts: restored.restart_max_ts, incarnation }
}

/// How long [`holds_offset`] waits for the record.
const PROBE_WAIT: Duration = Duration::from_secs(3);

/// A partition's watermarks, checked where they say the job's records are gone. Some brokers
/// report the latest offset too low (tansu: the first offset of the newest batch, plus one),
/// which would look like a shrunk partition: there, the record before `committed_next` is
/// fetched, and if it exists the partition has not shrunk.
fn watermarks(kafka: &KafkaConfig, consumer: &BaseConsumer, partition: u32, expected: Expected) -> Result<Watermarks> {
    let topic = kafka.topic.as_str();
    let (low, high) = consumer
        .fetch_watermarks(topic, partition as i32, METADATA_TIMEOUT)
        .with_context(|| format!("cannot fetch the offsets of Kafka topic `{topic}` partition {partition}"))?;
    let mut found = Watermarks { low: low.max(0) as u64, high: high.max(0) as u64 };
    if found.high < expected.committed_next && holds_offset(kafka, partition, expected.committed_next - 1)? {
        found.high = expected.committed_next;
    }
    Ok(found)
}

/// Whether `partition` still holds a record at `offset`, fetched by a consumer of its own.
fn holds_offset(kafka: &KafkaConfig, partition: u32, offset: u64) -> Result<bool> {
    let consumer: BaseConsumer = consumer_config(kafka).create().context("cannot create a Kafka consumer")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&kafka.topic, partition as i32, Offset::Offset(offset as i64))?;
    consumer.assign(&assignment).context("cannot assign a partition to fetch one record")?;
    let deadline = Instant::now() + PROBE_WAIT;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => return Ok(message.offset() as u64 == offset),
            // With `auto.offset.reset = error`, an offset the broker does not have.
            Some(Err(_)) => return Ok(false),
            None => {}
        }
    }
    Ok(false)
}

/// At start: checks every partition of the checkpoint against the topic. A partition the topic
/// no longer has is an error naming both counts; a gap or a shrunk partition
/// ([`judge_offsets`]) is an error naming topic, partition and offsets, unless `allow_gap`
/// (`--allow-offset-gap`): then the partition reads on from its earliest offset, and the gaps
/// come back for the job to record (`source_gaps`). Returns the restore to start from.
pub fn check_offsets(kafka: &KafkaConfig, restore: &Restore, allow_gap: bool) -> Result<(Restore, Vec<OffsetGap>)> {
    let topic = kafka.topic.as_str();
    let consumer: BaseConsumer = consumer_config(kafka).create().context("cannot create a Kafka consumer")?;
    let count = partition_count(consumer.client(), topic)?
        .with_context(|| format!("Kafka topic `{topic}` does not exist on {}", kafka.brokers))?;
    if let Some(last) = restore.partitions.keys().last().filter(|p| **p >= count as u32) {
        bail!(
            "Kafka topic `{topic}` has {count} partitions but the job's checkpoint has {} (up to partition {last}): \
             partitions vanished (was the topic recreated with fewer?); use a new --job or topic",
            last + 1
        );
    }
    let mut restore = restore.clone();
    let mut gaps = Vec::new();
    let mut problems = Vec::new();
    for (partition, restored) in restore.partitions.iter_mut() {
        let expected = Expected { read_from: restored.restart_offset, committed_next: restored.committed_next };
        let found = watermarks(kafka, &consumer, *partition, expected)?;
        let Some(gap) = judge_offsets(topic, *partition, expected, found) else { continue };
        if allow_gap {
            tracing::warn!(
                topic,
                partition,
                from = found.low,
                "{}; reading on (--allow-offset-gap)",
                describe(&gap, expected, found)
            );
            *restored = carry_on(*restored, gap.kind, found.low);
            gaps.push(gap);
        } else {
            problems.push(describe(&gap, expected, found));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{}\nthe job stops rather than lose or skip records silently; restart with --allow-offset-gap to record \
             the gaps in source_gaps and read on from the earliest offsets, counting the records there as new",
            problems.join("\n")
        );
    }
    Ok((restore, gaps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(read_from: u64, committed_next: u64, low: u64, high: u64) -> Option<(GapKind, u64, u64)> {
        let gap = judge_offsets("t", 3, Expected { read_from, committed_next }, Watermarks { low, high })?;
        assert_eq!((gap.topic.as_str(), gap.partition), ("t", 3));
        Some((gap.kind, gap.from_offset, gap.to_offset))
    }

    #[test]
    fn offsets_as_expected() {
        assert_eq!(judge(0, 0, 0, 0), None, "a new partition");
        assert_eq!(judge(40, 100, 0, 100), None, "nothing new since the checkpoint");
        assert_eq!(judge(40, 100, 40, 250), None, "retention up to the restart offset");
        assert_eq!(judge(100, 100, 0, 100), None, "while running, at the end");
    }

    #[test]
    fn a_gap_is_what_the_job_never_read() {
        assert_eq!(judge(40, 100, 41, 250), Some((GapKind::Gap, 40, 41)), "retention past the restart offset");
        assert_eq!(judge(40, 100, 180, 250), Some((GapKind::Gap, 40, 180)), "past the committed offset too");
        assert_eq!(judge(100, 100, 180, 250), Some((GapKind::Gap, 100, 180)), "while running");
    }

    #[test]
    fn a_shrunk_partition_lost_what_the_job_consumed() {
        assert_eq!(judge(40, 100, 0, 99), Some((GapKind::Shrunk, 99, 100)));
        assert_eq!(judge(40, 100, 0, 0), Some((GapKind::Shrunk, 0, 100)), "recreated, empty");
        assert_eq!(judge(40, 100, 50, 60), Some((GapKind::Shrunk, 60, 100)), "shrunk beats gap");
        assert_eq!(judge(100, 100, 0, 30), Some((GapKind::Shrunk, 30, 100)), "while running");
    }

    #[test]
    fn reading_on_after_a_gap_keeps_the_re_read_and_after_a_shrink_counts_anew() {
        let at = |committed_next, restart_offset, incarnation| RestoredPartition {
            committed_next,
            restart_offset,
            restart_max_ts: Some(7),
            incarnation,
        };
        let restored = at(100, 40, 1);
        assert_eq!(carry_on(restored, GapKind::Gap, 60), at(100, 60, 1));
        assert_eq!(carry_on(restored, GapKind::Gap, 180), at(180, 180, 1), "beyond the committed offset");
        assert_eq!(carry_on(restored, GapKind::Shrunk, 0), at(0, 0, 2), "shrunk: the next incarnation");
    }

    #[test]
    fn the_message_names_topic_partition_and_offsets() {
        let (expected, found) = (Expected { read_from: 40, committed_next: 100 }, Watermarks { low: 0, high: 30 });
        let gap = judge_offsets("clicks", 3, expected, found).unwrap();
        let text = describe(&gap, expected, found);
        for part in [
            "`clicks`",
            "partition 3",
            "expected offset 40",
            "consumed up to 100",
            "earliest offset is 0",
            "latest 30",
            "30..100",
            "shrunk",
        ] {
            assert!(text.contains(part), "{part} missing in: {text}");
        }
    }
}
