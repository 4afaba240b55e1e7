//! The `zt-agent` binary.

use clap::Parser as _;
use zt_agent::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => Ok(zt_agent::runtime::run(args)?),
        Command::Lab(command) => Ok(zt_agent::lab::main(command)?),
        Command::Explain(args) => Ok(zt_agent::explain::main(args)?),
        Command::Uninstall(args) => Ok(zt_agent::runtime::uninstall::run(args)?),
    }
}
