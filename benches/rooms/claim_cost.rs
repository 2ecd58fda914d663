//! What the reservation-id claim adds to a booking: the claim statement timed on its own, one
//! connection, one at a time (the booking waits for it before it starts), beside a bare round
//! trip on the same connection.

use std::time::Instant;

use anyhow::Result;
use chrono::NaiveDate;
use clickstay::rooms::claims;
use clickstay::rooms::model::ReservationRequest;
use clickstay::rooms::shards::Shards;

const CLAIMS: usize = 2000;

/// Times `CLAIMS` claims of fresh ids on shard 0 (then deletes them); the line to print.
pub async fn measure(shards: &Shards, first_night: NaiveDate) -> Result<String> {
    let client = shards.connect(0).await?;
    let select = client.prepare_cached("SELECT 1").await?;
    let mut round_trips = Vec::with_capacity(CLAIMS);
    let mut claim_times = Vec::with_capacity(CLAIMS);
    let mut ids = Vec::with_capacity(CLAIMS);
    for _ in 0..CLAIMS {
        let started = Instant::now();
        client.query_one(&select, &[]).await?;
        round_trips.push(started.elapsed().as_micros() as u64);

        let request = ReservationRequest {
            reservation_id: uuid::Uuid::now_v7(),
            hotel_id: 1,
            room_type_id: 1,
            start_date: first_night,
            end_date: first_night.succ_opt().expect("a night after the first"),
            guest_id: 1,
        };
        let started = Instant::now();
        claims::claim(&client, &request).await?;
        claim_times.push(started.elapsed().as_micros() as u64);
        ids.push(request.reservation_id);
    }
    client.execute("DELETE FROM reservation_claim WHERE reservation_id = ANY($1)", &[&ids]).await?;
    let (claim_p50, claim_mean) = summary(&mut claim_times);
    let (trip_p50, trip_mean) = summary(&mut round_trips);
    Ok(format!(
        "claim: p50 {claim_p50} µs, mean {claim_mean} µs per booking ({CLAIMS} claims, one connection, one at a time); \
         a bare round trip (SELECT 1) p50 {trip_p50} µs, mean {trip_mean} µs"
    ))
}

/// (median, mean) of microsecond figures.
fn summary(us: &mut [u64]) -> (u64, u64) {
    us.sort_unstable();
    (us[us.len() / 2], us.iter().sum::<u64>() / us.len() as u64)
}
