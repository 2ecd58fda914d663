//! The hotel shards: one connection pool per PostgreSQL database, hotel `h` on shard
//! `h % shards`. Every statement about a hotel goes through [`Shards::for_hotel`], and every
//! statement of the API through [`Shards::run`]: on a task of its own, bounded in time, on a
//! connection that goes back to the pool only when its work ended cleanly (outside a
//! transaction); any error or timeout closes the connection instead, and PostgreSQL rolls back
//! whatever it had open.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use crate::duration::parse_timeout;
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use deadpool_postgres::{TimeoutType, tokio_postgres::error::SqlState};
use tokio_postgres::NoTls;
use tracing::warn;

use crate::config::WorkersConfig;

/// Default connections per shard: enough to keep two cores busy while some transactions wait
/// on row locks of a hot room type, few enough that PostgreSQL does not thrash.
pub const DEFAULT_POOL_SIZE: usize = 32;

/// The `application_name` of the API's connections (unless the URL sets one), so that an
/// operator can find them in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "clickstay-rooms-api";

/// Bounds on every wait for a shard (`rooms serve` flags). A shard that exceeds one answers
/// 503 `shard_unavailable` (or `busy` for the pool wait) instead of hanging the request.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ShardLimits {
    /// Longest wait for a free pooled connection (then 503 `busy`).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_timeout)]
    pub pool_wait_timeout: Duration,
    /// Longest time to open a connection to a shard, start-up and authentication included.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_timeout)]
    pub connect_timeout: Duration,
    /// PostgreSQL `statement_timeout` of every API connection.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    pub statement_timeout: Duration,
    /// PostgreSQL `lock_timeout` of every API connection (a row or table lock held elsewhere).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_timeout)]
    pub lock_timeout: Duration,
    /// PostgreSQL `idle_in_transaction_session_timeout` of every API connection: the last
    /// guard against a transaction left open.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub idle_in_transaction_timeout: Duration,
    /// Longest run of one booking, cancellation or look-up on a shard, whatever the client
    /// does meanwhile (the work runs on its own task; past this its connection is closed).
    #[arg(long, value_name = "DURATION", default_value = "8s", value_parser = parse_timeout)]
    pub transaction_timeout: Duration,
    /// Longest wait for a shard's answer when a reservation is looked up by id (GET, DELETE,
    /// the existing reservation named in a 422); a shard silent past it answers 503.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_timeout)]
    pub id_lookup_timeout: Duration,
}

impl Default for ShardLimits {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            pool_wait_timeout: s(2),
            connect_timeout: s(3),
            statement_timeout: s(5),
            lock_timeout: s(2),
            idle_in_transaction_timeout: s(10),
            transaction_timeout: s(8),
            id_lookup_timeout: s(1),
        }
    }
}

impl ShardLimits {
    /// The `-c name=value` start-up options that set the server-side timeouts.
    fn session_options(&self) -> String {
        let ms = |d: Duration| d.as_millis();
        format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
            ms(self.statement_timeout),
            ms(self.lock_timeout),
            ms(self.idle_in_transaction_timeout)
        )
    }
}

/// Why a shard could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Every pooled connection of the shard stayed busy for the whole pool wait.
    #[error("hotel shard {shard}: no free connection within {waited:?}")]
    Busy { shard: usize, waited: Duration },
    /// The shard is down, unreachable, or did not answer in time. `reason` is redacted.
    #[error("hotel shard {shard} is unavailable: {reason}")]
    Unavailable { shard: usize, reason: String },
    /// Anything else (a bug, a constraint nobody expected).
    #[error("hotel shard {shard}: {}", redact_text(&crate::pg_error::report(cause).to_string()))]
    Other { shard: usize, cause: anyhow::Error },
}

impl ShardError {
    /// The shard it is about.
    pub fn shard(&self) -> usize {
        match self {
            Self::Busy { shard, .. } | Self::Unavailable { shard, .. } | Self::Other { shard, .. } => *shard,
        }
    }
}

/// The work [`Shards::run`] does with a connection.
pub type ShardFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>;

/// Connection pools to the hotel databases, in the order of `postgres.shards`.
#[derive(Clone)]
pub struct Shards {
    pools: Vec<Pool>,
    urls: Vec<String>,
    /// The API's bounds; `None` for the tools (migrate, seed, check), which may run long.
    limits: Option<Arc<ShardLimits>>,
}

impl Shards {
    /// Pools for `urls` without time limits (for the tools); connections are opened lazily, so
    /// this fails only on a malformed URL.
    pub fn new(urls: &[String], pool_size: usize) -> Result<Self> {
        Self::build(urls, pool_size, None)
    }

    /// Pools for the API: every connection sets the server-side timeouts of `limits`, and
    /// every wait for a connection is bounded.
    pub fn with_limits(urls: &[String], pool_size: usize, limits: ShardLimits) -> Result<Self> {
        Self::build(urls, pool_size, Some(limits))
    }

