//! Benchmark runner behind `cargo xtask bench …` (release build; the datapath one needs root).

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    which: Which,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// ns per packet through BPF_PROG_TEST_RUN's repeat mode.
    Datapath,
    /// Full and incremental compile times on a synthetic cluster.
    Compiler,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.which {
        Which::Datapath => zt_tests::bench::datapath::run(cli.json),
        Which::Compiler => zt_tests::bench::compiler::run(cli.json),
    }
}
