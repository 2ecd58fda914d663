//! The room availability view: a differential dataflow that keeps, per (hotel, room type,
//! night), the rooms still sellable, fed by change data capture from every hotel shard, and
//! answers questions (availability, search, "is this booking already sold out?") that enter it
//! as records. See `CONTEXT.md` in this folder.
//!
//! [`RoomsView::start`] starts the timely workers (threads of this process) and one CDC source
//! per shard, each read on a thread of its own; shard `s` feeds worker `s % workers`, and the arrangements spread hotels over all
//! workers by hash. [`RoomsView::ask`] waits (bounded) until the view has reached the commit
//! positions a caller asks for, then puts the question into the dataflow and awaits its answer.

pub mod answers;
pub mod committer;
pub mod dataflow;
pub mod rows;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{oneshot, watch};
use tracing::{error, info};

use crate::cluster::{self, Workers};
use crate::rooms::shards::redact_text;
use crate::rooms::spec::{RoomsSpec, VIEW_TABLES};
use crate::sources::postgres_cdc::{CdcOptions, CdcSource, Lsn, format_lsn};
use crate::sources::{Batch, Share, Source};
use answers::{Ask, Found};
use dataflow::{Feed, Submitted, WorkerChannels};
use rows::ViewRow;

/// How far the view has applied one shard's changes: every commit before `lsn`, inserted at
/// logical time `time` or earlier, from the shard's change stream number `generation` (0 at
/// start, one more at each rebuild). `lsn == 0`: the snapshot is not loaded yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub lsn: Lsn,
    pub time: u64,
    pub generation: u64,
}

/// Why the view could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("the view of shard {shard} has reached {} and not {} within {waited:?}", format_lsn(*.reached), format_lsn(*.wanted))]
    Behind { shard: u32, wanted: Lsn, reached: Lsn, waited: Duration },
    #[error("the view has stopped: {0}")]
    Failed(String),
    #[error("the view is inconsistent ({0}); restart it to rebuild it")]
    Inconsistent(String),
    /// The shard's change stream broke and its part of the view is being rebuilt: ask the
    /// database meanwhile.
    #[error("the view of shard {shard} is being rebuilt")]
    Rebuilding { shard: u32 },
}

/// What the workers and the handle share.
pub struct Shared {
    clock: Instant,
    stopped: AtomicBool,
    applied: Vec<watch::Sender<Applied>>,
    /// Per shard, the change stream feeding the view now (one more after each break).
    generations: Vec<AtomicU64>,
    /// Per shard, the positions reached and the times they went in at (recent ones only).
    positions: Vec<Mutex<VecDeque<(u64, Lsn)>>>,
    /// The worker threads, to wake them when a question or a change arrives.
    workers: Mutex<Vec<Option<std::thread::Thread>>>,
    /// Questions in the dataflow now: while there are any, workers turn every tick.
    questions_in_flight: AtomicU64,
}

/// One tick of the view's logical clock. Questions arriving within a tick share a time and are
/// joined as one batch; a shorter tick answers sooner, a longer one batches more.
pub const TICK: Duration = Duration::from_micros(200);

/// How long a worker parks while no question is waiting: the clock then only has to move for
/// compaction, and an arriving question wakes the workers.
pub const IDLE_PARK: Duration = Duration::from_millis(100);

/// How long the history of positions reaches back, in ticks (60 s): longer than any question waits.
const POSITION_HISTORY_TICKS: u64 = 60_000_000 / TICK.as_micros() as u64;

impl Shared {
    /// The view's logical clock: [`TICK`]s since it started (never 0).
    pub fn now(&self) -> u64 {
        (self.clock.elapsed().as_micros() / TICK.as_micros()) as u64 + 1
    }

    /// Records the thread of worker `index`.
    pub fn register_worker(&self, index: usize, thread: std::thread::Thread) {
        let mut workers = self.workers.lock().expect("workers lock");
        if workers.len() <= index {
            workers.resize(index + 1, None);
        }
        workers[index] = Some(thread);
    }

    /// How long a worker may park: a tick while questions wait, longer otherwise.
    pub fn park_time(&self) -> Duration {
        if self.questions_in_flight.load(Ordering::Relaxed) > 0 { TICK } else { IDLE_PARK }
    }

