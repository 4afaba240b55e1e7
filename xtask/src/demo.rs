//! `cargo xtask demo` (root): builds what is missing, then runs `zt-agent lab demo` on
//! deploy/demo — a shop app in the lab with no policy, then with a zero-trust set, and one denied
//! flow explained.

use std::{process::Command, time::Instant};

use crate::{cmd, ebpf, toolchain};

/// The flow the demo explains: a debugging pod trying the database directly.
const EXPLAIN: &str = "default/toolbox:shop/db:5432/TCP";

pub fn run() -> anyhow::Result<()> {
    cmd::require_root("cargo xtask demo")?;
    toolchain::ensure_debian_packages(&[toolchain::LAB_PACKAGES])?;
    ebpf::build()?;
    cmd::run(Command::new("cargo").args(["build", "--package", "zt-agent", "--bin", "zt-agent"]))?;
    let root = cmd::workspace_root();
    let started = Instant::now();
    let mut demo = Command::new(cmd::agent_binary());
    demo.args(["lab", "demo", "--dir"])
        .arg(root.join("deploy/demo"))
        .args(["--explain", EXPLAIN]);
    cmd::run(&mut demo)?;
    eprintln!(
        "\nthe demo took {:.1} s (after the build)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
