//! The streaming click job's metrics, recorded by worker 0 from every worker's round report (so
//! that process 0's `/metrics` shows the whole cluster: every partition, every worker), and by
//! the commit thread (`sinks::postgres`) for checkpoints. Names and meanings are listed in the
//! README ("Metrics"); see `crate::telemetry` for the recorder.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Gauge, counter, gauge};

use super::driver::RoundReport;

/// How often the gauges that need a clock or a look at the source are refreshed (workers send
/// their consumer lag this often too).
pub const GAUGES_EVERY: Duration = Duration::from_millis(500);

/// Describes the click job's metrics (their `# HELP` lines).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!("clickstay_clicks_events_read_total", "Records read from the source, by partition");
    describe_counter!("clickstay_clicks_events_accepted_total", "Valid events in time, counted into the panes");
    describe_counter!("clickstay_clicks_events_late_total", "Valid events later than the allowed lateness");
    describe_counter!("clickstay_clicks_events_rejected_total", "Records that are not valid events");
    describe_counter!("clickstay_clicks_worker_records_total", "Records read by each worker (skew)");
    describe_gauge!("clickstay_clicks_watermark_seconds", Unit::Seconds, "The job's event-time watermark");
    describe_gauge!("clickstay_clicks_watermark_lag_seconds", Unit::Seconds, "Wall-clock time minus the watermark");
    describe_gauge!("clickstay_kafka_consumer_lag", "Records behind the partition's end offset, by partition");
    describe_gauge!("clickstay_clicks_open_panes", "Panes not final yet in the partition with the most");
    describe_gauge!(
        "clickstay_clicks_buffered_bytes",
        Unit::Bytes,
        "Result rows and raw events waiting for the next checkpoint (the --max-buffered-bytes bound)"
    );
    describe_gauge!("clickstay_checkpoint_age_seconds", Unit::Seconds, "Time since the last committed checkpoint");
}

/// Worker 0's handles of the per-round metrics (looked up once: recording is then an atomic add).
pub struct RoundMetrics {
    read: BTreeMap<u32, Counter>,
    per_worker: Vec<Counter>,
    accepted: Counter,
    late: Counter,
    rejected: Counter,
    watermark: Gauge,
    watermark_lag: Gauge,
    open_panes: Gauge,
    lag: BTreeMap<u32, Gauge>,
    /// Records read through the previous round: the late and rejected counts of a round's
    /// reports are as of then, so accepted is counted one round behind (and never goes down).
    read_now: u64,
    gauges_at: Instant,
    /// The round's gauges were refreshed: the watermark's are next.
    gauges_due: bool,
}

impl Default for RoundMetrics {
    fn default() -> Self {
        RoundMetrics {
            read: BTreeMap::new(),
            per_worker: Vec::new(),
            accepted: counter!("clickstay_clicks_events_accepted_total"),
            late: counter!("clickstay_clicks_events_late_total"),
            rejected: counter!("clickstay_clicks_events_rejected_total"),
            watermark: gauge!("clickstay_clicks_watermark_seconds"),
            watermark_lag: gauge!("clickstay_clicks_watermark_lag_seconds"),
            open_panes: gauge!("clickstay_clicks_open_panes"),
            lag: BTreeMap::new(),
            read_now: 0,
            gauges_at: Instant::now() - GAUGES_EVERY,
            gauges_due: false,
        }
    }
}

impl RoundMetrics {
    /// Records a round's reports (every worker's).
    pub fn round(&mut self, reports: &[RoundReport]) {
        let (late, rejected) = reports.iter().fold((0, 0), |(l, r), report| (l + report.late, r + report.rejected));
        self.late.absolute(late);
        self.rejected.absolute(rejected);
        self.accepted.absolute(self.read_now.saturating_sub(late + rejected));
        for report in reports {
            if self.per_worker.len() <= report.worker {
                self.per_worker.extend(
                    (self.per_worker.len()..=report.worker)
                        .map(|w| counter!("clickstay_clicks_worker_records_total", "worker" => w.to_string())),
                );
            }
            for batch in &report.batches {
                self.read
                    .entry(batch.partition)
                    .or_insert_with(
                        || counter!("clickstay_clicks_events_read_total", "partition" => batch.partition.to_string()),
                    )
                    .increment(batch.records);
                self.per_worker[report.worker].increment(batch.records);
                self.read_now += batch.records;
            }
        }
        // Each worker sends its lag every so often, on its own clock.
        for report in reports {
            for (partition, lag) in &report.lag {
                self.lag
                    .entry(*partition)
                    .or_insert_with(|| gauge!("clickstay_kafka_consumer_lag", "partition" => partition.to_string()))
                    .set(*lag as f64);
            }
        }
        if self.gauges_at.elapsed() < GAUGES_EVERY {
            return;
        }
        self.gauges_at = Instant::now();
        self.gauges_due = true;
        self.open_panes.set(reports.iter().map(|r| r.open_panes).max().unwrap_or(0) as f64);
    }

    /// Records the job's watermark (event time, ms) after a round, every so often.
    pub fn watermark(&mut self, watermark_ms: u64) {
        if !std::mem::take(&mut self.gauges_due) {
            return;
        }
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.watermark.set(watermark_ms as f64 / 1000.0);
        self.watermark_lag.set(now_ms.saturating_sub(watermark_ms) as f64 / 1000.0);
    }
}

/// Worker 0's gauges of what waits for the next checkpoint, set every round.
pub struct CheckpointGauges {
    pub buffered_bytes: Gauge,
    pub checkpoint_age: Gauge,
}

impl Default for CheckpointGauges {
    fn default() -> Self {
        CheckpointGauges {
            buffered_bytes: gauge!("clickstay_clicks_buffered_bytes"),
            checkpoint_age: gauge!("clickstay_checkpoint_age_seconds"),
        }
    }
}
