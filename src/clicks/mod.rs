//! The ad-click aggregation job (see `CONTEXT.md`).

pub mod generate;
pub mod replay;
