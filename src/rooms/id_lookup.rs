//! Batched look-ups of reservation ids on one shard.
//!
//! A booking must learn whether its `reservation_id` was already used for a hotel on another
//! shard (that is a different content: 422). Asking every other shard once per booking costs a
//! query per booking; instead each shard has one [`IdLookup`] task that gathers the ids asked
//! for while its previous query ran and answers them all with one `= ANY($1)` query. Under
//! load the batches grow and the cost per booking shrinks towards nothing.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow};
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::booking;
use super::model::Reservation;

/// Most ids answered by one query.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Option<Reservation>, String>>;

/// A handle to the look-up task of one shard; cheap to clone.
#[derive(Clone)]
pub struct IdLookup {
    requests: mpsc::Sender<(Uuid, Reply)>,
}

impl IdLookup {
    /// Starts the look-up task for the shard behind `pool` (on the current tokio runtime).
    pub fn spawn(pool: Pool) -> Self {
        let (requests, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(serve(pool, receiver));
        Self { requests }
    }

    /// The reservation with this id on the shard, if any.
    pub async fn find(&self, id: Uuid) -> Result<Option<Reservation>> {
        let (reply, answer) = oneshot::channel();
        self.requests.send((id, reply)).await.map_err(|_| anyhow!("id look-up task stopped"))?;
        answer.await.context("id look-up task dropped the request")?.map_err(|e| anyhow!(e))
    }
}

async fn serve(pool: Pool, mut receiver: mpsc::Receiver<(Uuid, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
        let found = match pool.get().await {
            Ok(client) => booking::find_many(&client, &ids).await.map_err(|e| format!("id look-up failed: {e}")),
            Err(e) => Err(format!("id look-up cannot connect: {e}")),
        };
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
