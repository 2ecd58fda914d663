//! What the two reservation benchmarks (`benches/rooms.rs`, `benches/rooms_view.rs`) share: the
//! process set-up, the seeded inventory they find, an in-process API server, the stays they
//! draw ([`workload`]), the HTTP driver ([`http_load`]) and the figures ([`stats`]).
//!
//! Include it with `#[path = "common/rooms/mod.rs"] mod common;`.
#![allow(dead_code)]

pub mod http_load;
pub mod stats;
pub mod workload;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use clap::Args;
use clickstay::rooms::cli::ConfigArg;
use clickstay::rooms::server;
use clickstay::rooms::shards::Shards;
use clickstay::rooms::view::RoomsView;
use tokio::net::TcpListener;

/// The allocator of the `clickstay` binary, so that the in-process servers and views measure
/// as `clickstay rooms serve` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The flag `cargo bench` passes to every benchmark binary it runs: accepted and ignored.
#[derive(Args, Debug)]
pub struct CargoBenchFlag {
    #[arg(long = "bench", hide = true)]
    bench: bool,
}

/// Runs a benchmark to completion as the `clickstay` binary runs a `rooms` command: logs to
/// stderr (`RUST_LOG`, default `info`), on a multi-threaded tokio runtime.
pub fn block_on(bench: impl Future<Output = Result<()>>) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(bench)
}

/// The shards of `config` (`pool_size` connections each), the highest hotel id over them, and
/// the nights seeded for hotel 1's room type 1.
pub async fn discover(config: &ConfigArg, pool_size: usize) -> Result<(Shards, i64, NaiveDate, u32)> {
    let shards = Shards::from_config(config.config.as_deref(), pool_size)?;
    let mut hotels = 0i64;
    for index in 0..shards.len() {
        let client = shards.connect(index).await?;
        let max: Option<i64> = client.query_one("SELECT max(hotel_id) FROM hotel", &[]).await?.get(0);
        hotels = hotels.max(max.unwrap_or(0));
    }
    let client = shards.connect(shards.index_of(1)).await?;
    let row = client
        .query_one(
            "SELECT min(date), (max(date) - min(date) + 1)::int FROM room_type_inventory
              WHERE hotel_id = 1 AND room_type_id = 1",
            &[],
        )
        .await?;
    let (Some(first), Some(days)) = (row.get::<_, Option<NaiveDate>>(0), row.get::<_, Option<i32>>(1)) else {
        bail!("no seeded inventory for hotel 1; run `clickstay rooms seed` first");
    };
    Ok((shards, hotels, first, days as u32))
}

/// An API server in this process (with or without the view); its address.
pub async fn serve(shards: &Shards, view: Option<RoomsView>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(server::serve_on(listener, shards.clone(), view, std::future::pending()));
    Ok(address)
}
