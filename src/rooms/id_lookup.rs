//! Reservation ids looked up on the shards, batched: each shard's [`Batcher`] answers the ids
//! asked while its previous query ran with one `= ANY($1)` query.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::batch::Batcher;
use super::booking;
use super::model::Reservation;
use super::shards::{ShardError, ShardFuture, Shards};

/// The look-up task of one shard: an id in, the reservation with that id on the shard out.
pub type IdLookup = Batcher<Uuid, Option<Reservation>>;

/// Starts the look-up task of every shard (on the current tokio runtime).
pub fn spawn_all(shards: &Shards) -> Vec<IdLookup> {
    Batcher::spawn_all(shards, "id look-up", find_many)
}

/// The reservation of each id (the same id may be asked for several times in one batch).
fn find_many(client: &ClientWrapper, ids: Vec<Uuid>) -> ShardFuture<'_, Vec<Option<Reservation>>> {
    Box::pin(async move {
        let found = booking::find_many(client, &ids).await?;
        let by_id: HashMap<Uuid, Reservation> = found.into_iter().map(|r| (r.request.reservation_id, r)).collect();
        Ok(ids.iter().map(|id| by_id.get(id).cloned()).collect())
    })
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
    for lookup in lookups.iter().filter(|lookup| Some(lookup.shard()) != skip) {
        let lookup = lookup.clone();
        asked.spawn(async move { (lookup.shard(), lookup.ask(id, timeout).await) });
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
