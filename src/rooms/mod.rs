//! Hotel reservations on PostgreSQL (see `CONTEXT.md`).

pub mod cli;
