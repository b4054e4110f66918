//! Placeholder until the `keys` work lands.
use clap::Args;

/// Not implemented yet.
#[derive(Args)]
pub struct KeygenCmd {}

impl KeygenCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        anyhow::bail!("not implemented yet")
    }
}
