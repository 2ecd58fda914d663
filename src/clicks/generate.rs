//! `clickstay gen`: realistic raw click events.

use anyhow::Result;
use clap::Args;

/// Options of `clickstay gen`.
#[derive(Args, Debug)]
pub struct GenArgs {
    /// How many events to write.
    #[arg(long)]
    pub events: u64,
}

pub fn run(_args: &GenArgs) -> Result<()> {
    anyhow::bail!("not yet implemented")
}
