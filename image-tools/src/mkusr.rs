//! Placeholder until the `mkusr` work lands.
use clap::Args;

/// Not implemented yet.
#[derive(Args)]
pub struct MkusrCmd {}

impl MkusrCmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        anyhow::bail!("not implemented yet")
    }
}
