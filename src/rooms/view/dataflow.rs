//! One worker of the availability dataflow: the view's rows arranged by hotel, questions joined
//! against those arrangements, and every question answered once the frontier has passed the
//! logical time it entered at.
//!
//! Times are ticks (200 µs) of the view's clock (questions arriving in the same tick share a
//! time and are joined as one batch); every worker advances its inputs to the clock at each turn
//! of its loop, so the frontier moves even when nothing happens. A worker parks for at most a
//! tick while questions wait (5 ms otherwise), and is woken when changes or the first question
//! arrive. A question is
//! inserted at a time `t` and retracted at `t + 1`: the join results at exactly `t` are its
//! answer, consistent with every change inserted at or before `t`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use differential_dataflow::VecCollection;
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::worker::Worker;
use tokio::sync::oneshot;

use super::Shared;
use super::answers::{Ask, Found, Hit};
use super::rows::{Day, Stay, ViewRow};
use crate::sources::postgres_cdc::Lsn;

/// A question on its way into the dataflow.
pub struct Submitted {
    pub id: u64,
    pub ask: Ask,
    /// The earliest logical time the question may enter at: the time the changes it must see
    /// (`min_lsn`) were inserted at.
    pub not_before: u64,
    pub reply: oneshot::Sender<Found>,
}

/// What the CDC readers send to the worker that owns their shard.
pub enum Feed {
    Rows(Vec<(ViewRow, isize)>),
    /// Every change of `shard` committed before `lsn` has been sent by its change stream
    /// `generation`.
    Reached {
        shard: u32,
        lsn: Lsn,
        generation: u64,
    },
}

/// The channels of one worker.
pub struct WorkerChannels {
    pub feed: Receiver<Feed>,
    pub questions: Receiver<Submitted>,
}

/// A question waiting for the frontier to pass its time `at`.
struct Waiting {
    at: u64,
    shards: Vec<u32>,
    reply: oneshot::Sender<Found>,
}

/// Questions waiting, by id.
type Pending = Rc<RefCell<HashMap<u64, Waiting>>>;

/// Builds the dataflow on `worker` and runs it until the view is stopped.
pub fn run(worker: &mut Worker, channels: WorkerChannels, shared: Arc<Shared>) {
    let pending: Pending = Rc::default();
    let (mut rows, mut asks) = build(worker, pending.clone(), shared.clone());
    shared.register_worker(worker.index(), std::thread::current());
    let mut time = shared.now();
    advance(&mut rows, time);
    advance(&mut asks, time);
    while !shared.is_stopped() {
        let mut reached = Vec::new();
        while let Ok(feed) = channels.feed.try_recv() {
            match feed {
                Feed::Rows(updates) => {
                    for (row, diff) in updates {
                        rows.update(row, diff);
                    }
                }
                Feed::Reached { shard, lsn, generation } => reached.push((shard, lsn, generation)),
            }
        }
        while let Ok(question) = channels.questions.try_recv() {
            let at = question.not_before.max(time);
            asks.update_at((question.id, question.ask.clone()), at, 1);
            let shards = question.ask.shards.clone();
            asks.update_at((question.id, question.ask), at + 1, -1);
            pending.borrow_mut().insert(question.id, Waiting { at, shards, reply: question.reply });
        }
        // The rows that brought these positions are in at `time`: a question entering at `time`
        // or later sees them. Published before the inputs advance, so that no answer at `time`
        // can be gathered before its positions are known.
        for (shard, lsn, generation) in reached {
            shared.publish(shard, lsn, time, generation);
        }
        let now = shared.now().max(time);
        advance(&mut rows, now);
        advance(&mut asks, now);
        time = now;
        worker.step_or_park(Some(shared.park_time()));
    }
}

/// Moves an input to `time` and tells timely (without the flush the frontier would not move).
fn advance<D: differential_dataflow::Data>(input: &mut InputSession<u64, D, isize>, time: u64) {
    input.advance_to(time);
    input.flush();
}

type Inputs = (InputSession<u64, ViewRow, isize>, InputSession<u64, (u64, Ask), isize>);

/// A collection of the dataflow, at ticks of the view's clock.
type Updates<'s, D> = VecCollection<'s, u64, D, isize>;

/// An arrangement by key: built once, shared by every question join that reads it.
type ByKey<'s, K, V> = Arranged<'s, TraceAgent<ValSpine<K, V, u64, isize>>>;

/// A question about a hotel: its id and the nights it asks about (`start..end`).
type Question = (u64, Day, Day);

/// Builds the dataflow: the view's rows arranged, the questions joined against them, the
/// answers sent. Returns the two inputs (rows and questions).
fn build(worker: &mut Worker, pending: Pending, shared: Arc<Shared>) -> Inputs {
    worker.dataflow::<u64, _, _>(|scope| {
        let (rows_input, rows) = scope.new_collection::<ViewRow, isize>();
        let (asks_input, asks) = scope.new_collection::<(u64, Ask), isize>();
        let view = arrange(rows);
        let asked = hotels_asked(asks.clone(), view.hotels_by_city);
        let hotel_hits = hotel_hits(asked.clone(), view.hotel_facts);
        let night_hits = night_hits(asked, view.nights);
        let reservation_hits = reservation_hits(asks, view.reservations);
        answer(hotel_hits.concat(night_hits).concat(reservation_hits), pending, shared);
        (rows_input, asks_input)
    })
}

/// The view's rows, arranged by hotel (a question reads only its hotels' part), by city and by
/// reservation id.
struct View<'s> {
    /// A hotel's own row (`None`) and its room types share one arrangement, so one look-up finds both.
    hotel_facts: ByKey<'s, i64, Option<i32>>,
    hotels_by_city: ByKey<'s, String, i64>,
    /// `(hotel_id, night)` to `(room_type_id, free)`.
    nights: ByKey<'s, (i64, Day), (i32, i32)>,
    reservations: ByKey<'s, u128, Stay>,
}

