//! Batched look-ups of reservation ids on one shard.
//!
//! A booking must learn whether its `reservation_id` was already used for a hotel on another
//! shard (that is a different content: 422). Asking every other shard once per booking costs a
//! query per booking; instead each shard has one [`IdLookup`] task that gathers the ids asked
//! for while its previous query ran and answers them all with one `= ANY($1)` query. Under
//! load the batches grow and the cost per booking shrinks towards nothing.
//!
//! Every caller waits at most its own timeout (`ShardLimits::id_lookup_timeout` for the
//! check of a booking, the transaction timeout otherwise): a hung shard answers
//! [`ShardError::Unavailable`] and never holds up a caller beyond that.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::booking;
use super::model::Reservation;
use super::shards::{ShardError, Shards};

/// Most ids answered by one query.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Option<Reservation>, String>>;

/// A handle to the look-up task of one shard; cheap to clone.
#[derive(Clone)]
pub struct IdLookup {
    shard: usize,
    requests: mpsc::Sender<(Uuid, Reply)>,
}

impl IdLookup {
    /// Starts the look-up task of every shard (on the current tokio runtime).
    pub fn spawn_all(shards: &Shards) -> Vec<Self> {
        (0..shards.len()).map(|shard| Self::spawn(shards.clone(), shard)).collect()
    }

    /// Starts the look-up task for shard `shard`.
    pub fn spawn(shards: Shards, shard: usize) -> Self {
        let (requests, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(serve(shards, shard, receiver));
        Self { shard, requests }
    }

    /// The reservation with this id on the shard, if any, within `timeout` (`None`: unbounded).
    pub async fn find(&self, id: Uuid, timeout: Option<Duration>) -> Result<Option<Reservation>, ShardError> {
        let shard = self.shard;
        let unavailable = |reason: String| ShardError::Unavailable { shard, reason };
        let asked = async {
            let (reply, answer) = oneshot::channel();
            self.requests.send((id, reply)).await.map_err(|_| unavailable("id look-up task stopped".into()))?;
            answer.await.map_err(|_| unavailable("id look-up task dropped the request".into()))?.map_err(unavailable)
        };
        match timeout {
            Some(limit) => tokio::time::timeout(limit, asked)
                .await
                .map_err(|_| unavailable(format!("no id look-up answer within {limit:?}")))?,
            None => asked.await,
        }
    }
}

/// Where `id` is, looked up on every shard but `skip` at once.
pub struct Located {
    /// The shard holding it and the reservation, if a shard that answered has it.
    pub found: Option<(usize, Reservation)>,
    /// The shards that did not answer in time (they might hold it).
    pub unanswered: Vec<ShardError>,
}

/// Looks `id` up on every shard except `skip`, concurrently, each within `timeout`; done at the
/// first shard that has it.
pub async fn locate(lookups: &[IdLookup], id: Uuid, skip: Option<usize>, timeout: Option<Duration>) -> Located {
    let mut asked = JoinSet::new();
    for lookup in lookups.iter().filter(|lookup| Some(lookup.shard) != skip).cloned() {
        asked.spawn(async move { (lookup.shard, lookup.find(id, timeout).await) });
    }
    let mut located = Located { found: None, unanswered: Vec::new() };
    while let Some(answer) = asked.join_next().await {
        match answer {
            // Found: the other shards need not be waited for (their look-ups are dropped).
            Ok((shard, Ok(Some(reservation)))) => {
                located.found = Some((shard, reservation));
                break;
            }
            Ok((_, Ok(None))) => {}
            Ok((_, Err(error))) => located.unanswered.push(error),
            Err(error) => located.unanswered.push(ShardError::Unavailable {
                shard: usize::MAX,
                reason: format!("id look-up task failed: {error}"),
            }),
        }
    }
    located.unanswered.sort_by_key(ShardError::shard);
    located
}

async fn serve(shards: Shards, shard: usize, mut receiver: mpsc::Receiver<(Uuid, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
        let found = shards
            .run(shard, move |client| Box::pin(async move { Ok(booking::find_many(client, &ids).await?) }))
            .await
            .map_err(|e| format!("id look-up failed: {e}"));
        match found {
            Ok(reservations) => {
                let by_id: HashMap<Uuid, Reservation> =
                    reservations.into_iter().map(|r| (r.request.reservation_id, r)).collect();
                // The same id may be asked for several times in one batch (concurrent GETs).
                for (id, reply) in batch.drain(..) {
                    let _ = reply.send(Ok(by_id.get(&id).cloned()));
                }
            }
            Err(message) => {
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}
