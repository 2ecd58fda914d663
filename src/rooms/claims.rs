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
//! Cost: inside the booking's transaction when the id's home shard is the hotel's; else one
//! round trip to the home shard per booking, the claims of concurrent bookings batched per
//! shard (one statement and one commit per batch, see [`super::batch`]). The README gives the
//! measured figures.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, anyhow};
use chrono::NaiveDate;
use deadpool_postgres::ClientWrapper;
use tokio_postgres::Statement;
use uuid::Uuid;

use super::batch::Batcher;
use super::model::ReservationRequest;
use super::shards::Shards;

/// The shard that holds the claim of `id`: the id's low 64 bits (random in a UUIDv7) modulo the
/// number of shards. Stable: it depends on the id and the number of shards only.
pub fn home_shard(id: Uuid, shards: usize) -> usize {
    ((id.as_u128() as u64) % shards.max(1) as u64) as usize
}

/// A fresh UUIDv7 whose home shard is `shard` (of `shards`): what `POST
/// /v1/reservation-ids?hotel_id=` gives, so that the id's claim lives on the hotel's shard and
/// is taken inside the booking's own transaction. (The low 64 bits are random: about `shards`
/// draws.)
pub fn new_id_homed_on(shard: usize, shards: usize) -> Uuid {
    loop {
        let id = Uuid::now_v7();
        if home_shard(id, shards) == shard {
            return id;
        }
    }
}

/// What claiming an id found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The id is this booking's: first use, or a repeat of the same content.
    Ours,
    /// The id is claimed for other content (`ReservationRequest` as claimed).
    Taken(ReservationRequest),
}

/// The claim task of one shard: a request in, what claiming its id found out (see [`super::batch`]).
pub type ClaimBatch = Batcher<ReservationRequest, Claim>;

/// Starts the claim task of every shard (on the current tokio runtime).
pub fn spawn_all(shards: &Shards) -> Vec<ClaimBatch> {
    Batcher::spawn_all(shards, "reservation-id claim", |client, requests| {
        Box::pin(async move { claim_many(client, &requests).await })
    })
}

/// Takes the claim of `request`'s id on its home shard (`client`), or reads the claim that is
/// there.
pub async fn claim(client: &ClientWrapper, request: &ReservationRequest) -> Result<Claim> {
    Ok(claim_many(client, std::slice::from_ref(request)).await?.remove(0))
}

/// [`claim`] for many requests in one statement and one commit (the ids sorted, so that two
/// batches lock their rows in the same order). Of two requests with one id in a batch, the
/// first one's content is claimed.
pub async fn claim_many(client: &ClientWrapper, requests: &[ReservationRequest]) -> Result<Vec<Claim>> {
    let claimed = claimed_for(client, requests)
        .await
        .with_context(|| format!("cannot claim {} reservation id(s)", requests.len()))?;
    requests
        .iter()
        .map(|request| match claimed.get(&request.reservation_id) {
            Some(claimed) => Ok(Claim::of(request, claimed)),
            None => Err(anyhow!("reservation id {} was neither claimed nor found claimed", request.reservation_id)),
        })
        .collect()
}

/// Claims one id: `$1..$6` as in [`ReservationRequest::sql_params`]. `ON CONFLICT DO UPDATE`
/// (a no-op update) locks and returns the existing row even when a concurrent first use
/// committed it after this statement began, which `DO NOTHING` plus a read could miss.
const CLAIM_ONE_SQL: &str = "\
INSERT INTO reservation_claim AS c (reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (reservation_id) DO UPDATE SET reservation_id = c.reservation_id
RETURNING reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id";

/// [`CLAIM_ONE_SQL`] for many ids: one array per column.
const CLAIM_MANY_SQL: &str = "\
INSERT INTO reservation_claim AS c (reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id)
SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::date[], $5::date[], $6::bigint[])
ON CONFLICT (reservation_id) DO UPDATE SET reservation_id = c.reservation_id
RETURNING reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id";

/// The prepared statement of [`claimed_with`]; prepare it before pipelining the claim behind a
/// `BEGIN` (a statement prepared on the way would let later statements overtake it).
pub async fn claim_statement(client: &ClientWrapper) -> Result<Statement, tokio_postgres::Error> {
    client.prepare_cached(CLAIM_ONE_SQL).await
}

/// Claims `request`'s id with `statement` ([`claim_statement`]): the content the id is
/// claimed for once it has run (its own for a first use). Run inside a booking's transaction
/// when the id's home shard is the hotel's shard ([`super::booking::reserve`]).
pub async fn claimed_with(
    client: &ClientWrapper,
    statement: &Statement,
    request: &ReservationRequest,
) -> Result<ReservationRequest, tokio_postgres::Error> {
    Ok(ReservationRequest::from_row(&client.query_one(statement, &request.sql_params()).await?))
}

/// The content each id of `requests` is claimed for after claiming them all, in one statement.
async fn claimed_for(
    client: &ClientWrapper,
    requests: &[ReservationRequest],
) -> Result<HashMap<Uuid, ReservationRequest>, tokio_postgres::Error> {
    if let [request] = requests {
        let claimed = claimed_with(client, &claim_statement(client).await?, request).await?;
        return Ok(HashMap::from([(claimed.reservation_id, claimed)]));
    }
    let mut first: BTreeMap<Uuid, &ReservationRequest> = BTreeMap::new();
    for request in requests {
        first.entry(request.reservation_id).or_insert(request);
    }
    let ids: Vec<Uuid> = first.keys().copied().collect();
    let hotels: Vec<i64> = first.values().map(|r| r.hotel_id).collect();
    let room_types: Vec<i32> = first.values().map(|r| r.room_type_id).collect();
    let starts: Vec<NaiveDate> = first.values().map(|r| r.start_date).collect();
    let ends: Vec<NaiveDate> = first.values().map(|r| r.end_date).collect();
    let guests: Vec<i64> = first.values().map(|r| r.guest_id).collect();
    let statement = client.prepare_cached(CLAIM_MANY_SQL).await?;
    let rows = client.query(&statement, &[&ids, &hotels, &room_types, &starts, &ends, &guests]).await?;
    Ok(rows.iter().map(ReservationRequest::from_row).map(|r| (r.reservation_id, r)).collect())
}

impl Claim {
    /// What claiming for `request` found when the id is claimed for `claimed`.
    pub fn of(request: &ReservationRequest, claimed: &ReservationRequest) -> Self {
        if claimed == request { Claim::Ours } else { Claim::Taken(claimed.clone()) }
    }
}

/// Records what became of a claimed id: `cancelled` (a claim stays `claimed` until then;
/// whether it was booked is in `reservation`).
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
        for shard in 0..3 {
            assert_eq!(home_shard(new_id_homed_on(shard, 3), 3), shard);
        }
    }
}
