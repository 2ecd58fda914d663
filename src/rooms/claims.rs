//! Reservation ids unique across shards: a claim on the id's home shard, taken before the
//! booking on the hotel's shard (migration `0003_claims.sql` explains the table).
//!
//! Two concurrent first uses of one id for hotels on different shards both claim on the same
//! database, the id's home shard; its primary key lets exactly one win. The claim holds the
//! booking's content, so the loser learns whether it is a repeat (same content: it books, or
//! finds, the same reservation) or a reuse (other content: 422). A crash between claim and
//! booking leaves a claim without a reservation; the client's idempotent retry (same content)
//! completes it, other content is refused. GET and DELETE ask the home shard where the
//! reservation lives instead of asking every shard.
//!
//! Cost: one statement on the home shard per booking (one round trip; the README gives the
//! measured figure), instead of asking every shard whether the id is in use.

use anyhow::{Context, Result};
use deadpool_postgres::ClientWrapper;
use uuid::Uuid;

use super::model::ReservationRequest;

/// The shard that holds the claim of `id`: the id's low 64 bits (random in a UUIDv7) modulo the
/// number of shards. Stable: it depends on the id and the number of shards only.
pub fn home_shard(id: Uuid, shards: usize) -> usize {
    ((id.as_u128() as u64) % shards.max(1) as u64) as usize
}

/// What claiming an id found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The id is this booking's: first use, or a repeat of the same content.
    Ours,
    /// The id is claimed for other content (`ReservationRequest` as claimed).
    Taken(ReservationRequest),
}

/// Takes the claim of `request`'s id on its home shard (`client`), or reads the claim that is
/// there. `ON CONFLICT DO UPDATE` (a no-op update) locks and returns the existing row even when
/// a concurrent first use committed it after this statement began, which `DO NOTHING` plus a
/// read could miss.
pub async fn claim(client: &ClientWrapper, request: &ReservationRequest) -> Result<Claim> {
    let statement = client
        .prepare_cached(
            "INSERT INTO reservation_claim AS c
                    (reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (reservation_id) DO UPDATE SET reservation_id = c.reservation_id
             RETURNING reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id",
        )
        .await?;
    let row = client
        .query_one(&statement, &request.sql_params())
        .await
        .with_context(|| format!("cannot claim reservation id {}", request.reservation_id))?;
    let claimed = ReservationRequest::from_row(&row);
    Ok(if claimed == *request { Claim::Ours } else { Claim::Taken(claimed) })
}

/// Records what became of a claimed id: `booked` or `cancelled`.
pub async fn set_state(client: &ClientWrapper, id: Uuid, state: &str) -> Result<()> {
    client
        .execute("UPDATE reservation_claim SET state = $2 WHERE reservation_id = $1", &[&id, &state])
        .await
        .with_context(|| format!("cannot mark the claim of {id} {state}"))?;
    Ok(())
}

/// Gives back the claim of `request`'s id when its hotel or room type does not exist: nothing can
/// ever be booked under that content, so the id is free again. (A sold-out stay keeps its claim:
/// a concurrent repeat of it may have got a room, and its id must stay bound.)
pub async fn release_unbookable(client: &ClientWrapper, request: &ReservationRequest) -> Result<()> {
    client
        .execute(
            "DELETE FROM reservation_claim
              WHERE reservation_id = $1 AND state = 'claimed' AND hotel_id = $2 AND room_type_id = $3",
            &[&request.reservation_id, &request.hotel_id, &request.room_type_id],
        )
        .await
        .with_context(|| format!("cannot release the claim of {}", request.reservation_id))?;
    Ok(())
}

/// The hotel whose reservation holds `id`, from its claim; `None` when the id has no claim
/// (never used, or used before claims existed).
pub async fn hotel_of(client: &ClientWrapper, id: Uuid) -> Result<Option<i64>> {
    let row = client
        .query_opt("SELECT hotel_id FROM reservation_claim WHERE reservation_id = $1", &[&id])
        .await
        .with_context(|| format!("cannot look up the claim of {id}"))?;
    Ok(row.map(|row| row.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_shards_spread_and_are_stable() {
        let mut per_shard = [0u32; 3];
        for _ in 0..3000 {
            let id = Uuid::now_v7();
            let home = home_shard(id, 3);
            assert_eq!(home, home_shard(id, 3));
            per_shard[home] += 1;
        }
        assert!(per_shard.iter().all(|n| *n > 800), "{per_shard:?}");
        assert_eq!(home_shard(Uuid::now_v7(), 1), 0);
    }
}
