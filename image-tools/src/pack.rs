//! Placeholder until the `pack` work lands.
use clap::Args;

/// Not implemented yet.
#[derive(Args)]
pub struct PackCmd {}

impl PackCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        anyhow::bail!("not implemented yet")
    }
}

/// Not implemented yet.
#[derive(Args)]
pub struct VerifyCmd {}

impl VerifyCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        anyhow::bail!("not implemented yet")
    }
}

/// Not implemented yet.
#[derive(Args)]
pub struct InspectCmd {}

impl InspectCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        anyhow::bail!("not implemented yet")
    }
}
