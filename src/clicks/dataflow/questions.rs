//! Questions to the running job as dataflow inputs: `.answer_questions(..)` joins each question
//! against the arrangement of a count's panes on the workers that hold its ads, and
//! `gather_answers` merges the workers' parts on worker 0 once the frontier has passed the
//! question's time.
//!
//! A question enters at the dataflow's current time `t` (see `driver/`: the input moves on by a
//! sub-tick after a round that asked, so the frontier passes `t` one round later). Its answer
//! sums, for every pane it covers, the updates at times up to `t`: all clicks read so far.
//! The arrangement holds each pane until `retention` after its end (the "temporal filter"
//! idiom, [`super::retract_at_close`]), so its state is bounded by retention x ads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::TraceReader;
use differential_dataflow::trace::cursor::{Cursor, cursor_list};
use differential_dataflow::trace::implementations::ValSpine;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::{Filter, Map};
use timely::progress::Antichain;

use super::stash::Stash;
use crate::clicks::spec::{DataflowSpec, Field, Op};

/// A count's panes arranged for questions: key (the second `group_by` field's value or 0,
/// ad_id), value the pane start, diff the clicks.
pub type PaneCounts<'s> = Arranged<'s, TraceAgent<ValSpine<(u64, u64), u64, u64, isize>>>;

/// The counts that can answer questions: a count of the source itself, grouped by `ad_id`
/// alone (unfiltered questions) or by `ad_id` and one more field (questions filtered by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// (count node name, its second field), in spec order; questions name them by index.
    pub counts: Vec<(String, Option<Field>)>,
}

impl Catalog {
    pub fn of(spec: &DataflowSpec) -> Self {
        let mut counts: Vec<(String, Option<Field>)> = Vec::new();
        for node in &spec.nodes {
            if let Op::Count { input, group_by } = &node.op
                && *input == spec.source.name
                && !counts.iter().any(|(_, second)| *second == group_by.get(1).copied())
            {
                counts.push((node.name.clone(), group_by.get(1).copied()));
            }
        }
        Catalog { counts }
    }

    /// The index of the count that answers questions filtered by `field` (`None`: unfiltered).
    pub fn count_for(&self, field: Option<Field>) -> Option<u32> {
        self.counts.iter().position(|(_, second)| *second == field).map(|i| i as u32)
    }
}

/// A question as it enters the dataflow; `from..to` are pane starts (to exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Question {
    /// The clicks of one ad (with the count's second field equal to `second`).
    Count { id: u64, count: u32, ad_id: u64, second: u64, from: u64, to: u64 },
    /// The `n` ads with most clicks (and the second field equal to `second`).
    Popular { id: u64, count: u32, second: u64, n: u32, from: u64, to: u64 },
}

impl Question {
    /// The same question under the id `id`.
    pub fn with_id(mut self, id: u64) -> Self {
        match &mut self {
            Question::Count { id: own, .. } | Question::Popular { id: own, .. } => *own = id,
        }
        self
    }

    fn count(&self) -> u32 {
        match self {
            Question::Count { count, .. } | Question::Popular { count, .. } => *count,
        }
    }
}

/// A question's answer, or one worker's part of it (merged on worker 0, see [`merge`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Merged {
    Count(u64),
    /// (ad_id, clicks), clicks descending, then ad_id ascending: a worker's best `n`, or the
    /// best `n` of all.
    Popular(Vec<(u64, u64)>),
}

/// One worker's part of the answer to question `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    pub id: u64,
    pub part: Merged,
}

/// Routes questions to the workers that hold what they ask about: a count question to the
/// worker of its key (as `arrange_by_key` routes it), a popular question to every worker.
pub fn route<'s>(questions: StreamVec<'s, u64, Question>, peers: usize) -> StreamVec<'s, u64, Question> {
    use differential_dataflow::Hashable;
    let copies = move |question: Question| {
        let workers = match question {
            Question::Count { .. } => 1,
            Question::Popular { .. } => peers,
        };
        (0..workers).map(move |worker| (worker, question.clone()))
    };
    let target = |(worker, question): &(usize, Question)| match question {
        Question::Count { second, ad_id, .. } => (*second, *ad_id).hashed(),
        Question::Popular { .. } => *worker as u64,
    };
    questions.flat_map(copies).unary::<CapacityContainerBuilder<Vec<_>>, _, _, _>(
        Exchange::new(target),
        "RouteQuestions",
        |_, _| {
            |input, output| {
                input.for_each(|time, data| {
                    output.session(&time).give_iterator(data.drain(..).map(|(_, question)| question));
                })
            }
        },
    )
}

