//! `cargo xtask e2e …`.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Which {}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {}
}
