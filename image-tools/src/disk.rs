//! Placeholder until the `disk` work lands.
use clap::Args;

/// Not implemented yet.
#[derive(Args)]
pub struct DiskCmd {}

impl DiskCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        anyhow::bail!("not implemented yet")
    }
}
