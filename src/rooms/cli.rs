//! `clickstay rooms ...` subcommands.

use anyhow::Result;
use clap::Subcommand;

/// Hotel reservation commands.
#[derive(Subcommand, Debug)]
pub enum RoomsCommand {
    /// Apply the database migrations to every shard (idempotent).
    Migrate,
}

pub fn run(command: RoomsCommand) -> Result<()> {
    match command {
        RoomsCommand::Migrate => anyhow::bail!("not yet implemented"),
    }
}
