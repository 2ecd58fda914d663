//! PostgreSQL's own two-phase commit, as a trip's participants use it: each participating
//! shard books its legs in one transaction and ends it with `PREPARE TRANSACTION gid`
//! ([`crate::rooms::booking::book_legs`]); phase two is `COMMIT PREPARED gid` or `ROLLBACK
//! PREPARED gid`, sent by the coordinator or, after a crash, by recovery. A prepared
//! transaction outlives its session and a server restart, holding its row locks until then.

use anyhow::{Context, Result};
use deadpool_postgres::ClientWrapper;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::model::Decision;

/// Every global transaction id of a trip starts with this (what recovery looks for).
const GID_PREFIX: &str = "clickstay-trip:";

/// The global transaction id of trip `trip_id`'s transaction on shard `shard`. Unique per
/// server: two shards may be databases of one server, which shares one namespace of gids.
pub fn gid(trip_id: Uuid, shard: usize) -> String {
    format!("{GID_PREFIX}{trip_id}:{shard}")
}

/// The trip and shard of a gid written by [`gid`]; `None` for anyone else's.
pub fn parse_gid(gid: &str) -> Option<(Uuid, usize)> {
    let (trip, shard) = gid.strip_prefix(GID_PREFIX)?.split_once(':')?;
    Some((Uuid::parse_str(trip).ok()?, shard.parse().ok()?))
}

/// A trip's transaction prepared on this shard's database and not yet decided.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub gid: String,
    pub trip_id: Uuid,
    /// Seconds since it was prepared.
    pub age_seconds: f64,
}

/// The trips' prepared transactions of this database (`pg_prepared_xacts` lists the whole
/// server's), oldest first.
pub async fn prepared_here(client: &ClientWrapper) -> Result<Vec<Prepared>> {
    let rows = client
        .query(
            "SELECT gid, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts
              WHERE database = current_database() AND starts_with(gid, $1)
              ORDER BY prepared",
            &[&GID_PREFIX],
        )
        .await
        .context("cannot list prepared transactions")?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let gid: String = row.get(0);
            let (trip_id, _) = parse_gid(&gid)?;
            Some(Prepared { gid, trip_id, age_seconds: row.get(1) })
        })
        .collect())
}

/// Phase two on this shard: `COMMIT PREPARED` or `ROLLBACK PREPARED`. `false` when no such
/// prepared transaction exists (it was finished already, by the coordinator or recovery, or
/// never prepared).
pub async fn finish(client: &ClientWrapper, gid: &str, decision: Decision) -> Result<bool> {
    let verb = match decision {
        Decision::Commit => "COMMIT PREPARED",
        Decision::Abort => "ROLLBACK PREPARED",
    };
    match client.batch_execute(&format!("{verb} '{}'", gid.replace('\'', "''"))).await {
        Ok(()) => Ok(true),
        Err(error) if error.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(false),
        Err(error) => Err(error).with_context(|| format!("{verb} {gid} failed")),
    }
}

/// `max_prepared_transactions` of the shard's server: 0 disables `PREPARE TRANSACTION`.
pub async fn max_prepared(client: &ClientWrapper) -> Result<i64> {
    let row = client.query_one("SELECT current_setting('max_prepared_transactions')::bigint", &[]).await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_name_their_trip_and_shard() {
        let trip = Uuid::now_v7();
        assert_eq!(parse_gid(&gid(trip, 3)), Some((trip, 3)));
        assert_eq!(parse_gid("someone-else:1"), None);
        assert_eq!(parse_gid(&format!("{GID_PREFIX}not-a-uuid:1")), None);
    }
}
