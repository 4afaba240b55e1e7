//! `cargo xtask …`: zt's developer workflows. Every workflow installs what it needs first,
//! idempotently, and says what it does.

mod bench;
mod chaos;
mod cmd;
mod demo;
mod e2e;
mod ebpf;
mod image;
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
    /// The agent broken on purpose under continuous traffic: restarts, pod churn, policy churn
    /// (root). Prints sent / lost / leaked per case.
    Chaos {
        /// The quick scale that `cargo xtask test` runs.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
    },
    /// The agent's container image as a tarball for `ctr images import` / `docker load` (no Docker engine).
    Image(image::Opts),
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
        Command::Chaos { quick, json } => chaos::run(quick, json),
        Command::Image(opts) => image::run(opts),
        Command::E2e { which } => e2e::run(which),
    }
}