/// Extension trait for the `answer_questions` method on a stream of routed questions.
pub trait AnswerQuestions<'s> {
    /// Answers this worker's part of each question of count `count` at its time `t`, from
    /// `panes` as it stands once every update up to `t` is in: the clicks of the question's
    /// panes, summed over the updates at times up to `t`.
    fn answer_questions(self, count: u32, panes: &PaneCounts<'s>) -> StreamVec<'s, u64, Partial>;
}

impl<'s> AnswerQuestions<'s> for StreamVec<'s, u64, Question> {
    fn answer_questions(self, count: u32, panes: &PaneCounts<'s>) -> StreamVec<'s, u64, Partial> {
        let mut trace = panes.trace.clone();
        let mine = self.filter(move |question| question.count() == count);
        mine.binary_frontier::<_, CapacityContainerBuilder<Vec<_>>, _, _, _, _>(
            panes.stream.clone(),
            Pipeline,
            Pipeline,
            "AnswerQuestions",
            |_, _| {
                let mut waiting: Stash<u64, Vec<Question>> = Stash::default();
                let mut upper = Antichain::new();
                move |(questions, frontier), (batches, _), output| {
                    questions.for_each(|capability, data| {
                        let Some(capability) = capability.retain_least(0) else { return };
                        let time = *capability.time();
                        waiting.entry(time, || capability).append(data);
                    });
                    batches.for_each(|_, _| {}); // the trace holds them
                    trace.read_upper(&mut upper);
                    let due = |time: &u64| !upper.less_equal(time) && !frontier.less_equal(time);
                    for (time, capability, questions) in waiting.release(due) {
                        let batches =
                            trace.batches_through(upper.borrow()).expect("the trace is readable to its upper");
                        let mut cursors: Vec<_> = batches.into_iter().map(|batch| cursor_list(vec![batch])).collect();
                        let mut session = output.session(&capability);
                        for question in questions {
                            session.give(answer(&mut cursors, &question, time));
                        }
                    }
                    // Later questions come at or after the frontier: older times may merge.
                    let mut limit = frontier.frontier().to_owned();
                    if let Some(first) = waiting.first_key() {
                        let least = limit.elements().first().copied().unwrap_or(u64::MAX).min(*first);
                        limit = Antichain::from_elem(least);
                    }
                    trace.set_logical_compaction(limit.borrow());
                    trace.set_physical_compaction(limit.borrow());
                }
            },
        )
    }
}

/// A cursor over a batch of [`PaneCounts`].
trait PaneCursor:
    for<'a> Cursor<Key<'a> = &'a (u64, u64), Val<'a> = &'a u64, TimeGat<'a> = &'a u64, DiffGat<'a> = &'a isize>
{
}
impl<C> PaneCursor for C where
    C: for<'a> Cursor<Key<'a> = &'a (u64, u64), Val<'a> = &'a u64, TimeGat<'a> = &'a u64, DiffGat<'a> = &'a isize>
{
}

/// The clicks of the cursor's current key in panes `from..to`, over the updates at times up to
/// `at` (one batch's part: batches add up).
fn clicks_of<C: PaneCursor>(cursor: &mut C, storage: &C::Storage, from: u64, to: u64, at: u64) -> isize {
    let mut clicks = 0isize;
    cursor.seek_val(storage, &from);
    while let Some(pane) = cursor.get_val(storage) {
        if *pane >= to {
            break;
        }
        cursor.map_times(storage, |time, diff| {
            if *time <= at {
                clicks += *diff;
            }
        });
        cursor.step_val(storage);
    }
    clicks
}