    fn build(urls: &[String], pool_size: usize, limits: Option<ShardLimits>) -> Result<Self> {
        if urls.is_empty() {
            bail!("no hotel shards given");
        }
        let pools = urls
            .iter()
            .enumerate()
            .map(|(index, url)| pool_of(index, url, pool_size, limits.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { pools, urls: urls.to_vec(), limits: limits.map(Arc::new) })
    }

    /// The shards named by `--config` (or, without it, `workers.toml` when present, else the
    /// environment alone: `CLICKSTAY_HOTEL_SHARDS`).
    pub fn from_config(config_path: Option<&Path>, pool_size: usize) -> Result<Self> {
        let config = load_config(config_path)?;
        Self::new(config.hotel_shards()?, pool_size)
    }

    /// [`Shards::from_config`] with the API's bounds.
    pub fn from_config_with(config_path: Option<&Path>, pool_size: usize, limits: ShardLimits) -> Result<Self> {
        let config = load_config(config_path)?;
        Self::with_limits(config.hotel_shards()?, pool_size, limits)
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

    /// The connection URLs, in shard order (for tools such as pgbench). Never print them:
    /// see [`redact`].
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The API's bounds, `None` without any.
    pub fn limits(&self) -> Option<&ShardLimits> {
        self.limits.as_deref()
    }

    /// How long a reservation-id look-up waits for a shard, `None` for as long as it takes.
    pub fn id_lookup_timeout(&self) -> Option<Duration> {
        self.limits().map(|limits| limits.id_lookup_timeout)
    }

    /// A connection to shard `index`, with the shard named in the error.
    pub async fn connect(&self, index: usize) -> Result<deadpool_postgres::Client, ShardError> {
        self.pools[index].get().await.map_err(|error| self.pool_error(index, error))
    }

    /// Shard `index`'s current WAL position (`pg_current_wal_lsn()`): what a change stream that
    /// has reached it has seen all of (the health check's and the metrics' view lag).
    pub async fn wal_position(&self, index: usize) -> Result<crate::sources::postgres_cdc::Lsn, ShardError> {
        self.run(index, |client| {
            Box::pin(async move {
                let row = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?;
                crate::sources::postgres_cdc::parse_lsn(row.get(0))
            })
        })
        .await
    }

    /// Runs `work` with a connection of shard `index` on a task of its own: it runs to its end
    /// (or [`ShardLimits::transaction_timeout`]) even when the caller gives up. The connection
    /// goes back to the pool only when `work` succeeded, which for a transaction means it was
    /// committed or rolled back; after an error or a timeout it is closed, and PostgreSQL rolls
    /// back whatever was open on it.
    pub async fn run<T, F>(&self, index: usize, work: F) -> Result<T, ShardError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c ClientWrapper) -> ShardFuture<'c, T> + Send + 'static,
    {
        let shards = self.clone();
        tokio::spawn(async move { shards.run_here(index, work).await })
            .await
            .map_err(|error| ShardError::Other { shard: index, cause: anyhow!("the shard's task failed: {error}") })?
    }

    async fn run_here<T, F>(&self, index: usize, work: F) -> Result<T, ShardError>
    where
        F: for<'c> FnOnce(&'c ClientWrapper) -> ShardFuture<'c, T>,
    {
        let client = self.connect(index).await?;
        let result = match self.limits() {
            Some(limits) => tokio::time::timeout(limits.transaction_timeout, work(&client)).await.map_err(|_| {
                ShardError::Unavailable {
                    shard: index,
                    reason: format!("no answer within {:?}", limits.transaction_timeout),
                }
            }),
            None => Ok(work(&client).await),
        };
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                discard(client);
                Err(classify(index, error))
            }
            Err(timed_out) => {
                discard(client);
                Err(timed_out)
            }
        }
    }

    fn pool_error(&self, index: usize, error: PoolError) -> ShardError {
        let unavailable = |reason: String| ShardError::Unavailable { shard: index, reason: redact_text(&reason) };
        match error {
            PoolError::Timeout(TimeoutType::Wait) => ShardError::Busy {
                shard: index,
                waited: self.limits().map_or(Duration::ZERO, |limits| limits.pool_wait_timeout),
            },
            PoolError::Timeout(TimeoutType::Create) => unavailable("cannot connect in time".into()),
            PoolError::Timeout(TimeoutType::Recycle) => unavailable("a pooled connection did not answer".into()),
            PoolError::Backend(error) => unavailable(format!("cannot connect: {error}")),
            other => ShardError::Other { shard: index, cause: anyhow!("connection pool: {other}") },
        }
    }
}

