//! `clickstay run`: the streaming job, Kafka in, Postgres out, exactly once.

use anyhow::Result;
use clap::Args;

/// Options of `clickstay run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The dataflow spec.
    #[arg(long)]
    pub dataflow: std::path::PathBuf,
}

pub fn run(_args: RunArgs) -> Result<()> {
    anyhow::bail!("not yet implemented")
}
