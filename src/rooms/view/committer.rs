//! The committer of each shard: where a booking the view could not refuse goes. It runs the
//! same reservation transaction as the plain API ([`booking::reserve`]); PostgreSQL has the
//! last word. Its answer carries the shard's WAL position after the commit, so the guest can
//! ask the view for an answer that includes the booking (`?min_lsn=`).

use anyhow::Context;

use crate::rooms::booking::{self, Outcome};
use crate::rooms::model::ReservationRequest;
use crate::rooms::shards::{ShardError, Shards};
use crate::sources::postgres_cdc::{Lsn, parse_lsn};

/// Commits bookings on the shard that owns each hotel.
#[derive(Clone)]
pub struct Committer {
    shards: Shards,
}

impl Committer {
    pub fn new(shards: Shards) -> Self {
        Self { shards }
    }

    /// Books `request` on its hotel's shard (on a task of its own, see [`Shards::run`]; with
    /// `claim_here` its id's claim too, see [`booking::reserve`]); the
    /// outcome and the shard's WAL insert position after it: at or past the end of the
    /// booking's commit record, even with `synchronous_commit = off` (where the flushed
    /// position may still be behind it; the view then reaches it once the WAL writer has
    /// flushed).
    pub async fn commit(&self, request: &ReservationRequest, claim_here: bool) -> Result<(Outcome, Lsn), ShardError> {
        let shard = self.shards.index_of(request.hotel_id);
        let request = request.clone();
        self.shards
            .run(shard, move |client| {
                Box::pin(async move {
                    let outcome = booking::reserve(client, &request, claim_here).await?;
                    let position: String = client
                        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                        .await
                        .context("cannot read the WAL position")?
                        .get(0);
                    Ok((outcome, parse_lsn(&position)?))
                })
            })
            .await
    }
}