/// This worker's part of the answer to `question` at `at`, from a cursor per batch of its
/// arrangement. (Each batch is read on its own and the sums added: a merged cursor's
/// `seek_val` would move the cursors of other keys too.)
fn answer<C: PaneCursor>(batches: &mut [(C, C::Storage)], question: &Question, at: u64) -> Partial {
    match *question {
        Question::Count { id, ad_id, second, from, to, .. } => {
            let mut clicks = 0;
            for (cursor, storage) in batches.iter_mut() {
                cursor.rewind_keys(storage);
                cursor.seek_key(storage, &(second, ad_id));
                if cursor.get_key(storage) == Some(&(second, ad_id)) {
                    clicks += clicks_of(cursor, storage, from, to, at);
                }
            }
            Partial { id, part: Merged::Count(clicks.max(0) as u64) }
        }
        Question::Popular { id, second, n, from, to, .. } => {
            let mut sums: HashMap<u64, isize> = HashMap::new();
            for (cursor, storage) in batches.iter_mut() {
                cursor.rewind_keys(storage);
                cursor.seek_key(storage, &(second, 0));
                while let Some(&(key_second, ad_id)) = cursor.get_key(storage) {
                    if key_second != second {
                        break;
                    }
                    *sums.entry(ad_id).or_default() += clicks_of(cursor, storage, from, to, at);
                    cursor.step_key(storage);
                }
            }
            let ads = sums.into_iter().filter(|(_, clicks)| *clicks > 0).map(|(ad, clicks)| (ad, clicks as u64));
            Partial { id, part: Merged::Popular(best(ads.collect(), n as usize)) }
        }
    }
}

/// The `n` best of `ads`: clicks descending, then ad_id ascending.
fn best(mut ads: Vec<(u64, u64)>, n: usize) -> Vec<(u64, u64)> {
    let order = |a: &(u64, u64), b: &(u64, u64)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
    if ads.len() > n {
        ads.select_nth_unstable_by(n, order);
        ads.truncate(n);
    }
    ads.sort_unstable_by(order);
    ads
}

/// What worker 0 waits for: the time each question entered at, and what to do with its
/// answer.
pub struct Waiting {
    pub at: u64,
    /// `None` for a count question, the number of ads for a popular one.
    pub n: Option<usize>,
    /// The parts arrived so far.
    pub parts: Vec<Merged>,
    /// Where the answer goes: each request that asked the question.
    pub deliver: Vec<Box<dyn FnOnce(Merged)>>,
}

/// Questions waiting for their answers, by id (worker 0).
pub type Pending = Rc<RefCell<HashMap<u64, Waiting>>>;

/// Gathers the workers' parts of each answer on worker 0 and delivers it once the frontier has
/// passed the question's time (every part of it has arrived then).
pub fn gather_answers(partials: StreamVec<'_, u64, Partial>, pending: Pending) {
    partials.sink(Exchange::new(|_: &Partial| 0), "GatherAnswers", move |(input, frontier)| {
        let mut pending = pending.borrow_mut();
        input.for_each(|_, data| {
            for Partial { id, part } in data.drain(..) {
                if let Some(waiting) = pending.get_mut(&id) {
                    waiting.parts.push(part);
                }
            }
        });
        let ready: Vec<u64> =
            pending.iter().filter(|(_, waiting)| !frontier.less_equal(&waiting.at)).map(|(id, _)| *id).collect();
        for id in ready {
            let waiting = pending.remove(&id).expect("listed above");
            let merged = merge(waiting.parts, waiting.n);
            for deliver in waiting.deliver {
                deliver(merged.clone());
            }
        }
    });
}

fn merge(parts: Vec<Merged>, n: Option<usize>) -> Merged {
    let mut clicks = 0;
    let mut ads = Vec::new();
    for part in parts {
        match part {
            Merged::Count(sum) => clicks += sum,
            Merged::Popular(more) => ads.extend(more),
        }
    }
    match n {
        None => Merged::Count(clicks),
        Some(n) => Merged::Popular(best(ads, n)),
    }
}
