//! Timely cluster configuration and `clickstay launch`.

use anyhow::Result;
use clap::Args;

/// Options of `clickstay launch`.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// The cluster config.
    #[arg(long, default_value = "workers.toml")]
    pub config: std::path::PathBuf,
}

pub fn launch(_args: &LaunchArgs) -> Result<()> {
    anyhow::bail!("not yet implemented")
}
