//! The ad-click aggregation job (see `CONTEXT.md`).

pub mod archive;
pub mod dataflow;
pub mod driver;
pub mod event;
pub mod generate;
pub mod metrics;
pub mod produce;
pub mod query;
pub mod reconcile;
pub mod replay;
pub mod spec;
pub mod stream;
pub mod time;
