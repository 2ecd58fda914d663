//! Hotel reservations on PostgreSQL (see `CONTEXT.md` in this folder).
//!
//! The booking transaction lives in [`booking`] and takes a plain database client, so that the
//! HTTP API ([`api`]) and the availability view's per-shard committer ([`view::committer`])
//! share it.

pub mod api;
pub mod audit;
pub mod batch;
pub mod booking;
pub mod claims;
pub mod cli;
pub mod guard;
pub mod id_lookup;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod seed;
pub mod server;
pub mod shards;
pub mod spec;
pub mod trips;
pub mod view;