/// The pool of shard `index`: fast recycling is safe because a connection that might still be
/// inside a transaction is never returned (see [`Shards::run`]).
fn pool_of(index: usize, url: &str, pool_size: usize, limits: Option<&ShardLimits>) -> Result<Pool> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| anyhow!("shard {index}: `{}` is not a PostgreSQL URL ({e})", redact(url)))?;
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    let mut builder = Pool::builder(Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    ));
    if let Some(limits) = limits {
        let options = match config.get_options() {
            Some(own) => format!("{own} {}", limits.session_options()),
            None => limits.session_options(),
        };
        config.options(&options).connect_timeout(limits.connect_timeout);
        builder = Pool::builder(Manager::from_config(
            config,
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        ))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(limits.pool_wait_timeout))
        .create_timeout(Some(limits.connect_timeout))
        .recycle_timeout(Some(limits.connect_timeout));
    }
    builder.max_size(pool_size.max(1)).build().with_context(|| format!("shard {index}: cannot build a connection pool"))
}

/// Takes the connection out of the pool and closes it: whatever transaction it had open ends
/// with it.
fn discard(client: Object) {
    drop(Object::take(client));
}

/// An error of work on shard `index`: the shard is unavailable when the connection broke or
/// PostgreSQL gave up waiting (timeouts, shutdown), anything else is a bug.
fn classify(index: usize, error: anyhow::Error) -> ShardError {
    let unavailable = error.chain().any(|cause| {
        if cause.is::<std::io::Error>() {
            return true;
        }
        let Some(db) = cause.downcast_ref::<tokio_postgres::Error>() else { return false };
        db.is_closed() || db.code().is_some_and(is_unavailable_code)
    });
    if unavailable {
        let reason = redact_text(&crate::pg_error::report(&error).to_string());
        warn!(shard = index, %reason, "hotel shard unavailable");
        ShardError::Unavailable { shard: index, reason }
    } else {
        ShardError::Other { shard: index, cause: error }
    }
}

/// SQLSTATEs of a database that is going away or did not answer within its timeouts.
fn is_unavailable_code(code: &SqlState) -> bool {
    [
        SqlState::QUERY_CANCELED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::CONNECTION_EXCEPTION,
        SqlState::CONNECTION_FAILURE,
        SqlState::CONNECTION_DOES_NOT_EXIST,
        SqlState::INVALID_CATALOG_NAME,
    ]
    .contains(code)
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

/// A connection string (URL or `key=value` form) without its password, for messages.
pub fn redact(url: &str) -> String {
    redact_text(url)
}

/// `text` with every password it may quote hidden: the `user:password@` of any URL in it and
/// the value of every `password=` (URL query or `key=value` connection string, quoted or not).
pub fn redact_text(text: &str) -> String {
    redact_key_values(&redact_userinfo(text))
}

/// Hides the password of every `scheme://user:password@host` in `text`.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        out.push_str(&rest[..authority_start]);
        let tail = &rest[authority_start..];
        let authority_len = tail.find(|c: char| c == '/' || c == '?' || c.is_whitespace()).unwrap_or(tail.len());
        let authority = &tail[..authority_len];
        match authority.rfind('@').and_then(|at| authority[..at].find(':').map(|colon| (colon, at))) {
            Some((colon, at)) => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_len..];
    }
    out.push_str(rest);
    out
}

/// Hides the value of every `password=` in `text` (case-insensitive; `'quoted'` values too).
fn redact_key_values(text: &str) -> String {
    const KEY: &str = "password=";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(KEY) {
        let value_start = search + found + KEY.len();
        out.push_str(&text[done..value_start]);
        out.push_str("***");
        let value_len = value_length(&text[value_start..]);
        done = value_start + value_len;
        search = done;
    }
    out.push_str(&text[done..]);
    out
}

/// The length of a connection-string value at the start of `text`: a `'quoted'` one (with
/// `\'` escapes) or up to a space, `&`, `,` or quote.
fn value_length(text: &str) -> usize {
    if let Some(quoted) = text.strip_prefix('\'') {
        let mut escaped = false;
        for (index, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '\'' if !escaped => return index + 2,
                _ => escaped = false,
            }
        }
        return text.len();
    }
    text.find(|c: char| c.is_whitespace() || matches!(c, '&' | ',' | '"' | '`' | ')')).unwrap_or(text.len())
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
        assert_eq!(
            redact("postgres://u@h/db?sslmode=off&password=secret"),
            "postgres://u@h/db?sslmode=off&password=***"
        );
        assert_eq!(redact("postgres://u@h/db?Password=secret&x=1"), "postgres://u@h/db?Password=***&x=1");
        assert_eq!(redact("host=h user=u password=secret dbname=d"), "host=h user=u password=*** dbname=d");
        assert_eq!(redact("host=h password='se cr\\'et' dbname=d"), "host=h password=*** dbname=d");
        let message = "shard 1: `postgres://a:b@h/x` and `host=h password=p` failed";
        assert_eq!(redact_text(message), "shard 1: `postgres://a:***@h/x` and `host=h password=***` failed");
    }

    #[test]
    fn the_api_limits_go_into_the_session() {
        let options = ShardLimits::default().session_options();
        assert_eq!(
            options,
            "-c statement_timeout=5000 -c lock_timeout=2000 -c idle_in_transaction_session_timeout=10000"
        );
    }
}
