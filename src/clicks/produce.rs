//! `clickstay produce`: click events onto the Kafka topic.

use anyhow::Result;
use clap::Args;

/// Options of `clickstay produce`.
#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// The config with the `[kafka]` section.
    #[arg(long, default_value = "workers.toml")]
    pub config: std::path::PathBuf,
}

pub fn run(_args: &ProduceArgs) -> Result<()> {
    anyhow::bail!("not yet implemented")
}