    /// Wakes every worker: the frontier moves only when all of them advance their inputs.
    pub fn wake_workers(&self) {
        for thread in self.workers.lock().expect("workers lock").iter().flatten() {
            thread.unpark();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Records that `shard`'s changes up to `lsn` (of change stream `generation`) went into the
    /// dataflow at `time`.
    pub fn publish(&self, shard: u32, lsn: Lsn, time: u64, generation: u64) {
        let mut history = self.positions[shard as usize].lock().expect("positions lock");
        history.push_back((time, lsn));
        while history.len() > 1 && history[1].0 + POSITION_HISTORY_TICKS < time {
            history.pop_front();
        }
        drop(history);
        self.applied[shard as usize].send_replace(Applied { lsn, time, generation });
    }

    /// The position of `shard` that an answer at logical time `at` reflects: the last one that
    /// went in at `at` or before (0: none yet).
    pub fn position_at(&self, shard: u32, at: u64) -> Lsn {
        let history = self.positions[shard as usize].lock().expect("positions lock");
        history.iter().rev().find(|(time, _)| *time <= at).map_or(0, |(_, lsn)| *lsn)
    }
}

/// A running view; cheap to clone.
#[derive(Clone)]
pub struct RoomsView {
    inner: Arc<Inner>,
}

struct Inner {
    spec: RoomsSpec,
    shared: Arc<Shared>,
    questions: Vec<Sender<Submitted>>,
    next_id: AtomicU64,
    /// Set when the view's workers end for good (nothing else fails the whole view).
    failure: watch::Sender<Option<String>>,
}

impl RoomsView {
    /// Starts `workers` worker threads and a CDC reader per shard URL (on the current tokio
    /// runtime). Returns at once; questions wait until the snapshots are loaded.
    pub fn start(spec: RoomsSpec, shard_urls: &[String], workers: usize) -> Result<Self> {
        let workers = workers.max(1);
        let shared = Arc::new(Shared {
            clock: Instant::now(),
            stopped: AtomicBool::new(false),
            applied: shard_urls.iter().map(|_| watch::Sender::new(Applied::default())).collect(),
            generations: shard_urls.iter().map(|_| AtomicU64::new(0)).collect(),
            positions: shard_urls.iter().map(|_| Mutex::default()).collect(),
            workers: Mutex::new(Vec::new()),
            questions_in_flight: AtomicU64::new(0),
        });
        let (mut feeds, mut questions, mut channels) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..workers {
            let (feed, feed_rx) = mpsc::channel();
            let (question, question_rx) = mpsc::channel();
            feeds.push(feed);
            questions.push(question);
            channels.push(Some(WorkerChannels { feed: feed_rx, questions: question_rx }));
        }
        let channels = Arc::new(Mutex::new(channels));

        let worker_shared = shared.clone();
        let guards = cluster::start_workers(&Workers::Threads(workers), move |worker| {
            let mine = channels.lock().expect("channels lock")[worker.index()].take().expect("one worker per index");
            dataflow::run(worker, mine, worker_shared.clone());
        })?;
        std::thread::Builder::new().name("rooms-view".into()).spawn(move || drop(guards.join()))?;

        for (shard, url) in shard_urls.iter().enumerate() {
            let feed = feeds[shard % workers].clone();
            let options = CdcOptions {
                url: url.clone(),
                slot_prefix: spec.slot_prefix.clone(),
                tables: VIEW_TABLES.iter().map(|t| t.to_string()).collect(),
                read_timeout: spec.read_timeout,
            };
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("rooms-cdc-{shard}"))
                .spawn(move || follow(shard as u32, &options, &feed, &shared))?;
        }
        info!(workers, shards = shard_urls.len(), spec = %spec.path.display(), "room availability view starting");
        let failure = watch::Sender::new(None);
        Ok(Self { inner: Arc::new(Inner { spec, shared, questions, next_id: AtomicU64::new(0), failure }) })
    }

    /// The change stream of `shard` feeding the view now (0 at start, one more per break).
    fn generation(&self, shard: u32) -> u64 {
        self.inner.shared.generations[shard as usize].load(Ordering::SeqCst)
    }

    /// Whether the view serves `shard` now (false while its part is rebuilt).
    pub fn serves(&self, shard: u32) -> bool {
        let generation = self.generation(shard);
        let applied = *self.inner.shared.applied[shard as usize].borrow();
        applied.generation == generation && applied.lsn > 0
    }

    /// How many shards feed the view.
    pub fn shards(&self) -> usize {
        self.inner.shared.applied.len()
    }

    /// How far the view has applied each shard, now.
    pub fn applied(&self) -> Vec<Applied> {
        self.inner.shared.applied.iter().map(|applied| *applied.borrow()).collect()
    }

    /// Seconds since the view reached `applied`.
    fn seconds_since(&self, applied: Applied) -> f64 {
        let ticks = self.inner.shared.now().saturating_sub(applied.time);
        (ticks as u128 * TICK.as_micros()) as f64 / 1e6
    }

    /// How far the view is behind `shard` whose WAL is at `current` now: in bytes, and in
    /// seconds since it last applied anything (0 when it is not behind).
    pub fn lag(&self, shard: usize, current: Lsn) -> (u64, f64) {
        let applied = *self.inner.shared.applied[shard].borrow();
        let bytes = current.saturating_sub(applied.lsn);
        (bytes, if bytes > 0 { self.seconds_since(applied) } else { 0.0 })
    }

    /// Waits until the view has applied `shard` up to `lsn` (at least its snapshot), at most
    /// until `deadline`.
    /// A shard whose change stream broke fails at once with [`ViewError::Rebuilding`].
    pub async fn wait_for(&self, shard: u32, lsn: Lsn, deadline: Instant) -> Result<Applied, ViewError> {
        let mut applied = self.inner.shared.applied[shard as usize].subscribe();
        let generation = self.generation(shard);
        if generation > 0 && applied.borrow().generation != generation {
            return Err(ViewError::Rebuilding { shard });
        }
        let wanted = lsn.max(1);
        let current = |a: &Applied| a.generation == generation && a.lsn >= wanted;
        let reached = tokio::time::timeout_at(deadline.into(), applied.wait_for(current)).await;
        let reached = reached.map(|waited| waited.map(|applied| *applied));
        match reached {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(_)) => Err(ViewError::Failed("the view's workers stopped".into())),
            Err(_) => {
                if let Some(failure) = self.inner.failure.borrow().clone() {
                    return Err(ViewError::Failed(failure));
                }
                if self.generation(shard) != generation {
                    return Err(ViewError::Rebuilding { shard });
                }
                Err(ViewError::Behind {
                    shard,
                    wanted,
                    reached: applied.borrow().lsn,
                    waited: self.inner.spec.max_wait,
                })
            }
        }
    }

