//! The `zt-agent` binary.

use clap::Parser as _;
use zt_agent::cli::{Cli, Command, LabCommand};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => zt_agent::runtime::run(args),
        Command::Lab(LabCommand::Probe(args)) => zt_agent::lab::probe(args),
    }
}
