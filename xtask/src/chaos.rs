//! `cargo xtask chaos [--quick] [--json]` (root): the agent broken on purpose under continuous
//! traffic — SIGKILL at random moments, pods coming and going, policy churn — at full scale.

use std::process::Command;

use crate::{cmd, ebpf, toolchain};

pub fn run(quick: bool, json: bool) -> anyhow::Result<()> {
    cmd::require_root("cargo xtask chaos")?;
    toolchain::ensure_debian_packages(&[toolchain::LAB_PACKAGES])?;
    ebpf::build()?;
    cmd::run(Command::new("cargo").args(["build", "--package", "zt-agent", "--bin", "zt-agent"]))?;
    let mut chaos = Command::new("cargo");
    chaos
        .args([
            "run",
            "--quiet",
            "--package",
            "zt-tests",
            "--bin",
            "zt-chaos",
            "--",
        ])
        .arg("--agent")
        .arg(cmd::agent_binary());
    if quick {
        chaos.arg("--quick");
    }
    if json {
        chaos.arg("--json");
    }
    cmd::run(&mut chaos)
}
