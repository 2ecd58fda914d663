//! The hotel shards: one connection pool per PostgreSQL database, hotel `h` on shard
//! `h % shards`. Every statement about a hotel goes through [`Shards::for_hotel`].

use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::config::WorkersConfig;

/// Default connections per shard: enough to keep two cores busy while some transactions wait
/// on row locks of a hot room type, few enough that PostgreSQL does not thrash.
pub const DEFAULT_POOL_SIZE: usize = 32;

/// Connection pools to the hotel databases, in the order of `postgres.shards`.
#[derive(Clone)]
pub struct Shards {
    pools: Vec<Pool>,
    urls: Vec<String>,
}

impl Shards {
    /// Pools for `urls`; connections are opened lazily, so this fails only on a malformed URL.
    pub fn new(urls: &[String], pool_size: usize) -> Result<Self> {
        if urls.is_empty() {
            bail!("no hotel shards given");
        }
        let pools = urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let config = tokio_postgres::Config::from_str(url)
                    .with_context(|| format!("shard {index}: `{url}` is not a PostgreSQL URL"))?;
                let manager =
                    Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
                Pool::builder(manager)
                    .max_size(pool_size.max(1))
                    .build()
                    .with_context(|| format!("shard {index}: cannot build a connection pool"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { pools, urls: urls.to_vec() })
    }

    /// The shards named by `--config` (or, without it, `workers.toml` when present, else the
    /// environment alone: `CLICKSTAY_HOTEL_SHARDS`).
    pub fn from_config(config_path: Option<&Path>, pool_size: usize) -> Result<Self> {
        let config = load_config(config_path)?;
        Self::new(config.hotel_shards()?, pool_size)
    }

    /// How many shards there are.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Always false: a `Shards` has at least one pool.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// The index of the shard that owns `hotel_id`.
    pub fn index_of(&self, hotel_id: i64) -> usize {
        hotel_id.rem_euclid(self.pools.len() as i64) as usize
    }

    /// The pool of the shard that owns `hotel_id`.
    pub fn for_hotel(&self, hotel_id: i64) -> &Pool {
        &self.pools[self.index_of(hotel_id)]
    }

    /// All pools, in shard order.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The connection URLs, in shard order (for tools such as pgbench).
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// A connection to shard `index`, with the shard named in the error.
    pub async fn connect(&self, index: usize) -> Result<deadpool_postgres::Client> {
        self.pools[index]
            .get()
            .await
            .with_context(|| format!("cannot connect to hotel shard {index} ({})", redact(&self.urls[index])))
    }
}

/// Reads the config the way every `rooms` command does: an explicit path must exist; without
/// one, `./workers.toml` is used when present.
pub fn load_config(config_path: Option<&Path>) -> Result<WorkersConfig> {
    match config_path {
        Some(path) => WorkersConfig::load(path),
        None if Path::new("workers.toml").exists() => WorkersConfig::load(Path::new("workers.toml")),
        None => Ok(WorkersConfig::from_env_only()),
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &credentials[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotels_are_spread_by_modulo() {
        let urls = vec!["postgres://a@127.0.0.1/x".to_string(), "postgres://a@127.0.0.1/y".to_string()];
        let shards = Shards::new(&urls, 1).unwrap();
        assert_eq!(shards.index_of(0), 0);
        assert_eq!(shards.index_of(7), 1);
        assert_eq!(shards.index_of(10), 0);
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
