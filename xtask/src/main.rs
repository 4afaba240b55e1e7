//! `cargo xtask …`: zt's developer workflows. Every workflow installs what it needs first,
//! idempotently, and says what it does.

mod bench;
mod cmd;
mod demo;
mod e2e;
mod ebpf;
mod test;
mod toolchain;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the eBPF toolchain if missing and build the kernel object (release).
    BuildEbpf,
    /// Run every test tier: pure unit and property tests, kernel tests, lab conformance, e2e (root).
    Test,
    /// Print benchmark figures.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// The demo: a small app in the lab, before and after a zero-trust policy set (root).
    Demo,
    /// End-to-end tests against real components.
    E2e {
        #[command(subcommand)]
        which: e2e::Which,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf => ebpf::build(),
        Command::Test => test::run(),
        Command::Bench { which } => bench::run(which),
        Command::Demo => demo::run(),
        Command::E2e { which } => e2e::run(which),
    }
}
