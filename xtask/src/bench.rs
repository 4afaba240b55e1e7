//! `cargo xtask bench …`: benchmark figures (never timed tests: these machines are shared).

use std::process::Command;

use clap::Subcommand;

use crate::{cmd, ebpf};

#[derive(Debug, Subcommand)]
pub enum Which {
    /// ns per packet through BPF_PROG_TEST_RUN (root).
    Datapath {
        #[arg(long)]
        json: bool,
    },
    /// Compile times and entry counts on a synthetic 10,000-pod cluster.
    Compiler {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(which: Which) -> anyhow::Result<()> {
    let (name, json) = match which {
        Which::Datapath { json } => {
            cmd::require_root("cargo xtask bench datapath")?;
            ebpf::build()?;
            ("datapath", json)
        }
        Which::Compiler { json } => ("compiler", json),
    };
    let mut bench = Command::new("cargo");
    bench.args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "zt-tests",
        "--bin",
        "zt-bench",
        "--",
        name,
    ]);
    if json {
        bench.arg("--json");
    }
    cmd::run(&mut bench)
}
