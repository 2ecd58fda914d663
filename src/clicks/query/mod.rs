//! Questions to the running click job (`clickstay run --listen`): the HTTP side hands each
//! request's asks to worker 0 through a [`QueryHub`]; worker 0's [`HubAsker`] turns them into
//! records of the dataflow's question input at the current time (see
//! `dataflow/questions.rs`) and replies once the dataflow has answered them all. Nothing is
//! answered from a copy of the data kept on the side.

pub mod api;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use serde::Serialize;
use tokio::sync::oneshot;

use super::dataflow::QuestionInput;
use super::dataflow::questions::{Catalog, Merged, Question, Waiting};
use super::driver::Asker;
use super::spec::{DataflowSpec, Field};

/// One question as a client asks it (checked already, see [`api`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// Accepted clicks of `ad_id` in the panes of `from..to` (pane boundaries, epoch ms).
    Count { ad_id: u64, from: u64, to: u64, filter: Option<(Field, u64)> },
    /// The `n` most clicked ads over the `window_ms` of panes ending at the last pane boundary
    /// at or before the watermark (or `as_of`).
    Popular { n: u32, window_ms: u64, filter: Option<(Field, u64)>, as_of: Option<u64> },
}

/// An answer, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Count { ad_id: u64, from: u64, to: u64, count: u64, as_of: u64 },
    Popular { window_start: u64, window_end: u64, as_of: u64, ads: Vec<PopularAd> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PopularAd {
    pub ad_id: u64,
    pub clicks: u64,
}

/// Why an ask got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Its panes start before the oldest pane the job keeps for questions.
    BeyondRetention { retention_ms: u64, as_of: u64 },
}

/// A request's asks, answered together at one time.
pub struct Submitted {
    pub asks: Vec<Ask>,
    pub reply: oneshot::Sender<Vec<Result<Answer, Refused>>>,
}

/// The HTTP side's handle on the job: where asks go, and what the spec allows.
#[derive(Clone)]
pub struct QueryHub {
    sender: Sender<Submitted>,
    pub catalog: Arc<Catalog>,
    pub pane_ms: u64,
    pub retention_ms: u64,
}

impl QueryHub {
    /// A hub for a job of `spec`, and the asker worker 0 takes its asks with.
    pub fn new(spec: &DataflowSpec) -> (QueryHub, HubAsker) {
        let (sender, receiver) = channel();
        let catalog = Arc::new(Catalog::of(spec));
        let (pane_ms, retention_ms) = (spec.time.pane_ms, spec.queries.retention_ms);
        let asker =
            HubAsker { receiver, taken: Vec::new(), next_id: 0, catalog: catalog.clone(), pane_ms, retention_ms };
        (QueryHub { sender, catalog, pane_ms, retention_ms }, asker)
    }

    /// Asks the job; the answers in the order of `asks`, all at one `as_of`. `None` when the
    /// job has stopped.
    pub async fn ask(&self, asks: Vec<Ask>) -> Option<Vec<Result<Answer, Refused>>> {
        let (reply, answer) = oneshot::channel();
        self.sender.send(Submitted { asks, reply }).ok()?;
        answer.await.ok()
    }
}

/// Worker 0's end of the hub (see [`Asker`]).
pub struct HubAsker {
    receiver: Receiver<Submitted>,
    taken: Vec<Submitted>,
    next_id: u64,
    catalog: Arc<Catalog>,
    pane_ms: u64,
    retention_ms: u64,
}

/// A request's answers as they arrive; replied when the last one is in.
struct Collector {
    answers: Vec<Option<Result<Answer, Refused>>>,
    missing: usize,
    reply: Option<oneshot::Sender<Vec<Result<Answer, Refused>>>>,
}

impl Collector {
    fn put(&mut self, index: usize, answer: Result<Answer, Refused>) {
        self.answers[index] = Some(answer);
        self.missing -= 1;
        if self.missing == 0
            && let Some(reply) = self.reply.take()
        {
            let _ = reply.send(self.answers.drain(..).map(|a| a.expect("every answer is in")).collect());
        }
    }
}

impl Asker for HubAsker {
    fn take(&mut self) -> bool {
        self.taken.extend(self.receiver.try_iter());
        !self.taken.is_empty()
    }

