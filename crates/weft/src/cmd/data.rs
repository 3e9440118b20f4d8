//! `weft data` (placeholder until the Countdown kit lands).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DataArgs {}

pub fn run(_args: DataArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`weft data` is not implemented yet")
}