/// The four arrangements of the view, each from the rows of one kind.
fn arrange(rows: Updates<'_, ViewRow>) -> View<'_> {
    let hotel_facts = rows
        .clone()
        .flat_map(|row| match row {
            ViewRow::Hotel { hotel_id, .. } => Some((hotel_id, None)),
            ViewRow::RoomType { hotel_id, room_type_id } => Some((hotel_id, Some(room_type_id))),
            _ => None,
        })
        .arrange_by_key();
    let hotels_by_city = rows
        .clone()
        .flat_map(|row| match row {
            ViewRow::Hotel { hotel_id, city } => Some((city, hotel_id)),
            _ => None,
        })
        .arrange_by_key();
    let nights = rows
        .clone()
        .flat_map(|row| match row {
            ViewRow::Night { hotel_id, night, room_type_id, free } => Some(((hotel_id, night), (room_type_id, free))),
            _ => None,
        })
        .arrange_by_key();
    let reservations = rows
        .flat_map(|row| match row {
            ViewRow::Reservation { id, stay } => Some((id, stay)),
            _ => None,
        })
        .arrange_by_key();
    View { hotel_facts, hotels_by_city, nights, reservations }
}

/// The hotels each question is about: listed, or every hotel of a city.
fn hotels_asked<'s>(
    asks: Updates<'s, (u64, Ask)>,
    hotels_by_city: ByKey<'s, String, i64>,
) -> Updates<'s, (i64, Question)> {
    let listed = asks.clone().flat_map(|(id, ask)| {
        let (start, end) = (ask.start, ask.end);
        ask.hotels.into_iter().map(move |hotel_id| (hotel_id, (id, start, end)))
    });
    let in_city = asks
        .flat_map(|(id, ask)| ask.city.map(|city| (city, (id, ask.start, ask.end))))
        .arrange_by_key()
        .join_core(hotels_by_city, |_city, &question, &hotel_id| Some((hotel_id, question)));
    listed.concat(in_city)
}

/// Each asked hotel's own row and its room types.
fn hotel_hits<'s>(
    asked: Updates<'s, (i64, Question)>,
    hotel_facts: ByKey<'s, i64, Option<i32>>,
) -> Updates<'s, (u64, Hit)> {
    asked.arrange_by_key().join_core(hotel_facts, |&hotel_id, &(id, _, _), fact| match *fact {
        None => Some((id, Hit::Hotel { hotel_id })),
        Some(room_type_id) => Some((id, Hit::RoomType { hotel_id, room_type_id })),
    })
}

/// Every night asked of each asked hotel, per room type.
fn night_hits<'s>(
    asked: Updates<'s, (i64, Question)>,
    nights: ByKey<'s, (i64, Day), (i32, i32)>,
) -> Updates<'s, (u64, Hit)> {
    asked
        .flat_map(|(hotel_id, (id, start, end))| (start..end).map(move |night| ((hotel_id, night), id)))
        .arrange_by_key()
        .join_core(nights, |&(hotel_id, night), &id, &(room_type_id, free)| {
            Some((id, Hit::Night { hotel_id, room_type_id, night, free }))
        })
}

/// The reservation a question asks about, if any.
fn reservation_hits<'s>(asks: Updates<'s, (u64, Ask)>, reservations: ByKey<'s, u128, Stay>) -> Updates<'s, (u64, Hit)> {
    asks.flat_map(|(id, ask)| ask.reservation.map(|reservation| (reservation, id)))
        .arrange_by_key()
        .join_core(reservations, |_, &id, stay| Some((id, Hit::Reservation(stay.clone()))))
}

/// The `Answer` sink: hits go to the worker that holds their question, and a question is
/// answered once the frontier has passed the time it entered at.
fn answer(hits: Updates<'_, (u64, Hit)>, pending: Pending, shared: Arc<Shared>) {
    hits.inner.sink(Exchange::new(|((id, _), _, _): &((u64, Hit), u64, isize)| *id), "Answer", {
        // Hits not yet answered, by question id.
        let mut hits: HashMap<u64, Vec<(Hit, u64, isize)>> = HashMap::new();
        move |(input, frontier)| {
            let mut pending = pending.borrow_mut();
            input.for_each(|_capability, data| {
                for ((id, hit), time, diff) in data.drain(..) {
                    // Hits of questions already answered are their retractions at `t + 1`.
                    if pending.contains_key(&id) {
                        hits.entry(id).or_default().push((hit, time, diff));
                    }
                }
            });
            let ready: Vec<u64> =
                pending.iter().filter(|(_, waiting)| !frontier.less_equal(&waiting.at)).map(|(id, _)| *id).collect();
            for id in ready {
                let waiting = pending.remove(&id).expect("listed above");
                let mut found = gather(hits.remove(&id).unwrap_or_default(), waiting.at);
                for shard in waiting.shards {
                    found.positions.insert(shard, shared.position_at(shard, waiting.at));
                }
                let _ = waiting.reply.send(found);
            }
        }
    });
}

/// The answer to a question that entered at `at`: its hits at exactly that time.
fn gather(mut hits: Vec<(Hit, u64, isize)>, at: u64) -> Found {
    let mut at_time: Vec<(Hit, isize)> =
        hits.drain(..).filter(|(_, time, _)| *time == at).map(|(hit, _, diff)| (hit, diff)).collect();
    differential_dataflow::consolidation::consolidate(&mut at_time);
    let mut found = Found::default();
    for (hit, diff) in at_time {
        found.add(hit, diff);
    }
    found
}
