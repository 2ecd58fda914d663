//! Two fresh, migrated hotel shards (two databases on the test server) with a direct client to
//! each, for the tests that run the reservation API.
//!
//! Include it with `#[path = "common/shop.rs"] mod shop;` beside `pg` and `scripts`.
#![allow(dead_code)]

use clickstay::rooms::migrate;
use clickstay::rooms::shards::Shards;

/// The shards' URLs, their pools (`pool_size` connections each) and one client per database.
pub struct TwoShards {
    pub urls: Vec<String>,
    pub shards: Shards,
    pub dbs: Vec<tokio_postgres::Client>,
}

/// Two new databases named `prefix_...`, migrated.
pub async fn two_shards(prefix: &str, pool_size: usize) -> TwoShards {
    let urls = vec![super::pg::fresh_database(prefix).await, super::pg::fresh_database(prefix).await];
    let shards = Shards::new(&urls, pool_size).unwrap();
    migrate::migrate_all(&shards).await.unwrap();
    let mut dbs = Vec::new();
    for url in &urls {
        dbs.push(super::pg::connect(url).await);
    }
    TwoShards { urls, shards, dbs }
}
