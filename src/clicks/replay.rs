//! `clickstay replay`: a file of raw events through the ad-click dataflow.

use anyhow::Result;
use clap::Args;

/// Options of `clickstay replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The dataflow spec.
    #[arg(long)]
    pub dataflow: std::path::PathBuf,
}

pub fn run(_args: ReplayArgs) -> Result<()> {
    anyhow::bail!("not yet implemented")
}