    fn enter(&mut self, at: u64, input: &mut QuestionInput) {
        // The answers reflect every pane that ends at or before this watermark.
        let as_of = at - at % self.pane_ms;
        // A question asked several times in one round (the same popular list, say) enters once.
        let mut shared: HashMap<Question, u64> = HashMap::new();
        for submitted in std::mem::take(&mut self.taken) {
            let missing = submitted.asks.len();
            let collector = Rc::new(RefCell::new(Collector {
                answers: vec![None; missing],
                missing,
                reply: Some(submitted.reply),
            }));
            if missing == 0
                && let Some(reply) = collector.borrow_mut().reply.take()
            {
                let _ = reply.send(Vec::new());
            }
            for (index, ask) in submitted.asks.into_iter().enumerate() {
                let collector = collector.clone();
                match self.question(&ask, as_of) {
                    Err(refused) => collector.borrow_mut().put(index, Err(refused)),
                    Ok(None) => collector.borrow_mut().put(index, Ok(answer_of(&ask, None, as_of, Merged::Count(0)))),
                    Ok(Some(question)) => {
                        let asked = question.clone();
                        let deliver: Box<dyn FnOnce(Merged)> = Box::new(move |merged: Merged| {
                            collector.borrow_mut().put(index, Ok(answer_of(&ask, Some(&asked), as_of, merged)))
                        });
                        let n = match question {
                            Question::Popular { n, .. } => Some(n as usize),
                            Question::Count { .. } => None,
                        };
                        let mut pending = input.pending.borrow_mut();
                        if let Some(waiting) = shared.get(&question).and_then(|id| pending.get_mut(id)) {
                            waiting.deliver.push(deliver);
                            continue;
                        }
                        let id = self.next_id;
                        self.next_id += 1;
                        shared.insert(question.clone(), id);
                        let question = question.with_id(id);
                        pending.insert(id, Waiting { at, n, parts: Vec::new(), deliver: vec![deliver] });
                        input.input.send(question);
                    }
                }
            }
        }
    }
}

impl HubAsker {
    /// The dataflow question for `ask` at `as_of` (its id 0); `None` when it covers no pane
    /// that has ended (its answer is 0).
    fn question(&self, ask: &Ask, as_of: u64) -> Result<Option<Question>, Refused> {
        let beyond = |start: u64| start.saturating_add(self.retention_ms) < as_of;
        let refused = Refused::BeyondRetention { retention_ms: self.retention_ms, as_of };
        let count_and_second = |filter: &Option<(Field, u64)>| {
            let count = self.catalog.count_for(filter.map(|(field, _)| field)).expect("checked by the API");
            (count, filter.map_or(0, |(_, value)| value))
        };
        match ask {
            Ask::Count { ad_id, from, to, filter } => {
                if beyond(*from) {
                    return Err(refused);
                }
                let to = (*to).min(as_of);
                if *from >= to {
                    return Ok(None);
                }
                let (count, second) = count_and_second(filter);
                Ok(Some(Question::Count { id: 0, count, ad_id: *ad_id, second, from: *from, to }))
            }
            Ask::Popular { n, window_ms, filter, as_of: asked } => {
                let (start, end) = self.window(*window_ms, *asked, as_of);
                if beyond(start) {
                    return Err(refused);
                }
                let (count, second) = count_and_second(filter);
                Ok(Some(Question::Popular { id: 0, count, second, n: *n, from: start, to: end }))
            }
        }
    }

    /// A popular question's window: `window_ms` of panes ending at the last pane boundary at
    /// or before the watermark, or before `asked` if that is earlier.
    fn window(&self, window_ms: u64, asked: Option<u64>, as_of: u64) -> (u64, u64) {
        let end = asked.map_or(as_of, |asked| (asked - asked % self.pane_ms).min(as_of));
        (end.saturating_sub(window_ms), end)
    }
}

/// The answer to `ask` at `as_of`, from what the dataflow found for `question`.
fn answer_of(ask: &Ask, question: Option<&Question>, as_of: u64, merged: Merged) -> Answer {
    match (ask, question, merged) {
        (Ask::Count { ad_id, from, to, .. }, _, Merged::Count(count)) => {
            Answer::Count { ad_id: *ad_id, from: *from, to: *to, count, as_of }
        }
        (Ask::Popular { .. }, Some(Question::Popular { from, to, .. }), Merged::Popular(ads)) => Answer::Popular {
            window_start: *from,
            window_end: *to,
            as_of,
            ads: ads.into_iter().map(|(ad_id, clicks)| PopularAd { ad_id, clicks }).collect(),
        },
        _ => unreachable!("a count question is answered with a count, a popular one with ads"),
    }
}
