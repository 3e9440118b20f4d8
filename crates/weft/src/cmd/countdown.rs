//! `weft countdown` (placeholder until the Countdown kit lands).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CountdownArgs {}

pub fn run(_args: CountdownArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`weft countdown` is not implemented yet")
}
