//! Trips: several bookings, possibly on several shards, all or nothing (see `CONTEXT.md` in
//! this folder). [`coordinator`] books them by two-phase commit or as a saga, [`recovery`]
//! finishes what a dead coordinator left.

pub mod coordinator;
pub mod log;
pub mod model;
pub mod recovery;
pub mod routes;
pub mod two_phase;

use tracing::{info, warn};

use super::shards::Shards;

/// Says at start-up which shards cannot take part in a two-phase commit
/// (`max_prepared_transactions = 0`): trips across them answer 503 `two_phase_unavailable`.
pub async fn check_two_phase(shards: &Shards) {
    for shard in 0..shards.len() {
        let asked = shards.run(shard, |c| Box::pin(async move { two_phase::max_prepared(c).await })).await;
        match asked {
            Ok(0) => warn!(
                shard,
                "max_prepared_transactions is 0 on this shard: two-phase trips across it will be refused \
                 (503 two_phase_unavailable); set it (scripts/postgres.sh does) or book trips with mode \"saga\""
            ),
            Ok(slots) => info!(shard, max_prepared_transactions = slots, "two-phase commit available"),
            Err(error) => warn!(shard, %error, "cannot tell whether the shard allows prepared transactions"),
        }
    }
}
