//! `cargo xtask bench …`: benchmark figures (never timed tests: these machines are shared).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Which {}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {}
}