    /// Answers `ask` from the view, once it reflects at least `min_lsn` of each shard named
    /// there (and every shard in `ask.shards` has loaded its snapshot).
    pub async fn ask(&self, ask: Ask, min_lsn: &BTreeMap<u32, Lsn>) -> Result<Found, ViewError> {
        metrics::counter!("clickstay_rooms_view_questions_total").increment(1);
        if let Some(failure) = self.inner.failure.borrow().clone() {
            return Err(ViewError::Failed(failure));
        }
        let deadline = Instant::now() + self.inner.spec.max_wait;
        let generations: Vec<(u32, u64)> = ask.shards.iter().map(|shard| (*shard, self.generation(*shard))).collect();
        let mut not_before = 0;
        for shard in &ask.shards {
            let applied = self.wait_for(*shard, min_lsn.get(shard).copied().unwrap_or(0), deadline).await?;
            not_before = not_before.max(applied.time);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let worker = (id % self.inner.questions.len() as u64) as usize;
        let _in_flight = InFlight::enter(&self.inner.shared);
        self.inner.questions[worker]
            .send(Submitted { id, ask, not_before, reply })
            .map_err(|_| ViewError::Failed("the view's workers stopped".into()))?;
        let answered = tokio::time::timeout_at(deadline.into(), answer).await;
        // A shard that broke meanwhile may have had its rows retracted under the question.
        if let Some((shard, _)) = generations.iter().find(|(shard, generation)| self.generation(*shard) != *generation)
        {
            return Err(ViewError::Rebuilding { shard: *shard });
        }
        match answered {
            Ok(Ok(Found { inconsistent: Some(problem), .. })) => {
                error!(%problem, "the view broke its invariant");
                Err(ViewError::Inconsistent(problem))
            }
            Ok(Ok(found)) => Ok(found),
            Ok(Err(_)) => Err(ViewError::Failed("the view's workers stopped".into())),
            Err(_) => Err(ViewError::Failed(format!("no answer within {:?}", self.inner.spec.max_wait))),
        }
    }

    /// Completes when the view has failed (a CDC reader lost its database), with the reason.
    pub async fn failed(&self) -> String {
        let mut failure = self.inner.failure.subscribe();
        match failure.wait_for(|f| f.is_some()).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the view stopped".into(),
        }
    }

    /// Stops the workers (the CDC readers stop when their worker is gone).
    pub fn stop(&self) {
        self.inner.shared.stopped.store(true, Ordering::Relaxed);
    }
}

