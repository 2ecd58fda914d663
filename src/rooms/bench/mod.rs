//! `clickstay rooms bench` (placeholder while the booking path is built).
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> Result<()> {
    Ok(())
}
