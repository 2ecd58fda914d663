//! clickstay: ad-click aggregation and hotel reservations on timely/differential dataflow.
//!
//! Modules are split by concern; each folder has a `CONTEXT.md` naming what each file owns.

pub mod checkpoint;
pub mod clicks;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod duration;
pub mod http;
pub mod pg_error;
pub mod progress;
pub mod rooms;
pub mod signals;
pub mod sinks;
pub mod sources;
pub mod telemetry;
pub mod toml_file;