/// Counts a question in flight while it lives; the first one wakes the idle workers (later
/// ones find them turning every tick, and a wake-up per question would cost more than it saves).
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        if shared.questions_in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            shared.wake_workers();
        }
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.questions_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Feeds one shard into the dataflow through its change-data-capture source, forever: the
/// snapshot's rows, then the changes and the positions they reach. When the change stream
/// breaks (the database went away, the slot was lost), the shard's part of the view is
/// rebuilt: its generation goes up first (its questions go to the database from then on), every
/// row fed so far is retracted, and a new source (new slot and snapshot, deduplicated by xid
/// visibility as at start) feeds it again; once its first position is published the view
/// serves the shard again. Returns when the dataflow is gone or the view stopped.
fn follow(shard: u32, options: &CdcOptions, feed: &Sender<Feed>, shared: &Shared) {
    // What this shard has in the dataflow now, to take it out again at a rebuild.
    let mut fed: HashMap<ViewRow, isize> = HashMap::new();
    let mut failures = 0u32;
    loop {
        let generation = shared.generations[shard as usize].load(Ordering::SeqCst);
        let problem = match feed_stream(shard, generation, options, feed, shared, &mut fed, &mut failures) {
            Ok(()) => return,
            Err(problem) => problem,
        };
        failures += 1;
        error!(
            shard,
            failures,
            "the change stream of shard {shard} broke: {}; its questions go to the database while \
             its part of the view is rebuilt",
            redact_text(&crate::pg_error::report(&problem).to_string())
        );
        shared.generations[shard as usize].fetch_add(1, Ordering::SeqCst);
        let retractions: Vec<(ViewRow, isize)> = fed.drain().map(|(row, count)| (row, -count)).collect();
        if !retractions.is_empty() && feed.send(Feed::Rows(retractions)).is_err() {
            return;
        }
        shared.wake_workers();
        if !pause(shared, rebuild_backoff(failures)) {
            return;
        }
    }
}

/// How long to wait before rebuilding after `failures` breaks in a row: 100 ms doubling to 5 s.
fn rebuild_backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6).saturating_sub(1))).min(Duration::from_secs(5))
}

/// Sleeps `time` in small steps; false when the view stopped meanwhile.
fn pause(shared: &Shared, time: Duration) -> bool {
    let until = Instant::now() + time;
    while Instant::now() < until {
        if shared.is_stopped() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    !shared.is_stopped()
}

/// One change stream of `shard` into the dataflow, recording in `fed` what went in. `Ok` when
/// the dataflow is gone or the view stopped, `Err` when the stream broke.
fn feed_stream(
    shard: u32,
    generation: u64,
    options: &CdcOptions,
    feed: &Sender<Feed>,
    shared: &Shared,
    fed: &mut HashMap<ViewRow, isize>,
    failures: &mut u32,
) -> Result<()> {
    let started = Instant::now();
    let mut source = CdcSource::open(options, Share::new(0, 1), &BTreeMap::new())
        .with_context(|| format!("shard {shard}: cannot open the change stream"))?;
    let (mut loaded, mut reached) = (false, 0);
    while !shared.is_stopped() {
        let Some(batches) = source.read_round()? else { return Ok(()) };
        for Batch { records, .. } in batches {
            if !records.changes.is_empty() {
                let mut updates = Vec::with_capacity(records.changes.len() * 2);
                for change in &records.changes {
                    updates.extend(rows::updates_of(change)?);
                }
                remember(fed, &updates);
                if feed.send(Feed::Rows(updates)).is_err() {
                    return Ok(());
                }
            }
            let Some(lsn) = records.reached else { continue };
            if !loaded {
                loaded = true;
                *failures = 0;
                info!(
                    shard,
                    generation,
                    rows = source.progress().0,
                    seconds = started.elapsed().as_secs_f64(),
                    "snapshot loaded into the view"
                );
            }
            if lsn != reached {
                reached = lsn;
                if feed.send(Feed::Reached { shard, lsn, generation }).is_err() {
                    return Ok(());
                }
                shared.wake_workers();
            }
        }
    }
    Ok(())
}

/// Adds `updates` to the multiset of rows a shard has in the dataflow.
fn remember(fed: &mut HashMap<ViewRow, isize>, updates: &[(ViewRow, isize)]) {
    for (row, diff) in updates {
        let count = fed.entry(row.clone()).or_default();
        *count += diff;
        if *count == 0 {
            fed.remove(row);
        }
    }
}
